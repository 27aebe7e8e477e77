//! The compute dtype: f32 (the default everywhere) or bf16 (what QLoRA on GPUs computes in: bitsandbytes'
//! `bnb_4bit_compute_dtype=torch.bfloat16`, the peer's setting).
//!
//! In bf16 the embedding table (also the LM head), the dense frozen weights and every activation between the
//! layers are bf16, and the products by packed weights dequantize to bf16. What transformers and PEFT keep in
//! f32, we keep in f32 too:
//! - RMSNorm computes in f32 and casts its output back (`Gemma3RMSNorm`: `_norm(x.float()) * (1 + w.float())`);
//! - attention's softmax is f32 (transformers' eager `softmax(..., dtype=torch.float32)`; our op casts q, k, v
//!   up and its output back);
//! - the loss: logits are cast to f32 before the log-softmax, as transformers' `loss_function` does;
//! - LoRA: `A` and `B` stay f32 (they are the optimizer's weights), the branch computes in f32 and its output
//!   is cast to the base's dtype before the sum, as PEFT does (`x` cast to `lora_A.weight.dtype`).
//!
//! Burn 0.21 tensors carry their dtype at run time, so one backend type serves both; ops must not mix dtypes
//! (burn-flex does not check in release builds), which the helpers here make explicit.
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorMetadata};

use crate::decoder::Gemma;
use crate::quant::{FrozenLinear, FrozenMatmul};

/// The dtypes a model can compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputeDtype {
    #[default]
    F32,
    Bf16,
}

impl ComputeDtype {
    pub fn dtype(self) -> DType {
        match self {
            ComputeDtype::F32 => DType::F32,
            ComputeDtype::Bf16 => DType::BF16,
        }
    }
}

/// `t` in `dtype` (no-op when it already is).
pub fn cast<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if t.dtype() == dtype {
        t
    } else {
        t.cast(dtype)
    }
}

/// [`cast`] on a backend primitive.
pub fn cast_prim<B: Backend>(t: FloatTensor<B>, dtype: DType) -> FloatTensor<B> {
    if t.dtype() == dtype {
        t
    } else {
        B::float_cast(t, dtype.into())
    }
}

impl<B: FrozenMatmul> Gemma<B> {
    /// The model computing in `dtype`: the embedding table and dense frozen weights cast (norm scales, packed
    /// weights and LoRA factors are untouched; see the module's notes).
    pub fn with_compute_dtype(mut self, dtype: ComputeDtype) -> Self {
        let dt = dtype.dtype();
        self.embed_tokens = cast(self.embed_tokens, dt);
        for (_, l) in crate::adapter::linears_mut(&mut self) {
            if let FrozenLinear::Dense(w) = &mut l.base {
                *w = cast(w.clone(), dt);
            }
        }
        self
    }

    /// What the model computes in: its embedding table's dtype.
    pub fn compute_dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use burn::tensor::Tensor;

    use super::*;
    use crate::backend::FlexCpu;
    use crate::decoder::TokenBatch;
    use crate::layers::lora::LoraRuntime;
    use crate::loss::shifted_targets;
    use crate::quant::QuantKind;
    use crate::ModelFiles;

    fn read(path: &PathBuf, name: &str) -> (Vec<usize>, Vec<f32>) {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let data = match t.dtype() {
            safetensors::Dtype::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(t.data()),
            safetensors::Dtype::I64 => {
                bytemuck::pod_collect_to_vec::<u8, i64>(t.data()).into_iter().map(|x| x as f32).collect()
            }
            other => panic!("{name}: unexpected dtype {other:?}"),
        };
        (t.shape().to_vec(), data)
    }

    /// Largest |a − b| over the largest |b|.
    fn scaled_err(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1e-30f32, |m, x| m.max(x.abs()));
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
    }

    /// In bf16 the tiny Gemma 1/2/3 give transformers' bf16 loss (scripts/make_bf16_fixtures.py) to ~1e-4 and
    /// its bf16 logits to within bf16's own spread: on these random models rounding to bf16 moves the logits
    /// by ~3-4% of their scale (transformers' eager and sdpa bf16 paths differ from each other by as much), so
    /// the logits are held to that yardstick (transformers' bf16-vs-f32 distance) and the loss, where the
    /// rounding averages out, to 2e-4. The logits must also differ from f32 (bf16 really ran).
    #[test]
    fn bf16_logits_and_loss_equal_transformers_bf16() {
        for arch in ["gemma1", "gemma2", "gemma3"] {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny").join(arch);
            let files = ModelFiles::open(&dir).expect("fixture");
            let model = crate::load::load_gemma::<FlexCpu>(
                &files.config,
                files.weights.as_ref(),
                QuantKind::None,
                &Default::default(),
            )
            .expect("load")
            .with_compute_dtype(ComputeDtype::Bf16);
            assert_eq!(model.compute_dtype(), DType::BF16);
            let (shape, ids) = read(&dir.join("reference.safetensors"), "input_ids");
            let rows: Vec<Vec<u32>> = ids.chunks(shape[1]).map(|r| r.iter().map(|&x| x as u32).collect()).collect();
            let tokens = TokenBatch::from_rows(&rows);
            let logits: Tensor<FlexCpu, 3> = model.forward(&tokens, &LoraRuntime::default());
            assert_eq!(logits.dtype(), DType::BF16);
            let ours = logits.into_data().convert::<f32>().to_vec::<f32>().unwrap();
            let reference = dir.join("reference_bf16.safetensors");
            let (_, want) = read(&reference, "logits");
            let (_, f32_ref) = read(&reference, "logits_f32_ref");
            let (err, err_f32) = (scaled_err(&ours, &want), scaled_err(&ours, &f32_ref));
            let spread = scaled_err(&want, &f32_ref);
            let labels: Vec<i64> = tokens.ids.iter().map(|&i| i as i64).collect();
            let nll = model.eval_nll(&tokens, &shifted_targets(&labels, tokens.batch, tokens.seq));
            let want_nll = read(&reference, "nll_sum").1[0] as f64;
            eprintln!(
                "{arch}: logits {err:.2e} of scale from transformers' bf16, {err_f32:.2e} from f32 (transformers' \
                 bf16 is {spread:.2e} from f32); NLL {nll} vs {want_nll}"
            );
            assert!(err < 1.5 * spread, "{arch}: bf16 logits {err:e} of their scale from transformers' ({spread:e})");
            assert!(err_f32 > 0.1 * spread, "{arch}: bf16 logits only {err_f32:e} from f32: did bf16 run?");
            assert!((nll - want_nll).abs() < 2e-4 * want_nll, "{arch}: NLL {nll} vs transformers' bf16 {want_nll}");
        }
    }
}
