//! `lapidary bench`: times real QLoRA training steps (forward, backward, AdamW) on a real checkpoint or on
//! random weights of a published shape, the setup scripts/peers/hf_qlora_bench.py times for transformers +
//! PEFT + bitsandbytes: LoRA r=16, alpha=32, no dropout, on all seven projections; labels = inputs; AdamW at
//! 2e-4.
//! Reports tokens/s over the timed steps and peak memory: on CPU the process's peak resident set, on CUDA the
//! device memory CubeCL's pools hold (see `Memory`); hf_qlora_bench.py reports the same two.
//! `--devices N` times data-parallel steps: N replicas in this process, as `lapidary train --devices N` runs
//! them.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::backend::Autodiff;
use clap::Args;
use lapidary_model::io::shapes;
use lapidary_model::nn::lora::TARGETS;
use lapidary_model::peft::adapter::{init_lora, AdapterConfig};
use lapidary_model::{Gemma, GemmaBackend};
use lapidary_model::{GemmaConfig, ModelFiles, WeightSource};

use crate::common::{print_json, BackendKind, Dtype, Quant};
use crate::train::batch::random_batch;
use crate::train::memory::{peak_rss_mib, status_mib};
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::parallel::collective::Group;
use crate::train::parallel::replica::Replica;
use crate::train::parallel::{device_at, spawn_replicas};
use crate::train::params::Params;
use crate::train::step::train_step;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// A published shape with random weights (gemma-2b, gemma-7b, gemma2-2b, gemma3-270m, gemma3-1b,
    /// gemma4-e2b, gemma4-e4b, gemma4-26b-a4b, gemma4-31b), or a model directory / .gguf file.
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
    /// What the model computes in (hf_qlora_bench.py's `--dtype`; QLoRA on GPUs computes in bf16).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Dtype,
    /// Record memory every N timed steps (0: never), as `mem_trace` in the JSON and a line on stderr each
    /// time: to check that memory stays flat over a long run (`--steps 200 --mem-trace 10`).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub mem_trace: usize,
    /// One JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Data-parallel replicas in this process (threads sharing the cores; GPUs 0..N on CUDA), each taking a
    /// micro-batch of `--batch` rows a step; tokens/s counts all of them.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub devices: usize,
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.seq < 2 || a.batch == 0 || a.steps == 0 {
        bail!("--seq must be at least 2, --batch and --steps at least 1");
    }
    if a.devices == 0 {
        bail!("--devices must be at least 1");
    }
    if a.devices > 1 {
        return crate::common::dispatch!(a.backend, go_parallel, &a);
    }
    crate::common::dispatch!(a.backend, go, &a)
}

/// `--devices N`: N replicas, each a thread with its share of the cores (its own rayon pool), its own model
/// (random LoRA init as [`go`]'s) and micro-batch; the steps are training's ([`Replica::step`]: gradients and
/// loss all-reduced, the same AdamW update on each, the parameters' checksums compared).
fn go_parallel<B: GemmaBackend>(a: &BenchArgs) -> Result<()> {
    let n = a.devices;
    let devices: Vec<usize> = if a.backend == BackendKind::Cuda { (0..n).collect() } else { vec![0; n] };
    for &d in &devices {
        device_at::<B>(d)?;
    }
    let threads = (rayon::current_num_threads() / n).max(1);
    let args = a.clone();
    let rx = spawn_replicas(n, threads, move |local| bench_replica::<B>(&args, local, devices[local]))?;
    let mut timed = None;
    for _ in 0..n {
        match rx.recv().context("a replica thread ended without a result")?.1 {
            Err(e) => return Err(e),
            Ok(Some(t)) => timed = Some(t),
            Ok(None) => {}
        }
    }
    let Some(Timed { loss, step_s, dt, load_s }) = timed else { bail!("replica 0 timed nothing") };
    let tokens_per_s = (a.steps * n * a.batch * a.seq) as f64 / dt;
    let mut out = serde_json::json!({
        "system": "lapidary", "model": a.model, "seq": a.seq, "batch": a.batch, "devices": n, "gc": a.gc,
        "rank": a.rank, "quant": format!("{:?}", a.quant).to_lowercase(), "backend": a.backend.name(),
        "dtype": format!("{:?}", a.dtype).to_lowercase(), "tokens_per_s": round(tokens_per_s, 1),
        "loss": round(loss, 4), "steps": a.steps, "warmup": a.warmup,
        "step_s": step_s.iter().map(|s| round(*s, 3)).collect::<Vec<_>>(), "load_s": round(load_s, 2),
        "threads_per_replica": threads, "compute": a.backend.compute_path(a.dtype.into()),
    });
    if let Some(o) = out.as_object_mut() {
        o.extend(Memory::new(a.backend).report());
    }
    if a.json {
        print_json(&out);
    } else {
        println!(
            "model {} ({}, {n} replicas x {threads} threads), seq {} x batch {} per replica",
            a.model,
            a.backend.name(),
            a.seq,
            a.batch
        );
        println!("tokens/s (all replicas): {tokens_per_s:.1}   last loss: {loss:.4}");
    }
    Ok(())
}

