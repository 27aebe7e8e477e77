//! DoRA (weight-decomposed LoRA, PEFT's `use_dora`): the adapted weight `W + s·B·A` is rescaled row by row to
//! a trained magnitude `m`, `W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖` (norm of each output row). As PEFT computes
//! it (`peft/tuners/lora/dora.py`, `DoraLinearLayer.forward`, and `variants.py`, `DoraLinearVariant.forward`):
//!
//! `y = base(x) + (m/‖W + s·BA‖ − 1) ⊙ base' + (m/‖W + s·BA‖) ⊙ s·B·A·x'`
//!
//! with the norm detached (DoRA paper §4.3: a constant in the backward, so `m` and the LoRA pair get their
//! gradients only through the two products). Without dropout (or in evaluation) `x' = x` and `base' = base(x)`,
//! the base output reused; with dropout `x' = dropout(x)` and `base' = W·x'`, a second product by the frozen
//! weight on the dropped-out input, exactly as PEFT does. The branch is computed in f32 (PEFT casts `x` to the
//! adapter's dtype) and the sum cast back to the base's dtype.
//!
//! The norm is never formed from a dense `W + s·B·A` (a packed base stays packed):
//! `‖W_o + s(BA)_o‖² = ‖W_o‖² + 2s·Σ_r B[o,r]·(W·Aᵀ)[o,r] + s²·B_o·(A·Aᵀ)·B_oᵀ`, where `‖W_o‖²` is computed
//! once (W is frozen) and `W·Aᵀ` is the frozen product applied to the `r` rows of `A`. Per step that costs one
//! frozen product of `r` rows and two `[out, r]` products; see `weight_norm`.
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};

use super::linear::FrozenLinear;
use crate::dtype::cast;
use crate::ops::gemma_backend::GemmaBackend;
use crate::ops::lora::LoraPrims;

/// DoRA's part of an adapter.
#[derive(Debug, Clone)]
pub struct Dora<B: Backend> {
    /// `[1, out]`, f32: PEFT's `lora_magnitude_vector`, trained with `A` and `B`.
    pub magnitude: Tensor<B, 2>,
    /// `[1, out]`, f32: `‖W_o‖²` of the frozen base (constant).
    pub weight_sq: Tensor<B, 2>,
    /// `‖W + s·B·A‖` `[1, out]` for the current `A` and `B`, when they are fixed (evaluation and generation):
    /// computed once instead of per call. Dropped whenever `A` or `B` is replaced
    /// (`LoraAdapter::trainables_mut`).
    pub norm: Option<Tensor<B, 2>>,
}

/// The dtype the frozen product takes its input in: a dense weight's own (f32 or bf16); packed kinds
/// dequantize to the input's, so f32 as PEFT multiplies (`weight.to(x.dtype)`, `x` in the adapter's f32).
fn frozen_input_dtype<B: GemmaBackend>(base: &FrozenLinear<B>) -> DType {
    match base {
        FrozenLinear::Dense(w) => w.dtype(),
        _ => DType::F32,
    }
}

/// `x` `[n, in]` through the frozen weight → `[n, out]` in f32.
fn frozen_product<B: GemmaBackend>(base: &FrozenLinear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let [n, i] = x.dims();
    let y = base.forward(cast(x, frozen_input_dtype(base)).reshape([1, n, i]));
    let o = y.dims()[2];
    cast(y.reshape([n, o]), DType::F32)
}

impl<B: GemmaBackend> Dora<B> {
    /// DoRA for `base` (an ordinary linear, not an expert stack): `‖W_o‖²` from its (dequantized) weight, and
    /// the magnitude given (`[out]` values) or PEFT's initial one, `‖W_o‖` (`B = 0` at init).
    pub fn for_base(base: &FrozenLinear<B>, magnitude: Option<Vec<f32>>, device: &B::Device) -> Self {
        let [out, inp] = base.shape();
        let w = base.dense_weight();
        let sq: Vec<f32> =
            w.chunks(inp).map(|row| row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() as f32).collect();
        let m = magnitude.unwrap_or_else(|| sq.iter().map(|x| x.sqrt()).collect());
        Self {
            magnitude: Tensor::from_data(TensorData::new(m, [1, out]), device),
            weight_sq: Tensor::from_data(TensorData::new(sq, [1, out]), device),
            norm: None,
        }
    }

