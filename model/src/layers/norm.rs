//! Gemma's RMSNorm: `x / sqrt(mean(x²) + eps) * (1 + w)`.
//!
//! The `1 + w` is Gemma's quirk (transformers stores `w`, zero-initialised; GGUF stores `1 + w`). We keep
//! `1 + w` precomputed, since it is all the forward ever needs.
//!
//! The forward is one op of the backend (`FrozenMatmul::rms_norm`: a CubeCL kernel on GPUs, [`forward_burn`]
//! elsewhere) with its own backward on `Autodiff` ([`backward_burn`], or the kernel): autodiff through the
//! composition would run ~8 ops forward and ~15 backward over `[tokens × hidden]` and keep several
//! intermediates per norm for the backward; the fused op keeps only its input. The scale is frozen (QLoRA
//! trains the adapters only): it gets no gradient.
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorData, TensorMetadata, TensorPrimitive};

use crate::compute::cast;
use crate::ops::FrozenMatmul;

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

impl<B: FrozenMatmul> RmsNorm<B> {
    /// Normalises over the last dimension, in f32 whatever `x`'s dtype (as transformers does), and returns
    /// `x`'s dtype.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let scale = self.scale.clone().into_primitive().tensor();
        Tensor::from_primitive(TensorPrimitive::Float(B::rms_norm(x.into_primitive().tensor(), scale, self.eps)))
    }
}

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
pub fn forward_burn<B: Backend>(x: FloatTensor<B>, scale: FloatTensor<B>, eps: f64) -> FloatTensor<B> {
    let (x, shape, dtype) = rows::<B>(x);
    let scale = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(scale));
    let r = inv_rms(&x, eps);
    unrows(x * r * cast(scale, DType::F32).unsqueeze::<2>(), shape, dtype)
}

/// `d Σ dout · forward(x) / dx = r·g − x·r³·mean(g·x)` with `g = dout · scale`, in Burn ops.
pub fn backward_burn<B: Backend>(
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