/// What replica 0 of [`go_parallel`] measured.
struct Timed {
    loss: f64,
    step_s: Vec<f64>,
    /// Seconds of the timed steps.
    dt: f64,
    load_s: f64,
}

/// One replica of [`go_parallel`] on device `index`; replica 0 returns the timings.
fn bench_replica<B: GemmaBackend>(a: &BenchArgs, local: usize, index: usize) -> Result<Option<Timed>> {
    let t0 = Instant::now();
    let n = a.devices;
    let device = device_at::<B>(index)?;
    let Trainee { vocab, mut model, mut params, mut opt } = trainee::<B>(a, &device)?;
    let group = Group::<B>::join(local, n, device.clone(), None)?;
    let mut rep = Replica { rank: local, world: n, group: Box::new(group), device: device.clone() };
    let load_s = t0.elapsed().as_secs_f64();
    // The whole step's window, the same on every replica; replica r trains micro-batch r.
    let window: Vec<_> = (0..n).map(|r| random_batch(vocab, a.batch, a.seq, r as u64)).collect();
    let mut step = |i: usize| -> Result<f64> {
        let s = rep.step(&mut model, &mut params, &mut opt, &window, 2e-4, 0.0, a.gc, |m| (i * n + m) as u64, false)?;
        s.stats.map(|s| s.loss).map_err(|e| anyhow::anyhow!("step {i}: {e}"))
    };
    for i in 0..a.warmup {
        step(i)?;
    }
    let t = Instant::now();
    let mut loss = f64::NAN;
    let mut step_s = Vec::with_capacity(a.steps);
    for i in 0..a.steps {
        let ts = Instant::now();
        loss = step(a.warmup + i)?;
        step_s.push(ts.elapsed().as_secs_f64());
    }
    B::sync(&device).map_err(|e| anyhow::anyhow!("device: {e:?}"))?;
    let dt = t.elapsed().as_secs_f64();
    rep.group.finish()?;
    Ok((local == 0).then_some(Timed { loss, step_s, dt, load_s }))
}

/// What every bench run trains ([`go`], and each replica of [`go_parallel`]).
struct Trainee<B: GemmaBackend> {
    vocab: usize,
    model: Gemma<Autodiff<B>>,
    params: Params<B>,
    opt: AdamW<B>,
}

