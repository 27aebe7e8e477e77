//! The frozen weight as the fused ops take it (`GemmaBackend::geglu_lora_down`, the LoRA branch): a
//! `FrozenLinear`'s dense `[in, out]` tensor or its packed weight, multiplied through the backend's
//! `Kernels::frozen_matmul` / `frozen_matmul_dx` (references: `super::frozen`).
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;

use super::kernels::Kernels;
use crate::quant::PackedWeight;

/// A [`FrozenLinear`]'s weight on primitives, for ops that multiply by it inside their own forward and
/// backward (`Kernels::geglu_lora_down`): dense `[in, out]`, or packed.
#[derive(Debug, Clone)]
pub enum FrozenWeight<B: Backend> {
    Dense(FloatTensor<B>),
    Packed(Arc<PackedWeight>),
}

impl<B: Kernels> FrozenWeight<B> {
    /// `x · Wᵀ` for `x` `[n, in]`, as `nn::linear::FrozenLinear::forward` computes it.
    pub fn matmul(&self, x: FloatTensor<B>) -> FloatTensor<B> {
        match self {
            FrozenWeight::Dense(w) => B::float_matmul(x, w.clone()),
            FrozenWeight::Packed(p) => B::frozen_matmul(x, p),
        }
    }

    /// `dy · W`: the gradient of [`Self::matmul`] with respect to `x`, as autodiff of it gives it.
    pub fn matmul_dx(&self, dy: FloatTensor<B>) -> FloatTensor<B> {
        match self {
            FrozenWeight::Dense(w) => B::float_matmul(dy, B::float_transpose(w.clone())),
            FrozenWeight::Packed(p) => B::frozen_matmul_dx(dy, p),
        }
    }
}
