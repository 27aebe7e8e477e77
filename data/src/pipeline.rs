//! The whole input pipeline: rows → shuffle buffer → parse → tokenize → pack → batch, over epochs, with an
//! exact, serialisable position.
//!
//! # Resuming exactly
//!
//! Every epoch reopens the dataset and shuffles it with draws that depend only on `(seed, epoch, draw
//! index)` (see [`crate::shuffle`]), so the epoch's row order is a pure function of the config. A
//! [`DataPosition`] records the epoch and how many shuffled rows of it are already *in yielded batches*;
//! rows that were pulled but still sit in a half-filled packed row are not counted, they are pulled again
//! after a resume. [`Batches::resume`] replays the epoch's shuffle up to that count without parsing or
//! tokenizing the skipped rows (the replay costs one read of that prefix) and carries on, so a resumed run
//! yields exactly the batches the uninterrupted run would have. The guarantee needs the same dataset files
//! and the same config (seed, buffer size, format, lengths, batch size, packing); seed and buffer size are
//! checked.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::batch::{Batch, PadTo};
use crate::dataset::{DataSpec, Dataset, SourcedRows};
use crate::error::{DataError, Result};
use crate::format::{parse_row, parse_row_with, RowFormat};
use crate::pack::{PackedRow, Packer};
use crate::record::Row;
use crate::shuffle::ShuffleBuffer;
use crate::source::open_dataset;
use crate::template::ChatTemplate;
use crate::tokenize::{EncodeConfig, Encoder, Example, SpecialTokens, TrainOn};

/// Everything that shapes the stream of batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataConfig {
    /// Row format, or `auto` to detect it per row from the fields.
    pub format: RowFormat,
    /// Longest sequence; longer examples are truncated (and counted), packed rows are at most this long.
    pub max_seq_len: usize,
    /// Rows (sequences) per batch.
    pub batch_size: usize,
    /// Train only on the answer part of prompt/completion, alpaca and chat rows.
    pub completion_only: bool,
    /// Pack several examples per row (fewer padding tokens; needs the segment-aware attention mask).
    pub packing: bool,
    pub pad_to: PadTo,
    /// Shuffle buffer size in rows; 0 or 1 keeps the file order. Memory is about this many raw rows.
    pub shuffle_buffer: usize,
    pub seed: u64,
    /// Passes over the data; `None` repeats forever.
    pub epochs: Option<u64>,
    /// Skip (and count) malformed rows instead of stopping with an error.
    pub skip_bad_rows: bool,
    /// Which model turns of chat rows are trained when `completion_only`.
    #[serde(default)]
    pub train_on: TrainOn,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            format: RowFormat::Auto,
            max_seq_len: 1024,
            batch_size: 8,
            completion_only: true,
            packing: false,
            pad_to: PadTo::Longest,
            shuffle_buffer: 10_000,
            seed: 0,
            epochs: Some(1),
            skip_bad_rows: false,
            train_on: TrainOn::AllAssistant,
        }
    }
}

/// Counters of a run. The first group counts rows as they are pulled, the second what went out in batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Rows read from the dataset (good or bad).
    pub rows: u64,
    /// Rows that became training examples.
    pub examples: u64,
    /// Malformed rows skipped under `skip_bad_rows`.
    pub skipped_bad_rows: u64,
    /// Examples cut to `max_seq_len` (including any that were then dropped for having no targets).
    pub truncated: u64,
    /// Examples dropped because no label was left to train on (e.g. the answer was truncated away).
    pub dropped_no_targets: u64,
    pub epochs_completed: u64,

    pub batches: u64,
    /// Sequences in batches (packed rows when packing).
    pub sequences: u64,
    /// Real (non-padding) tokens in batches.
    pub tokens: u64,
    /// Loss terms in batches (sum of `Batch::n_targets`).
    pub target_tokens: u64,
    pub padding_tokens: u64,
}

impl Summary {
    /// Row counters from `self`, output counters from `out`.
    fn with_outputs_of(mut self, out: &Summary) -> Summary {
        self.batches = out.batches;
        self.sequences = out.sequences;
        self.tokens = out.tokens;
        self.target_tokens = out.target_tokens;
        self.padding_tokens = out.padding_tokens;
        self
    }
}

