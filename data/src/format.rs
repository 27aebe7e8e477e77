//! Row formats: which fields a row has and what they mean.
//!
//! | format              | fields                                              | trained when `completion_only`      |
//! |---------------------|-----------------------------------------------------|-------------------------------------|
//! | `text`              | `text`                                              | everything                          |
//! | `prompt_completion` | `prompt`, `completion`                              | `completion` + eos                  |
//! | `messages`          | `messages`: list of `{role, content}`               | model turns' content + `<end_of_turn>` |
//! | `sharegpt`          | `conversations`: list of `{from, value}`            | as `messages` (see [`crate::sharegpt`]) |
//! | `alpaca`            | `instruction`, optional `input`, `output`           | `output` + eos                      |
//! | `tokens`            | `input_ids`, optional `labels` (default `input_ids`) | as given                           |
//!
//! `auto` decides per row, in this order: `input_ids`/`labels` → tokens, `messages` → messages,
//! `conversations` → sharegpt, `prompt`/`completion` → prompt_completion, `instruction`/`output` → alpaca, `text` → text. Because one
//! field of a pair is enough to pick the format, a row with `prompt` but no `completion` is reported as
//! missing `completion`, not as an unknown format. A null field counts as absent.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{DataError, Location, Result};
use crate::record::{json_kind, Row};
use crate::sharegpt::{turns, Roles};

/// The fields any format reads; columnar readers decode only these columns.
pub const KNOWN_FIELDS: &[&str] = &[
    "text",
    "prompt",
    "completion",
    "messages",
    "conversations",
    "instruction",
    "input",
    "output",
    "input_ids",
    "labels",
];

/// The label value the loss ignores (PyTorch's `ignore_index`, Hugging Face's convention).
pub const IGNORE_INDEX: i64 = -100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowFormat {
    #[default]
    Auto,
    Text,
    PromptCompletion,
    Messages,
    Sharegpt,
    Alpaca,
    Tokens,
}

impl RowFormat {
    pub fn name(self) -> &'static str {
        match self {
            RowFormat::Auto => "auto",
            RowFormat::Text => "text",
            RowFormat::PromptCompletion => "prompt_completion",
            RowFormat::Messages => "messages",
            RowFormat::Sharegpt => "sharegpt",
            RowFormat::Alpaca => "alpaca",
            RowFormat::Tokens => "tokens",
        }
    }
}

impl fmt::Display for RowFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for RowFormat {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => RowFormat::Auto,
            "text" => RowFormat::Text,
            "prompt_completion" => RowFormat::PromptCompletion,
            "messages" => RowFormat::Messages,
            "sharegpt" => RowFormat::Sharegpt,
            "alpaca" => RowFormat::Alpaca,
            "tokens" => RowFormat::Tokens,
            _ => {
                return Err(DataError::Config(format!(
                    "unknown row format `{s}` (expected auto, text, prompt_completion, messages, sharegpt, alpaca or tokens)"
                )))
            }
        })
    }
}

/// A chat message as the Gemma template sees it. Build one from JSON with [`parse_row`] (a `messages` field),
/// which accepts both content layouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: Content,
}

/// Message content: a string, or a list of text parts (`[{"type": "text", "text": ...}]`, the multimodal
/// message layout; image parts are rejected, this is a text-only trainer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Text(String),
    Parts(Vec<String>),
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self { role: role.to_string(), content: Content::Text(content.to_string()) }
    }
}

/// A parsed row, before tokenization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sample {
    Text(String),
    PromptCompletion { prompt: String, completion: String },
    Messages(Vec<Message>),
    Alpaca { instruction: String, input: Option<String>, output: String },
    Tokens { input_ids: Vec<u32>, labels: Option<Vec<i64>> },
}

/// Reads `row` as `format` (or detects it, for `Auto`); ShareGPT roles as [`Roles::default`].
pub fn parse_row(row: &Row, format: RowFormat) -> Result<Sample> {
    parse_row_with(row, format, &Roles::default())
}

/// As [`parse_row`], with ShareGPT's `from` names mapped by `roles`.
pub fn parse_row_with(row: &Row, format: RowFormat, roles: &Roles) -> Result<Sample> {
    let f = Fields { row };
    let format = match format {
        RowFormat::Auto => detect(&f)?,
        other => other,
    };
    let name = format.name();
    Ok(match format {
        RowFormat::Auto => unreachable!("detect never returns auto"),
        RowFormat::Text => Sample::Text(f.string("text", name)?),
        RowFormat::PromptCompletion => {
            Sample::PromptCompletion { prompt: f.string("prompt", name)?, completion: f.string("completion", name)? }
        }
        RowFormat::Alpaca => Sample::Alpaca {
            instruction: f.string("instruction", name)?,
            input: f.optional_string("input")?,
            output: f.string("output", name)?,
        },
        RowFormat::Messages => Sample::Messages(f.messages(name)?),
        RowFormat::Sharegpt => Sample::Messages(
            turns(f.require("conversations", name)?, roles, f.loc())?
                .into_iter()
                .map(|(role, content)| Message { role: role.to_string(), content: Content::Text(content) })
                .collect(),
        ),
        RowFormat::Tokens => {
            let input_ids = f.ids("input_ids", name)?;
            let labels = f.labels("labels")?;
            if let Some(labels) = &labels {
                if labels.len() != input_ids.len() {
                    return Err(DataError::field(
                        &row.loc,
                        "labels",
                        format!("has {} entries but `input_ids` has {}", labels.len(), input_ids.len()),
                    ));
                }
            }
            Sample::Tokens { input_ids, labels }
        }
    })
}

