//! `lapidary bench`: times real QLoRA training steps (forward, backward, AdamW) on a real checkpoint or on
//! random weights of a published shape, the setup `../shared/anchors/hf_qlora_bench.py` times for the peer:
//! LoRA r=16, alpha=32, no dropout, on all seven projections; labels = inputs; AdamW at 2e-4.
//! Reports tokens/s over the timed steps and the process's peak resident set (the peer reports the same).
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::backend::Autodiff;
use clap::Args;
use lapidary_data::Batch;
use lapidary_model::adapter::{init_lora, AdapterConfig};
use lapidary_model::layers::lora::TARGETS;
use lapidary_model::quant::FrozenMatmul;
use lapidary_model::{shapes, GemmaConfig, ModelFiles, WeightSource};
use rand::{Rng, SeedableRng};

use crate::common::{print_json, BackendKind, Quant};
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::params::read_params;
use crate::train::run::peak_rss_mib;
use crate::train::step::train_step;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A published shape with random weights (gemma-2b, gemma-7b, gemma2-2b, gemma3-270m, gemma3-1b), or a
    /// model directory / .gguf file.
    #[arg(long)]
    pub model: String,
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Timed steps (after the warm-up steps).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, value_enum, default_value = "nf4")]
    pub quant: Quant,
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// Gradient checkpointing: keep only each decoder layer's input and recompute the layer in the backward.
    #[arg(long)]
    pub gc: bool,
    #[arg(long, value_enum, default_value = "flex")]
    pub backend: BackendKind,
    /// One JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.seq < 2 || a.batch == 0 || a.steps == 0 {
        bail!("--seq must be at least 2, --batch and --steps at least 1");
    }
    crate::dispatch!(a.backend, go, &a)
}

/// The config and weights `--model` names.
fn source(model: &str) -> Result<(GemmaConfig, Box<dyn WeightSource>)> {
    if let Some(config) = shapes::config(model) {
        let w = shapes::RandomWeights::new(model, &config, 0);
        return Ok((config, Box::new(w)));
    }
    let path = PathBuf::from(model);
    if !path.exists() {
        bail!("--model {model}: neither a published shape ({}) nor an existing path", shapes::NAMES.join(", "));
    }
    let files = ModelFiles::open(&path)?;
    Ok((files.config, files.weights))
}

/// Random ids in `[3, vocab)` (no special tokens), labels = inputs, one sequence per row.
fn random_batch(vocab: usize, batch: usize, seq: usize, seed: u64) -> Batch {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let ids: Vec<u32> = (0..batch * seq).map(|_| rng.random_range(3..vocab as u32)).collect();
    let n = ids.len();
    Batch {
        labels: ids.iter().map(|&i| i as i64).collect(),
        input_ids: ids,
        position_ids: (0..batch).flat_map(|_| 0..seq as u32).collect(),
        segment_ids: vec![1; n],
        batch,
        seq_len: seq,
        n_targets: batch * (seq - 1),
        n_tokens: n,
    }
}

/// CPU seconds (user + system, all threads) this process has used, from `/proc/self/stat`: with other jobs
/// on the machine, `tokens / cpu_s × cores` still estimates the throughput on an idle one.
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After the parenthesised command name come fields 3.. (state first); utime and stime are fields 14
    // and 15, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok());
    match (tick(11), tick(12)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => f64::NAN,
    }
}

fn go<B: FrozenMatmul>(a: &BenchArgs) -> Result<()> {
    let t0 = Instant::now();
    let (config, weights) = source(&a.model)?;
    let device = B::Device::default();
    let mut model = lapidary_model::load::load_gemma::<Autodiff<B>>(&config, weights.as_ref(), a.quant.into(), &device)
        .with_context(|| format!("loading {}", a.model))?;
    drop(weights);
    let targets: Vec<String> = TARGETS.iter().map(|s| s.to_string()).collect();
    let lora = AdapterConfig::new(a.rank, 2.0 * a.rank as f64, 0.0, &targets, false, None);
    init_lora(&mut model, &lora, 0)?;
    let mut params = read_params(&mut model);
    let mut opt = AdamW::new(AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }, &params);
    let load_s = t0.elapsed().as_secs_f64();
    let batch = random_batch(config.vocab_size, a.batch, a.seq, 0);
    let window = std::slice::from_ref(&batch);
    let mut step = |i: usize| -> Result<f64> {
        let r = train_step(&mut model, &mut params, &mut opt, window, 2e-4, 0.0, a.gc, |_| i as u64);
        r.map(|s| s.loss).map_err(|e| anyhow::anyhow!("step {i}: {e}"))
    };
    for i in 0..a.warmup {
        step(i)?;
    }
    let t = Instant::now();
    let cpu0 = cpu_seconds();
    let mut loss = f64::NAN;
    let mut per_step = Vec::with_capacity(a.steps);
    for i in 0..a.steps {
        let ts = Instant::now();
        loss = step(a.warmup + i)?;
        per_step.push(ts.elapsed().as_secs_f64());
    }
    let dt = t.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds() - cpu0;
    let tokens_per_s = (a.steps * a.batch * a.seq) as f64 / dt;
    // VmHWM, what `ru_maxrss` reports to the peer; NaN off Linux.
    let peak = peak_rss_mib().map_or(f64::NAN, |m| m / 1024.0);
    let backend = match a.backend {
        BackendKind::Flex => "flex",
        BackendKind::Ndarray => "ndarray",
    };
    let quant = format!("{:?}", a.quant).to_lowercase();
    let threads = rayon::current_num_threads();
    if a.json {
        print_json(&serde_json::json!({
            "system": "lapidary", "model": a.model, "seq": a.seq, "batch": a.batch, "gc": a.gc, "rank": a.rank,
            "quant": quant, "backend": backend, "tokens_per_s": round(tokens_per_s, 1),
            "peak_gib": round(peak, 2), "loss": round(loss, 4), "steps": a.steps, "warmup": a.warmup,
            "step_s": per_step.iter().map(|s| round(*s, 3)).collect::<Vec<_>>(), "load_s": round(load_s, 2),
            "cpu_s": round(cpu_s, 2),
            "device": format!("cpu x{threads}"),
        }));
    } else {
        println!("model {} ({backend}, {quant}, LoRA r={}), seq {} x batch {}", a.model, a.rank, a.seq, a.batch);
        println!("load + quantize: {load_s:.1} s; {} warm-up + {} timed steps", a.warmup, a.steps);
        println!("tokens/s: {tokens_per_s:.1}   peak resident: {peak:.2} GiB   last loss: {loss:.4}");
    }
    Ok(())
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}
