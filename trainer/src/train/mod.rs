//! `lapidary train`: supervised fine-tuning of a LoRA adapter on a frozen (optionally NF4/int8) Gemma.
//!
//! - [`config`]: the TOML recipe, `--set` overrides, validation.
//! - [`schedule`]: the learning rate at each step (`lr_at`).
//! - [`optim`]: AdamW and gradient clipping, on the device, over the flat LoRA parameters.
//! - [`params`]: the LoRA matrices of a model as one flat device tensor, in and out, and PEFT adapter files.
//! - [`step`]: one optimizer step over a gradient-accumulation window; the eval loss.
//! - [`eval`]: the metrics of `train.eval_metrics` on the eval set (loss, exact_match, choice).
//! - [`checkpoint`]: `OUT/checkpoints/step-N/`, written atomically, for exact resume.
//! - [`metrics`]: `OUT/metrics.jsonl` and `OUT/loss.png`.
//! - [`run`]: the loop.
pub mod checkpoint;
pub mod config;
pub mod eval;
pub mod metrics;
pub mod optim;
pub mod params;
pub mod run;
pub mod schedule;
pub mod step;
