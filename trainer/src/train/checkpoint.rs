//! `OUT/checkpoints/step-N/`: everything a run needs to continue exactly where it was.
//!
//! ```text
//! step-N/adapter/            the adapter after N steps (PEFT format, f32: exact)
//! step-N/optimizer.safetensors  AdamW moments, step count in the metadata
//! step-N/state.json          step, data position, RNG seeds, counters, replicas
//! step-N/config.toml         the resolved recipe
//! ```
//!
//! A checkpoint is written under `step-N.tmp/` and renamed when complete, so a crash mid-write leaves no
//! directory that looks complete; resume picks the newest `step-N/` that has a `state.json`. The newest
//! `keep` checkpoints are kept.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use lapidary_data::DataPosition;
use lapidary_model::peft::adapter::AdapterConfig;
use serde::{Deserialize, Serialize};

use burn::tensor::backend::Backend;

use super::optim::{AdamW, AdamWConfig};
use super::params::{read_adapter, write_adapter, Params};

/// The counters and positions of a checkpoint (`state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: u64,
    /// Where the training data continues (`Batches::resume`).
    pub data: DataPosition,
    pub rng: RngState,
    /// Non-padding tokens trained on so far.
    pub tokens_seen: u64,
    /// Seconds spent in training steps so far.
    pub train_seconds: f64,
    /// Data-parallel replicas of the run (absent: one); a step's window is `grad_accum × world`
    /// micro-batches.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub world: usize,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// All randomness in a run is derived from these seeds: LoRA init from `seed`, dropout masks of micro-batch
/// `i` of step `s` from `dropout_seed(seed, s, i)`, shuffling from the data position's seed. Nothing else
/// draws random numbers, so this is the whole RNG state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: u64,
}

/// The dropout seed of micro-batch `micro` of step `step` (splitmix64 of the three).
pub fn dropout_seed(seed: u64, step: u64, micro: usize) -> u64 {
    let mut x = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (micro as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

pub fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// Complete checkpoints `(step, dir)`, oldest first.
pub fn list(out: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(checkpoints_dir(out)) else { return Vec::new() };
    let mut v: Vec<(u64, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n: u64 = name.strip_prefix("step-")?.parse().ok()?;
            let dir = e.path();
            dir.join("state.json").is_file().then_some((n, dir))
        })
        .collect();
    v.sort();
    v
}

pub struct Checkpoint<B: Backend> {
    pub state: TrainState,
    pub params: Params<B>,
    pub opt: AdamW<B>,
}

#[allow(clippy::too_many_arguments)]
pub fn save<B: Backend>(
    out: &Path,
    state: &TrainState,
    params: &Params<B>,
    opt: &AdamW<B>,
    adapter_cfg: &AdapterConfig,
    recipe_toml: &str,
    keep: usize,
) -> Result<PathBuf> {
    let root = checkpoints_dir(out);
    let dir = root.join(format!("step-{}", state.step));
    let tmp = root.join(format!("step-{}.tmp", state.step));
    let io = |p: &Path| format!("{}: cannot write the checkpoint", p.display());
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| io(&tmp))?;
    write_adapter(&params.to_host(), adapter_cfg, &tmp.join("adapter"))?;
    opt.save(&params.slots, &tmp.join("optimizer.safetensors"))?;
    std::fs::write(tmp.join("config.toml"), recipe_toml).with_context(|| io(&tmp))?;
    // state.json last: its presence marks the directory complete.
    std::fs::write(tmp.join("state.json"), serde_json::to_vec_pretty(state)?).with_context(|| io(&tmp))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| io(&dir))?;
    }
    std::fs::rename(&tmp, &dir).with_context(|| io(&dir))?;
    let all = list(out);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
        std::fs::remove_dir_all(old).with_context(|| format!("{}: cannot remove an old checkpoint", old.display()))?;
    }
    Ok(dir)
}

/// Loads a checkpoint for parameters laid out as `like`, onto `device`.
pub fn load<B: Backend>(
    dir: &Path,
    like: &Params<B>,
    opt_cfg: AdamWConfig,
    device: &B::Device,
) -> Result<Checkpoint<B>> {
    let ctx = || format!("{}: cannot resume from this checkpoint", dir.display());
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).with_context(ctx)?;
    let state: TrainState =
        serde_json::from_str(&text).with_context(|| format!("{}: not a checkpoint state", state_path.display()))?;
    let params = Params::from_host(&read_adapter(&like.slots, &dir.join("adapter")).with_context(ctx)?, device);
    let opt = AdamW::load(opt_cfg, &like.slots, &dir.join("optimizer.safetensors"), device).with_context(ctx)?;
    Ok(Checkpoint { state, params, opt })
}
