//! [`GemmaBackend`]: what the model is generic over. On top of [`Kernels`], the fused ops of QLoRA — the
//! LoRA branch, GeGLU with the down projection's adapter, attention and the LM head with its cross-entropy —
//! each one op with its own backward on `Autodiff` (`super::autodiff`), so that no dequantized weight, no
//! `[tokens × vocab]` logits, no `[heads × seq × keys]` probabilities and no activation intermediates are
//! kept for the backward pass. Defaults: the Burn-op references of `super::{lora, attention, lm_head}`.
use burn::tensor::ops::FloatTensor;

use super::attention::{self, AttnSpec};
use super::frozen_weight::FrozenWeight;
use super::kernels::Kernels;
use super::lm_head::{self, LmTable};
use super::lora::{self, LoraPrims};

pub trait GemmaBackend: Kernels {
    /// LoRA's branch `(α/r)·dropout(x)·Aᵀ·Bᵀ` for `x` `[n, in]` (any float dtype; computed in `A`'s, f32, and
    /// returned in `x`'s). On `Autodiff` its backward keeps `x` as it is (not an f32 copy per projection) and
    /// makes the dropout mask again rather than keeping it; gradients as the composition's
    /// ([`lora::branch`]).
    fn lora_delta(x: FloatTensor<Self>, lora: LoraPrims<Self>) -> FloatTensor<Self> {
        lora::branch::<Self>(x, &lora).0
    }

    /// Gemma's down projection with a LoRA adapter, applied to the GeGLU: `act·Wᵀ + cast(lora_delta(act))`
    /// with `act = geglu(gate, up)`, for `gate`, `up` `[n, inter]` → `[n, out]`. On `Autodiff`, one op that
    /// keeps `gate` and `up` (what GeGLU's backward needs anyway) but not `act`, which its backward makes
    /// again for `dA`: one `[n, inter]` tensor less per layer. Values and gradients as the composition's
    /// ([`lora::geglu_lora_down`]).
    fn geglu_lora_down(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        w: &FrozenWeight<Self>,
        lora: LoraPrims<Self>,
    ) -> FloatTensor<Self> {
        lora::geglu_lora_down::<Self>(gate, up, w, &lora).0
    }

    /// `(Σ −log softmax(cap(h·Eᵀ))[target] as [1], its gradient with respect to `hidden` [n, h] when `grad`)`
    /// for `hidden` `[n, h]`, the table `E` `[vocab, h]` and `(row, target id)` pairs.
    fn lm_head_nll_grad(
        hidden: FloatTensor<Self>,
        table: LmTable<Self>,
        targets: &[(usize, u32)],
        softcap: Option<f64>,
        grad: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let table = table.into_dense(&hidden);
        lm_head::nll_grad_generic::<Self>(hidden, table, targets, softcap, grad)
    }

    /// The summed NLL as `[1]`, differentiable with respect to `hidden` on `Autodiff`.
    fn lm_head_nll(
        hidden: FloatTensor<Self>,
        table: LmTable<Self>,
        targets: &[(usize, u32)],
        softcap: Option<f64>,
    ) -> FloatTensor<Self> {
        Self::lm_head_nll_grad(hidden, table, targets, softcap, false).0
    }

    /// `softmax(cap(scaling · q·kᵀ) | mask) · v` for `q` `[b, s, h, d]` and `k`, `v` `[b, t, kv_heads, d]`
    /// → `[b, s, h, d]`; on `Autodiff`, with its own backward.
    fn attend(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, spec: &AttnSpec) -> FloatTensor<Self> {
        Self::attend_lse(q, k, v, spec).0
    }

    /// The output and each (position, head)'s log-sum-exp `[b, s, h]`, which the backward needs.
    fn attend_lse(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        spec: &AttnSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        attention::forward_generic::<Self>(q, k, v, spec)
    }

    /// `(dq, dk, dv)` of `Σ dout · out` from the forward's output and log-sum-exp.
    #[allow(clippy::too_many_arguments)]
    fn attend_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        spec: &AttnSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        attention::backward_generic::<Self>(q, k, v, out, lse, dout, spec)
    }
}
