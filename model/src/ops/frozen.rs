//! The frozen weight as the ops take it: the product `x · Wᵀ` by a dense or packed weight and its input
//! gradient `dy · W`. For packed kinds the dense `W` exists only inside one call: it is dequantized,
//! multiplied and dropped, and dequantized again in the backward; no weight gradient is ever computed (the
//! base is frozen). This keeps a QLoRA run's memory at the size of the packed weights. (Burn 0.21's own
//! quantized tensors have no NF4 and no autodiff support, hence these ops.) Here: the dequantizing reference
//! implementations (`Kernels::frozen_matmul_dx`'s default; the CPU backends' fallback).
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorMetadata;

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
