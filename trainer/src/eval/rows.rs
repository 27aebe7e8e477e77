//! The rows `lapidary eval` (and the trainer's eval, for `exact_match` and `choice`) reads, one JSON object a
//! line (blank lines skipped); every error names the file and line.
//!
//! - `--metric loss`: `text` (tokenized, BOS added) or `input_ids`, with optional `labels` (aligned with
//!   `input_ids` as in transformers; -100 where no loss is taken).
//! - `--metric exact_match`: `prompt` (a string) or `messages` (a chat ending on a user turn), and `answer`
//!   (a string, or a list of acceptable strings).
//! - `--metric choice`: `prompt`, `choices` (a non-empty list of non-empty strings) and `answer` (the index of
//!   the right choice).
use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context, Result};
use lapidary_data::{parse_row, Location, Message, Row, RowFormat, Sample, IGNORE_INDEX};
use serde_json::{Map, Value};

/// Every non-blank line of a JSONL file as (1-based line number, object).
pub fn read_objects(path: &Path) -> Result<Vec<(usize, Map<String, Value>)>> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let at = || format!("{}:{}", path.display(), i + 1);
        let line = line.with_context(|| format!("{}: cannot read", at()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).with_context(|| format!("{}: not valid JSON", at()))?;
        let Value::Object(obj) = v else { bail!("{}: expected a JSON object", at()) };
        rows.push((i + 1, obj));
    }
    if rows.is_empty() {
        bail!("{}: no rows", path.display());
    }
    Ok(rows)
}

/// A `--metric loss` row: its tokens and, when the row gives them, its labels (transformers' convention:
/// `labels[t]` is the target of the prediction made at `t - 1`; -100 takes no loss there).
#[derive(Debug, Clone, PartialEq)]
pub struct LossRow {
    pub ids: Vec<u32>,
    pub labels: Option<Vec<i64>>,
}

/// The rows of `--metric loss`; ids and labels are checked against `vocab` (a token the model has no row for
/// is an error naming the line, not a panic in the embedding lookup).
pub fn read_rows(path: &Path, tok: &tokenizers::Tokenizer, vocab: usize) -> Result<Vec<LossRow>> {
    let mut rows = Vec::new();
    for (line, v) in read_objects(path)? {
        let at = || format!("{}:{line}", path.display());
        let ids = if let Some(t) = v.get("text").and_then(|t| t.as_str()) {
            crate::common::encode(tok, t)?
        } else if let Some(ids) = v.get("input_ids").and_then(|t| t.as_array()) {
            ids.iter()
                .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
                .collect::<Option<Vec<u32>>>()
                .with_context(|| format!("{}: `input_ids` must be a list of non-negative integers", at()))?
        } else {
            bail!("{}: the row has neither `text` (a string) nor `input_ids`", at());
        };
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            bail!("{}: token id {bad} is outside the model's vocabulary of {vocab}", at());
        }
        let labels = match v.get("labels") {
            None | Some(Value::Null) => None,
            Some(Value::Array(l)) => {
                let l = l
                    .iter()
                    .map(|x| x.as_i64().filter(|&x| x == IGNORE_INDEX || (0..vocab as i64).contains(&x)))
                    .collect::<Option<Vec<i64>>>()
                    .with_context(|| {
                        format!("{}: `labels` must be token ids of the vocabulary ({vocab}) or -100", at())
                    })?;
                if l.len() != ids.len() {
                    bail!("{}: {} labels for {} tokens (labels are aligned with the tokens)", at(), l.len(), ids.len());
                }
                Some(l)
            }
            Some(other) => bail!("{}: `labels` must be a list of integers, not {}", at(), kind(other)),
        };
        rows.push(LossRow { ids, labels });
    }
    Ok(rows)
}

/// What an `exact_match` row asks the model.
#[derive(Debug, Clone)]
pub enum Prompt {
    Text(String),
    Chat(Vec<Message>),
}

