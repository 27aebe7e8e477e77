//! `lapidary generate`: greedy by default; sampling with temperature / top-k / top-p and a seed.
use anyhow::{bail, Result};
use clap::Args;
use lapidary_model::gemma::generate::SamplingConfig;
use lapidary_model::GemmaBackend;
use serde_json::json;

use crate::common::{encode, load, stop_ids_for, ModelArgs};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

/// EOS ids of the config plus `<end_of_turn>` when the vocabulary has it.
pub fn stop_ids(files: &lapidary_model::ModelFiles) -> Vec<u32> {
    stop_ids_for(&files.config.eos_token_ids, &files.tokenizer)
}

fn run_on<B: GemmaBackend>(a: GenerateArgs) -> Result<()> {
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {}", a.top_p);
    }
    if a.temperature < 0.0 || !a.temperature.is_finite() {
        bail!("--temperature must be >= 0, got {}", a.temperature);
    }
    let loaded = load::<B>(&a.model)?;
    let prompt = encode(&loaded.files.tokenizer, &a.prompt)?;
    let cfg = SamplingConfig {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        stop_ids: stop_ids(&loaded.files),
    };
    let start = std::time::Instant::now();
    let (new, timing) = loaded.model.generate_timed(&prompt, &cfg);
    let seconds = start.elapsed().as_secs_f64();
    let text = loaded.files.tokenizer.decode(&new, true).map_err(|e| anyhow::anyhow!("decoding: {e}"))?;
    if a.json {
        let ids: Vec<u32> = prompt.iter().chain(&new).copied().collect();
        crate::common::print_json(&json!({
            "text": text, "ids": ids, "new_tokens": new.len(), "seconds": seconds,
            "tokens_per_s": new.len() as f64 / seconds,
            // The tokens after the first, one forward pass each: the rate llama-bench's `tg` reports.
            "prompt_tokens": prompt.len(), "prompt_seconds": timing.prompt_s,
            "decode_tokens_per_s": if new.len() > 1 { Some((new.len() - 1) as f64 / timing.decode_s) } else { None },
        }));
    } else {
        println!("{text}");
    }
    Ok(())
}

pub fn run(a: GenerateArgs) -> Result<()> {
    crate::common::dispatch!(a.model.backend, run_on, a)
}