/// Where a run is in its data, to store in a checkpoint and hand to [`Batches::resume`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub seed: u64,
    pub shuffle_buffer: usize,
    /// Current epoch (0-based); equals the number of epochs when the data is exhausted.
    pub epoch: u64,
    /// Shuffled rows of `epoch` that are already in yielded batches.
    pub rows_in_epoch: u64,
    /// The counters as of this position.
    pub summary: Summary,
}

/// A row and the index of the source it came from.
type SourcedRow = (Row, usize);

/// One epoch's rows in shuffled order. Row errors are passed through where they occur (not buffered).
struct EpochStream {
    source: SourcedRows,
    buffer: ShuffleBuffer<SourcedRow>,
    source_done: bool,
}

impl EpochStream {
    fn open(dataset: &Dataset, config: &DataConfig, epoch: u64) -> Result<Self> {
        Ok(Self {
            source: dataset.rows()?,
            buffer: ShuffleBuffer::new(config.shuffle_buffer, config.seed, epoch),
            source_done: false,
        })
    }
}

impl Iterator for EpochStream {
    type Item = Result<SourcedRow>;
    fn next(&mut self) -> Option<Result<SourcedRow>> {
        while !self.source_done {
            match self.source.next() {
                Some(Ok(row)) => {
                    if let Some(out) = self.buffer.push(row) {
                        return Some(Ok(out));
                    }
                }
                Some(Err(e)) => return Some(Err(e)),
                None => self.source_done = true,
            }
        }
        self.buffer.drain_one().map(Ok)
    }
}

#[derive(Clone, Copy)]
struct Mark {
    epoch: u64,
    rows_in_epoch: u64,
    summary: Summary,
}

/// The batch iterator the trainer consumes. Stops after the last epoch (the final batch may be smaller) or
/// at the first error (a row error only when `skip_bad_rows` is off).
pub struct Batches {
    dataset: Dataset,
    config: DataConfig,
    encoder: Encoder,
    stream: Option<EpochStream>,
    epoch: u64,
    rows_in_epoch: u64,
    examples_in_epoch: u64,
    started_at_zero: bool,
    summary: Summary,
    packer: Packer,
    /// Position before the first example of the packer's current row.
    pending_start: Option<Mark>,
    rows: Vec<PackedRow>,
    position: DataPosition,
    finished: bool,
}

impl Batches {
    /// Starts at the beginning of epoch 0. Bos, eos and pad ids come from the tokenizer's vocabulary.
    pub fn new(path: impl AsRef<Path>, tokenizer: Tokenizer, config: DataConfig) -> Result<Self> {
        let special = SpecialTokens::from_tokenizer(&tokenizer)?;
        Self::with_special_tokens(path, tokenizer, special, config)
    }

    /// As [`Batches::new`] with explicit special-token ids (e.g. a pad id from the model config).
    pub fn with_special_tokens(
        path: impl AsRef<Path>,
        tokenizer: Tokenizer,
        special: SpecialTokens,
        config: DataConfig,
    ) -> Result<Self> {
        Self::from_spec(DataSpec::file(path.as_ref()), tokenizer, special, config)
    }

