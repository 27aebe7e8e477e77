//! ShareGPT rows, `{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]}`, read
//! as the chat messages a `messages` row holds: each turn's `from` is mapped to `system`, `user` or `assistant`
//! by [`Roles`] (`data.roles`), its `value` becomes the content. [`crate::format`] builds the messages, so a
//! ShareGPT row renders, tokenizes and is masked exactly as the equivalent `messages` row.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{DataError, Location, Result};
use crate::record::json_kind;

/// Which `from` names mean which chat role (`data.roles`). A role left out of the recipe keeps its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Roles {
    pub system: Vec<String>,
    pub user: Vec<String>,
    pub assistant: Vec<String>,
}

impl Default for Roles {
    /// ShareGPT's own names (`system`, `human`, `gpt`) and the chat roles' (`user`, `assistant`; `model`, Gemma's).
    fn default() -> Self {
        let v = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
        Self { system: v(&["system"]), user: v(&["human", "user"]), assistant: v(&["gpt", "assistant", "model"]) }
    }
}

impl Roles {
    fn table(&self) -> [(&'static str, &[String]); 3] {
        [("system", &self.system), ("user", &self.user), ("assistant", &self.assistant)]
    }

    /// A name listed under two roles, or an empty name, as `(key, message)`.
    pub fn check(&self) -> std::result::Result<(), String> {
        let table = self.table();
        for (i, (role, names)) in table.iter().enumerate() {
            for name in names.iter() {
                if name.is_empty() {
                    return Err(format!("data.roles.{role} lists an empty name"));
                }
                if let Some((other, _)) = table[i + 1..].iter().find(|(_, n)| n.contains(name)) {
                    return Err(format!("data.roles: `{name}` is listed under both {role} and {other}"));
                }
            }
        }
        Ok(())
    }

    /// The chat role of a turn's `from`.
    pub fn role_of(&self, from: &str) -> Option<&'static str> {
        self.table().into_iter().find(|(_, names)| names.iter().any(|n| n == from)).map(|(role, _)| role)
    }

    fn describe(&self) -> String {
        self.table().iter().map(|(role, names)| format!("{role} = {names:?}")).collect::<Vec<_>>().join(", ")
    }
}

/// The `(role, content)` turns of a `conversations` value, for the messages format.
pub(crate) fn turns(list: &Value, roles: &Roles, loc: &Location) -> Result<Vec<(&'static str, String)>> {
    let key = "conversations";
    let Value::Array(items) = list else {
        return Err(DataError::field(loc, key, format!("expected a list of turns, found {}", json_kind(list))));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, turn)| {
            let bad = |msg: String| DataError::field(loc, key, format!("turn {i}: {msg}"));
            let Value::Object(obj) = turn else {
                return Err(bad(format!("expected an object with `from` and `value`, found {}", json_kind(turn))));
            };
            let text = |k: &str| match obj.get(k) {
                Some(Value::String(s)) => Ok(s.clone()),
                None | Some(Value::Null) => Err(bad(format!("missing `{k}`"))),
                Some(other) => Err(bad(format!("`{k}` should be a string, found {}", json_kind(other)))),
            };
            let from = text("from")?;
            let role = roles.role_of(&from).ok_or_else(|| {
                bad(format!("unknown role `{from}` (data.roles has {}); add it to data.roles", roles.describe()))
            })?;
            Ok((role, text("value")?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_map_and_reject() {
        let r = Roles::default();
        assert_eq!(r.role_of("human"), Some("user"));
        assert_eq!(r.role_of("gpt"), Some("assistant"));
        assert_eq!(r.role_of("bot"), None);
        let twice = Roles { user: vec!["gpt".into()], ..Roles::default() };
        assert!(twice.check().unwrap_err().contains("`gpt` is listed under both user and assistant"));
        let loc = Location::line("c.jsonl".as_ref(), 3);
        let conv = serde_json::json!([{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]);
        let e = turns(&conv, &r, &loc).unwrap_err().to_string();
        assert!(e.starts_with("c.jsonl:3: field `conversations`: turn 1: unknown role `bot`"), "{e}");
        assert!(e.contains("data.roles"), "{e}");
    }
}
