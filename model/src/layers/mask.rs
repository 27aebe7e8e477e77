//! Attention masks, built on the host from positions and segments and added to the scores.
//!
//! Query `i` sees key `j` when they are in the same segment (packing: examples never see each other), the key
//! is not in the future (`pos_j <= pos_i`), and, in sliding-window layers, `pos_i - pos_j < window` — the
//! rule transformers applies (a window of W covers the query itself and the W - 1 keys before it).
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// Added to masked scores. Large enough that `exp` gives exactly 0, small enough to stay finite in bf16.
pub const MASKED: f32 = -1e30;

/// Positions and segment ids of one side (queries or keys), `[batch * len]` row-major.
#[derive(Debug, Clone)]
pub struct Span<'a> {
    pub positions: &'a [usize],
    /// `None`: one segment per row.
    pub segments: Option<&'a [u32]>,
}

/// `[batch, 1, q_len, k_len]` additive bias (0 or `MASKED`).
pub fn attention_bias<B: Backend>(
    batch: usize,
    q: &Span,
    k: &Span,
    window: Option<usize>,
    device: &B::Device,
) -> Tensor<B, 4> {
    let sq = q.positions.len() / batch;
    let sk = k.positions.len() / batch;
    let mut bias = vec![0f32; batch * sq * sk];
    for b in 0..batch {
        for i in 0..sq {
            let qi = b * sq + i;
            let qp = q.positions[qi];
            let qs = q.segments.map(|s| s[qi]);
            let row = &mut bias[qi * sk..(qi + 1) * sk];
            for (j, slot) in row.iter_mut().enumerate() {
                let kj = b * sk + j;
                let kp = k.positions[kj];
                let visible = kp <= qp
                    && window.is_none_or(|w| qp - kp < w)
                    && match (qs, k.segments) {
                        (Some(a), Some(s)) => a == s[kj],
                        _ => true,
                    };
                if !visible {
                    *slot = MASKED;
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(bias, [batch, 1, sq, sk]), device)
}
