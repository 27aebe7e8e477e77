//! Which text of a chat template's rendering is trained: each model turn's content and the end-of-turn marker the
//! template writes after it; not the turn's header, not the whitespace after the marker, not the rest.
//!
//! Found without knowing the template, from renderings of conversation prefixes. For the model turn at `k`:
//!
//! ```text
//! before = render(messages[..k])                                  ...<end_of_turn>\n
//! prompt = render(messages[..k], add_generation_prompt=True)      ...<end_of_turn>\n<start_of_turn>model\n
//! with   = render(messages[..=k])                                 ...<end_of_turn>\n<start_of_turn>model\nYo<end_of_turn>\n
//! ```
//!
//! `before` must be a prefix of `with`, and `with` of the whole rendering (else the template is not
//! prefix-stable and the turn cannot be located: an error). The turn's text is `with` past `before`. Its header
//! is the generation prompt (`prompt` past `before`) when the turn starts with it, as in Gemma 1-3
//! (`<start_of_turn>model\n`). Gemma 4's generation prompt goes on with an empty thought channel that a rendered
//! turn lacks; then the header is what the template writes before the content, found by rendering the turn
//! with a marker as its content (`<|turn>model\n`). Trained is the rest of the turn's text up to its trailing
//! whitespace (`Yo<end_of_turn>`), which is what [`crate::chat::chat_pieces`] trains for the hand-written Gemma
//! template.

use crate::chat::Piece;
use crate::error::ChatError;
use crate::format::{Content, Message};
use crate::template::ChatTemplate;

/// A model turn: the roles transformers' templates call `assistant`, and Gemma's `model`.
pub(crate) fn is_model(m: &Message) -> bool {
    matches!(m.role.as_str(), "assistant" | "model")
}

/// Content no conversation has and no template trims away (private-use characters around a word).
const MARKER: &str = "\u{e000}lapidary\u{e001}";

impl ChatTemplate {
    /// The rendering of `messages` as pieces, without the leading `bos_token` (the encoder adds BOS as an
    /// id), as [`crate::chat::chat_pieces`] gives them for the hand-written template: adjacent pieces never
    /// share the same `trained` flag.
    pub fn pieces(&self, messages: &[Message], add_generation_prompt: bool) -> Result<Vec<Piece>, ChatError> {
        let full = self.render(messages, add_generation_prompt)?;
        let mut spans = Vec::new();
        for (k, m) in messages.iter().enumerate().filter(|(_, m)| is_model(m)) {
            let fail =
                |message: &str| ChatError::TemplateMask { index: k, role: m.role.clone(), message: message.into() };
            let render = |upto: usize, generation: bool| self.render_raw(&messages[..upto], generation);
            let (before, with) = match (render(k, false), render(k + 1, false)) {
                (Ok(before), Ok(with)) => (before, with),
                (Err(e), _) | (_, Err(e)) => {
                    return Err(fail(&format!("a prefix of the conversation does not render ({})", self.describe(&e))))
                }
            };
            if !(with.starts_with(&before) && full.starts_with(&with)) {
                return Err(fail(
                    "the template renders earlier turns differently once this one follows (it is not prefix-stable)",
                ));
            }
            let turn = &with[before.len()..];
            let generation_prompt =
                render(k, true).ok().and_then(|p| p.strip_prefix(before.as_str()).map(str::to_string));
            let header = match generation_prompt {
                Some(g) if turn.starts_with(&g) => g.len(),
                _ => self.header_by_marker(messages, k, &before, turn).ok_or_else(|| {
                    fail("neither the generation prompt nor a marker content shows where the turn's content starts")
                })?,
            };
            let start = before.len() + header;
            let end = start + with[start..].trim_end().len();
            spans.push((start, end));
        }

        let mut pieces = Vec::new();
        let mut at = 0;
        for (start, end) in spans {
            push(&mut pieces, &full[at..start], false);
            push(&mut pieces, &full[start..end], true);
            at = end;
        }
        push(&mut pieces, &full[at..], false);
        if let Some(first) = pieces.first_mut().filter(|p| !p.trained) {
            first.text = self.without_bos(&first.text).to_string();
            if first.text.is_empty() {
                pieces.remove(0);
            }
        }
        Ok(pieces)
    }

    /// The length of the header of the model turn `k` (rendered as `turn` after `before`): what the template
    /// writes before [`MARKER`] when that is the turn's content, if `turn` starts with the same text.
    fn header_by_marker(&self, messages: &[Message], k: usize, before: &str, turn: &str) -> Option<usize> {
        let mut probe = messages[..=k].to_vec();
        probe[k].content = match &probe[k].content {
            Content::Text(_) => Content::Text(MARKER.into()),
            Content::Parts(_) => Content::Parts(vec![MARKER.into()]),
        };
        let rendered = self.render_raw(&probe, false).ok()?;
        let rest = rendered.strip_prefix(before)?;
        let header = &rest[..rest.find(MARKER)?];
        turn.starts_with(header).then_some(header.len())
    }
}

fn push(pieces: &mut Vec<Piece>, text: &str, trained: bool) {
    if text.is_empty() {
        return;
    }
    match pieces.last_mut() {
        Some(last) if last.trained == trained => last.text.push_str(text),
        _ => pieces.push(Piece { text: text.to_string(), trained }),
    }
}
