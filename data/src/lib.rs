//! `lapidary-data`: the SFT input pipeline, from dataset files to padded batches of token ids. No Burn here;
//! a [`Batch`] is plain vectors that the trainer turns into tensors.
//!
//! ```text
//! open_dataset ─ rows ─► ShuffleBuffer ─► parse_row ─► Encoder ─► Packer ─► Batch::collate
//! (jsonl, parquet,       (seeded,         (format)    (chat template,  (greedy,    (pad, count
//!  arrow, save_to_disk)   bounded)                     labels, bos/eos) segments)   targets)
//! ```
//!
//! - **Reading** ([`open_dataset`], [`source::resolve`]): JSONL (line by line), Parquet (a file or a directory
//!   of shards, by record batch, only the known columns decoded), Arrow IPC file and stream formats, and
//!   `datasets.Dataset.save_to_disk` directories; `hf://datasets/ORG/NAME/…` from the Hugging Face cache
//!   ([`hub`]). Rows ([`Row`], [`RowSource`], in [`record`]) are JSON
//!   records with a [`Location`] (file and line or row) used by every error. Modules depend one way:
//!   `source` → `reader_*` → `arrow_value` → `record` → `error`; `format` also builds on `record`.
//! - **What is read** ([`DataSpec`], [`Dataset`], in [`dataset`]): one dataset, or several mixed by weight as
//!   `datasets.interleave_datasets` mixes them ([`mix`], with numpy's generator in [`numpy_rng`]); a dataset's
//!   columns renamed to the formats' fields ([`columns`]); one side of a seeded held-out split ([`split`]).
//! - **Row formats** ([`RowFormat`], [`parse_row`]): text, prompt/completion, messages, ShareGPT
//!   ([`sharegpt`], read as messages), alpaca, pre-tokenized; detected per row with `auto`. See [`format`].
//! - **Chat template** ([`ChatTemplate`]): the checkpoint's own when it ships one (`chat_template.jinja` or
//!   `tokenizer_config.json`'s `chat_template`, see [`template_dir`]), rendered as transformers'
//!   `apply_chat_template` renders it ([`template`]), its model turns found for the training mask from renderings
//!   of conversation prefixes ([`template_mask`]); otherwise Gemma 1/2/3's, written by hand
//!   ([`chat::render_chat`], [`chat::chat_pieces`]). [`Encoder::with_chat_template`] chooses.
//! - **Tokenization** ([`Encoder`], [`Example`]): one BOS, answer-only labels with [`IGNORE_INDEX`], EOS after
//!   completions, explicit truncation. See [`tokenize`] for how ids relate to tokenizing the whole string.
//! - **Packing** ([`Packer`], [`PackedRow`]) and **batching** ([`Batch`]): read [`batch`] for the attention
//!   mask rule, the label shift and loss normalisation the model and trainer must apply.
//! - **The pipeline** ([`Batches`], [`DataConfig`], [`DataPosition`], [`Summary`]): shuffling with a bounded
//!   buffer, epochs, `skip_bad_rows`, and exact resume.
//!
//! ```no_run
//! use lapidary_data::{load_tokenizer, Batches, DataConfig};
//! # fn main() -> Result<(), lapidary_data::DataError> {
//! let tokenizer = load_tokenizer("tokenizer.json".as_ref())?;
//! let config = DataConfig { max_seq_len: 512, batch_size: 4, packing: true, ..DataConfig::default() };
//! let mut batches = Batches::new("train.jsonl", tokenizer, config)?;
//! while let Some(batch) = batches.next() {
//!     let batch = batch?;
//!     // ... forward/backward on batch.input_ids, batch.labels, batch.position_ids, batch.segment_ids ...
//!     let checkpoint_position = batches.position(); // serialise with the optimizer state
//! #   let _ = checkpoint_position;
//! }
//! println!("{:?}", batches.summary());
//! # Ok(()) }
//! ```

mod arrow_value;
pub mod batch;
pub mod chat;
pub mod columns;
pub mod dataset;
pub mod error;
pub mod format;
pub mod hub;
pub mod mix;
pub mod numpy_rng;
pub mod pack;
pub mod pipeline;
mod reader_arrow;
mod reader_jsonl;
mod reader_parquet;
pub mod record;
pub mod sharegpt;
pub mod shuffle;
pub mod source;
pub mod split;
pub mod template;
pub mod template_dir;
pub mod template_mask;
mod template_pycompat;
pub mod tokenize;

pub use batch::{Batch, PadTo};
pub use chat::{chat_pieces, render_chat, Piece};
pub use columns::Columns;
pub use dataset::{DataSpec, Dataset, Source};
pub use error::{ChatError, DataError, Location, Result, Unit};
pub use format::{parse_row, parse_row_with, Content, Message, RowFormat, Sample, IGNORE_INDEX, KNOWN_FIELDS};
pub use mix::Stopping;
pub use pack::{PackedRow, Packer};
pub use pipeline::{examples, Batches, DataConfig, DataPosition, Summary};
pub use reader_arrow::ArrowReader;
pub use reader_jsonl::JsonlReader;
pub use reader_parquet::ParquetReader;
pub use record::{Record, Row, RowSource};
pub use sharegpt::Roles;
pub use shuffle::ShuffleBuffer;
pub use source::{open_dataset, open_dataset_with};
pub use split::{Side, Split};
pub use template::ChatTemplate;
pub use tokenize::{alpaca_prompt, load_tokenizer, EncodeConfig, Encoder, Example, SpecialTokens, TrainOn};
