//! Gemma's gated MLP (GeGLU): `down(gelu_tanh(gate(x)) * up(x))`. All three generations use the tanh
//! approximation of GELU (transformers' `gelu_pytorch_tanh`), even where Gemma 1's config says `gelu`.
use burn::tensor::{Tensor, TensorPrimitive};

use super::lora::{LoraLinear, LoraRuntime};
use crate::ops::gemma_backend::GemmaBackend;

#[derive(Debug, Clone)]
pub struct Mlp<B: GemmaBackend> {
    pub gate_proj: LoraLinear<B>,
    pub up_proj: LoraLinear<B>,
    pub down_proj: LoraLinear<B>,
}

impl<B: GemmaBackend> Mlp<B> {
    /// # Shapes
    /// `[batch, seq, hidden]` → same
    pub fn forward(&self, x: Tensor<B, 3>, rt: &LoraRuntime) -> Tensor<B, 3> {
        let gate = self.gate_proj.forward(x.clone(), rt);
        let up = self.up_proj.forward(x, rt);
        // DoRA on `down_proj` needs the product's input for its own terms (`crate::nn::dora`): not fused.
        let dora = self.down_proj.adapter.as_ref().is_some_and(|ad| ad.dora.is_some());
        let Some(lora) = self.down_proj.prims(rt).filter(|_| !dora) else {
            // One fused op (`Kernels::geglu`): a single pass each way, only `gate` and `up` kept for the backward.
            let act = Tensor::from_primitive(TensorPrimitive::Float(B::geglu(
                gate.into_primitive().tensor(),
                up.into_primitive().tensor(),
            )));
            return self.down_proj.forward(act, rt);
        };
        // With an adapter on `down_proj`, GeGLU and the projection are one op, which does not keep its
        // `[tokens, intermediate]` input for the adapter's backward (`GemmaBackend::geglu_lora_down`).
        let [b, s, i] = gate.dims();
        let y = B::geglu_lora_down(
            gate.reshape([b * s, i]).into_primitive().tensor(),
            up.reshape([b * s, i]).into_primitive().tensor(),
            &self.down_proj.base.weight(),
            lora,
        );
        let y = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(y));
        let o = y.dims()[1];
        y.reshape([b, s, o])
    }
}
