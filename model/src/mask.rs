//! Which keys each query may attend to, from positions and segments — described, not materialised, so the
//! fused attention (`crate::ops::attention`) can skip masked key tiles without ever building the
//! `[seq × keys]` bias; the Burn-op path builds the additive bias from the same description.
//!
//! Query `i` sees key `j` when they are in the same segment (packing: examples never see each other), the key
//! is not in the future (`pos_j <= pos_i`), and, in sliding-window layers, `pos_i - pos_j < window` — the
//! rule transformers applies (a window of W covers the query itself and the W - 1 keys before it).
use std::any::Any;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

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
    device: DeviceCopy,
}

/// A backend's own copy of a mask (the GPU kernels' position and segment arrays), made on first use and
/// kept with the mask: one `Arc<AttnMask>` serves every layer of its kind in a step's forward, recompute and
/// backward, so the copy is uploaded once a step instead of three times a layer. Not part of the mask's
/// value: a clone starts without one, and `==` ignores it.
#[derive(Default)]
struct DeviceCopy(OnceLock<Arc<dyn Any + Send + Sync>>);

impl Clone for DeviceCopy {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for DeviceCopy {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for DeviceCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "DeviceCopy(made)" } else { "DeviceCopy(none)" })
    }
}

impl AttnMask {
    pub fn new(batch: usize, q: Span, k: Span, window: Option<usize>) -> Self {
        assert!(
            batch > 0 && q.positions.len().is_multiple_of(batch) && k.positions.len().is_multiple_of(batch),
            "mask spans"
        );
        Self { batch, q, k, window, device: DeviceCopy::default() }
    }

    /// The copy of this mask that backend code keeps as a `T`, made by `make` on first use and returned to
    /// every later caller; `None` when a copy of another type was made first (the caller then makes its own).
    pub fn device_copy<T: Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> Option<Arc<T>> {
        let made: Arc<dyn Any + Send + Sync> = self.device.0.get_or_init(|| Arc::new(make())).clone();
        made.downcast::<T>().ok()
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

    /// One range of key indices holding every key that a query in `queries` of any row sees, so a kernel
    /// may multiply those queries by these keys only; empty when none is visible. It may hold keys the mask
    /// hides (the kernels still apply it): per row and segment, it bounds the queries' positions by their
    /// least and greatest, and takes every key with `pos <= greatest` (and, with a window,
    /// `pos > least - window`). Causal attention on a row's own tokens gets exactly `0..queries.end`
    /// (`queries.start + 1 - window..queries.end` with a window).
    pub fn key_range(&self, queries: Range<usize>) -> Range<usize> {
        let (sq, sk) = (self.q_len(), self.k_len());
        let segmented = self.q.segments.is_some() && self.k.segments.is_some();
        let seg = |ids: &Option<Vec<u32>>, at: usize| if segmented { ids.as_ref().map_or(0, |s| s[at]) } else { 0 };
        let (mut lo, mut hi) = (sk, 0);
        for b in 0..self.batch {
            // (segment, least position, greatest position) of this row's queries in the range.
            let mut bounds: Vec<(u32, usize, usize)> = Vec::new();
            for qi in b * sq + queries.start..b * sq + queries.end {
                let (s, p) = (seg(&self.q.segments, qi), self.q.positions[qi]);
                match bounds.iter_mut().find(|e| e.0 == s) {
                    Some(e) => (e.1, e.2) = (e.1.min(p), e.2.max(p)),
                    None => bounds.push((s, p, p)),
                }
            }
            let may_see = |j: usize| {
                let (s, p) = (seg(&self.k.segments, b * sk + j), self.k.positions[b * sk + j]);
                bounds
                    .iter()
                    .any(|&(bs, least, greatest)| bs == s && p <= greatest && self.window.is_none_or(|w| p + w > least))
            };
            // Only the first and last matter: scan in from both ends.
            if let Some(first) = (0..lo).find(|&j| may_see(j)) {
                lo = first;
            }
            if let Some(last) = (hi..sk).rev().find(|&j| may_see(j)) {
                hi = last + 1;
            }
        }
        if lo < hi {
            lo..hi
        } else {
            0..0
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mask() -> AttnMask {
        let span = Span { positions: vec![0, 1, 2], segments: None };
        AttnMask::new(1, span.clone(), span, None)
    }

    /// Every visible (query, key) pair of a query range has its key in the range `key_range` gives, on
    /// causal, windowed, packed (positions restart per segment) and cached-key masks with two rows; and the
    /// range is the hand-derived one where it is exact.
    #[test]
    fn key_range_holds_every_visible_key() {
        let rows = |f: &dyn Fn(usize) -> usize, len: usize| (0..2 * len).map(|i| f(i % len)).collect::<Vec<_>>();
        let plain = |len: usize| Span { positions: rows(&|i| i, len), segments: None };
        let packed = Span {
            positions: rows(&|i| if i < 13 { i } else { i - 13 }, 40),
            segments: Some(rows(&|i| (i >= 13) as usize, 40).into_iter().map(|s| s as u32).collect()),
        };
        // Queries are the last 5 of 40 keys (a cache).
        let cached = Span { positions: rows(&|i| 35 + i, 5), segments: None };
        let masks = [
            AttnMask::new(2, plain(40), plain(40), None),
            AttnMask::new(2, plain(40), plain(40), Some(6)),
            AttnMask::new(2, packed.clone(), packed, Some(9)),
            AttnMask::new(2, cached, plain(40), None),
        ];
        for (n, m) in masks.iter().enumerate() {
            for chunk in [1, 4, 7, 40] {
                for i0 in (0..m.q_len()).step_by(chunk) {
                    let qs = i0..(i0 + chunk).min(m.q_len());
                    let r = m.key_range(qs.clone());
                    for (b, i, j) in (0..2).flat_map(|b| qs.clone().flat_map(move |i| (0..40).map(move |j| (b, i, j))))
                    {
                        assert!(!m.visible(b, i, j) || r.contains(&j), "mask {n}: {i} sees {j} outside {r:?}");
                    }
                }
            }
        }
        assert_eq!(masks[0].key_range(8..12), 0..12);
        assert_eq!(masks[1].key_range(8..12), 3..12);
        assert_eq!(masks[3].key_range(0..2), 0..37);
        // Queries 10..16 straddle the first segment's end: its keys up to 12 and the second's first three.
        assert_eq!(masks[2].key_range(10..16), 2..16);
        // Nothing visible: keys all in the future.
        let future = AttnMask::new(
            1,
            Span { positions: vec![0, 1], segments: None },
            Span { positions: vec![5, 6], segments: None },
            None,
        );
        assert_eq!(future.key_range(0..2), 0..0);
    }

    /// The device copy is made once and shared; a copy of another type is refused, not overwritten; a clone
    /// of the mask starts without one and still equals the original.
    #[test]
    fn device_copy_is_made_once_per_mask() {
        let m = mask();
        let mut made = 0;
        let a = m.device_copy(|| {
            made += 1;
            vec![7u32]
        });
        let b = m.device_copy(|| {
            made += 1;
            vec![8u32]
        });
        assert_eq!(made, 1);
        assert!(Arc::ptr_eq(a.as_ref().unwrap(), b.as_ref().unwrap()));
        assert_eq!(*b.unwrap(), vec![7]);
        assert!(m.device_copy(|| 1.0f32).is_none());
        let c = m.clone();
        assert_eq!(c, m);
        assert_eq!(*c.device_copy(|| vec![9u32]).unwrap(), vec![9]);
    }
}