fn detect(f: &Fields<'_>) -> Result<RowFormat> {
    let has = |k: &str| f.get(k).is_some();
    Ok(if has("input_ids") || has("labels") {
        RowFormat::Tokens
    } else if has("messages") {
        RowFormat::Messages
    } else if has("conversations") {
        RowFormat::Sharegpt
    } else if has("prompt") || has("completion") {
        RowFormat::PromptCompletion
    } else if has("instruction") || has("output") {
        RowFormat::Alpaca
    } else if has("text") {
        RowFormat::Text
    } else {
        let mut names: Vec<&str> = f.row.fields.iter().filter(|(_, v)| !v.is_null()).map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        return Err(DataError::UnknownRowFormat { loc: f.row.loc.clone(), fields: names.join(", ") });
    })
}

struct Fields<'a> {
    row: &'a Row,
}

impl Fields<'_> {
    fn loc(&self) -> &Location {
        &self.row.loc
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.row.fields.get(key).filter(|v| !v.is_null())
    }

    fn require(&self, key: &str, format: &'static str) -> Result<&Value> {
        self.get(key).ok_or_else(|| DataError::MissingField { loc: self.loc().clone(), field: key.to_string(), format })
    }

    fn string(&self, key: &str, format: &'static str) -> Result<String> {
        match self.require(key, format)? {
            Value::String(s) => Ok(s.clone()),
            other => Err(DataError::field(self.loc(), key, format!("expected a string, found {}", json_kind(other)))),
        }
    }

    fn optional_string(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => {
                Err(DataError::field(self.loc(), key, format!("expected a string, found {}", json_kind(other))))
            }
        }
    }

    fn array(&self, key: &str, v: &'_ Value) -> Result<Vec<Value>> {
        match v {
            Value::Array(a) => Ok(a.clone()),
            other => Err(DataError::field(self.loc(), key, format!("expected a list, found {}", json_kind(other)))),
        }
    }

    fn ids(&self, key: &str, format: &'static str) -> Result<Vec<u32>> {
        let v = self.require(key, format)?;
        let Value::Array(items) = v else {
            return Err(DataError::field(
                self.loc(),
                key,
                format!("expected a list of token ids, found {}", json_kind(v)),
            ));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_u64().and_then(|x| u32::try_from(x).ok()).ok_or_else(|| {
                    DataError::field(self.loc(), key, format!("entry {i} is {x}, not a token id (0..2^32)"))
                })
            })
            .collect()
    }

    fn labels(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let Value::Array(items) = v else {
            return Err(DataError::field(
                self.loc(),
                key,
                format!("expected a list of labels, found {}", json_kind(v)),
            ));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, x)| match x.as_i64() {
                Some(l) if l == IGNORE_INDEX || (0..=u32::MAX as i64).contains(&l) => Ok(l),
                _ => Err(DataError::field(
                    self.loc(),
                    key,
                    format!("entry {i} is {x}, expected a token id or {IGNORE_INDEX}"),
                )),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn messages(&self, format: &'static str) -> Result<Vec<Message>> {
        let key = "messages";
        let list = self.array(key, self.require(key, format)?)?;
        let mut out = Vec::with_capacity(list.len());
        for (i, m) in list.iter().enumerate() {
            let bad = |msg: String| DataError::field(self.loc(), key, format!("message {i}: {msg}"));
            let Value::Object(obj) = m else {
                return Err(bad(format!("expected an object, found {}", json_kind(m))));
            };
            let role = match obj.get("role") {
                Some(Value::String(r)) => r.clone(),
                None | Some(Value::Null) => return Err(bad("missing `role`".into())),
                Some(other) => return Err(bad(format!("`role` should be a string, found {}", json_kind(other)))),
            };
            let content = match obj.get("content") {
                Some(Value::String(c)) => Content::Text(c.clone()),
                Some(Value::Array(parts)) => Content::Parts(text_parts(parts).map_err(bad)?),
                None | Some(Value::Null) => return Err(bad("missing `content`".into())),
                Some(other) => {
                    return Err(bad(format!(
                        "`content` should be a string or a list of parts, found {}",
                        json_kind(other)
                    )))
                }
            };
            out.push(Message { role, content });
        }
        Ok(out)
    }
}

fn text_parts(parts: &[Value]) -> std::result::Result<Vec<String>, String> {
    parts
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let ty = p.get("type").and_then(Value::as_str);
            match (ty, p.get("text").and_then(Value::as_str)) {
                (Some("text"), Some(t)) => Ok(t.to_string()),
                (Some("text"), None) => Err(format!("content part {j} has no `text` string")),
                (Some(other), _) => Err(format!("content part {j} has type `{other}`; only text parts are supported")),
                (None, _) => Err(format!("content part {j} has no `type`")),
            }
        })
        .collect()
}
