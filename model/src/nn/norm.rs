//! Gemma's RMSNorm as a layer: `x / sqrt(mean(x²) + eps) * (1 + w)`.
//!
//! The `1 + w` is Gemma's quirk (transformers stores `w`, zero-initialised; GGUF stores `1 + w`). We keep
//! `1 + w` precomputed, since it is all the forward ever needs. The forward is one op of the backend
//! (`Kernels::rms_norm`) with its own backward on `Autodiff`: autodiff through the composition would run ~8
//! ops forward and ~15 backward over `[tokens × hidden]` and keep several intermediates per norm.
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

use crate::ops::gemma_backend::GemmaBackend;

#[derive(Debug, Clone)]
pub struct RmsNorm<B: Backend> {
    /// `1 + w`, `[dim]`.
    pub scale: Tensor<B, 1>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// `w` as transformers stores it.
    pub fn from_weight(w: &[f32], eps: f64, device: &B::Device) -> Self {
        let plus_one: Vec<f32> = w.iter().map(|x| 1.0 + x).collect();
        let n = plus_one.len();
        Self { scale: Tensor::from_data(TensorData::new(plus_one, [n]), device), eps }
    }

    /// `w` (without the 1), for writing back in transformers' convention.
    pub fn weight(&self) -> Vec<f32> {
        let v: Vec<f32> = self.scale.to_data().convert::<f32>().to_vec().unwrap_or_default();
        v.into_iter().map(|x| x - 1.0).collect()
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
