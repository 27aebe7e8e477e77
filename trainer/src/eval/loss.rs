//! Mean next-token loss (NLL per predicted token, dropout off), the one definition `lapidary eval
//! --metric loss`, `lapidary merge`'s self-check and the trainer's eval loss share: over token rows, each
//! row a sequence of its own, several packed per forward pass ([`eval_rows`]), and over packed training batches ([`eval_loss`]).
use std::path::Path;

use anyhow::{bail, Result};
use lapidary_data::Batch;
use lapidary_model::gemma::loss::shifted_targets;
use lapidary_model::GemmaBackend;
use lapidary_model::{Gemma, TokenBatch};

use super::rows::read_rows;
use crate::train::batch::token_batch;

pub struct EvalResult {
    pub loss: f64,
    pub tokens: usize,
    pub examples: usize,
    pub truncated: usize,
}

/// Tokens per forward pass when evaluating rows: rows are packed together (each attending only to itself,
/// positions from 0, as the trainer packs), so the weights are read once per pack rather than once per row.
pub const EVAL_PACK_TOKENS: usize = 2048;

/// The loss over `rows` (token ids, each a sequence of its own, packed [`EVAL_PACK_TOKENS`] at a time); rows
/// longer than `max_len` are cut to it (and counted), rows under two tokens predict nothing.
pub fn eval_rows<B: GemmaBackend>(model: &Gemma<B>, rows: &[Vec<u32>], max_len: Option<usize>) -> EvalResult {
    let (mut nll, mut tokens, mut truncated) = (0f64, 0usize, 0usize);
    let mut kept: Vec<&[u32]> = Vec::new();
    for row in rows {
        let mut row = row.as_slice();
        if let Some(m) = max_len {
            if row.len() > m {
                row = &row[..m];
                truncated += 1;
            }
        }
        if row.len() >= 2 {
            kept.push(row);
        }
    }
    let mut start = 0;
    while start < kept.len() {
        let mut end = start + 1;
        let mut len = kept[start].len();
        while end < kept.len() && len + kept[end].len() <= EVAL_PACK_TOKENS {
            len += kept[end].len();
            end += 1;
        }
        let (batch, targets) = pack(&kept[start..end]);
        nll += model.eval_nll(&batch, &targets);
        tokens += targets.len();
        start = end;
    }
    EvalResult { loss: nll / tokens.max(1) as f64, tokens, examples: rows.len(), truncated }
}

/// One row of several sequences (segment ids, positions from 0 in each) and each one's next-token targets.
fn pack(rows: &[&[u32]]) -> (TokenBatch, Vec<(usize, u32)>) {
    if let [row] = rows {
        let labels: Vec<i64> = row.iter().map(|&t| t as i64).collect();
        return (TokenBatch::from_rows(&[row.to_vec()]), shifted_targets(&labels, 1, row.len()));
    }
    let (mut ids, mut positions, mut segments, mut targets) = (vec![], vec![], vec![], vec![]);
    for (s, row) in rows.iter().enumerate() {
        let off = ids.len();
        ids.extend_from_slice(row);
        positions.extend(0..row.len());
        segments.extend(std::iter::repeat_n(s as u32, row.len()));
        targets.extend(row.windows(2).enumerate().map(|(t, w)| (off + t, w[1])));
    }
    let seq = ids.len();
    (TokenBatch { ids, batch: 1, seq, positions, segments: Some(segments) }, targets)
}

/// `--metric loss` on a file: its rows ([`read_rows`], tokenized with `tok`) through [`eval_rows`]; an error
/// when no row predicts anything or the loss is not finite.
pub fn eval_file<B: GemmaBackend>(
    model: &Gemma<B>,
    tok: &tokenizers::Tokenizer,
    path: &Path,
    max_len: Option<usize>,
) -> Result<EvalResult> {
    let rows = read_rows(path, tok)?;
    let r = eval_rows(model, &rows, max_len);
    if r.tokens == 0 {
        bail!("{}: no row has two or more tokens, so there is nothing to predict", path.display());
    }
    if !r.loss.is_finite() {
        bail!("the loss is {} (not finite): the weights or the adapter are broken", r.loss);
    }
    Ok(r)
}

/// Mean NLL per target over `batches` with dropout off (what `lapidary eval` computes for `tokens` rows).
/// Returns `(loss, targets)`.
pub fn eval_loss<B: GemmaBackend>(model: &Gemma<B>, batches: &[Batch]) -> (f64, usize) {
    let (mut nll, mut n) = (0f64, 0usize);
    for b in batches {
        let targets = shifted_targets(&b.labels, b.batch, b.seq_len);
        if targets.is_empty() {
            continue;
        }
        nll += model.eval_nll(&token_batch(b), &targets);
        n += targets.len();
    }
    (nll / n.max(1) as f64, n)
}