    /// `‖W + s·B·A‖` per output row, `[1, out]` f32, outside the autodiff graph (PEFT detaches it).
    pub fn weight_norm(&self, base: &FrozenLinear<B>, a: &Tensor<B, 2>, b: &Tensor<B, 2>, scale: f64) -> Tensor<B, 2> {
        if let Some(n) = &self.norm {
            return n.clone();
        }
        let (a, b) = (a.clone().detach(), b.clone().detach());
        // (W·Aᵀ)ᵀ = A·Wᵀ: the rows of A through the frozen product, `[r, out]`.
        let aw = frozen_product(base, a.clone());
        let cross = (b.clone() * aw.transpose()).sum_dim(1); // [out, 1]: W_o · (B·A)_o
        let gram = a.clone().matmul(a.transpose()); // [r, r]
        let ba_sq = (b.clone().matmul(gram) * b).sum_dim(1); // [out, 1]: ‖(B·A)_o‖²
        let sq = self.weight_sq.clone().transpose() + cross * (2.0 * scale) + ba_sq * (scale * scale);
        // Rounding could take a (near) zero row's square a hair below zero.
        sq.clamp_min(0.0).sqrt().transpose()
    }

    /// The layer's output with DoRA: `y` is the base output `base(x)` (`[batch, seq, out]`, in the compute
    /// dtype), `lora` the adapter as the LoRA op takes it (with this pass's dropout). See the module doc.
    pub fn forward(
        &self,
        base: &FrozenLinear<B>,
        x: Tensor<B, 3>,
        y: Tensor<B, 3>,
        lora: LoraPrims<B>,
    ) -> Tensor<B, 3> {
        let [bs, s, i] = x.dims();
        let (n, o, dt) = (bs * s, y.dims()[2], y.dtype());
        let tensor = |p| Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(p));
        let norm = self.weight_norm(base, &tensor(lora.a.clone()), &tensor(lora.b.clone()), lora.scale);
        let ratio = self.magnitude.clone() / norm; // [1, out]
        let x32 = cast(x.reshape([n, i]), DType::F32);
        let y32 = cast(y.reshape([n, o]), DType::F32);
        let (x_in, base_in) = match lora.dropout {
            None => (x32, y32.clone()),
            Some((p, seed)) => {
                // The same mask the plain LoRA branch draws for this layer and pass.
                let mask = tensor(B::dropout_mask([n, i], p, seed, &x32.device()));
                let xd = x32 * mask;
                let bd = frozen_product(base, xd.clone());
                (xd, bd)
            }
        };
        let delta = tensor(B::lora_delta(x_in.into_primitive().tensor(), LoraPrims { dropout: None, ..lora }));
        let extra = (ratio.clone() - 1.0) * base_in + ratio * delta;
        cast(y32 + extra, dt).reshape([bs, s, o])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::Cpu;
    use crate::nn::lora::{LoraLinear, LoraRuntime};
    use crate::quant::QuantKind;
    use crate::testing::{scaled_err, values};

    /// The norm from `‖W‖²`, the frozen product of A's rows and `A·Aᵀ` equals `‖W + s·B·A‖` formed densely
    /// on the host (f64), for a dense and a packed base, with a delta as large as the weight (no cancellation
    /// hides an error); and a fresh DoRA adapter (B = 0, m = ‖W‖) leaves the layer's output as the base's.
    #[test]
    fn norm_without_the_dense_delta_and_a_fresh_adapter_is_the_identity() {
        let device = Default::default();
        let (out, inp, r, s) = (24, 128, 4, 1.5);
        let w = values(out * inp, 1, 0.5);
        for quant in [QuantKind::None, QuantKind::Nf4] {
            let base = FrozenLinear::<Cpu>::new(w.clone(), [out, inp], quant, &device);
            let a = values(r * inp, 2, 0.3);
            let b = values(out * r, 3, 0.6);
            let dense = base.dense_weight();
            let want: Vec<f32> = (0..out)
                .map(|o| {
                    let row = (0..inp).map(|i| {
                        let ba: f64 = (0..r).map(|k| b[o * r + k] as f64 * a[k * inp + i] as f64).sum();
                        dense[o * inp + i] as f64 + s * ba
                    });
                    row.map(|v| v * v).sum::<f64>().sqrt() as f32
                })
                .collect();
            let dora = Dora::for_base(&base, None, &device);
            let t =
                |v: &[f32], shape: [usize; 2]| Tensor::<Cpu, 2>::from_data(TensorData::new(v.to_vec(), shape), &device);
            let got = dora.weight_norm(&base, &t(&a, [r, inp]), &t(&b, [out, r]), s);
            let got = got.into_data().to_vec::<f32>().unwrap();
            assert!(scaled_err(&got, &want) < 1e-5, "{quant:?}: {}", scaled_err(&got, &want));

            let mut lin = LoraLinear::frozen(base, 3);
            lin.init_adapter(r, s, 0.0, true, 7, &device);
            let x = Tensor::<Cpu, 3>::from_data(TensorData::new(values(5 * inp, 4, 1.0), [1, 5, inp]), &device);
            let y = lin.forward(x.clone(), &LoraRuntime::default()).into_data().to_vec::<f32>().unwrap();
            let y0 = lin.base.forward(x).into_data().to_vec::<f32>().unwrap();
            assert!(scaled_err(&y, &y0) < 1e-6, "{quant:?}: {}", scaled_err(&y, &y0));
        }
    }
}
