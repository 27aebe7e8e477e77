//! Gemma 4's mixture of experts (transformers' `Gemma4TextRouter`, `Gemma4TextExperts` and the MoE branch of
//! `Gemma4TextDecoderLayer`): beside the dense MLP, a router picks `top_k` of the layer's experts per token and
//! their GeGLU outputs are summed with the router's weights.
//!
//! - Router, on the MLP's input `x` (the residual stream): `p = softmax(proj(rms(x) · scale · hidden^-½))` in f32,
//!   the `top_k` largest, renormalised to sum 1, each times its expert's `per_expert_scale`.
//! - Experts, on `pre_feedforward_layernorm_2(x)`: `down_e(gelu_tanh(gate_e) · up_e)` with `gate_e | up_e` the
//!   two halves of `gate_up_e`'s output.
//! - The layer's MLP output becomes `post_feedforward_layernorm_1(mlp) + post_feedforward_layernorm_2(experts)`.
//!
//! The choice of experts is not differentiable (as in transformers); the weights are, through the softmax, back
//! to `x`. Each expert multiplies only its own tokens (rows selected, products, rows added back). The two expert
//! stacks are [`LoraLinear`]s over [`FrozenLinear::Experts`]: their LoRA is PEFT's `target_parameters` adapter
//! (`ParamWrapper`: `A` `[r · experts, in]` with expert `e`'s rows `e·r..(e+1)·r`, `B` `[out, r · experts]` with
//! expert `e`'s columns `e, e + experts, …`), applied per expert as an ordinary LoRA.
use burn::tensor::activation::softmax;
use burn::tensor::{DType, IndexingUpdateOp, Int, Tensor, TensorData, TensorPrimitive};

use super::linear::FrozenLinear;
use super::lora::{LoraLinear, LoraRuntime};
use super::norm::RmsNorm;
use crate::dtype::cast;
use crate::ops::gemma_backend::GemmaBackend;
use crate::ops::lora::LoraPrims;

#[derive(Debug, Clone)]
pub struct Router<B: GemmaBackend> {
    /// Without a weight.
    pub norm: RmsNorm<B>,
    /// `router.scale`, `[hidden]`.
    pub scale: Tensor<B, 1>,
    /// `router.proj`, `hidden → experts`.
    pub proj: LoraLinear<B>,
    /// `router.per_expert_scale`, one per expert.
    pub per_expert_scale: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct MoeBlock<B: GemmaBackend> {
    pub router: Router<B>,
    /// `experts.gate_up_proj`: per expert `[2 · intermediate, hidden]`.
    pub gate_up: LoraLinear<B>,
    /// `experts.down_proj`: per expert `[hidden, intermediate]`.
    pub down: LoraLinear<B>,
    /// `pre_feedforward_layernorm_2`.
    pub pre_norm: RmsNorm<B>,
    /// `post_feedforward_layernorm_1`, on the dense MLP's output.
    pub post_norm_dense: RmsNorm<B>,
    /// `post_feedforward_layernorm_2`, on the experts' output.
    pub post_norm: RmsNorm<B>,
    pub top_k: usize,
}

/// Expert `e` of `stack` applied to `x` `[n, in]` → `[n, out]`, with its share of the stack's LoRA.
fn expert_forward<B: GemmaBackend>(stack: &LoraLinear<B>, e: usize, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let [n, _] = x.dims();
    let base_lin: &FrozenLinear<B> = stack.base.expert(e);
    let base = base_lin.forward(x.clone().unsqueeze_dim(0));
    let out = base.dims()[2];
    let base = base.reshape([n, out]);
    let Some(ad) = &stack.adapter else { return base };
    let experts = stack.base.experts();
    let r = ad.a.dims()[0] / experts;
    let a = ad.a.clone().narrow(0, e * r, r);
    let b = ad.b.clone().reshape([out, r, experts]).narrow(2, e, 1).reshape([out, r]);
    // PEFT's ParamWrapper has no dropout (it refuses lora_dropout != 0).
    let lora =
        LoraPrims { a: a.into_primitive().tensor(), b: b.into_primitive().tensor(), scale: ad.scale, dropout: None };
    let delta =
        Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(B::lora_delta(x.into_primitive().tensor(), lora)));
    let dt = base.dtype();
    base + cast(delta, dt)
}

/// The `k` largest of `row` (ties to the lower index), largest first.
fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

impl<B: GemmaBackend> MoeBlock<B> {
    /// `x`: the MLP's input before its norm (the residual stream), `dense`: the dense MLP's output, both
    /// `[batch, seq, hidden]` → the combined MLP output, same shape.
    pub fn forward(&self, x: Tensor<B, 3>, dense: Tensor<B, 3>, rt: &LoraRuntime) -> Tensor<B, 3> {
        let [b, s, h] = x.dims();
        let t = b * s;
        let device = x.device();
        let experts = self.gate_up.base.experts();
        let k = self.top_k;
        let flat = x.reshape([t, h]);

        // Router.
        let routed = self.router.norm.forward(flat.clone()) * self.router.scale.clone().unsqueeze_dim(0);
        let routed = routed * (h as f64).powf(-0.5);
        let logits = self.router.proj.forward(routed.unsqueeze_dim(0), rt).reshape([t, experts]);
        let probs = softmax(cast(logits, DType::F32), 1);
        let host: Vec<f32> = probs.clone().into_data().convert::<f32>().to_vec().unwrap_or_default();
        let chosen: Vec<Vec<usize>> = host.chunks(experts).map(|row| top_k(row, k)).collect();
        let idx: Vec<i64> = chosen.iter().flatten().map(|&e| e as i64).collect();
        let idx_t = Tensor::<B, 2, Int>::from_data(TensorData::new(idx, [t, k]), &device);
        let picked = probs.gather(1, idx_t);
        let weights = picked.clone() / picked.sum_dim(1);
        let pes: Vec<f32> = chosen.iter().flatten().map(|&e| self.router.per_expert_scale[e]).collect();
        let weights = weights * Tensor::<B, 2>::from_data(TensorData::new(pes, [t, k]), &device);
        let weights = weights.reshape([t * k]);

        // Experts, each on its own tokens.
        let input = self.pre_norm.forward(flat);
        let dt = input.dtype();
        let mut out = Tensor::<B, 2>::zeros([t, h], (&device, dt));
        for e in 0..experts {
            let mut rows = Vec::new();
            let mut slots = Vec::new();
            for (tok, picks) in chosen.iter().enumerate() {
                if let Some(j) = picks.iter().position(|&x| x == e) {
                    rows.push(tok as i64);
                    slots.push((tok * k + j) as i64);
                }
            }
            if rows.is_empty() {
                continue;
            }
            let n = rows.len();
            let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [n]), &device);
            let slots = Tensor::<B, 1, Int>::from_data(TensorData::new(slots, [n]), &device);
            let xe = input.clone().select(0, rows.clone());
            let gate_up = expert_forward(&self.gate_up, e, xe);
            let inter = gate_up.dims()[1] / 2;
            let gate = gate_up.clone().narrow(1, 0, inter);
            let up = gate_up.narrow(1, inter, inter);
            let act = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(B::geglu(
                gate.into_primitive().tensor(),
                up.into_primitive().tensor(),
            )));
            let y = expert_forward(&self.down, e, act);
            let w = cast(weights.clone().select(0, slots), y.dtype()).reshape([n, 1]);
            out = out.select_assign(0, rows, cast(y * w, dt), IndexingUpdateOp::Add);
        }
        let experts_out = self.post_norm.forward(out.reshape([b, s, h]));
        self.post_norm_dense.forward(dense) + experts_out
    }
}
