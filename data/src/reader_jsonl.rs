//! JSON Lines: one JSON object per line, read line by line. Blank lines are not rows and are passed over;
//! a line that is not valid JSON, or not an object, is a row error naming the file and its 1-based line.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::error::{DataError, Location, Result};
use crate::record::{json_kind, Row};

pub struct JsonlReader {
    path: PathBuf,
    reader: BufReader<File>,
    line: u64,
    buf: Vec<u8>,
    done: bool,
}

impl JsonlReader {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 16, file),
            line: 0,
            buf: Vec::new(),
            done: false,
        })
    }
}

impl Iterator for JsonlReader {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        while !self.done {
            self.buf.clear();
            match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => self.done = true,
                Ok(_) => {
                    self.line += 1;
                    let mut text: &[u8] = &self.buf;
                    if self.line == 1 {
                        text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text);
                        // UTF-8 byte order mark
                    }
                    if text.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let loc = Location::line(&self.path, self.line);
                    return Some(match serde_json::from_slice::<serde_json::Value>(text) {
                        Ok(serde_json::Value::Object(fields)) => Ok(Row { fields, loc }),
                        Ok(other) => Err(DataError::Json {
                            loc,
                            message: format!("expected an object, found {}", json_kind(&other)),
                        }),
                        Err(e) => Err(DataError::Json { loc, message: e.to_string() }),
                    });
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(DataError::io(&self.path, e)));
                }
            }
        }
        None
    }
}
