//! Arrow record batches to JSON records, shared by the Parquet and Arrow IPC readers.
//!
//! Only the columns a row format can use ([`crate::format::KNOWN_FIELDS`]) are converted; others are never
//! touched (for Parquet they are not even read). Supported types, nested freely: strings (`Utf8`,
//! `LargeUtf8`, `Utf8View`, dictionary-encoded strings), integers, floats, booleans, nulls, lists
//! (`List`, `LargeList`, `FixedSizeList`) and structs, which is what `messages` (list of struct) and
//! `input_ids` (list of int) need. Nulls are left out of the record, like an absent JSON key.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Schema};
use serde_json::{Map, Number, Value};

use crate::error::{DataError, Location, Result};
use crate::record::{Record, Row};

/// Indices (into `schema`) of the known columns present, checked for supported types.
pub(crate) fn select_columns(path: &Path, schema: &Schema, known: &[&str]) -> Result<Vec<usize>> {
    let mut picked = Vec::new();
    for (i, field) in schema.fields().iter().enumerate() {
        if !known.contains(&field.name().as_str()) {
            continue;
        }
        if !supported(field.data_type()) {
            return Err(DataError::dataset(
                path,
                format!("column `{}` has unsupported arrow type {}", field.name(), field.data_type()),
            ));
        }
        picked.push(i);
    }
    if picked.is_empty() {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Err(DataError::dataset(
            path,
            format!("no usable column (want some of {}); columns are [{}]", known.join(", "), names.join(", ")),
        ));
    }
    Ok(picked)
}

fn supported(ty: &DataType) -> bool {
    use DataType::*;
    match ty {
        Null | Boolean | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 | Float32 | Float64 => true,
        Utf8 | LargeUtf8 | Utf8View => true,
        Dictionary(_, value) => matches!(value.as_ref(), Utf8 | LargeUtf8 | Utf8View),
        List(f) | LargeList(f) | FixedSizeList(f, _) => supported(f.data_type()),
        Struct(fields) => fields.iter().all(|f| supported(f.data_type())),
        _ => false,
    }
}

/// Converts every row of `batch` (its columns already limited to the known ones) into a record.
/// `first_row` is the file-level index of the batch's first row, for locations.
pub(crate) fn batch_to_rows(path: &Path, batch: &RecordBatch, first_row: u64) -> Result<Vec<Row>> {
    let n = batch.num_rows();
    let mut records: Vec<Record> = (0..n).map(|_| Map::new()).collect();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let column = decode_dictionary(path, column)?;
        for (i, record) in records.iter_mut().enumerate() {
            let v = value_at(column.as_ref(), i);
            if !v.is_null() {
                record.insert(field.name().clone(), v);
            }
        }
    }
    Ok(records
        .into_iter()
        .enumerate()
        .map(|(i, fields)| Row { fields, loc: Location::row(path, first_row + i as u64) })
        .collect())
}

fn decode_dictionary(path: &Path, column: &ArrayRef) -> Result<ArrayRef> {
    match column.data_type() {
        DataType::Dictionary(_, value) => {
            arrow::compute::cast(column, value).map_err(|source| DataError::Arrow { path: path.to_path_buf(), source })
        }
        _ => Ok(Arc::clone(column)),
    }
}

fn value_at(array: &dyn Array, i: usize) -> Value {
    use arrow::datatypes::*;
    if array.is_null(i) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(array.as_boolean().value(i)),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(i).into(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(i).into(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(i).into(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(i).into(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(i).into(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(i).into(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(i).into(),
        DataType::Float32 => float(array.as_primitive::<Float32Type>().value(i) as f64),
        DataType::Float64 => float(array.as_primitive::<Float64Type>().value(i)),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Value::String(array.as_string_view().value(i).to_string()),
        DataType::Dictionary(..) => match arrow::compute::cast(&array.slice(i, 1), &DataType::Utf8) {
            Ok(a) => value_at(a.as_ref(), 0),
            Err(_) => Value::Null,
        },
        DataType::List(_) => list(array.as_list::<i32>().value(i)),
        DataType::LargeList(_) => list(array.as_list::<i64>().value(i)),
        DataType::FixedSizeList(..) => list(array.as_fixed_size_list().value(i)),
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let mut obj = Map::new();
            for (f, child) in fields.iter().zip(s.columns()) {
                obj.insert(f.name().clone(), value_at(child.as_ref(), i));
            }
            Value::Object(obj)
        }
        // `select_columns` rejected everything else up front.
        _ => Value::Null,
    }
}

fn list(values: ArrayRef) -> Value {
    Value::Array((0..values.len()).map(|j| value_at(values.as_ref(), j)).collect())
}

fn float(x: f64) -> Value {
    Number::from_f64(x).map(Value::Number).unwrap_or(Value::Null)
}
