//! AdamW on the LoRA matrices, on the host in f32, exactly as `torch.optim.AdamW` (single-tensor path)
//! computes it, plus global-norm gradient clipping as `torch.nn.utils.clip_grad_norm_` does.
//!
//! The adapter is a few million numbers at most, so host arithmetic costs nothing next to a forward pass,
//! and keeping the master copy and the moments as plain `Vec<f32>` makes checkpoints exact: a resumed run
//! continues from bit-identical state.
use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// One trainable matrix: a LoRA `A` or `B`, named by its PEFT key.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// e.g. `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`
    pub name: String,
    pub shape: [usize; 2],
    pub value: Vec<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Steps taken (torch's `state["step"]`).
    pub t: u64,
    /// First moments (`exp_avg`), one per parameter.
    pub m: Vec<Vec<f32>>,
    /// Second moments (`exp_avg_sq`).
    pub v: Vec<Vec<f32>>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, params: &[Param]) -> Self {
        let zeros = || params.iter().map(|p| vec![0f32; p.value.len()]).collect();
        Self { config, t: 0, m: zeros(), v: zeros() }
    }

    /// One update with learning rate `lr`:
    /// `p ← p·(1 − lr·wd)`, `m ← lerp(m, g, 1 − β₁)`, `v ← β₂v + (1 − β₂)g²`,
    /// `p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)`.
    pub fn step(&mut self, params: &mut [Param], grads: &[Vec<f32>], lr: f64) {
        let c = self.config;
        self.t += 1;
        let t = self.t as i32;
        // torch computes these scalars in double precision, then each op casts them to f32.
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = (lr / bc1) as f32;
        let decay = (1.0 - lr * c.weight_decay) as f32;
        let (w1, b2, w2, eps, bc2s) =
            ((1.0 - c.beta1) as f32, c.beta2 as f32, (1.0 - c.beta2) as f32, c.eps as f32, bc2_sqrt as f32);
        for (i, p) in params.iter_mut().enumerate() {
            let (m, v, g) = (&mut self.m[i], &mut self.v[i], &grads[i]);
            for j in 0..p.value.len() {
                if c.weight_decay != 0.0 {
                    p.value[j] *= decay;
                }
                m[j] += w1 * (g[j] - m[j]);
                v[j] = v[j] * b2 + w2 * g[j] * g[j];
                let denom = v[j].sqrt() / bc2s + eps;
                p.value[j] += -step_size * (m[j] / denom);
            }
        }
    }

    /// Moments as a safetensors file (`{name}.exp_avg`, `{name}.exp_avg_sq`) with the step in the metadata.
    pub fn save(&self, params: &[Param], path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, [usize; 2], &[f32])> = Vec::new();
        for (i, p) in params.iter().enumerate() {
            tensors.push((format!("{}.exp_avg", p.name), p.shape, &self.m[i]));
            tensors.push((format!("{}.exp_avg_sq", p.name), p.shape, &self.v[i]));
        }
        let meta = HashMap::from([("step".to_string(), self.t.to_string())]);
        write_f32_safetensors(path, &tensors, meta)
    }

    /// Reads what [`AdamW::save`] wrote, for exactly these parameters.
    pub fn load(config: AdamWConfig, params: &[Param], path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .with_context(|| format!("{}: not a safetensors file", path.display()))?;
        let t: u64 = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("step"))
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("{}: no `step` in the metadata", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}: not a safetensors file", path.display()))?;
        let mut out = Self { config, t, m: Vec::new(), v: Vec::new() };
        for p in params {
            out.m.push(read_f32(&st, path, &format!("{}.exp_avg", p.name), p.shape)?);
            out.v.push(read_f32(&st, path, &format!("{}.exp_avg_sq", p.name), p.shape)?);
        }
        Ok(out)
    }
}

/// `√Σ g²` over every gradient (accumulated in f64).
pub fn global_norm(grads: &[Vec<f32>]) -> f64 {
    grads.iter().flatten().map(|&g| (g as f64) * (g as f64)).sum::<f64>().sqrt()
}

