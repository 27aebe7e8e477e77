//! Causal-LM loss: the summed next-token negative log-likelihood over the target positions, computed through
//! the (tied) LM head by the fused op `GemmaBackend::lm_head_nll` (`crate::ops::lm_head`), so `[tokens × vocab]` logits never exist.
use burn::tensor::{ElementConversion, Tensor, TensorPrimitive};

use crate::gemma::model::{Gemma, TokenBatch};
use crate::nn::lora::LoraRuntime;
use crate::ops::gemma_backend::GemmaBackend;

/// Prediction targets of a `[batch, seq]` batch whose `labels` are aligned with its inputs (the HF
/// convention: the model predicts `labels[t + 1]` from position `t`; `-100` = not a target).
/// Returns (flat hidden-state index, target id) pairs.
pub fn shifted_targets(labels: &[i64], batch: usize, seq: usize) -> Vec<(usize, u32)> {
    let mut out = Vec::new();
    for b in 0..batch {
        for t in 0..seq.saturating_sub(1) {
            let l = labels[b * seq + t + 1];
            if l >= 0 {
                out.push((b * seq + t, l as u32));
            }
        }
    }
    out
}

impl<B: GemmaBackend> Gemma<B> {
    /// Sum of `-log p(target)` over `targets`, from final hidden states `[batch, seq, hidden]`, through the
    /// fused LM-head loss (`crate::ops::lm_head`): no `[tokens × vocab]` logits are kept. Returns a `[1]`
    /// tensor, differentiable with respect to `hidden` on an autodiff backend.
    pub fn nll_sum(&self, hidden: Tensor<B, 3>, targets: &[(usize, u32)]) -> Tensor<B, 1> {
        let [b, s, h] = hidden.dims();
        let flat = hidden.reshape([b * s, h]).into_primitive().tensor();
        let table = self.embed_tokens.for_loss();
        let nll = B::lm_head_nll(flat, table, targets, self.config.final_logit_softcapping);
        Tensor::from_primitive(TensorPrimitive::Float(nll))
    }

    /// Evaluation (no dropout, no graph needed): the summed `-log p(target)` over `targets` of `tokens`, as f64.
    pub fn eval_nll(&self, tokens: &TokenBatch, targets: &[(usize, u32)]) -> f64 {
        let hidden = self.forward_hidden(tokens, None, &LoraRuntime::default());
        let nll: f32 = self.nll_sum(hidden, targets).into_scalar().elem();
        nll as f64
    }
}
