//! The rows `lapidary eval` reads: JSONL with `text` (tokenized, BOS added) or `input_ids`.
use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context, Result};

pub fn read_rows(path: &Path, tok: &tokenizers::Tokenizer) -> Result<Vec<Vec<u32>>> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: cannot read", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{}:{}: not valid JSON", path.display(), i + 1))?;
        let ids = if let Some(t) = v.get("text").and_then(|t| t.as_str()) {
            crate::common::encode(tok, t)?
        } else if let Some(ids) = v.get("input_ids").and_then(|t| t.as_array()) {
            ids.iter().map(|x| x.as_u64().map(|x| x as u32)).collect::<Option<Vec<u32>>>().with_context(|| {
                format!("{}:{}: `input_ids` must be a list of non-negative integers", path.display(), i + 1)
            })?
        } else {
            bail!("{}:{}: the row has neither `text` (a string) nor `input_ids`", path.display(), i + 1);
        };
        rows.push(ids);
    }
    if rows.is_empty() {
        bail!("{}: no rows", path.display());
    }
    Ok(rows)
}
