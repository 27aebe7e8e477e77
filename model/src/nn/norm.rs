//! Gemma's RMSNorm as a layer: `x / sqrt(mean(x²) + eps) * (1 + w)`.
//!
//! The `1 + w` is Gemma 1-3's quirk (transformers stores `w`, zero-initialised; GGUF stores `1 + w`); Gemma 4
//! multiplies by `w` itself (ones-initialised) and has norms without any weight (its value norm, its router's).
//! We keep the effective scale precomputed, since it is all the forward ever needs. The forward is one op of the backend
//! (`Kernels::rms_norm`) with its own backward on `Autodiff`: autodiff through the composition would run ~8
//! ops forward and ~15 backward over `[tokens × hidden]` and keep several intermediates per norm.
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

use crate::ops::gemma_backend::GemmaBackend;

#[derive(Debug, Clone)]
pub struct RmsNorm<B: Backend> {
    /// `1 + w` (Gemma 1-3) or `w` (Gemma 4), `[dim]`.
    pub scale: Tensor<B, 1>,
    pub eps: f64,
    /// Whether `scale` is `1 + w` (see the module's notes).
    pub adds_one: bool,
}

impl<B: Backend> RmsNorm<B> {
    /// `w` as transformers stores it, Gemma 1-3's convention.
    pub fn from_weight(w: &[f32], eps: f64, device: &B::Device) -> Self {
        Self::from_weight_in(w, eps, true, device)
    }

    /// `w` as transformers stores it; `adds_one`: the model scales by `1 + w` (Gemma 1-3) rather than `w`.
    pub fn from_weight_in(w: &[f32], eps: f64, adds_one: bool, device: &B::Device) -> Self {
        let offset = if adds_one { 1.0 } else { 0.0 };
        let scale: Vec<f32> = w.iter().map(|x| offset + x).collect();
        let n = scale.len();
        Self { scale: Tensor::from_data(TensorData::new(scale, [n]), device), eps, adds_one }
    }

    /// A norm without a learned scale (Gemma 4's `with_scale=False`).
    pub fn unscaled(dim: usize, eps: f64, device: &B::Device) -> Self {
        Self { scale: Tensor::ones([dim], device), eps, adds_one: false }
    }

    /// `w`, for writing back in transformers' convention.
    pub fn weight(&self) -> Vec<f32> {
        let v: Vec<f32> = self.scale.to_data().convert::<f32>().to_vec().unwrap_or_default();
        let offset = if self.adds_one { 1.0 } else { 0.0 };
        v.into_iter().map(|x| x - offset).collect()
    }
}

impl<B: GemmaBackend> RmsNorm<B> {
    /// Normalises over the last dimension, in f32 whatever `x`'s dtype (as transformers does), and returns
    /// `x`'s dtype.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let scale = self.scale.clone().into_primitive().tensor();
        Tensor::from_primitive(TensorPrimitive::Float(B::rms_norm(x.into_primitive().tensor(), scale, self.eps)))
    }
}
