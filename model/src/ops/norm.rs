//! Gemma's RMSNorm, `x / sqrt(mean(x²) + eps) · scale`, and its backward in Burn ops: the reference for
//! `Kernels::rms_norm` (any backend; computed in f32 whatever `x`'s dtype, as transformers does). The scale
//! is frozen: it gets no gradient.
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorMetadata, TensorPrimitive};

use crate::dtype::cast;

/// `x` of any rank as `[rows, dim]` in f32, and its shape and dtype to return to.
fn rows<B: Backend>(x: FloatTensor<B>) -> (Tensor<B, 2>, burn::tensor::Shape, DType) {
    let (shape, dtype) = (x.shape(), x.dtype());
    let dim = shape[shape.num_dims() - 1];
    let x = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(B::float_reshape(x, [shape.num_elements()].into())));
    (cast(x.reshape([shape.num_elements() / dim, dim]), DType::F32), shape, dtype)
}

fn unrows<B: Backend>(y: Tensor<B, 2>, shape: burn::tensor::Shape, dtype: DType) -> FloatTensor<B> {
    B::float_reshape(cast(y, dtype).into_primitive().tensor(), shape)
}

/// `1 / sqrt(mean(x²) + eps)` per row, `[rows, 1]`.
fn inv_rms<B: Backend>(x: &Tensor<B, 2>, eps: f64) -> Tensor<B, 2> {
    // A division, not `recip()`: burn-ndarray 0.21's SIMD `recip` is an approximation (~3e-4 relative error
    // on the vectorised part), which alone puts logits 1e-3 off transformers'.
    let var = x.clone().powi_scalar(2).mean_dim(1);
    var.ones_like() / (var + eps).sqrt()
}

/// `x · r · scale`, `r = 1 / sqrt(mean(x²) + eps)` over the last dimension, in Burn ops.
pub fn forward<B: Backend>(x: FloatTensor<B>, scale: FloatTensor<B>, eps: f64) -> FloatTensor<B> {
    let (x, shape, dtype) = rows::<B>(x);
    let scale = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(scale));
    let r = inv_rms(&x, eps);
    unrows(x * r * cast(scale, DType::F32).unsqueeze::<2>(), shape, dtype)
}

/// `d Σ dout · forward(x) / dx = r·g − x·r³·mean(g·x)` with `g = dout · scale`, in Burn ops.
pub fn backward<B: Backend>(
    x: FloatTensor<B>,
    scale: FloatTensor<B>,
    eps: f64,
    dout: FloatTensor<B>,
) -> FloatTensor<B> {
    let (x, shape, dtype) = rows::<B>(x);
    let (dout, _, _) = rows::<B>(dout);
    let scale = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(scale));
    let g = dout * cast(scale, DType::F32).unsqueeze::<2>();
    let r = inv_rms(&x, eps);
    let gx = (g.clone() * x.clone()).mean_dim(1);
    let dx = g * r.clone() - x * (r.clone() * r.clone() * r * gx);
    unrows(dx, shape, dtype)
}
