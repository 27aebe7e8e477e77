//! `lapidary eval`: mean next-token NLL over all predicted tokens of all rows (each row on its own).
use std::path::PathBuf;

use anyhow::{bail, Result};
use burn::tensor::ElementConversion;
use clap::Args;
use lapidary_model::layers::lora::LoraRuntime;
use lapidary_model::loss::shifted_targets;
use lapidary_model::quant::FrozenMatmul;
use lapidary_model::TokenBatch;
use serde_json::json;

use crate::common::{load, ModelArgs};

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL rows with `text` or `input_ids`.
    #[arg(long)]
    pub data: PathBuf,
    /// Longer rows are truncated (and counted).
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub struct EvalResult {
    pub loss: f64,
    pub tokens: usize,
    pub examples: usize,
    pub truncated: usize,
}

pub fn eval_rows<B: FrozenMatmul>(
    model: &lapidary_model::Gemma<B>,
    rows: &[Vec<u32>],
    max_len: Option<usize>,
) -> EvalResult {
    let rt = LoraRuntime::default();
    let (mut nll, mut tokens, mut truncated) = (0f64, 0usize, 0usize);
    for row in rows {
        let mut row = row.clone();
        if let Some(m) = max_len {
            if row.len() > m {
                row.truncate(m);
                truncated += 1;
            }
        }
        if row.len() < 2 {
            continue;
        }
        let labels: Vec<i64> = row.iter().map(|&t| t as i64).collect();
        let targets = shifted_targets(&labels, 1, row.len());
        let batch = TokenBatch::from_rows(&[row]);
        let hidden = model.forward_hidden(&batch, None, &rt);
        let s: f32 = model.nll_sum(hidden, &targets).into_scalar().elem();
        nll += s as f64;
        tokens += targets.len();
    }
    EvalResult { loss: nll / tokens.max(1) as f64, tokens, examples: rows.len(), truncated }
}

fn run_on<B: FrozenMatmul>(a: EvalArgs) -> Result<()> {
    let loaded = load::<B>(&a.model)?;
    let rows = crate::eval_data::read_rows(&a.data, &loaded.files.tokenizer)?;
    if a.max_seq_len == Some(0) {
        bail!("--max-seq-len must be at least 2");
    }
    let start = std::time::Instant::now();
    let r = eval_rows(&loaded.model, &rows, a.max_seq_len);
    let seconds = start.elapsed().as_secs_f64();
    if r.tokens == 0 {
        bail!("{}: no row has two or more tokens, so there is nothing to predict", a.data.display());
    }
    if !r.loss.is_finite() {
        bail!("the loss is {} (not finite): the weights or the adapter are broken", r.loss);
    }
    if a.json {
        crate::common::print_json(&json!({
            "loss": r.loss, "perplexity": r.loss.exp(), "tokens": r.tokens, "examples": r.examples,
            "truncated": r.truncated,
            "seconds": seconds, "tokens_per_s": r.tokens as f64 / seconds,
        }));
    } else {
        println!(
            "loss {:.6}  perplexity {:.4}  ({} predicted tokens, {} examples{})",
            r.loss,
            r.loss.exp(),
            r.tokens,
            r.examples,
            if r.truncated > 0 { format!(", {} truncated", r.truncated) } else { String::new() }
        );
    }
    Ok(())
}

pub fn run(a: EvalArgs) -> Result<()> {
    crate::dispatch!(a.model.backend, run_on, a)
}
