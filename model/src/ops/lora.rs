//! LoRA's branch as ops: `(α/r)·dropout(x)·Aᵀ·Bᵀ` and its gradients, and Gemma's down projection with its
//! adapter applied to the GeGLU (`geglu_lora_down`), in the backend's ops. These are the references (and
//! the `Autodiff` forward) of `GemmaBackend::lora_delta` and `GemmaBackend::geglu_lora_down`; the layer that
//! holds an adapter is `crate::nn::lora`.
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Scalar, TensorMetadata};

use super::frozen_weight::FrozenWeight;
use super::kernels::Kernels;
use crate::dtype::cast_prim;

/// An adapter as the LoRA ops take it (`GemmaBackend::lora_delta`, `geglu_lora_down`): `A` `[r, in]`, `B`
/// `[out, r]` (f32), the scale, and this pass's dropout `(p, seed)` (`super::dropout`).
#[derive(Debug, Clone)]
pub struct LoraPrims<B: Backend> {
    pub a: FloatTensor<B>,
    pub b: FloatTensor<B>,
    pub scale: f64,
    pub dropout: Option<(f64, u64)>,
}

/// The branch in Burn ops (`GemmaBackend::lora_delta`'s default, and its forward on `Autodiff`): PEFT casts
/// the input to the adapter's dtype (f32), applies dropout, multiplies by `A` then `B` (through the backend's
/// dense product: cuBLAS on CUDA) and scales; the result is cast back to the input's dtype. Returns it
/// (`[n, out]`) and `h = dropout(x)·Aᵀ` (`[n, r]`, which the backward needs).
pub fn branch<B: Kernels>(x: FloatTensor<B>, lora: &LoraPrims<B>) -> (FloatTensor<B>, FloatTensor<B>) {
    let (dt, adt) = (x.dtype(), lora.a.dtype());
    let h = B::dense_matmul(dropped_input::<B>(x, adt, lora.dropout), B::float_transpose(lora.a.clone()));
    let product = B::dense_matmul(h.clone(), B::float_transpose(lora.b.clone()));
    let delta = B::float_mul_scalar(product, Scalar::new(lora.scale, &adt));
    (cast_prim::<B>(delta, dt), h)
}

/// The gradients `[dx, dA, dB]` of [`branch`] for `dy` (`[n, out]`), those asked for in `want`, as autodiff
/// of its ops gives them, op for op: `g = cast(dy)·scale` (f32); `dB = (hᵀ·g)ᵀ`; `dh = g·B`;
/// `dA = (dropout(x)ᵀ·dh)ᵀ`; `dx = cast(dropout'(dh·A), dt)` (`dt`: the input's dtype). `x` is asked for only
/// for `dA`, so that a fused caller may make it again instead of keeping it.
pub fn branch_backward<B: Kernels>(
    x: impl FnOnce() -> FloatTensor<B>,
    dt: DType,
    lora: LoraPrims<B>,
    h: FloatTensor<B>,
    dy: FloatTensor<B>,
    want: [bool; 3],
) -> [Option<FloatTensor<B>>; 3] {
    let LoraPrims { a, b, scale, dropout } = lora;
    let adt = a.dtype();
    let device = B::float_device(&dy);
    let g = B::float_mul_scalar(cast_prim::<B>(dy, adt), Scalar::new(scale, &adt));
    let db = want[2].then(|| B::float_transpose(B::dense_matmul(B::float_transpose(h), g.clone())));
    if !want[0] && !want[1] {
        return [None, None, db];
    }
    let dh = B::dense_matmul(g, b);
    let da = want[1].then(|| {
        let x2 = dropped_input::<B>(x(), adt, dropout);
        B::float_transpose(B::dense_matmul(B::float_transpose(x2), dh.clone()))
    });
    let dx = want[0].then(|| {
        let mut dx = B::dense_matmul(dh, a);
        if let Some((prob, seed)) = dropout {
            let shape: [usize; 2] = dx.shape().dims();
            dx = B::float_mul(dx, B::dropout_mask(shape, prob, seed, &device));
        }
        cast_prim::<B>(dx, dt)
    });
    [dx, da, db]
}

/// `dropout(cast(x, dtype))` for `x` `[n, in]`; the mask is a function of `(p, seed)`, so the backward
/// makes it again instead of keeping it.
pub fn dropped_input<B: Kernels>(x: FloatTensor<B>, dtype: DType, dropout: Option<(f64, u64)>) -> FloatTensor<B> {
    let x = cast_prim::<B>(x, dtype);
    match dropout {
        Some((p, seed)) => {
            let device = B::float_device(&x);
            let shape: [usize; 2] = x.shape().dims();
            B::float_mul(x, B::dropout_mask(shape, p, seed, &device))
        }
        None => x,
    }
}

/// `GemmaBackend::geglu_lora_down` in the backend's ops: `act = geglu(gate, up)`, the frozen product and
/// LoRA's branch of it, added in `act`'s dtype as `nn::lora::LoraLinear::forward` adds them. Returns the output and the
/// branch's `h` (for the backward).
pub fn geglu_lora_down<B: Kernels>(
    gate: FloatTensor<B>,
    up: FloatTensor<B>,
    w: &FrozenWeight<B>,
    lora: &LoraPrims<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let act = B::geglu(gate, up);
    let base = w.matmul(act.clone());
    let (delta, h) = branch::<B>(act, lora);
    let dt = base.dtype();
    (B::float_add(base, cast_prim::<B>(delta, dt)), h)
}
