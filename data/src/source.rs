//! `open_dataset` and `resolve`: pick a reader from the path and chain the shards into one row source. The
//! row types the readers share live below them in [`crate::record`], so dependencies point one way.
//!
//! Every reader streams: JSONL line by line, Parquet and Arrow one record batch at a time, shards one file
//! at a time, so memory is bounded by one batch whatever the dataset size.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::format::KNOWN_FIELDS;
use crate::{reader_arrow, reader_jsonl, reader_parquet};

/// Re-exported so `source::{Record, Row, RowSource}` paths keep working; they are defined in [`crate::record`].
pub use crate::record::{Record, Row, RowSource};

/// The on-disk layouts `open_dataset` understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Jsonl,
    Parquet,
    /// Arrow IPC, file or stream format (told apart by the `ARROW1` magic).
    Arrow,
}

impl FileKind {
    fn of(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" | "json" => Some(FileKind::Jsonl),
            "parquet" | "pq" => Some(FileKind::Parquet),
            "arrow" | "arrows" | "ipc" | "feather" => Some(FileKind::Arrow),
            _ => None,
        }
    }
}

/// Resolves `path` into the ordered list of files to read and their kind.
///
/// - a file: by extension (`.jsonl`/`.ndjson`/`.json`, `.parquet`, `.arrow`/`.arrows`/`.ipc`/`.feather`);
/// - a `datasets.Dataset.save_to_disk` directory (`state.json` + `dataset_info.json`): the `data-*.arrow` files
///   listed in `state.json`, in that order;
/// - any other directory: its files of one kind, sorted by name (e.g. `train-00000-of-00002.parquet`, ...);
/// - `hf://datasets/ORG/NAME[@REVISION][/PATH]`: that file or folder of a Hub dataset, from the Hugging Face
///   cache ([`crate::hub`]).
pub fn resolve(path: &Path) -> Result<(FileKind, Vec<PathBuf>)> {
    if let Some(local) = crate::hub::resolve_hf(path, |p| FileKind::of(p).is_some())? {
        return resolve(&local);
    }
    let meta = fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if meta.is_file() {
        let kind = FileKind::of(path).ok_or_else(|| DataError::UnknownFormat { path: path.to_path_buf() })?;
        return Ok((kind, vec![path.to_path_buf()]));
    }
    if path.join("dataset_dict.json").is_file() {
        let splits = fs::read_dir(path)
            .map_err(|e| DataError::io(path, e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>();
        return Err(DataError::dataset(
            path,
            format!(
                "this is a `datasets` DatasetDict; point at one split directory instead (found {})",
                splits.join(", ")
            ),
        ));
    }
    if path.join("state.json").is_file() {
        return Ok((FileKind::Arrow, reader_arrow::save_to_disk_files(path)?));
    }
    let mut files: Vec<PathBuf> = fs::read_dir(path)
        .map_err(|e| DataError::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && FileKind::of(p).is_some())
        .collect();
    files.sort();
    let Some(first) = files.first() else {
        return Err(DataError::UnknownFormat { path: path.to_path_buf() });
    };
    let kind = FileKind::of(first).expect("filtered above");
    if let Some(other) = files.iter().find(|p| FileKind::of(p) != Some(kind)) {
        return Err(DataError::dataset(
            path,
            format!("mixes shard formats ({} and {})", first.display(), other.display()),
        ));
    }
    Ok((kind, files))
}

/// Opens a dataset file or directory as one stream of rows (see [`resolve`] for the layouts).
pub fn open_dataset(path: impl AsRef<Path>) -> Result<Box<dyn RowSource>> {
    open_dataset_with(path, &[])
}

/// As [`open_dataset`], with columnar readers also decoding the `extra` columns (the dataset's names that
/// `data.columns` maps to the formats' fields).
pub fn open_dataset_with(path: impl AsRef<Path>, extra: &[String]) -> Result<Box<dyn RowSource>> {
    let (kind, files) = resolve(path.as_ref())?;
    let mut fields: Vec<String> = KNOWN_FIELDS.iter().map(|s| s.to_string()).collect();
    fields.extend(extra.iter().cloned());
    Ok(Box::new(Shards { files: files.into_iter(), kind, fields, current: None, failed: false }))
}

/// Reads files one after another, opening each only when the previous one is exhausted.
struct Shards {
    files: std::vec::IntoIter<PathBuf>,
    kind: FileKind,
    /// The columns columnar readers decode.
    fields: Vec<String>,
    current: Option<Box<dyn RowSource>>,
    failed: bool,
}

impl Shards {
    fn open(&self, p: &Path) -> Result<Box<dyn RowSource>> {
        let known: Vec<&str> = self.fields.iter().map(String::as_str).collect();
        Ok(match self.kind {
            FileKind::Jsonl => Box::new(reader_jsonl::JsonlReader::open(p)?),
            FileKind::Parquet => Box::new(reader_parquet::ParquetReader::open(p, &known)?),
            FileKind::Arrow => Box::new(reader_arrow::ArrowReader::open(p, &known)?),
        })
    }
}

impl Iterator for Shards {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(cur) = &mut self.current {
                match cur.next() {
                    Some(Ok(row)) => return Some(Ok(row)),
                    Some(Err(e)) => {
                        self.failed = !e.is_row_error();
                        return Some(Err(e));
                    }
                    None => self.current = None,
                }
            }
            let file = self.files.next()?;
            match self.open(&file) {
                Ok(src) => self.current = Some(src),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
