//! `OUT/tensorboard/`: the metrics of `OUT/metrics.jsonl` as TensorBoard event files, one per run or resume,
//! named as TensorFlow names them (`events.out.tfevents.<unix seconds>.<hostname>`).
//!
//! A file is a sequence of TFRecords, `u64 length | u32 masked crc32c(length) | data | u32 masked crc32c(data)`
//! (little-endian), each holding one `Event` protobuf. The first is `Event{wall_time, file_version:
//! "brain.Event:2", source_metadata{writer}}`; then one `Event{wall_time, step, summary{value{tag,
//! simple_value}}}` per scalar, as `SummaryWriter.add_scalar` writes them. A resumed run's file starts with
//! `SessionLog{status: START}` at the resumed step, which tells TensorBoard's reader to drop what the earlier
//! files logged from that step on (those steps are redone), and logs again the kept rows of that step.
//!
//! The four small messages are encoded here by hand (about thirty lines) rather than with a protobuf code
//! generator: prost would need a build script and `protoc` for fields that never change. Tested byte for byte
//! against tensorboard's own `EventFileWriter` and read back with its `EventAccumulator`
//! (scripts/make_tensorboard_fixtures.py, tests/fixtures/tensorboard/).
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::metrics::Row;

/// What the first event of our files says wrote them.
pub const WRITER: &str = "lapidary";

/// One event's payload.
#[derive(Debug, Clone, PartialEq)]
pub enum What<'a> {
    FileVersion {
        writer: &'a str,
    },
    Scalar {
        tag: &'a str,
        value: f32,
    },
    /// `SessionLog.START`: the run (re)starts at this event's step.
    SessionStart,
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (wire type 2).
fn bytes_field(out: &mut Vec<u8>, field: u8, data: &[u8]) {
    out.push(field << 3 | 2);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// `Event` (tensorboard/compat/proto/event.proto): proto3 leaves out a zero `wall_time` and `step`; the payload
/// is a `oneof`, always written.
pub fn encode_event(wall_time: f64, step: i64, what: &What) -> Vec<u8> {
    let mut out = Vec::new();
    if wall_time != 0.0 {
        out.push(1 << 3 | 1); // wall_time: double
        out.extend_from_slice(&wall_time.to_le_bytes());
    }
    if step != 0 {
        out.push(2 << 3); // step: int64 varint (two's complement for negatives, as protobuf does)
        varint(&mut out, step as u64);
    }
    match what {
        What::FileVersion { writer } => {
            bytes_field(&mut out, 3, b"brain.Event:2");
            let mut meta = Vec::new();
            bytes_field(&mut meta, 1, writer.as_bytes()); // SourceMetadata.writer
            bytes_field(&mut out, 10, &meta);
        }
        What::Scalar { tag, value } => {
            let mut v = Vec::new();
            bytes_field(&mut v, 1, tag.as_bytes()); // Summary.Value.tag
            v.push(2 << 3 | 5); // simple_value: float, in a oneof so written even when 0
            v.extend_from_slice(&value.to_le_bytes());
            let mut summary = Vec::new();
            bytes_field(&mut summary, 1, &v); // Summary.value
            bytes_field(&mut out, 5, &summary);
        }
        What::SessionStart => bytes_field(&mut out, 7, &[1 << 3, 1]), // session_log: SessionLog{status: START}
    }
    out
}

/// TFRecord's checksum: CRC-32C, rotated and offset so a CRC of data holding CRCs stays well distributed.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord around `data`.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// The records of an events file, checksums checked (the tests read files back with it).
#[cfg(test)]
pub fn read_records(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let take = |from: usize, n: usize| bytes.get(from..from + n).ok_or(format!("truncated record at byte {from}"));
        let len_bytes = take(at, 8)?;
        let crc = u32::from_le_bytes(take(at + 8, 4)?.try_into().expect("4 bytes"));
        if crc != masked_crc(len_bytes) {
            return Err(format!("bad length checksum at byte {at}"));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        let data = take(at + 12, len)?;
        let crc = u32::from_le_bytes(take(at + 12 + len, 4)?.try_into().expect("4 bytes"));
        if crc != masked_crc(data) {
            return Err(format!("bad data checksum at byte {at}"));
        }
        out.push(data.to_vec());
        at += 16 + len;
    }
    Ok(out)
}

/// `events.out.tfevents.<seconds, 10 digits>.<hostname>`, TensorFlow's name for an events file.
pub fn file_name(wall_time: f64, hostname: &str) -> String {
    format!("events.out.tfevents.{:010}.{hostname}", wall_time as u64)
}

/// An events file being written (appended record by record, flushed after each row, so a crash loses at
/// most the row being written; a torn last record is what TensorBoard's reader expects of a live file).
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

impl EventWriter {
    /// A new events file in `dir` (created if need be) starting with the file-version event; a name already
    /// taken (two runs in one second) gets `.1`, `.2`, ... appended.
    pub fn create(dir: &Path, wall_time: f64, hostname: &str, writer: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        let base = file_name(wall_time, hostname);
        let mut path = dir.join(&base);
        let mut n = 0;
        let file = loop {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => break f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    n += 1;
                    path = dir.join(format!("{base}.{n}"));
                }
                Err(e) => return Err(e).with_context(|| format!("{}: cannot create", path.display())),
            }
        };
        let mut w = Self { path, file };
        w.write(wall_time, 0, &What::FileVersion { writer })?;
        Ok(w)
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, wall_time: f64, step: i64, what: &What) -> Result<()> {
        self.file
            .write_all(&record(&encode_event(wall_time, step, what)))
            .and_then(|()| self.file.flush())
            .with_context(|| format!("{}: cannot write", self.path.display()))
    }
}

