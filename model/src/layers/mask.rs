//! Which keys each query may attend to, from positions and segments — described, not materialised, so the
//! fused attention (`crate::fused_attention`) can skip masked key tiles without ever building the
//! `[seq × keys]` bias; the Burn-op path builds the additive bias from the same description.
//!
//! Query `i` sees key `j` when they are in the same segment (packing: examples never see each other), the key
//! is not in the future (`pos_j <= pos_i`), and, in sliding-window layers, `pos_i - pos_j < window` — the
//! rule transformers applies (a window of W covers the query itself and the W - 1 keys before it).
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// Added to masked scores. Large enough that `exp` gives exactly 0, small enough to stay finite in bf16.
pub const MASKED: f32 = -1e30;

/// Positions and segment ids of one side (queries or keys), `[batch * len]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub positions: Vec<usize>,
    /// `None`: one segment per row.
    pub segments: Option<Vec<u32>>,
}

/// The attention mask of one layer kind for one batch: query and key spans and the sliding window.
#[derive(Debug, Clone, PartialEq)]
pub struct AttnMask {
    pub batch: usize,
    pub q: Span,
    pub k: Span,
    pub window: Option<usize>,
}

impl AttnMask {
    pub fn new(batch: usize, q: Span, k: Span, window: Option<usize>) -> Self {
        assert!(
            batch > 0 && q.positions.len().is_multiple_of(batch) && k.positions.len().is_multiple_of(batch),
            "mask spans"
        );
        Self { batch, q, k, window }
    }

    /// Queries per row.
    pub fn q_len(&self) -> usize {
        self.q.positions.len() / self.batch
    }

    /// Keys per row.
    pub fn k_len(&self) -> usize {
        self.k.positions.len() / self.batch
    }

    /// Whether query `i` of row `b` sees key `j` of that row.
    #[inline]
    pub fn visible(&self, b: usize, i: usize, j: usize) -> bool {
        let qi = b * self.q_len() + i;
        let kj = b * self.k_len() + j;
        let (qp, kp) = (self.q.positions[qi], self.k.positions[kj]);
        kp <= qp
            && self.window.is_none_or(|w| qp - kp < w)
            && match (&self.q.segments, &self.k.segments) {
                (Some(a), Some(s)) => a[qi] == s[kj],
                _ => true,
            }
    }

    /// `[batch, 1, q_len, k_len]` additive bias (0 or `MASKED`).
    pub fn bias<B: Backend>(&self, device: &B::Device) -> Tensor<B, 4> {
        let (sq, sk) = (self.q_len(), self.k_len());
        let mut bias = vec![0f32; self.batch * sq * sk];
        for b in 0..self.batch {
            for i in 0..sq {
                let row = &mut bias[(b * sq + i) * sk..(b * sq + i + 1) * sk];
                for (j, slot) in row.iter_mut().enumerate() {
                    if !self.visible(b, i, j) {
                        *slot = MASKED;
                    }
                }
            }
        }
        Tensor::from_data(TensorData::new(bias, [self.batch, 1, sq, sk]), device)
    }
}