/// The model `--model` names, loaded onto `device` as `--quant` and `--dtype` say, with a fresh LoRA adapter
/// (r = `--rank`, alpha 2r, no dropout, all seven projections), its parameters and AdamW (2e-4 by the steps).
fn trainee<B: GemmaBackend>(a: &BenchArgs, device: &B::Device) -> Result<Trainee<B>> {
    let (config, weights) = source(&a.model)?;
    let mut model =
        lapidary_model::gemma::load::load_gemma::<Autodiff<B>>(&config, weights.as_ref(), a.quant.into(), device)
            .with_context(|| format!("loading {}", a.model))?
            .with_compute_dtype(a.dtype.into());
    drop(weights);
    let targets: Vec<String> = TARGETS.iter().map(|s| s.to_string()).collect();
    init_lora(&mut model, &AdapterConfig::new(a.rank, 2.0 * a.rank as f64, 0.0, &targets, false, None), 0)?;
    let params = Params::read(&mut model);
    let adamw = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let opt = AdamW::new(adamw, params.len(), device);
    Ok(Trainee { vocab: config.vocab_size, model, params, opt })
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

/// Memory as the bench measures it on each backend. CPU: the process's resident set (`VmRSS` now, `VmHWM`
/// for the peak, which cannot be reset, so it includes the load). CUDA: the device memory CubeCL's pools hold
/// (`lapidary_model::cube::memory`): `peak_gib` is the peak *reserved* from the driver since the warm-up, an
/// upper bound of what tensors used; `peak_in_use_gib` the peak used by live tensors (the analogue of
/// torch's `max_memory_allocated`), sampled at every frozen matmul of one more step after the timed ones
/// (each sample is a round trip to CubeCL's device thread, ~400 a step on Gemma 2B, which the timed steps
/// should not pay; every step allocates the same) and at the end of every step; `device_used_gib` the
/// driver's `total − free` after the run (with the CUDA context, cuBLAS workspace and compiled kernels).
struct Memory {
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    cuda: bool,
}

impl Memory {
    fn new(kind: BackendKind) -> Self {
        Memory { cuda: kind == BackendKind::Cuda }
    }

    /// Whether the frozen matmuls sample the device pools (CUDA): only in the step that measures the peak.
    fn track(&self, on: bool) {
        #[cfg(feature = "cuda")]
        if self.cuda {
            lapidary_model::cube::memory::track(on);
        }
        let _ = on;
    }

    /// Whether the peak needs a step of its own ([`Memory::track`]); the CPU's comes from the kernel.
    fn tracks_in_steps(&self) -> bool {
        #[cfg(feature = "cuda")]
        return self.cuda;
        #[cfg(not(feature = "cuda"))]
        false
    }

    /// After a step: samples the device pools (CUDA).
    fn after_step(&self) {
        #[cfg(feature = "cuda")]
        if self.cuda {
            lapidary_model::cuda::sample_gpu0();
        }
    }

    /// After the warm-up: the peaks count from here (CUDA; hf_qlora_bench.py does the same).
    fn reset_peaks(&self) {
        #[cfg(feature = "cuda")]
        if self.cuda {
            lapidary_model::cube::memory::reset_peaks();
        }
    }

    /// Memory now, as one `mem_trace` entry.
    fn now(&self, step: usize) -> serde_json::Value {
        #[cfg(feature = "cuda")]
        if self.cuda {
            let m = lapidary_model::cube::memory::stats();
            return serde_json::json!({"step": step, "in_use_gib": round(gib(m.in_use), 3),
                                      "reserved_gib": round(gib(m.reserved), 3)});
        }
        serde_json::json!({"step": step, "rss_gib": round(status_mib("VmRSS:").map_or(f64::NAN, |m| m / 1024.0), 3)})
    }

    /// The JSON fields: `peak_gib` and, on CUDA, `peak_in_use_gib` and `device_used_gib`.
    fn report(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut out = serde_json::Map::new();
        #[cfg(feature = "cuda")]
        if self.cuda {
            use lapidary_model::cube::memory;
            let m = memory::stats();
            out.insert("peak_gib".into(), round(gib(m.peak_reserved), 2).into());
            out.insert("peak_in_use_gib".into(), round(gib(m.peak_in_use), 2).into());
            let used = lapidary_model::cuda::device_used_bytes().map_or(f64::NAN, gib);
            out.insert("device_used_gib".into(), round(used, 2).into());
            out.insert(
                "packed_weights_gib".into(),
                round(gib(lapidary_model::cube::weights::resident_bytes() as u64), 3).into(),
            );
            return out;
        }
        // VmHWM, what `ru_maxrss` reports to hf_qlora_bench.py; NaN off Linux.
        out.insert("peak_gib".into(), round(peak_rss_mib().map_or(f64::NAN, |m| m / 1024.0), 2).into());
        out
    }
}

#[cfg(feature = "cuda")]
fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// What the JSON calls the machine: the GPU's name on CUDA, the CPU thread count otherwise.
fn device_name(kind: BackendKind) -> String {
    #[cfg(feature = "cuda")]
    if kind == BackendKind::Cuda {
        if let Ok(d) = lapidary_model::cuda::probe() {
            return d.name;
        }
    }
    let _ = kind;
    format!("cpu x{}", rayon::current_num_threads())
}

fn go<B: GemmaBackend>(a: &BenchArgs) -> Result<()> {
    let t0 = Instant::now();
    let memory = Memory::new(a.backend);
    let device = B::Device::default();
    let Trainee { vocab, mut model, mut params, mut opt } = trainee::<B>(a, &device)?;
    let load_s = t0.elapsed().as_secs_f64();
    let batch = random_batch(vocab, a.batch, a.seq, 0);
    let window = std::slice::from_ref(&batch);
    let mut step = |i: usize| -> Result<f64> {
        let r = train_step(&mut model, &mut params, &mut opt, window, 2e-4, 0.0, a.gc, |_| i as u64);
        r.map(|s| s.loss).map_err(|e| anyhow::anyhow!("step {i}: {e}"))
    };
    for i in 0..a.warmup {
        step(i)?;
        memory.after_step();
    }
    memory.reset_peaks();
    let t = Instant::now();
    let cpu0 = cpu_seconds();
    let mut loss = f64::NAN;
    let mut per_step = Vec::with_capacity(a.steps);
    let mut trace = Vec::new();
    for i in 0..a.steps {
        // The step reads the loss and the gradient norm back, so its device work up to the optimizer is done
        // when it returns; the optimizer's few ops finish inside the next step's time (and the last step's
        // before the clock stops, below): the per-step times are wall times on CUDA too.
        let ts = Instant::now();
        loss = step(a.warmup + i)?;
        per_step.push(ts.elapsed().as_secs_f64());
        memory.after_step();
        if a.mem_trace > 0 && ((i + 1) % a.mem_trace == 0 || i + 1 == a.steps) {
            let m = memory.now(i + 1);
            eprintln!("step {}: {m} ({:.3} s/step)", i + 1, per_step[i]);
            trace.push(m);
        }
    }
    // The last update done on the device: the timed steps' work is all in.
    B::sync(&device).map_err(|e| anyhow::anyhow!("device: {e:?}"))?;
    let dt = t.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds() - cpu0;
    if memory.tracks_in_steps() {
        memory.track(true);
        step(a.warmup + a.steps)?;
        memory.after_step();
        memory.track(false);
    }
    let tokens_per_s = (a.steps * a.batch * a.seq) as f64 / dt;
    let mem = memory.report();
    let peak = mem.get("peak_gib").and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    let backend = a.backend.name();
    let quant = format!("{:?}", a.quant).to_lowercase();
    if a.json {
        let mut out = serde_json::json!({
            "system": "lapidary", "model": a.model, "seq": a.seq, "batch": a.batch, "gc": a.gc, "rank": a.rank,
            "quant": quant, "backend": backend, "dtype": format!("{:?}", a.dtype).to_lowercase(),
            "tokens_per_s": round(tokens_per_s, 1),
            "loss": round(loss, 4), "steps": a.steps, "warmup": a.warmup,
            "step_s": per_step.iter().map(|s| round(*s, 3)).collect::<Vec<_>>(), "load_s": round(load_s, 2),
            "cpu_s": round(cpu_s, 2),
            "device": device_name(a.backend),
            "compute": a.backend.compute_path(a.dtype.into()),
        });
        if let Some(o) = out.as_object_mut() {
            o.extend(mem);
            if a.mem_trace > 0 {
                o.insert("mem_trace".into(), trace.into());
            }
        }
        print_json(&out);
    } else {
        let what = if a.backend == BackendKind::Cuda { "peak device memory (reserved)" } else { "peak resident" };
        println!(
            "model {} ({backend}, {quant}, {:?}, LoRA r={}), seq {} x batch {}",
            a.model, a.dtype, a.rank, a.seq, a.batch
        );
        println!("compute: {}", a.backend.compute_path(a.dtype.into()));
        println!("load + quantize: {load_s:.1} s; {} warm-up + {} timed steps", a.warmup, a.steps);
        println!("tokens/s: {tokens_per_s:.1}   {what}: {peak:.2} GiB   last loss: {loss:.4}");
    }
    Ok(())
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}
