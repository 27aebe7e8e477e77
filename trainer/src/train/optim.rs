//! AdamW on the LoRA matrices, on the model's device in f32, exactly as `torch.optim.AdamW` (single-tensor
//! path) computes it, plus global-norm gradient clipping as `torch.nn.utils.clip_grad_norm_` does.
//!
//! Parameters, gradients and both moments are flat tensors ([`super::params::Params`]): an update is a
//! dozen elementwise ops over the whole adapter, whatever the number of matrices, and nothing leaves the
//! device but the gradient norm. Each op rounds to f32 as torch's do (no fused multiply-adds across ops), so
//! on the CPU the result is torch's to the last bit or two. Checkpoints download the moments as they are, so
//! a resumed run continues from bit-identical state.
use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};

use super::params::{download, split, upload, Slot};
use super::tensor_file::{read_f32, write_f32_safetensors};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

#[derive(Debug, Clone)]
pub struct AdamW<B: Backend> {
    pub config: AdamWConfig,
    /// Steps taken (torch's `state["step"]`).
    pub t: u64,
    /// First moments (`exp_avg`), laid out as the parameters.
    pub m: Tensor<B, 1>,
    /// Second moments (`exp_avg_sq`).
    pub v: Tensor<B, 1>,
}

impl<B: Backend> AdamW<B> {
    /// Zero moments for `n` parameters.
    pub fn new(config: AdamWConfig, n: usize, device: &B::Device) -> Self {
        Self { config, t: 0, m: Tensor::zeros([n], device), v: Tensor::zeros([n], device) }
    }

    /// One update of `p` with gradient `g` and learning rate `lr`; returns the new `p`:
    /// `p ← p·(1 − lr·wd)`, `m ← lerp(m, g, 1 − β₁)`, `v ← β₂v + (1 − β₂)g²`,
    /// `p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)`.
    pub fn step(&mut self, p: Tensor<B, 1>, g: Tensor<B, 1>, lr: f64) -> Tensor<B, 1> {
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
        let p = if c.weight_decay != 0.0 { p * decay } else { p };
        // torch's lerp_ with weight < 0.5: m + w·(g − m).
        let m = self.m.clone() + (g.clone() - self.m.clone()) * w1;
        // torch: v.mul_(β₂).addcmul_(g, g, value=1 − β₂), which rounds as v·β₂ + ((1 − β₂)·g)·g.
        let v = self.v.clone() * b2 + (g.clone() * w2) * g;
        let denom = v.clone().sqrt() / bc2s + eps;
        let p = p + (m.clone() / denom) * (-step_size);
        (self.m, self.v) = (m, v);
        p
    }

    /// Moments as a safetensors file (`{name}.exp_avg`, `{name}.exp_avg_sq`) with the step in the metadata.
    pub fn save(&self, slots: &[Slot], path: &Path) -> Result<()> {
        let (m, v) = (split(slots, &download(&self.m)), split(slots, &download(&self.v)));
        let mut tensors: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
        for (m, v) in m.iter().zip(&v) {
            tensors.push((format!("{}.exp_avg", m.name), m.shape.to_vec(), &m.value));
            tensors.push((format!("{}.exp_avg_sq", v.name), v.shape.to_vec(), &v.value));
        }
        let meta = HashMap::from([("step".to_string(), self.t.to_string())]);
        write_f32_safetensors(path, &tensors, meta)
    }

    /// Reads what [`AdamW::save`] wrote, for exactly these parameters.
    pub fn load(config: AdamWConfig, slots: &[Slot], path: &Path, device: &B::Device) -> Result<Self> {
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
        let (mut m, mut v) = (Vec::new(), Vec::new());
        for s in slots {
            m.extend(read_f32(&st, path, &format!("{}.exp_avg", s.name), &s.shape)?);
            v.extend(read_f32(&st, path, &format!("{}.exp_avg_sq", s.name), &s.shape)?);
        }
        Ok(Self { config, t, m: upload(m, device), v: upload(v, device) })
    }
}

/// Scales the gradients so their global norm `√Σ g²` is at most `max_norm` (0: no clipping), as
/// `clip_grad_norm_`: factor `max_norm / (norm + 1e-6)` when below 1. Returns the gradients and the norm
/// before clipping (the one value read back from the device).
pub fn clip_grad_norm<B: Backend>(g: Tensor<B, 1>, max_norm: f64) -> (Tensor<B, 1>, f64) {
    let norm = global_norm(&g);
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            return (g * coef as f32, norm);
        }
    }
    (g, norm)
}

