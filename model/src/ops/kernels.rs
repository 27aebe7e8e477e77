//! [`Kernels`]: the single ops the model asks of a backend beyond Burn's — the product by a packed frozen
//! weight, the vendor dense product, LoRA dropout's mask, RoPE, GeGLU and RMSNorm. Each has a default in
//! Burn ops (any backend, any float dtype; the reference the faster versions are tested against); burn-flex
//! overrides some with host kernels (`super::cpu_backends`), the CubeCL backends with GPU kernels
//! (`crate::cube`), and `Autodiff` gives each its own backward (`super::autodiff`). The fused ops built on
//! these are [`super::gemma_backend::GemmaBackend`].
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use super::{dropout, geglu, norm, rope};
use crate::quant::PackedWeight;

pub trait Kernels: Backend {
    /// `x · Wᵀ` for `x: [n, in]` → `[n, out]`.
    fn frozen_matmul(x: FloatTensor<Self>, w: &Arc<PackedWeight>) -> FloatTensor<Self>;

    /// `dy · W` for `dy: [n, out]`: the gradient of [`Self::frozen_matmul`] with respect to `x`.
    fn frozen_matmul_dx(dy: FloatTensor<Self>, w: &Arc<PackedWeight>) -> FloatTensor<Self> {
        super::frozen::frozen_matmul_dx_dequant::<Self>(dy, w)
    }

    /// `a · b` (either may be a transposed view; rank 2, or batches of matrices with the same leading
    /// dimensions) where a vendor library matters: the LM head's, attention's and LoRA's products. Default:
    /// Burn's matmul; CUDA: cuBLAS.
    fn dense_matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(a, b)
    }

    /// LoRA dropout's `[rows, cols]` mask for `seed` (0 or `1 / (1 − p)`, the same values on every backend:
    /// `super::dropout`), made where it is used. On `Autodiff`, a constant.
    fn dropout_mask(shape: [usize; 2], p: f64, seed: u64, device: &Self::Device) -> FloatTensor<Self> {
        dropout::mask_host::<Self>(shape, p, seed, device)
    }

    /// Rotary embedding, rotate-half layout: `x` `[batch, seq, heads, d]`, `cos`/`sin` `[batch, seq, 1, d]`
    /// with equal halves (each angle at `i` and `i + d/2`, as RoPE tables are). The backward is the same call
    /// with `−sin`.
    fn rope(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self> {
        rope::forward::<Self>(x, cos, sin)
    }

    /// `gelu_tanh(gate) · up`, same shapes.
    fn geglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        geglu::forward::<Self>(gate, up)
    }

    /// `(d/dgate, d/dup)` of `Σ dout · geglu(gate, up)`.
    fn geglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dout: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        geglu::backward::<Self>(gate, up, dout)
    }

    /// Gemma's RMSNorm over the last dimension: `x · scale / sqrt(mean(x²) + eps)`, in f32 inside, `x`'s
    /// dtype out; `scale` `[dim]` f32 (`1 + w`). On `Autodiff`, `scale` is a constant.
    fn rms_norm(x: FloatTensor<Self>, scale: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        norm::forward::<Self>(x, scale, eps)
    }

    /// `d Σ dout · rms_norm(x) / dx`, in `x`'s dtype.
    fn rms_norm_backward(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        eps: f64,
        dout: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        norm::backward::<Self>(x, scale, eps, dout)
    }
}

/// `a · b` on tensors through [`Kernels::dense_matmul`] (rank 2, or batches with the same leading
/// dimensions; either may be a transposed view).
pub fn dense<B: Kernels, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::dense_matmul(
        a.into_primitive().tensor(),
        b.into_primitive().tensor(),
    )))
}
