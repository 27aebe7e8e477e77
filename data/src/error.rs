//! Typed errors. Every message is lowercase and names the file, the line or row, and the field when there is
//! one, so a user can go straight to the offending record.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where a row came from: a file plus a 1-based line (JSONL) or a 0-based row index (Parquet, Arrow;
/// the index pandas and `datasets` would show for that file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub file: PathBuf,
    pub unit: Unit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unit {
    /// 1-based line number of a text file.
    Line(u64),
    /// 0-based row index within a columnar file.
    Row(u64),
}

impl Location {
    pub fn line(file: &Path, line: u64) -> Self {
        Self { file: file.to_path_buf(), unit: Unit::Line(line) }
    }
    pub fn row(file: &Path, row: u64) -> Self {
        Self { file: file.to_path_buf(), unit: Unit::Row(row) }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.unit {
            Unit::Line(n) => write!(f, "{}:{n}", self.file.display()),
            Unit::Row(n) => write!(f, "{} row {n}", self.file.display()),
        }
    }
}

/// A conversation a chat template cannot render: the hand-written Gemma one (the first four; Gemma's own template
/// raises on most of these) or a checkpoint's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    #[error("conversation has no messages")]
    Empty,
    #[error("message {index}: roles must alternate user/assistant starting with user (after an optional system message), found `{role}`")]
    Alternation { index: usize, role: String },
    #[error("message {index}: unsupported role `{role}` (gemma knows system, user, assistant, model)")]
    Role { index: usize, role: String },
    #[error("message {index}: {message}")]
    Content { index: usize, message: String },
    /// The checkpoint's chat template raised (`raise_exception`) or failed; `index` is the first message whose
    /// conversation prefix fails to render, when there is one.
    #[error("{}chat template: {message}", at_message(*index, role.as_deref()))]
    Template { index: Option<usize>, role: Option<String>, message: String },
    /// The chat template renders the conversation, but which text is the model turn's cannot be told.
    #[error("message {index} (`{role}`): cannot find this model turn in the chat template's rendering: {message}")]
    TemplateMask { index: usize, role: String, message: String },
}

fn at_message(index: Option<usize>, role: Option<&str>) -> String {
    match (index, role) {
        (Some(i), Some(r)) => format!("message {i} (`{r}`): "),
        (Some(i), None) => format!("message {i}: "),
        _ => String::new(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: no such file or directory", path.display())]
    NotFound { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: unknown dataset format (expected .jsonl, .parquet, .arrow, a directory of such shards, or a `datasets` save_to_disk directory)", path.display())]
    UnknownFormat { path: PathBuf },
    /// A problem with a whole file or directory (layout, schema, metadata).
    #[error("{}: {message}", path.display())]
    Dataset { path: PathBuf, message: String },
    #[error("{}: parquet: {source}", path.display())]
    Parquet { path: PathBuf, source: parquet::errors::ParquetError },
    #[error("{}: arrow: {source}", path.display())]
    Arrow { path: PathBuf, source: arrow::error::ArrowError },

    #[error("{loc}: invalid json: {message}")]
    Json { loc: Location, message: String },
    #[error("{loc}: missing field `{field}` ({format} row)")]
    MissingField { loc: Location, field: String, format: &'static str },
    #[error("{loc}: field `{field}`: {message}")]
    Field { loc: Location, field: String, message: String },
    #[error("{loc}: cannot tell the row format from fields [{fields}]; expected `text`, `prompt`+`completion`, `messages`, `conversations`, `instruction`+`output` or `input_ids`")]
    UnknownRowFormat { loc: Location, fields: String },
    #[error("{loc}: field `messages`: {source}")]
    Chat { loc: Location, source: ChatError },
    #[error("{loc}: tokenizer: {message}")]
    Encode { loc: Location, message: String },

    /// A chat template that cannot be read or compiled; `origin` is its file (and key).
    #[error("{origin}: chat template: {message}")]
    Template { origin: String, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("invalid data config: {0}")]
    Config(String),
    #[error("cannot resume from this data position: {0}")]
    Position(String),
}

impl DataError {
    /// True for errors confined to one row; `skip_bad_rows` skips (and counts) exactly these.
    pub fn is_row_error(&self) -> bool {
        matches!(
            self,
            DataError::Json { .. }
                | DataError::MissingField { .. }
                | DataError::Field { .. }
                | DataError::UnknownRowFormat { .. }
                | DataError::Chat { .. }
                | DataError::Encode { .. }
        )
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::NotFound { path: path.to_path_buf() }
        } else {
            DataError::Io { path: path.to_path_buf(), source }
        }
    }

    pub(crate) fn dataset(path: &Path, message: impl Into<String>) -> Self {
        DataError::Dataset { path: path.to_path_buf(), message: message.into() }
    }

    pub(crate) fn field(loc: &Location, field: &str, message: impl Into<String>) -> Self {
        DataError::Field { loc: loc.clone(), field: field.to_string(), message: message.into() }
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
