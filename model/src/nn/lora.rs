//! LoRA over a frozen base: `y = W₀x + (α/r)·B·A·dropout(x)` (rsLoRA: `α/√r`), and DoRA (PEFT's
//! `use_dora`), which also trains a per-output magnitude `m` (`crate::nn::dora`).
//!
//! `A` is `[r, in]`, `B` is `[out, r]`, as PEFT stores `lora_A.weight` / `lora_B.weight`. PEFT's default init:
//! `A` kaiming-uniform with `a = √5` (i.e. uniform in ±1/√in), `B` zero, so a fresh adapter leaves the
//! model unchanged. Only `A`, `B` (and DoRA's `m`) are ever trainable; the base is a `FrozenLinear`.
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use rand::{Rng, SeedableRng};

use super::dora::Dora;
use super::linear::FrozenLinear;
use crate::dtype::cast;
use crate::ops::gemma_backend::GemmaBackend;
use crate::ops::lora::LoraPrims;

/// PEFT's name of DoRA's magnitude in an adapter file (`…q_proj.lora_magnitude_vector`, no `.weight`).
pub const MAGNITUDE: &str = "lora_magnitude_vector";

/// The seven projections PEFT can target in a Gemma decoder layer.
pub const TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// How the adapters behave in this forward pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoraRuntime {
    /// `Some(seed)` in training: dropout masks are a function of this seed, the layer and the element
    /// (`crate::ops::dropout`), so a resumed run draws the same masks as an uninterrupted one, on any
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
    /// DoRA's magnitude, when the adapter is a DoRA one.
    pub dora: Option<Dora<B>>,
}

impl<B: Backend> LoraAdapter<B> {
    /// The trainable tensors by PEFT's name, in the order they are stored, trained and saved: `lora_A`,
    /// `lora_B`, then DoRA's `lora_magnitude_vector` (`[1, out]` here, `[out]` in PEFT's file).
    pub fn trainables(&self) -> Vec<(&'static str, &Tensor<B, 2>)> {
        let mut v = vec![("lora_A", &self.a), ("lora_B", &self.b)];
        if let Some(d) = &self.dora {
            v.push((MAGNITUDE, &d.magnitude));
        }
        v
    }

    /// [`Self::trainables`], to replace them. A or B changing makes DoRA's cached norm stale: it is dropped.
    pub fn trainables_mut(&mut self) -> Vec<&mut Tensor<B, 2>> {
        let mut v = vec![&mut self.a, &mut self.b];
        if let Some(d) = &mut self.dora {
            d.norm = None;
            v.push(&mut d.magnitude);
        }
        v
    }
}

#[derive(Debug, Clone)]
pub struct LoraLinear<B: GemmaBackend> {
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

impl<B: GemmaBackend> LoraLinear<B> {
    pub fn frozen(base: FrozenLinear<B>, key: u64) -> Self {
        Self { base, adapter: None, key }
    }

    /// The adapter's `[A rows, B columns]` for rank `r`: `r` per expert of an expert stack (PEFT's
    /// `ParamWrapper` keeps one `[r · experts, in]` A and one `[out, r · experts]` B for a 3-D parameter).
    pub fn adapter_shapes(&self, r: usize) -> ([usize; 2], [usize; 2]) {
        let [out, inp] = self.base.shape();
        let r = r * self.base.experts();
        ([r, inp], [out, r])
    }

    /// A fresh adapter with PEFT's default init, drawn from `seed`. With `dora`, the magnitude starts as PEFT
    /// starts it, `‖W + s·B·A‖` per output row, which is `‖W‖` since `B = 0`: the layer is unchanged.
    pub fn init_adapter(&mut self, r: usize, scale: f64, dropout: f64, dora: bool, seed: u64, device: &B::Device) {
        let ([r, inp], [out, _]) = self.adapter_shapes(r);
        let bound = 1.0 / (inp as f64).sqrt();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ self.key.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let a: Vec<f32> = (0..r * inp).map(|_| rng.random_range(-bound..bound) as f32).collect();
        self.adapter = Some(LoraAdapter {
            a: Tensor::from_data(TensorData::new(a, [r, inp]), device),
            b: Tensor::zeros([out, r], device),
            scale,
            dropout,
            dora: dora.then(|| Dora::for_base(&self.base, None, device)),
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
        if let Some(dora) = self.adapter.as_ref().and_then(|ad| ad.dora.as_ref()) {
            return dora.forward(&self.base, x, base, lora);
        }
        let [b, s, i] = x.dims();
        let delta = B::lora_delta(x.reshape([b * s, i]).into_primitive().tensor(), lora);
        let delta = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(delta));
        let [_, o] = delta.dims();
        let dt = base.dtype();
        base + cast(delta.reshape([b, s, o]), dt)
    }
}