/// The scalars of a metrics row, with the tags transformers' TensorBoard callback uses where it has one.
pub fn scalars(row: &Row) -> (u64, Vec<(&'static str, f64)>) {
    match row {
        Row::Train { step, loss, lr, grad_norm, tokens, tokens_per_s, .. } => (
            *step,
            vec![
                ("train/loss", *loss),
                ("train/learning_rate", *lr),
                ("train/grad_norm", *grad_norm),
                ("train/tokens", *tokens as f64),
                ("train/tokens_per_s", *tokens_per_s),
            ],
        ),
        Row::Eval { step, eval_loss, eval_tokens, eval_exact_match, eval_acc, eval_acc_norm } => {
            let all = [
                ("eval/loss", *eval_loss),
                ("eval/tokens", eval_tokens.map(|t| t as f64)),
                ("eval/exact_match", *eval_exact_match),
                ("eval/acc", *eval_acc),
                ("eval/acc_norm", *eval_acc_norm),
            ];
            (*step, all.into_iter().filter_map(|(t, v)| v.map(|v| (t, v))).collect())
        }
    }
}

/// `OUT/tensorboard/` for this run: a new events file; resuming at `resumed_at`, it starts with a session
/// start at that step and the kept rows of that step (`kept`: the rows `metrics.jsonl` kept).
pub struct TensorBoard {
    writer: EventWriter,
}

impl TensorBoard {
    pub fn open(out: &Path, resumed_at: Option<u64>, kept: &[Row]) -> Result<Self> {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let host: String = host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        let mut tb = Self { writer: EventWriter::create(&out.join("tensorboard"), now(), &host, WRITER)? };
        if let Some(n) = resumed_at {
            tb.writer.write(now(), n as i64, &What::SessionStart)?;
            for row in kept.iter().filter(|r| scalars(r).0 >= n) {
                tb.log(row)?;
            }
        }
        Ok(tb)
    }

    pub fn log(&mut self, row: &Row) -> Result<()> {
        let (step, values) = scalars(row);
        let t = now();
        for (tag, v) in values {
            self.writer.write(t, step as i64, &What::Scalar { tag, value: v as f32 })?;
        }
        Ok(())
    }
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Fixture {
        hostname: String,
        writer: String,
        files: Vec<FileCase>,
        /// What tensorboard's EventAccumulator reads from the directory: tag → [wall_time, step, value].
        accumulator: std::collections::BTreeMap<String, Vec<(f64, i64, f64)>>,
    }

    #[derive(Deserialize)]
    struct FileCase {
        name: String,
        file_version_wall_time: f64,
        events: Vec<EventCase>,
    }

    #[derive(Deserialize)]
    struct EventCase {
        wall_time: f64,
        step: i64,
        tag: Option<String>,
        value: Option<f32>,
        start: bool,
    }

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tensorboard")
    }

    /// Our writer, given what tensorboard's EventFileWriter was given, writes the same bytes; the files are
    /// named in TensorFlow's form (the fixture script renames tensorboard's Python-style names to it), and
    /// reading ours back, with the session-start rule, gives what EventAccumulator read from the reference.
    #[test]
    fn writes_what_tensorboard_writes() {
        let f: Fixture =
            serde_json::from_str(&std::fs::read_to_string(fixtures().join("events.json")).unwrap()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let mut read = std::collections::BTreeMap::<String, Vec<(f64, i64, f64)>>::new();
        for file in &f.files {
            let mut w = EventWriter::create(tmp.path(), file.file_version_wall_time, &f.hostname, &f.writer).unwrap();
            assert_eq!(w.path().file_name().unwrap().to_str().unwrap(), file.name);
            for e in &file.events {
                let what = match (&e.tag, e.value, e.start) {
                    (Some(tag), Some(value), false) => What::Scalar { tag, value },
                    (None, None, true) => What::SessionStart,
                    _ => panic!("bad fixture event"),
                };
                w.write(e.wall_time, e.step, &what).unwrap();
                if e.start {
                    // A session start drops what earlier files logged at this step and later.
                    read.values_mut().for_each(|v| v.retain(|x| x.1 < e.step));
                }
                if let What::Scalar { tag, value } = what {
                    read.entry(tag.to_string()).or_default().push((e.wall_time, e.step, value as f64));
                }
            }
            let ours = std::fs::read(w.path()).unwrap();
            let reference = std::fs::read(fixtures().join(&file.name)).unwrap();
            assert_eq!(ours, reference, "{}", file.name);

            // Parsed back: the records, checksums checked, are the events encoded.
            let records = read_records(&ours).unwrap();
            assert_eq!(records.len(), file.events.len() + 1);
            assert_eq!(
                records[0],
                encode_event(file.file_version_wall_time, 0, &What::FileVersion { writer: &f.writer })
            );
        }
        assert_eq!(read, f.accumulator, "our reading of the purge rule equals EventAccumulator's result");
        let mut bad = std::fs::read(fixtures().join(&f.files[0].name)).unwrap();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(read_records(&bad).unwrap_err().contains("bad data checksum"));
    }

    #[test]
    fn metrics_rows_become_scalars() {
        let row = Row::Eval {
            step: 10,
            eval_loss: Some(0.5),
            eval_tokens: Some(64),
            eval_exact_match: None,
            eval_acc: None,
            eval_acc_norm: None,
        };
        assert_eq!(scalars(&row), (10, vec![("eval/loss", 0.5), ("eval/tokens", 64.0)]));
    }
}
