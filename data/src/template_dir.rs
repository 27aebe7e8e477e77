//! Where a checkpoint directory keeps its chat template, found as transformers' `AutoTokenizer.from_pretrained`
//! finds it: a `chat_template.jinja` file wins; otherwise `tokenizer_config.json`'s `chat_template`, a string or a
//! list of `{"name", "template"}` of which the one named `default` is used. The special-token strings the
//! template sees are `tokenizer_config.json`'s named tokens (`bos_token`, ...: a string or `{"content": ...}`),
//! with `special_tokens_map.json` filling in missing ones.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::error::{DataError, Result};
use crate::template::ChatTemplate;

/// The named special tokens transformers passes to a template (`SPECIAL_TOKENS_ATTRIBUTES`).
const TOKEN_NAMES: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

impl ChatTemplate {
    /// The template of the model at `path`: a directory's (see the module docs), `None` when it ships none or
    /// `path` is a file (a GGUF's `tokenizer.chat_template` is read with the model; see [`ChatTemplate::new`]).
    pub fn for_model(path: &Path) -> Result<Option<Self>> {
        if path.is_dir() {
            Self::from_dir(path)
        } else {
            Ok(None)
        }
    }

    /// The template of a checkpoint directory, `None` when it has none.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json(&config_path)?;
        let tokens = special_tokens(config.as_ref(), read_json(&dir.join("special_tokens_map.json"))?.as_ref());

        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            let source = std::fs::read_to_string(&jinja).map_err(|e| DataError::io(&jinja, e))?;
            return Self::new(source, tokens, jinja.display().to_string()).map(Some);
        }
        let Some(entry) = config.as_ref().and_then(|c| c.get("chat_template")).filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let origin = format!("{}: key `chat_template`", config_path.display());
        let bad = |message: String| DataError::Template { origin: origin.clone(), message };
        let source = match entry {
            Value::String(s) => s.clone(),
            Value::Array(named) => {
                let mut names = Vec::new();
                let mut default = None;
                for (i, item) in named.iter().enumerate() {
                    let name = item.get("name").and_then(Value::as_str);
                    let template = item.get("template").and_then(Value::as_str);
                    let (Some(name), Some(template)) = (name, template) else {
                        return Err(bad(format!("entry {i} should be {{\"name\": string, \"template\": string}}")));
                    };
                    if name == "default" {
                        default = Some(template.to_string());
                    }
                    names.push(name.to_string());
                }
                default.ok_or_else(|| bad(format!("no template named `default` among [{}]", names.join(", "))))?
            }
            other => {
                return Err(bad(format!(
                    "expected a string or a list of {{name, template}}, found {}",
                    crate::record::json_kind(other)
                )))
            }
        };
        Self::new(source, tokens, origin).map(Some)
    }
}

/// `None` for a missing file; an error naming the file for an unreadable or malformed one.
fn read_json(path: &Path) -> Result<Option<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DataError::io(path, e)),
    };
    let value: Value =
        serde_json::from_str(&text).map_err(|e| DataError::dataset(path, format!("invalid json: {e}")))?;
    if !value.is_object() {
        return Err(DataError::dataset(
            path,
            format!("expected a json object, found {}", crate::record::json_kind(&value)),
        ));
    }
    Ok(Some(value))
}

fn special_tokens(config: Option<&Value>, map: Option<&Value>) -> BTreeMap<String, String> {
    let token = |source: Option<&Value>, name: &str| match source?.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    };
    TOKEN_NAMES
        .iter()
        .filter_map(|&name| Some((name.to_string(), token(config, name).or_else(|| token(map, name))?)))
        .collect()
}