/// `√Σ g²`, summed on the device in f32 (as torch does for f32 gradients).
pub fn global_norm<B: Backend>(g: &Tensor<B, 1>) -> f64 {
    if g.dims()[0] == 0 {
        return 0.0;
    }
    let sq: f32 = (g.clone() * g.clone()).sum().into_scalar().elem();
    (sq as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use lapidary_model::backends::Cpu;

    use super::*;
    use crate::train::params::{Param, Params};

    fn flat(v: &[f32]) -> Tensor<Cpu, 1> {
        upload(v.to_vec(), &Default::default())
    }

    fn slots(n: usize) -> Vec<Slot> {
        vec![Slot { name: "w".into(), shape: [1, n], offset: 0 }]
    }

    /// Three steps against `torch.optim.AdamW(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)` on
    /// float32 tensors (`foreach=False`; printed by torch 2.15: set `p.grad` to each gradient, `opt.step()`).
    #[test]
    fn matches_torch_adamw() {
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        let mut p = flat(&[0.5, -1.0, 2.0]);
        let mut opt = AdamW::<Cpu>::new(cfg, 3, &Default::default());
        let grads = [[0.1f32, -0.2, 0.0], [0.3, 0.1, -0.5], [-0.2, 0.4, 1e-4]];
        for g in &grads {
            p = opt.step(p, flat(g), 0.1);
        }
        let (got, want) = (download(&p), TORCH_ADAMW);
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() <= 2e-7 * b.abs().max(1.0), "{got:?} vs {want:?}");
        }
        // Hand check of step 1 for one entry: m̂ = g, v̂ = g², so p ← p(1 − lr·wd) − lr·g/(|g| + ε).
        let mut o = AdamW::<Cpu>::new(cfg, 1, &Default::default());
        let q = download(&o.step(flat(&[0.5]), flat(&[0.1]), 0.1))[0];
        let hand = 0.5 * (1.0 - 0.1 * 0.01) - 0.1 * 0.1 / (0.1 + 1e-8);
        assert!((q as f64 - hand).abs() < 1e-7, "{q} vs {hand}");
    }

    const TORCH_ADAMW: [f32; 3] = [0.281_224_67, -0.916_328_97, 2.125_854_5];

    #[test]
    fn save_load_roundtrip_is_exact() {
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut opt = AdamW::<Cpu>::new(cfg, 3, &Default::default());
        let _ = opt.step(flat(&[0.5, -1.0, 2.0]), flat(&[0.1, 0.2, 0.3]), 1e-2);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("optimizer.safetensors");
        opt.save(&slots(3), &f).unwrap();
        let back = AdamW::<Cpu>::load(cfg, &slots(3), &f, &Default::default()).unwrap();
        assert_eq!(back.t, opt.t);
        assert_eq!(download(&back.m), download(&opt.m));
        assert_eq!(download(&back.v), download(&opt.v));
        // A moment of the wrong shape is refused, naming the tensor.
        let e = AdamW::<Cpu>::load(cfg, &slots(4), &f, &Default::default()).unwrap_err();
        assert!(format!("{e:#}").contains("w.exp_avg"), "{e:#}");
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let (g, n) = clip_grad_norm(flat(&[3.0, 4.0]), 1.0);
        assert_eq!(n, 5.0);
        assert!((global_norm(&g) - 1.0).abs() < 1e-6);
        let (g, n) = clip_grad_norm(flat(&[0.3, 0.4]), 1.0);
        assert!((n - 0.5).abs() < 1e-7);
        assert_eq!(download(&g), vec![0.3, 0.4]);
        assert_eq!(global_norm(&flat(&[])), 0.0);
    }

    /// The flat layout: matrices end to end in order, views back into the same shapes, and the host round
    /// trip gives back what went in.
    #[test]
    fn flat_params_round_trip() {
        let values = vec![
            Param { name: "a".into(), shape: [2, 3], value: (0..6).map(|x| x as f32).collect() },
            Param { name: "b".into(), shape: [4, 1], value: vec![-1.0, -2.0, -3.0, -4.0] },
        ];
        let p = Params::<Cpu>::from_host(&values, &Default::default());
        assert_eq!(p.len(), 10);
        assert_eq!(p.slots[1].offset, 6);
        assert_eq!(p.to_host(), values);
    }
}
