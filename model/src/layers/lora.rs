//! LoRA over a frozen base: `y = W₀x + (α/r)·B·A·dropout(x)` (rsLoRA: `α/√r`).
//!
//! `A` is `[r, in]`, `B` is `[out, r]`, as PEFT stores `lora_A.weight` / `lora_B.weight`. PEFT's default init:
//! `A` kaiming-uniform with `a = √5` (i.e. uniform in ±1/√in), `B` zero, so a fresh adapter leaves the
//! model unchanged. Only `A` and `B` are ever trainable; the base is a `FrozenLinear`.
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Scalar, Tensor, TensorData, TensorMetadata, TensorPrimitive};
use rand::{Rng, SeedableRng};

use crate::compute::{cast, cast_prim};
use crate::quant::{FrozenLinear, FrozenMatmul};

/// The seven projections PEFT can target in a Gemma decoder layer.
pub const TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// How the adapters behave in this forward pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoraRuntime {
    /// `Some(seed)` in training: dropout masks are a function of this seed, the layer and the element
    /// (`crate::layers::dropout`), so a resumed run draws the same masks as an uninterrupted one, on any
    /// backend. `None`: no dropout (evaluation).
    pub dropout_seed: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct LoraAdapter<B: Backend> {
    /// `[r, in]`
    pub a: Tensor<B, 2>,
    /// `[out, r]`
    pub b: Tensor<B, 2>,
    pub scale: f64,
    pub dropout: f64,
}

/// An adapter as the LoRA ops take it (`FrozenMatmul::lora_delta`, `geglu_lora_down`): `A` `[r, in]`, `B`
/// `[out, r]` (f32), the scale, and this pass's dropout `(p, seed)` (`crate::layers::dropout`).
#[derive(Debug, Clone)]
pub struct LoraPrims<B: Backend> {
    pub a: FloatTensor<B>,
    pub b: FloatTensor<B>,
    pub scale: f64,
    pub dropout: Option<(f64, u64)>,
}

#[derive(Debug, Clone)]
pub struct LoraLinear<B: FrozenMatmul> {
    pub base: FrozenLinear<B>,
    pub adapter: Option<LoraAdapter<B>>,
    /// Distinguishes this layer's dropout stream from every other's.
    pub key: u64,
}

/// `α/r`, or `α/√r` with rsLoRA.
pub fn lora_scale(r: usize, alpha: f64, rslora: bool) -> f64 {
    if rslora {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    }
}

impl<B: FrozenMatmul> LoraLinear<B> {
    pub fn frozen(base: FrozenLinear<B>, key: u64) -> Self {
        Self { base, adapter: None, key }
    }

    /// A fresh adapter with PEFT's default init, drawn from `seed`.
    pub fn init_adapter(&mut self, r: usize, scale: f64, dropout: f64, seed: u64, device: &B::Device) {
        let [out, inp] = self.base.shape();
        let bound = 1.0 / (inp as f64).sqrt();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ self.key.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let a: Vec<f32> = (0..r * inp).map(|_| rng.random_range(-bound..bound) as f32).collect();
        self.adapter = Some(LoraAdapter {
            a: Tensor::from_data(TensorData::new(a, [r, inp]), device),
            b: Tensor::zeros([out, r], device),
            scale,
            dropout,
        });
    }

    /// The adapter, if any, as the LoRA ops take it in this pass (its dropout seeded for this layer).
    pub fn prims(&self, rt: &LoraRuntime) -> Option<LoraPrims<B>> {
        let ad = self.adapter.as_ref()?;
        let dropout = match rt.dropout_seed {
            Some(seed) if ad.dropout > 0.0 => Some((ad.dropout, seed ^ self.key)),
            _ => None,
        };
        Some(LoraPrims {
            a: ad.a.clone().into_primitive().tensor(),
            b: ad.b.clone().into_primitive().tensor(),
            scale: ad.scale,
            dropout,
        })
    }

    /// # Shapes
    /// `[batch, seq, in]` → `[batch, seq, out]`
    pub fn forward(&self, x: Tensor<B, 3>, rt: &LoraRuntime) -> Tensor<B, 3> {
        let base = self.base.forward(x.clone());
        let Some(lora) = self.prims(rt) else { return base };
        let [b, s, i] = x.dims();
        let delta = B::lora_delta(x.reshape([b * s, i]).into_primitive().tensor(), lora);
        let delta = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(delta));
        let [_, o] = delta.dims();
        let dt = base.dtype();
        base + cast(delta.reshape([b, s, o]), dt)
    }
}

/// The branch in Burn ops (`FrozenMatmul::lora_delta`'s default, and its forward on `Autodiff`): PEFT casts
/// the input to the adapter's dtype (f32), applies dropout, multiplies by `A` then `B` (through the backend's
/// dense product: cuBLAS on CUDA) and scales; the result is cast back to the input's dtype. Returns it
/// (`[n, out]`) and `h = dropout(x)·Aᵀ` (`[n, r]`, which the backward needs).
pub(crate) fn branch<B: FrozenMatmul>(x: FloatTensor<B>, lora: &LoraPrims<B>) -> (FloatTensor<B>, FloatTensor<B>) {
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
pub(crate) fn branch_backward<B: FrozenMatmul>(
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
pub(crate) fn dropped_input<B: FrozenMatmul>(
    x: FloatTensor<B>,
    dtype: DType,
    dropout: Option<(f64, u64)>,
) -> FloatTensor<B> {
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
