//! The Gemma chat template (Gemma 1, 2 and 3 instruction-tuned checkpoints share it; Gemma 3's adds the
//! system-prompt folding), reimplemented exactly. The Jinja original is in
//! `tests/fixtures/data/chat_template.json`, with transformers' renderings that the tests compare against:
//!
//! ```text
//! <bos><start_of_turn>user
//! {system}\n\n{user content}<end_of_turn>
//! <start_of_turn>model
//! {model content}<end_of_turn>
//! ...
//! [<start_of_turn>model\n]          <- add_generation_prompt
//! ```
//!
//! Details the template fixes and this copies: every turn's content is stripped (Jinja `trim`, which is Python
//! `str.strip()`); the system message is *not* stripped and is glued to the first turn with `\n\n`;
//! `assistant` is written as `model`; roles must alternate user/model starting with user, else the template
//! raises. `<bos>` is the tokenizer's BOS token: [`chat_pieces`] leaves it out so the encoder can add the id.

use crate::error::ChatError;
use crate::format::{Content, Message};

pub const START_OF_TURN: &str = "<start_of_turn>";
pub const END_OF_TURN: &str = "<end_of_turn>";

/// A run of rendered text; `trained` is true for a model turn's content and its `<end_of_turn>` (not the
/// newline after it, nor the `<start_of_turn>model\n` header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub text: String,
    pub trained: bool,
}

/// Renders `messages` into pieces (without `<bos>`); adjacent pieces never share the same `trained` flag.
pub fn chat_pieces(messages: &[Message], add_generation_prompt: bool) -> Result<Vec<Piece>, ChatError> {
    let first = messages.first().ok_or(ChatError::Empty)?;
    let (prefix, offset) = if first.role == "system" {
        let text = match &first.content {
            Content::Text(s) => s.as_str(),
            // The template reads `content[0]['text']`, untrimmed.
            Content::Parts(parts) => parts
                .first()
                .ok_or(ChatError::Content { index: 0, message: "system message has no text part".into() })?,
        };
        (format!("{text}\n\n"), 1)
    } else {
        (String::new(), 0)
    };

    let mut out = Pieces::default();
    for (i, m) in messages[offset..].iter().enumerate() {
        let index = i + offset;
        if (m.role == "user") != (i % 2 == 0) {
            return Err(ChatError::Alternation { index, role: m.role.clone() });
        }
        let is_model = match m.role.as_str() {
            "user" => false,
            "assistant" | "model" => true,
            _ => return Err(ChatError::Role { index, role: m.role.clone() }),
        };
        let role = if is_model { "model" } else { "user" };
        out.push(&format!("{START_OF_TURN}{role}\n{}", if i == 0 { prefix.as_str() } else { "" }), false);
        let content = match &m.content {
            Content::Text(s) => py_strip(s).to_string(),
            Content::Parts(parts) => parts.iter().map(|p| py_strip(p)).collect(),
        };
        out.push(&content, is_model);
        out.push(END_OF_TURN, is_model);
        out.push("\n", false);
    }
    if add_generation_prompt {
        out.push(&format!("{START_OF_TURN}model\n"), false);
    }
    Ok(out.0)
}

/// The full rendering, `<bos>` included: what `tokenizer.apply_chat_template(messages, tokenize=False)` returns.
pub fn render_chat(messages: &[Message], add_generation_prompt: bool, bos: &str) -> Result<String, ChatError> {
    let pieces = chat_pieces(messages, add_generation_prompt)?;
    Ok(std::iter::once(bos).chain(pieces.iter().map(|p| p.text.as_str())).collect())
}

/// Python's `str.strip()`: Unicode whitespace, plus the ASCII separators U+001C..U+001F that Python counts
/// as whitespace and Rust does not.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

#[derive(Default)]
struct Pieces(Vec<Piece>);

impl Pieces {
    fn push(&mut self, text: &str, trained: bool) {
        if text.is_empty() {
            return;
        }
        match self.0.last_mut() {
            Some(last) if last.trained == trained => last.text.push_str(text),
            _ => self.0.push(Piece { text: text.to_string(), trained }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_matches_python() {
        assert_eq!(py_strip("\u{1f} a b\u{a0}\n"), "a b");
        assert_eq!(py_strip("\u{3000}x"), "x");
    }

    #[test]
    fn model_turn_is_the_only_trained_piece() {
        let m = [Message::new("user", " Hi "), Message::new("assistant", "Yo\n")];
        let p = chat_pieces(&m, false).unwrap();
        assert_eq!(
            p,
            vec![
                Piece { text: "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n".into(), trained: false },
                Piece { text: "Yo<end_of_turn>".into(), trained: true },
                Piece { text: "\n".into(), trained: false },
            ]
        );
    }

    #[test]
    fn rejects_what_the_template_rejects() {
        assert_eq!(chat_pieces(&[], false), Err(ChatError::Empty));
        let m = [Message::new("assistant", "first")];
        assert_eq!(chat_pieces(&m, false), Err(ChatError::Alternation { index: 0, role: "assistant".into() }));
        let m = [Message::new("system", "s"), Message::new("user", "a"), Message::new("user", "b")];
        assert_eq!(chat_pieces(&m, false), Err(ChatError::Alternation { index: 2, role: "user".into() }));
        let m = [Message::new("user", "a"), Message::new("tool", "b")];
        assert_eq!(chat_pieces(&m, false), Err(ChatError::Role { index: 1, role: "tool".into() }));
    }
}
