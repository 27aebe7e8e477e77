//! Gemma 4's per-layer inputs (PLE, transformers' `get_per_layer_inputs` / `project_per_layer_inputs` and the
//! block at the end of each decoder layer): every layer gets a small input of its own, the sum of a second token
//! table's row (`[vocab, layers · P]`, scaled by `√P`) and a projection of the scaled embeddings (scaled by
//! `hidden^-½`, RMS-normed per layer), times `2^-½`. At the end of layer `i`,
//! `h + norm(projection(gelu_tanh(gate(h)) · input_i))`.
use burn::tensor::{DType, Tensor, TensorPrimitive};

use super::embedding::TokenTable;
use super::lora::{LoraLinear, LoraRuntime};
use super::norm::RmsNorm;
use crate::ops::gemma_backend::GemmaBackend;

/// The model-level half: the table, the projection of the embeddings and its norm.
#[derive(Debug, Clone)]
pub struct PerLayerEmbedding<B: GemmaBackend> {
    /// `[vocab_per_layer, layers · P]`.
    pub table: TokenTable<B>,
    /// `per_layer_model_projection`, `hidden → layers · P`.
    pub projection: LoraLinear<B>,
    /// `per_layer_projection_norm`, over `P`.
    pub norm: RmsNorm<B>,
    pub layers: usize,
    pub dim: usize,
}

/// The block at the end of one decoder layer.
#[derive(Debug, Clone)]
pub struct PerLayerBlock<B: GemmaBackend> {
    /// `per_layer_input_gate`, `hidden → P`.
    pub gate: LoraLinear<B>,
    /// `per_layer_projection`, `P → hidden`.
    pub projection: LoraLinear<B>,
    /// `post_per_layer_input_norm`, over `hidden`.
    pub norm: RmsNorm<B>,
}

/// transformers multiplies by its scale cast to the activations' dtype (as for the main embedding).
fn scale_in(x: f32, dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => half::bf16::from_f32(x).to_f32(),
        _ => x,
    }
}

impl<B: GemmaBackend> PerLayerEmbedding<B> {
    /// Every layer's input, `[batch, seq, layers, P]`, from the tokens and their scaled embeddings
    /// `[batch, seq, hidden]`.
    pub fn inputs(&self, ids: &[u32], embeds: Tensor<B, 3>, device: &B::Device, rt: &LoraRuntime) -> Tensor<B, 4> {
        let [b, s, h] = embeds.dims();
        let (l, p) = (self.layers, self.dim);
        // The table may be stored narrower than the compute dtype (bf16 where its values are bf16, as published
        // checkpoints hold them): rows are cast as they are looked up, then scaled as transformers scales them
        // in the compute dtype.
        let dt = embeds.dtype();
        let scale = scale_in((p as f32).sqrt(), dt);
        let tokens = (crate::dtype::cast(self.table.lookup(ids, device), dt) * scale).reshape([b, s, l, p]);
        let projected = self.projection.forward(embeds, rt) * (h as f64).powf(-0.5);
        let projected = self.norm.forward(projected.reshape([b, s, l, p]));
        let pd = projected.dtype();
        (projected + crate::dtype::cast(tokens, pd)) * std::f64::consts::FRAC_1_SQRT_2
    }
}

impl<B: GemmaBackend> PerLayerBlock<B> {
    /// `h` `[batch, seq, hidden]` and this layer's input `[batch, seq, P]` → `[batch, seq, hidden]`.
    pub fn forward(&self, h: Tensor<B, 3>, input: Tensor<B, 3>, rt: &LoraRuntime) -> Tensor<B, 3> {
        let gate = self.gate.forward(h.clone(), rt);
        // `act(gate) * input` is GeGLU's arithmetic, so its fused op (and backward) serves.
        let dt = gate.dtype();
        let input = crate::dtype::cast(input, dt);
        let t = Tensor::from_primitive(TensorPrimitive::Float(B::geglu(
            gate.into_primitive().tensor(),
            input.into_primitive().tensor(),
        )));
        h + self.norm.forward(self.projection.forward(t, rt))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::DType;

    use crate::backends::FlexCpu;
    use crate::error::Result;
    use crate::gemma::load::load_gemma;
    use crate::io::weights::{HostTensor, WeightSource};
    use crate::nn::lora::LoraRuntime;
    use crate::quant::QuantKind;
    use crate::{ModelFiles, TokenBatch};

    /// The tiny Gemma 4 checkpoint with its per-layer table rounded to bf16, as published checkpoints store it.
    struct Bf16Table<'a>(&'a dyn WeightSource);

    impl WeightSource for Bf16Table<'_> {
        fn path(&self) -> &std::path::Path {
            self.0.path()
        }
        fn names(&self) -> Vec<String> {
            self.0.names()
        }
        fn shape(&self, name: &str) -> Result<Vec<usize>> {
            self.0.shape(name)
        }
        fn get(&self, name: &str) -> Result<HostTensor> {
            let mut t = self.0.get(name)?;
            if name.ends_with("embed_tokens_per_layer.weight") {
                t.data.iter_mut().for_each(|x| *x = half::bf16::from_f32(*x).to_f32());
            }
            Ok(t)
        }
    }

    /// A table whose values are all bf16 is held in bf16 (half the bytes) and gives exactly the logits of the
    /// same values held in f32; the fixture's own (f32) table stays f32.
    #[test]
    fn a_bf16_table_is_kept_in_bf16_without_changing_the_model() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny/gemma4");
        let files = ModelFiles::open(&dir).unwrap();
        let device = Default::default();
        let plain = load_gemma::<FlexCpu>(&files.config, files.weights.as_ref(), QuantKind::Nf4, &device).unwrap();
        assert_eq!(plain.per_layer.as_ref().unwrap().table.dtype(), DType::F32);
        let src = Bf16Table(files.weights.as_ref());
        let narrow = load_gemma::<FlexCpu>(&files.config, &src, QuantKind::Nf4, &device).unwrap();
        let table = &narrow.per_layer.as_ref().unwrap().table;
        assert_eq!(table.dtype(), DType::BF16);
        let [v, w] = table.dims();
        assert_eq!(table.resident_bytes(), v * w * 2);
        let mut wide = narrow.clone();
        let p = wide.per_layer.as_mut().unwrap();
        p.table = p.table.clone().with_dtype(DType::F32);
        let tokens = TokenBatch::from_rows(&[(3..19).collect(), (100..116).collect()]);
        let rt = LoraRuntime::default();
        let a = narrow.forward(&tokens, &rt).into_data().to_vec::<f32>().unwrap();
        let b = wide.forward(&tokens, &rt).into_data().to_vec::<f32>().unwrap();
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "bf16 storage changed the logits");
    }
}
