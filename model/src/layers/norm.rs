//! Gemma's RMSNorm: `x / sqrt(mean(x²) + eps) * (1 + w)`.
//!
//! The `1 + w` is Gemma's quirk (transformers stores `w`, zero-initialised; GGUF stores `1 + w`). We keep
//! `1 + w` precomputed, since it is all the forward ever needs.
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use crate::compute::cast;

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

    /// Normalises over the last dimension, in f32 whatever `x`'s dtype (as transformers does), and returns
    /// `x`'s dtype.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x = cast(x, DType::F32);
        let var = x.clone().powi_scalar(2).mean_dim(D - 1);
        // A division, not `* recip()`: burn-ndarray 0.21's SIMD `recip` is an approximation (~3e-4 relative
        // error on the vectorised part), which alone puts logits 1e-3 off transformers'.
        let x = x / (var + self.eps).sqrt();
        cast(x * self.scale.clone().unsqueeze::<D>(), dtype)
    }

    /// `w` (without the 1), for writing back in transformers' convention.
    pub fn weight(&self) -> Vec<f32> {
        let v: Vec<f32> = self.scale.to_data().convert::<f32>().to_vec().unwrap_or_default();
        v.into_iter().map(|x| x - 1.0).collect()
    }
}
