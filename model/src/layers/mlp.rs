//! Gemma's gated MLP (GeGLU): `down(gelu_tanh(gate(x)) * up(x))`. All three generations use the tanh
//! approximation of GELU (transformers' `gelu_pytorch_tanh`), even where Gemma 1's config says `gelu`.
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorMetadata, TensorPrimitive};

use super::lora::{branch, LoraLinear, LoraPrims, LoraRuntime};
use crate::compute::cast_prim;
use crate::quant::{FrozenMatmul, FrozenWeight};

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
        let gate = self.gate_proj.forward(x.clone(), rt);
        let up = self.up_proj.forward(x, rt);
        let Some(lora) = self.down_proj.prims(rt) else {
            // One fused op (`crate::ops`): a single pass each way, only `gate` and `up` kept for the backward.
            let act = Tensor::from_primitive(TensorPrimitive::Float(B::geglu(
                gate.into_primitive().tensor(),
                up.into_primitive().tensor(),
            )));
            return self.down_proj.forward(act, rt);
        };
        // With an adapter on `down_proj`, GeGLU and the projection are one op, which does not keep its
        // `[tokens, intermediate]` input for the adapter's backward (`FrozenMatmul::geglu_lora_down`).
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

/// `FrozenMatmul::geglu_lora_down` in the backend's ops: `act = geglu(gate, up)`, the frozen product and
/// LoRA's branch of it, added in `act`'s dtype as `LoraLinear::forward` adds them. Returns the output and the
/// branch's `h` (for the backward).
pub(crate) fn geglu_lora_down<B: FrozenMatmul>(
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
