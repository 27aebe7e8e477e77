//! Batches: rows padded to a common length, flattened row-major (`[batch * seq_len]`).
//!
//! # What the model and the trainer do with a [`Batch`]
//!
//! - **Attention mask.** Query `i` may attend to key `j` of the same row iff
//!   `j <= i && segment_ids[j] == segment_ids[i]` (block-diagonal causal; for Gemma's sliding-window layers
//!   also `i - j < sliding_window`). Padding has segment id 0, real tokens 1, 2, ..., so real tokens never see
//!   padding or another packed example, and a padding query sees only padding (its row of the mask is never
//!   empty, so the softmax never divides by zero; its output is ignored anyway).
//! - **Positions.** Use `position_ids` for RoPE, not `0..seq_len`: they restart at 0 for every packed example.
//! - **Labels are not shifted.** `labels[t]` is aligned with `input_ids[t]` (Hugging Face convention); the loss
//!   is `cross_entropy(logits[:, t], labels[:, t + 1])` for `t < seq_len - 1`, skipping targets equal to
//!   [`IGNORE_INDEX`]. Every example's first label and all padding labels are ignored, so no position ever
//!   predicts across an example boundary.
//! - **Normalisation.** `n_targets` counts the labels that are not ignored, which is exactly the number of loss
//!   terms after the shift. Sum the per-token losses and divide by the sum of `n_targets` over every micro-batch
//!   of the gradient-accumulation window (not by each micro-batch's own count, which weights short batches up).

use serde::{Deserialize, Serialize};

use crate::format::IGNORE_INDEX;
use crate::pack::PackedRow;

/// How long padded rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PadTo {
    /// The longest row of the batch.
    #[default]
    Longest,
    /// The longest row, rounded up to a multiple (fewer distinct shapes for kernel caches).
    Multiple(usize),
    /// Always `max_seq_len` (one shape for the whole run).
    MaxSeqLen,
}

/// A padded batch, all vectors row-major `[batch, seq_len]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub input_ids: Vec<u32>,
    /// Aligned with `input_ids` (the model shifts); [`IGNORE_INDEX`] where no loss is taken.
    pub labels: Vec<i64>,
    pub position_ids: Vec<u32>,
    /// 0 for padding, 1.. for the examples of a row.
    pub segment_ids: Vec<u32>,
    pub batch: usize,
    pub seq_len: usize,
    /// Labels that are not [`IGNORE_INDEX`]: the number of loss terms.
    pub n_targets: usize,
    /// Non-padding tokens.
    pub n_tokens: usize,
}

impl Batch {
    /// Pads `rows` with `pad_id` to the length `pad_to` asks for (never shorter than the longest row).
    pub fn collate(rows: &[PackedRow], pad_id: u32, pad_to: PadTo, max_seq_len: usize) -> Batch {
        let longest = rows.iter().map(PackedRow::len).max().unwrap_or(0);
        let seq_len = match pad_to {
            PadTo::Longest => longest,
            PadTo::Multiple(m) if m > 1 => longest.div_ceil(m) * m,
            PadTo::Multiple(_) => longest,
            PadTo::MaxSeqLen => max_seq_len.max(longest),
        };
        let n = rows.len() * seq_len;
        let mut b = Batch {
            input_ids: Vec::with_capacity(n),
            labels: Vec::with_capacity(n),
            position_ids: Vec::with_capacity(n),
            segment_ids: Vec::with_capacity(n),
            batch: rows.len(),
            seq_len,
            n_targets: 0,
            n_tokens: 0,
        };
        for row in rows {
            let pad = seq_len - row.len();
            b.input_ids.extend_from_slice(&row.input_ids);
            b.input_ids.extend(std::iter::repeat_n(pad_id, pad));
            b.labels.extend_from_slice(&row.labels);
            b.labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
            b.position_ids.extend_from_slice(&row.position_ids);
            b.position_ids.extend(std::iter::repeat_n(0, pad));
            b.segment_ids.extend_from_slice(&row.segment_ids);
            b.segment_ids.extend(std::iter::repeat_n(0, pad));
            b.n_tokens += row.len();
            b.n_targets += row.labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
        }
        b
    }

    /// The attention rule of the module docs: may query `q` of row `row` attend to key `k`?
    pub fn attends(&self, row: usize, q: usize, k: usize) -> bool {
        let seg = &self.segment_ids[row * self.seq_len..(row + 1) * self.seq_len];
        k <= q && seg[k] == seg[q]
    }

    /// `(position t, target id)` pairs of one row after the shift: what the loss is computed on.
    pub fn targets(&self, row: usize) -> Vec<(usize, u32)> {
        let labels = &self.labels[row * self.seq_len..(row + 1) * self.seq_len];
        (0..self.seq_len.saturating_sub(1))
            .filter(|&t| labels[t + 1] != IGNORE_INDEX)
            .map(|t| (t, labels[t + 1] as u32))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::Example;
    use IGNORE_INDEX as X;

    #[test]
    fn pads_to_longest_with_ignored_labels_and_segment_zero() {
        let a = PackedRow::from_example(&Example { input_ids: vec![2, 5, 6], labels: vec![X, 5, 6], truncated: false });
        let b = PackedRow::from_example(&Example { input_ids: vec![2, 7], labels: vec![X, X], truncated: false });
        let batch = Batch::collate(&[a, b], 0, PadTo::Longest, 16);
        assert_eq!((batch.batch, batch.seq_len), (2, 3));
        assert_eq!(batch.input_ids, vec![2, 5, 6, 2, 7, 0]);
        assert_eq!(batch.labels, vec![X, 5, 6, X, X, X]);
        assert_eq!(batch.position_ids, vec![0, 1, 2, 0, 1, 0]);
        assert_eq!(batch.segment_ids, vec![1, 1, 1, 1, 1, 0]);
        assert_eq!((batch.n_targets, batch.n_tokens), (2, 5));
        assert_eq!(batch.targets(0), vec![(0, 5), (1, 6)]);
        assert!(batch.targets(1).is_empty());
        assert!(!batch.attends(1, 2, 1), "padding never sees real tokens");
        assert!(batch.attends(1, 2, 2));
        assert_eq!(Batch::collate(&batch_rows(), 0, PadTo::Multiple(4), 16).seq_len, 4);
        assert_eq!(Batch::collate(&batch_rows(), 0, PadTo::MaxSeqLen, 16).seq_len, 16);
    }

    fn batch_rows() -> Vec<PackedRow> {
        vec![PackedRow::from_example(&Example { input_ids: vec![2, 5, 6], labels: vec![X, 5, 6], truncated: false })]
    }
}