#[derive(Debug, Clone)]
pub struct ExactRow {
    pub line: usize,
    pub prompt: Prompt,
    /// Acceptable answers (any one counts).
    pub answers: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ChoiceRow {
    pub line: usize,
    pub prompt: String,
    pub choices: Vec<String>,
    pub answer: usize,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn prompt_string(path: &Path, line: usize, v: &Map<String, Value>, what: &str) -> Result<String> {
    match v.get("prompt") {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => bail!("{}:{line}: missing `prompt` ({what})", path.display()),
        Some(other) => bail!("{}:{line}: `prompt` must be a string, found {}", path.display(), kind(other)),
    }
}

pub fn read_exact_rows(path: &Path) -> Result<Vec<ExactRow>> {
    let mut out = Vec::new();
    for (line, v) in read_objects(path)? {
        let at = format!("{}:{line}", path.display());
        let prompt = if v.contains_key("messages") {
            let row = Row { fields: v.clone(), loc: Location::line(path, line as u64) };
            match parse_row(&row, RowFormat::Messages).with_context(|| format!("{at}: bad `messages`"))? {
                Sample::Messages(m) => Prompt::Chat(m),
                _ => bail!("{at}: bad `messages`"),
            }
        } else {
            Prompt::Text(prompt_string(path, line, &v, "exact_match rows need `prompt` or `messages`")?)
        };
        let answers = match v.get("answer") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .with_context(|| format!("{at}: `answer` must be a string or a list of strings"))?,
            None | Some(Value::Null) => bail!("{at}: missing `answer` (the expected text)"),
            Some(other) => {
                bail!("{at}: `answer` must be a string or a non-empty list of strings, found {}", kind(other))
            }
        };
        out.push(ExactRow { line, prompt, answers });
    }
    Ok(out)
}

pub fn read_choice_rows(path: &Path) -> Result<Vec<ChoiceRow>> {
    let mut out = Vec::new();
    for (line, v) in read_objects(path)? {
        let at = format!("{}:{line}", path.display());
        let prompt = prompt_string(path, line, &v, "choice rows need `prompt`, `choices`, `answer`")?;
        if prompt.is_empty() {
            bail!("{at}: `prompt` is empty (the choices need a context to be scored against)");
        }
        let choices: Vec<String> = match v.get("choices") {
            Some(Value::Array(a)) if !a.is_empty() => {
                let mut cs = Vec::with_capacity(a.len());
                for (j, c) in a.iter().enumerate() {
                    match c {
                        Value::String(s) if !s.is_empty() => cs.push(s.clone()),
                        Value::String(_) => bail!("{at}: choice {j} is empty"),
                        other => bail!("{at}: choice {j} must be a string, found {}", kind(other)),
                    }
                }
                cs
            }
            Some(Value::Array(_)) => bail!("{at}: `choices` is empty"),
            None | Some(Value::Null) => bail!("{at}: missing `choices` (a list of strings)"),
            Some(other) => bail!("{at}: `choices` must be a list of strings, found {}", kind(other)),
        };
        let answer = match v.get("answer") {
            Some(Value::Number(n)) => match n.as_u64() {
                Some(a) if (a as usize) < choices.len() => a as usize,
                Some(a) => bail!(
                    "{at}: `answer` is {a} but there are {} choices (valid indices 0..={})",
                    choices.len(),
                    choices.len() - 1
                ),
                None => bail!("{at}: `answer` must be a non-negative integer index into `choices`, found {n}"),
            },
            None | Some(Value::Null) => bail!("{at}: missing `answer` (the index of the right choice)"),
            Some(other) => bail!(
                "{at}: `answer` must be an integer index into `choices`, found {} {}",
                kind(other),
                serde_json::to_string(other).unwrap_or_default()
            ),
        };
        out.push(ChoiceRow { line, prompt, choices, answer });
    }
    Ok(out)
}