/// Scales the gradients so their global norm is at most `max_norm` (0: no clipping), as
/// `clip_grad_norm_`: factor `max_norm / (norm + 1e-6)` when below 1. Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Vec<f32>], max_norm: f64) -> f64 {
    let norm = global_norm(grads);
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            let c = coef as f32;
            grads.iter_mut().flatten().for_each(|g| *g *= c);
        }
    }
    norm
}

pub fn read_f32(st: &safetensors::SafeTensors, path: &Path, name: &str, shape: [usize; 2]) -> Result<Vec<f32>> {
    let t = st.tensor(name).with_context(|| format!("{}: no tensor `{name}`", path.display()))?;
    if t.dtype() != safetensors::Dtype::F32 || t.shape() != shape {
        bail!("{}: tensor `{name}` is {:?} {:?}, expected F32 {:?}", path.display(), t.dtype(), t.shape(), shape);
    }
    Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

pub fn write_f32_safetensors(
    path: &Path,
    tensors: &[(String, [usize; 2], &[f32])],
    meta: HashMap<String, String>,
) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| bytemuck::cast_slice(v).to_vec()).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.to_vec(), b)
                .map_err(|e| anyhow::anyhow!("tensor {n}: {e}"))?;
            Ok((n.clone(), v))
        })
        .collect::<Result<Vec<_>>>()?;
    let data = safetensors::tensor::serialize(views, Some(meta)).context("serialising safetensors")?;
    lapidary_model::adapter::write_atomic(path, &data)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(v: Vec<f32>) -> Param {
        let n = v.len();
        Param { name: "w".into(), shape: [1, n], value: v }
    }

    /// Three steps against `torch.optim.AdamW(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)` on
    /// float32 tensors (`foreach=False`; printed by torch 2.15: set `p.grad` to each gradient, `opt.step()`).
    #[test]
    fn matches_torch_adamw() {
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        let mut p = vec![param(vec![0.5, -1.0, 2.0])];
        let mut opt = AdamW::new(cfg, &p);
        let grads = [vec![0.1f32, -0.2, 0.0], vec![0.3, 0.1, -0.5], vec![-0.2, 0.4, 1e-4]];
        for g in &grads {
            opt.step(&mut p, std::slice::from_ref(g), 0.1);
        }
        let want = TORCH_ADAMW;
        for (a, b) in p[0].value.iter().zip(want) {
            assert!((a - b).abs() <= 2e-7 * b.abs().max(1.0), "{:?} vs {want:?}", p[0].value);
        }
        // Hand check of step 1 for one entry: m̂ = g, v̂ = g², so p ← p(1 − lr·wd) − lr·g/(|g| + ε).
        let mut q = vec![param(vec![0.5])];
        let mut o = AdamW::new(cfg, &q);
        o.step(&mut q, &[vec![0.1]], 0.1);
        let hand = 0.5 * (1.0 - 0.1 * 0.01) - 0.1 * 0.1 / (0.1 + 1e-8);
        assert!((q[0].value[0] as f64 - hand).abs() < 1e-7, "{} vs {hand}", q[0].value[0]);
    }

    const TORCH_ADAMW: [f32; 3] = [0.281_224_67, -0.916_328_97, 2.125_854_5];

    #[test]
    fn save_load_roundtrip_is_exact() {
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut p = vec![param(vec![0.5, -1.0, 2.0])];
        let mut opt = AdamW::new(cfg, &p);
        opt.step(&mut p, &[vec![0.1, 0.2, 0.3]], 1e-2);
        let dir = std::env::temp_dir().join(format!("lapidary-optim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("optimizer.safetensors");
        opt.save(&p, &f).unwrap();
        let back = AdamW::load(cfg, &p, &f).unwrap();
        assert_eq!(back, opt);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut g = vec![vec![3.0f32], vec![4.0]];
        let n = clip_grad_norm(&mut g, 1.0);
        assert_eq!(n, 5.0);
        assert!((global_norm(&g) - 1.0).abs() < 1e-6);
        let mut g = vec![vec![0.3f32, 0.4]];
        assert!((clip_grad_norm(&mut g, 1.0) - 0.5).abs() < 1e-7);
        assert_eq!(g[0], vec![0.3, 0.4]);
    }
}
