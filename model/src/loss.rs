//! Causal-LM loss: the summed next-token negative log-likelihood over the target positions, computed through
//! the (tied) LM head in chunks of rows so that `[tokens × vocab]` logits never exist at once in evaluation.
use burn::tensor::activation::log_softmax;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};

use crate::decoder::{Gemma, TokenBatch};
use crate::layers::lora::LoraRuntime;
use crate::quant::FrozenMatmul;

/// Rows of the LM head evaluated at once.
pub const LM_HEAD_CHUNK: usize = 256;

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

impl<B: FrozenMatmul> Gemma<B> {
    /// Sum of `-log p(target)` over `targets`, from final hidden states `[batch, seq, hidden]`.
    /// Returns a scalar tensor (differentiable on an autodiff backend).
    pub fn nll_sum(&self, hidden: Tensor<B, 3>, targets: &[(usize, u32)]) -> Tensor<B, 1> {
        let [b, s, h] = hidden.dims();
        let flat = hidden.reshape([b * s, h]);
        let mut total: Option<Tensor<B, 1>> = None;
        for chunk in targets.chunks(LM_HEAD_CHUNK) {
            let rows: Vec<i64> = chunk.iter().map(|(i, _)| *i as i64).collect();
            let ids: Vec<i64> = chunk.iter().map(|(_, t)| *t as i64).collect();
            let n = rows.len();
            let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [n]), &self.device);
            let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [n, 1]), &self.device);
            let logits = self.lm_head(flat.clone().select(0, rows));
            let nll = log_softmax(logits, 1).gather(1, ids).sum().neg();
            total = Some(match total {
                Some(t) => t + nll,
                None => nll,
            });
        }
        total.unwrap_or_else(|| Tensor::zeros([1], &self.device))
    }

    /// Evaluation (no dropout, no graph needed): the summed `-log p(target)` over `targets` of `tokens`, as f64.
    pub fn eval_nll(&self, tokens: &TokenBatch, targets: &[(usize, u32)]) -> f64 {
        let hidden = self.forward_hidden(tokens, None, &LoraRuntime::default());
        let nll: f32 = self.nll_sum(hidden, targets).into_scalar().elem();
        nll as f64
    }
}
