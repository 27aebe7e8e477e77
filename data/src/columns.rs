//! `data.columns`: a dataset's own column names for the fields the row formats read, e.g.
//! `{instruction = "question", output = "answer"}` reads an alpaca row's `instruction` from the `question` column.
//! Applied to every row before its format is detected or parsed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::format::KNOWN_FIELDS;
use crate::record::Row;

/// Format field → dataset column.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Columns(pub BTreeMap<String, String>);

impl Columns {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every key must be a field some format reads; returns `(key, message)` for the first that is not.
    pub fn check(&self) -> Result<(), (String, String)> {
        for (field, column) in &self.0 {
            if !KNOWN_FIELDS.contains(&field.as_str()) {
                return Err((
                    field.clone(),
                    format!(
                        "`{field}` is not a field any row format reads (expected some of {})",
                        KNOWN_FIELDS.join(", ")
                    ),
                ));
            }
            if column.is_empty() {
                return Err((field.clone(), "the column name is empty".into()));
            }
        }
        Ok(())
    }

    /// The dataset columns to decode (columnar readers read only the columns they are told).
    pub fn sources(&self) -> Vec<String> {
        self.0.values().cloned().collect()
    }

    /// Moves each mapped column's value to its field name.
    pub fn apply(&self, row: &mut Row) {
        if self.0.is_empty() {
            return;
        }
        let moved: Vec<(String, serde_json::Value)> = self
            .0
            .iter()
            .filter_map(|(field, column)| row.fields.get(column).map(|v| (field.clone(), v.clone())))
            .collect();
        // The mapped columns go, and so does any column already named like a mapped field: the data
        // says that field is elsewhere.
        for (field, column) in &self.0 {
            row.fields.remove(column);
            row.fields.remove(field);
        }
        row.fields.extend(moved);
    }

    /// A missing-field error for a mapped field names the dataset's column instead, saying where it comes from;
    /// so does a row whose format cannot be told because a mapped column is missing from it (`row`, renamed).
    pub fn explain(&self, err: DataError, row: &Row) -> DataError {
        match err {
            DataError::UnknownRowFormat { loc, fields } => {
                match self.0.iter().find(|(field, _)| row.fields.get(*field).is_none_or(|v| v.is_null())) {
                    Some((field, column)) => DataError::Field {
                        loc,
                        field: column.clone(),
                        message: format!("missing (data.columns.{field} reads it as `{field}`)"),
                    },
                    None => DataError::UnknownRowFormat { loc, fields },
                }
            }
            DataError::MissingField { loc, field, format } if self.0.contains_key(&field) => {
                let column = self.0[&field].clone();
                DataError::Field {
                    loc,
                    field: column,
                    message: format!("missing (data.columns.{field} reads it as `{field}`, which {format} rows need)"),
                }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Location;
    use crate::format::{parse_row, RowFormat, Sample};

    #[test]
    fn renames_and_explains() {
        let c = Columns([("instruction", "question"), ("output", "answer")].map(|(a, b)| (a.into(), b.into())).into());
        assert!(c.check().is_ok());
        let fields = serde_json::json!({"question": "q", "answer": "a", "id": 7});
        let mut row = Row { fields: fields.as_object().unwrap().clone(), loc: Location::line("d.jsonl".as_ref(), 2) };
        c.apply(&mut row);
        let want = Sample::Alpaca { instruction: "q".into(), input: None, output: "a".into() };
        assert_eq!(parse_row(&row, RowFormat::Auto).unwrap(), want);
        assert_eq!(row.fields["id"], 7);

        let mut row = Row { fields: serde_json::json!({"question": "q"}).as_object().unwrap().clone(), ..row };
        c.apply(&mut row);
        let e = c.explain(parse_row(&row, RowFormat::Alpaca).unwrap_err(), &row).to_string();
        assert_eq!(
            e,
            "d.jsonl:2: field `answer`: missing (data.columns.output reads it as `output`, which alpaca rows need)"
        );
        let bad = Columns([("instrution".to_string(), "q".to_string())].into());
        assert_eq!(bad.check().unwrap_err().0, "instrution");
    }
}
