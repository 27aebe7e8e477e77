//! Gemma's gated MLP (GeGLU): `down(gelu_tanh(gate(x)) * up(x))`. All three generations use the tanh
//! approximation of GELU (transformers' `gelu_pytorch_tanh`), even where Gemma 1's config says `gelu`.
use burn::tensor::{Tensor, TensorPrimitive};

use super::lora::{LoraLinear, LoraRuntime};
use crate::quant::FrozenMatmul;

#[derive(Debug, Clone)]
pub struct Mlp<B: FrozenMatmul> {
    pub gate_proj: LoraLinear<B>,
    pub up_proj: LoraLinear<B>,
    pub down_proj: LoraLinear<B>,
}

impl<B: FrozenMatmul> Mlp<B> {
    /// # Shapes
    /// `[batch, seq, hidden]` → same
    pub fn forward(&self, x: Tensor<B, 3>, rt: &LoraRuntime) -> Tensor<B, 3> {
        let gate = self.gate_proj.forward(x.clone(), rt).into_primitive().tensor();
        let up = self.up_proj.forward(x, rt).into_primitive().tensor();
        // One fused op (`crate::ops`): a single pass each way, only `gate` and `up` kept for the backward.
        let act = Tensor::from_primitive(TensorPrimitive::Float(B::geglu(gate, up)));
        self.down_proj.forward(act, rt)
    }
}
