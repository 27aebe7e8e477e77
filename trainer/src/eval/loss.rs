//! Mean next-token loss (NLL per predicted token, dropout off), the one definition `lapidary eval
//! --metric loss`, `lapidary merge`'s self-check and the trainer's eval loss share: over token rows, each
//! row a sequence of its own, several packed per forward pass ([`eval_rows`]), and over packed training batches ([`eval_loss`]).
use std::path::Path;

use anyhow::{bail, Result};
use lapidary_data::tokenize::Example;
use lapidary_data::{Batch, Packer, PadTo, IGNORE_INDEX};
use lapidary_model::gemma::loss::shifted_targets;
use lapidary_model::Gemma;
use lapidary_model::GemmaBackend;

use super::rows::{read_rows, LossRow};
use crate::train::batch::token_batch;

pub struct EvalResult {
    pub loss: f64,
    pub tokens: usize,
    pub examples: usize,
    pub truncated: usize,
}

/// Tokens per forward pass when evaluating rows: rows are packed together by the trainer's packer (each
/// attending only to itself, positions from 0), so the weights are read once per pack rather than per row.
pub const EVAL_PACK_TOKENS: usize = 2048;

/// The loss over `rows` (token ids, each a sequence of its own, every token after the first a target); see
/// [`eval_labelled`].
pub fn eval_rows<B: GemmaBackend>(model: &Gemma<B>, rows: &[Vec<u32>], max_len: Option<usize>) -> EvalResult {
    let rows: Vec<LossRow> = rows.iter().map(|ids| LossRow { ids: ids.clone(), labels: None }).collect();
    eval_labelled(model, &rows, max_len)
}

/// The loss over `rows` (each a sequence of its own, packed [`EVAL_PACK_TOKENS`] at a time and evaluated by
/// [`eval_loss`]) on their labels, or on every token after the first where a row gives none; rows longer than
/// `max_len` are cut to it (and counted), rows under two tokens predict nothing.
pub fn eval_labelled<B: GemmaBackend>(model: &Gemma<B>, rows: &[LossRow], max_len: Option<usize>) -> EvalResult {
    let mut truncated = 0;
    let examples: Vec<Example> = rows
        .iter()
        .filter_map(|row| {
            let n = row.ids.len();
            let cut = max_len.is_some_and(|m| n > m);
            truncated += cut as usize;
            let keep = max_len.map_or(n, |m| n.min(m));
            // Labels as the model shifts them; the first is no target (packing relies on it).
            let label = |t: usize| match (&row.labels, t) {
                (_, 0) => IGNORE_INDEX,
                (Some(l), t) => l[t],
                (None, t) => row.ids[t] as i64,
            };
            (keep >= 2).then(|| Example {
                input_ids: row.ids[..keep].to_vec(),
                labels: (0..keep).map(label).collect(),
                truncated: cut,
            })
        })
        .collect();
    let longest = examples.iter().map(Example::len).max().unwrap_or(0);
    let mut packer = Packer::new(EVAL_PACK_TOKENS.max(longest), true);
    let mut packed: Vec<_> = examples.iter().filter_map(|ex| packer.push(ex)).collect();
    packed.extend(packer.flush());
    let batches: Vec<Batch> =
        packed.iter().map(|r| Batch::collate(std::slice::from_ref(r), 0, PadTo::Longest, 0)).collect();
    let (loss, tokens) = eval_loss(model, &batches);
    EvalResult { loss, tokens, examples: rows.len(), truncated }
}

/// `--metric loss` on a file: its rows ([`read_rows`], tokenized with `tok`) through [`eval_rows`]; an error
/// when no row predicts anything or the loss is not finite.
pub fn eval_file<B: GemmaBackend>(
    model: &Gemma<B>,
    tok: &tokenizers::Tokenizer,
    path: &Path,
    max_len: Option<usize>,
) -> Result<EvalResult> {
    let rows = read_rows(path, tok, model.config.vocab_size)?;
    let r = eval_labelled(model, &rows, max_len);
    if r.tokens == 0 {
        bail!("{}: no row has a target (two or more tokens, a label other than -100 after the first)", path.display());
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
