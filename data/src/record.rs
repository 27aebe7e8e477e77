//! Rows as every reader yields them: a JSON [`Record`] with its [`Location`], and the [`RowSource`] stream.
//!
//! Kept below the readers and [`crate::format`] so they all share these types without importing
//! [`crate::source`], which dispatches to the readers (dependencies point one way: source → readers → here).

use crate::error::{Location, Result};

/// One record: field name to JSON value. Arrow nulls are left out, so "null" and "absent" read the same.
pub type Record = serde_json::Map<String, serde_json::Value>;

/// A record and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub fields: Record,
    pub loc: Location,
}

/// A stream of rows. An `Err` for a row error (see [`DataError::is_row_error`](crate::error::DataError::is_row_error))
/// may be followed by more rows; after any other error the source is finished.
pub trait RowSource: Iterator<Item = Result<Row>> + Send {}
impl<T: Iterator<Item = Result<Row>> + Send> RowSource for T {}

/// The kind of a JSON value, for error messages ("expected an object, found a string").
pub(crate) fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
