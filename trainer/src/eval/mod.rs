//! Evaluation, shared by `lapidary eval` (`cmd/eval.rs`, which only parses arguments and prints),
//! `lapidary merge`'s self-check and the trainer (`crate::train::run`), so that every number means the same
//! wherever it is reported.
//!
//! - [`rows`]: reading eval JSONL rows (`text` / `input_ids`, exact-match and choice rows); errors name the
//!   file and line.
//! - [`loss`]: mean next-token loss over token rows and over packed training batches.
//! - [`task_metrics`]: `exact_match` (greedy generation vs. a normalised answer) and `choice` (multiple choice
//!   by log-likelihood, as lm-evaluation-harness).
//! - [`during_training`]: the eval set of a training recipe, read up front, and the metrics of
//!   `train.eval_metrics` measured on it during a run.
pub mod during_training;
pub mod loss;
pub mod rows;
pub mod task_metrics;
