//! `lapidary train`: supervised fine-tuning of a LoRA adapter on a frozen (optionally NF4/int8) Gemma.
//!
//! - [`config`]: the TOML recipe, `--set` overrides, validation.
//! - [`schedule`]: the learning rate at each step (`lr_at`).
//! - [`params`]: the LoRA matrices of a model as one flat device tensor, in and out, and PEFT adapter files.
//! - [`tensor_file`]: f32 safetensors files of named matrices (adapters, optimizer moments).
//! - [`optim`]: AdamW and gradient clipping, on the device, over the flat LoRA parameters.
//! - [`batch`]: data batches as the model takes them; random batches for the bench and tests.
//! - [`step`]: one optimizer step over a gradient-accumulation window.
//! - [`checkpoint`]: `OUT/checkpoints/step-N/`, written atomically, for exact resume.
//! - [`metrics`]: `OUT/metrics.jsonl` and `OUT/loss.png`.
//! - [`tensorboard`]: the same metrics as TensorBoard event files in `OUT/tensorboard/`.
//! - [`memory`]: the process's resident memory (the run's summary, `lapidary bench`).
//! - [`parallel`]: data parallelism: replicas' shares of a step, the all-reduce, the nodes.
//! - [`run`]: the run: setup, resume, the loop, finish.
//!
//! The evaluations during a run (loss, exact_match, choice on `data.eval`) are `crate::eval::during_training`.
pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod memory;
pub mod metrics;
pub mod optim;
pub mod parallel;
pub mod params;
pub mod run;
pub mod schedule;
pub mod step;
pub mod tensor_file;
pub mod tensorboard;
