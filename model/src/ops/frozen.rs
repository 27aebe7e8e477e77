//! The frozen weight as the ops take it: the product `x · Wᵀ` by a dense or packed weight and its input
//! gradient `dy · W`. For packed kinds the dense `W` exists only inside one call: it is dequantized,
//! multiplied and dropped, and dequantized again in the backward; no weight gradient is ever computed (the
//! base is frozen). This keeps a QLoRA run's memory at the size of the packed weights. (Burn 0.21's own
//! quantized tensors have no NF4 and no autodiff support, hence these ops.)
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorMetadata;

use super::kernels::Kernels;
use crate::dtype::cast_prim;
use crate::quant::PackedWeight;

/// Dequantize then multiply: the plain (non-differentiating) implementation for any backend.
pub fn frozen_matmul_dequant<B: Backend>(x: FloatTensor<B>, w: &PackedWeight) -> FloatTensor<B> {
    let device = B::float_device(&x);
    let dense = cast_prim::<B>(w.to_primitive::<B>(&device), x.dtype());
    B::float_matmul(x, B::float_transpose(dense))
}

/// `dy · W` by dequantizing: the plain implementation of the input gradient for any backend.
pub fn frozen_matmul_dx_dequant<B: Backend>(dy: FloatTensor<B>, w: &PackedWeight) -> FloatTensor<B> {
    let device = B::float_device(&dy);
    let dense = cast_prim::<B>(w.to_primitive::<B>(&device), dy.dtype());
    B::float_matmul(dy, dense)
}

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
