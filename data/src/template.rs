//! A checkpoint's own chat template (Hugging Face Jinja), rendered as transformers' `apply_chat_template(...,
//! tokenize=False)` renders it: MiniJinja configured like transformers' jinja2 environment (template_pycompat.rs),
//! given `messages`, `add_generation_prompt`, `tools` and `documents` (both `None`) and the tokenizer's named
//! special tokens (`bos_token`, `eos_token`, ...).
//!
//! Where a template comes from is [`crate::template_dir`] (a checkpoint directory) or the caller
//! ([`ChatTemplate::new`], e.g. with a GGUF's `tokenizer.chat_template`). Which of its text is trained is
//! [`crate::template_mask`]. Without a template the hand-written Gemma template of [`crate::chat`] is used.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use minijinja::{context, Environment, Value};

use crate::error::{ChatError, DataError};
use crate::format::{Content, Message};
use crate::template_pycompat::{install, raised};

const NAME: &str = "chat_template";

/// A compiled chat template with the special-token strings it is rendered with. Cheap to clone.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Arc<Environment<'static>>,
    tokens: Arc<BTreeMap<String, String>>,
    origin: String,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate").field("origin", &self.origin).field("tokens", &self.tokens).finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`. `tokens` are the template variables of the tokenizer's named special tokens
    /// (`bos_token` → `<bos>`, ...); `origin` says where the template came from in error messages
    /// (a file, or a file and key).
    pub fn new(
        source: impl Into<String>,
        tokens: BTreeMap<String, String>,
        origin: impl Into<String>,
    ) -> Result<Self, DataError> {
        let origin = origin.into();
        let mut env = Environment::new();
        install(&mut env);
        env.add_template_owned(NAME, source.into())
            .map_err(|e| DataError::Template { origin: origin.clone(), message: e.to_string() })?;
        Ok(Self { env: Arc::new(env), tokens: Arc::new(tokens), origin })
    }

    /// The special-token strings of every Gemma tokenizer, for a template whose tokenizer is not at hand.
    pub fn gemma_tokens() -> BTreeMap<String, String> {
        [("bos_token", "<bos>"), ("eos_token", "<eos>"), ("unk_token", "<unk>"), ("pad_token", "<pad>")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Where the template came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The `bos_token` string the template is given, if any.
    pub fn bos_token(&self) -> Option<&str> {
        self.tokens.get("bos_token").map(String::as_str)
    }

    /// What `apply_chat_template(messages, add_generation_prompt=..., tokenize=False)` returns. An error the
    /// template raises names the first message whose conversation prefix fails to render.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, ChatError> {
        if messages.is_empty() {
            return Err(ChatError::Empty); // transformers refuses an empty conversation before rendering
        }
        self.render_raw(messages, add_generation_prompt).map_err(|e| self.diagnose(messages, &e))
    }

    /// `text` without the leading `bos_token` the template writes (the encoder adds BOS as an id).
    pub fn without_bos<'a>(&self, text: &'a str) -> &'a str {
        match self.bos_token() {
            Some(bos) if !bos.is_empty() => text.strip_prefix(bos).unwrap_or(text),
            _ => text,
        }
    }

    pub(crate) fn render_raw(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, minijinja::Error> {
        let mut ctx: BTreeMap<String, Value> =
            self.tokens.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
        ctx.insert("messages".into(), messages.iter().map(message_value).collect());
        ctx.insert("add_generation_prompt".into(), Value::from(add_generation_prompt));
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        self.env.get_template(NAME)?.render(Value::from(ctx))
    }

    /// Turns a rendering error into a [`ChatError::Template`], naming the message where it starts: the first
    /// `k` whose conversation `messages[..=k]` fails to render on its own (the alternation checks of Gemma's
    /// templates raise exactly there).
    fn diagnose(&self, messages: &[Message], err: &minijinja::Error) -> ChatError {
        let at = (1..messages.len())
            .find(|&n| self.render_raw(&messages[..n], false).is_err())
            .map_or(messages.len() - 1, |n| n - 1);
        let located = at + 1 < messages.len() || self.render_raw(messages, false).is_err();
        ChatError::Template {
            index: located.then_some(at),
            role: located.then(|| messages[at].role.clone()),
            message: self.describe(err),
        }
    }

    /// The template's own `raise_exception` text, or the engine's error with where it happened.
    pub(crate) fn describe(&self, err: &minijinja::Error) -> String {
        match raised(err) {
            Some(message) => message.to_string(),
            None => format!("{err} (template from {})", self.origin),
        }
    }
}

impl std::str::FromStr for ChatTemplate {
    type Err = DataError;

    /// A template from a string alone (e.g. a GGUF's `tokenizer.chat_template`), with Gemma's special tokens.
    fn from_str(source: &str) -> Result<Self, DataError> {
        Self::new(source, Self::gemma_tokens(), "chat template")
    }
}

/// A message as transformers hands it to the template: `{"role", "content"}` in that order, content a string
/// or a list of `{"type": "text", "text"}` parts.
fn message_value(m: &Message) -> Value {
    let content = match &m.content {
        Content::Text(s) => Value::from(s.as_str()),
        Content::Parts(parts) => parts.iter().map(|t| context! { type => "text", text => t.as_str() }).collect(),
    };
    context! { role => m.role.as_str(), content => content }
}