    /// Batches of a [`DataSpec`]: several sources mixed, columns renamed, a side of a held-out split.
    /// Checks the spec (and finds the held-out rows) now.
    pub fn from_spec(spec: DataSpec, tokenizer: Tokenizer, special: SpecialTokens, config: DataConfig) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(DataError::Config("batch_size must be at least 1".into()));
        }
        if config.epochs == Some(0) {
            return Err(DataError::Config("epochs must be at least 1".into()));
        }
        let encoder = Encoder::new(
            tokenizer,
            special,
            EncodeConfig { max_seq_len: config.max_seq_len, completion_only: config.completion_only },
        )?
        .with_train_on(config.train_on);
        // Fails early on a missing file or an unknown layout, not at the first `next()`.
        let dataset = Dataset::new(spec)?;
        let position = DataPosition {
            seed: config.seed,
            shuffle_buffer: config.shuffle_buffer,
            epoch: 0,
            rows_in_epoch: 0,
            summary: Summary::default(),
        };
        Ok(Self {
            dataset,
            packer: Packer::new(config.max_seq_len, config.packing),
            config,
            encoder,
            stream: None,
            epoch: 0,
            rows_in_epoch: 0,
            examples_in_epoch: 0,
            started_at_zero: true,
            summary: Summary::default(),
            pending_start: None,
            rows: Vec::new(),
            position,
            finished: false,
        })
    }

    /// Renders `messages` rows with a checkpoint's chat template instead of the hand-written Gemma one
    /// ([`Encoder::with_chat_template`]); `None` keeps the hand-written one. Call before the first batch.
    pub fn with_chat_template(mut self, template: Option<ChatTemplate>) -> Self {
        self.encoder = self.encoder.with_chat_template(template);
        self
    }

    /// Continues from `position` (taken from [`Batches::position`] of a run with the same data and config).
    pub fn resume(
        path: impl AsRef<Path>,
        tokenizer: Tokenizer,
        config: DataConfig,
        position: &DataPosition,
    ) -> Result<Self> {
        Self::resume_spec(DataSpec::file(path.as_ref()), tokenizer, config, position)
    }

    /// [`Batches::resume`] for a [`DataSpec`].
    pub fn resume_spec(
        spec: DataSpec,
        tokenizer: Tokenizer,
        config: DataConfig,
        position: &DataPosition,
    ) -> Result<Self> {
        let special = SpecialTokens::from_tokenizer(&tokenizer)?;
        let mut b = Self::from_spec(spec, tokenizer, special, config)?;
        b.seek(position)?;
        Ok(b)
    }

    /// Moves a fresh iterator to `position`; see the module docs.
    pub fn seek(&mut self, position: &DataPosition) -> Result<()> {
        if position.seed != self.config.seed || position.shuffle_buffer != self.config.shuffle_buffer {
            return Err(DataError::Position(format!(
                "it was taken with seed {} and shuffle_buffer {}, the config has seed {} and shuffle_buffer {}",
                position.seed, position.shuffle_buffer, self.config.seed, self.config.shuffle_buffer
            )));
        }
        if self.config.epochs.is_some_and(|n| position.epoch > n) {
            return Err(DataError::Position(format!("epoch {} is past the configured epochs", position.epoch)));
        }
        self.epoch = position.epoch;
        self.summary = position.summary;
        self.position = *position;
        self.started_at_zero = position.rows_in_epoch == 0;
        self.finished = self.config.epochs.is_some_and(|n| position.epoch >= n);
        if self.finished || position.rows_in_epoch == 0 {
            return Ok(());
        }
        let mut stream = EpochStream::open(&self.dataset, &self.config, self.epoch)?;
        for done in 0..position.rows_in_epoch {
            match stream.next() {
                Some(Ok(_)) => {}
                Some(Err(e)) if e.is_row_error() => {} // counted in the position's summary already
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(DataError::Position(format!(
                        "epoch {} of {} has only {done} rows, the position is at row {}; did the data change?",
                        self.epoch,
                        self.dataset.spec().label(),
                        position.rows_in_epoch
                    )))
                }
            }
        }
        self.rows_in_epoch = position.rows_in_epoch;
        self.stream = Some(stream);
        Ok(())
    }

    /// The position after the last yielded batch.
    pub fn position(&self) -> DataPosition {
        self.position
    }

    /// Counters up to now (rows pulled into a half-packed row included).
    pub fn summary(&self) -> Summary {
        self.summary
    }

    pub fn special_tokens(&self) -> SpecialTokens {
        self.encoder.special()
    }

    pub fn config(&self) -> &DataConfig {
        &self.config
    }

    fn live_mark(&self) -> Mark {
        Mark { epoch: self.epoch, rows_in_epoch: self.rows_in_epoch, summary: self.summary }
    }

    /// The next example, `Ok(None)` once every epoch is done.
    fn next_example(&mut self) -> Result<Option<(Example, Mark)>> {
        loop {
            if self.config.epochs.is_some_and(|n| self.epoch >= n) {
                return Ok(None);
            }
            if self.stream.is_none() {
                self.stream = Some(EpochStream::open(&self.dataset, &self.config, self.epoch)?);
            }
            let before = self.live_mark();
            let item = self.stream.as_mut().and_then(Iterator::next);
            let Some(item) = item else {
                self.end_epoch()?;
                continue;
            };
            self.rows_in_epoch += 1;
            self.summary.rows += 1;
            let example = item.and_then(|(row, source)| {
                let d = &self.dataset;
                let sample = parse_row_with(&row, d.format(source, self.config.format), d.roles())
                    .map_err(|e| d.columns().explain(e, &row))?;
                self.encoder.encode(&sample, &row.loc)
            });
            match example {
                Ok(ex) if ex.n_targets() == 0 => {
                    self.summary.truncated += ex.truncated as u64;
                    self.summary.dropped_no_targets += 1;
                }
                Ok(ex) => {
                    self.summary.examples += 1;
                    self.summary.truncated += ex.truncated as u64;
                    self.examples_in_epoch += 1;
                    return Ok(Some((ex, before)));
                }
                Err(e) if e.is_row_error() && self.config.skip_bad_rows => self.summary.skipped_bad_rows += 1,
                Err(e) => return Err(e),
            }
        }
    }

    fn end_epoch(&mut self) -> Result<()> {
        if self.started_at_zero && self.examples_in_epoch == 0 {
            let d = self.dataset.spec();
            return Err(DataError::dataset(d.label().as_ref(), "has no usable examples"));
        }
        self.stream = None;
        self.epoch += 1;
        self.rows_in_epoch = 0;
        self.examples_in_epoch = 0;
        self.started_at_zero = true;
        self.summary.epochs_completed += 1;
        Ok(())
    }

    fn emit(&mut self) -> Batch {
        let rows = std::mem::take(&mut self.rows);
        let batch = Batch::collate(&rows, self.encoder.special().pad, self.config.pad_to, self.config.max_seq_len);
        self.summary.batches += 1;
        self.summary.sequences += batch.batch as u64;
        self.summary.tokens += batch.n_tokens as u64;
        self.summary.target_tokens += batch.n_targets as u64;
        self.summary.padding_tokens += (batch.batch * batch.seq_len - batch.n_tokens) as u64;
        let mark = self.pending_start.unwrap_or_else(|| self.live_mark());
        self.position = DataPosition {
            seed: self.config.seed,
            shuffle_buffer: self.config.shuffle_buffer,
            epoch: mark.epoch,
            rows_in_epoch: mark.rows_in_epoch,
            summary: mark.summary.with_outputs_of(&self.summary),
        };
        batch
    }

    fn step(&mut self) -> Result<Option<Batch>> {
        while self.rows.len() < self.config.batch_size {
            match self.next_example()? {
                Some((ex, before)) => {
                    let was_empty = self.packer.is_empty();
                    let closed = self.packer.push(&ex);
                    if self.packer.is_empty() {
                        self.pending_start = None;
                    } else if was_empty || closed.is_some() {
                        self.pending_start = Some(before);
                    }
                    self.rows.extend(closed);
                }
                None => {
                    self.rows.extend(self.packer.flush());
                    self.pending_start = None;
                    self.finished = true;
                    return Ok((!self.rows.is_empty()).then(|| self.emit()));
                }
            }
        }
        Ok(Some(self.emit()))
    }
}

impl Iterator for Batches {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.finished {
            return None;
        }
        match self.step() {
            Ok(Some(b)) => Some(Ok(b)),
            Ok(None) => None,
            Err(e) => {
                self.finished = true;
                Some(Err(e))
            }
        }
    }
}

/// Every example of a dataset in file order, no shuffling, packing or batching (evaluation, inspection,
/// tests). Row errors are returned, not skipped.
pub fn examples(
    path: impl AsRef<Path>,
    encoder: &Encoder,
    format: RowFormat,
) -> Result<impl Iterator<Item = Result<Example>> + '_> {
    let source = open_dataset(path)?;
    Ok(source.map(move |row| {
        let row = row?;
        encoder.encode(&parse_row(&row, format)?, &row.loc)
    }))
}
