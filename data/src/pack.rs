//! Greedy packing of examples into rows of at most `max_seq_len` tokens.
//!
//! Examples go into the current row in stream order until the next one does not fit; then the row is
//! closed and that example starts a new one (no look-ahead, no reordering, so the stream stays
//! deterministic and resumable). Within a row each example keeps its own `position_ids` (0, 1, ...) and gets a
//! `segment_id` (1, 2, ... in row order; 0 is reserved for padding). The model must not let one example see
//! another: a query may attend to a key only if both have the same segment id (see [`crate::batch`]).
//! Labels need no fix-up at boundaries: every example's `labels[0]` is already ignored, so the last token of
//! one example never gets the first token of the next as its target.

use crate::tokenize::Example;

/// One sequence of the batch: one example, or several packed ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackedRow {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    /// Position of each token within its own example; restarts at 0 at every example.
    pub position_ids: Vec<u32>,
    /// 1 for the row's first example, 2 for the second, ...
    pub segment_ids: Vec<u32>,
}

impl PackedRow {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    pub fn n_segments(&self) -> u32 {
        self.segment_ids.last().copied().unwrap_or(0)
    }

    /// Appends `ex` as the next segment.
    pub fn push(&mut self, ex: &Example) {
        let segment = self.n_segments() + 1;
        self.input_ids.extend_from_slice(&ex.input_ids);
        self.labels.extend_from_slice(&ex.labels);
        self.position_ids.extend(0..ex.len() as u32);
        self.segment_ids.extend(std::iter::repeat_n(segment, ex.len()));
    }

    pub fn from_example(ex: &Example) -> Self {
        let mut row = Self::default();
        row.push(ex);
        row
    }
}

/// Greedy sequential packer (or a pass-through, one example per row, when `enabled` is false).
#[derive(Debug, Clone)]
pub struct Packer {
    capacity: usize,
    enabled: bool,
    current: PackedRow,
}

impl Packer {
    /// `capacity` is `max_seq_len`; examples must already be truncated to it.
    pub fn new(capacity: usize, enabled: bool) -> Self {
        Self { capacity, enabled, current: PackedRow::default() }
    }

    /// Adds `ex`. Returns a finished row when there is one: with packing off, `ex`'s own row; with packing on,
    /// the current row when `ex` does not fit in it (`ex` then starts the next row).
    pub fn push(&mut self, ex: &Example) -> Option<PackedRow> {
        debug_assert!(ex.len() <= self.capacity, "examples are truncated before packing");
        if !self.enabled {
            return Some(PackedRow::from_example(ex));
        }
        let done = if !self.current.is_empty() && self.current.len() + ex.len() > self.capacity {
            Some(std::mem::take(&mut self.current))
        } else {
            None
        };
        self.current.push(ex);
        done
    }

    /// Closes and returns the current row, if any (end of data).
    pub fn flush(&mut self) -> Option<PackedRow> {
        (!self.current.is_empty()).then(|| std::mem::take(&mut self.current))
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::IGNORE_INDEX as X;

    fn ex(ids: &[u32]) -> Example {
        let mut labels: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        labels[0] = X;
        Example { input_ids: ids.to_vec(), labels, truncated: false }
    }

    #[test]
    fn greedy_packing_restarts_positions_and_masks_boundaries() {
        let mut p = Packer::new(8, true);
        assert_eq!(p.push(&ex(&[2, 10, 11])), None);
        assert_eq!(p.push(&ex(&[2, 20, 21, 22])), None);
        // 7 tokens in the row; 3 more do not fit.
        let row = p.push(&ex(&[2, 30, 31])).expect("row closed");
        assert_eq!(row.input_ids, vec![2, 10, 11, 2, 20, 21, 22]);
        assert_eq!(row.position_ids, vec![0, 1, 2, 0, 1, 2, 3]);
        assert_eq!(row.segment_ids, vec![1, 1, 1, 2, 2, 2, 2]);
        // After the model's shift, position 2 (token 11, last of example 1) would predict labels[3]: ignored.
        assert_eq!(row.labels, vec![X, 10, 11, X, 20, 21, 22]);
        let last = p.flush().expect("pending row");
        assert_eq!(last.input_ids, vec![2, 30, 31]);
        assert_eq!(last.segment_ids, vec![1, 1, 1]);
        assert_eq!(p.flush(), None);
    }

    #[test]
    fn exact_fit_and_passthrough() {
        let mut p = Packer::new(4, true);
        assert_eq!(p.push(&ex(&[2, 1])), None);
        assert_eq!(p.push(&ex(&[2, 3])), None);
        let row = p.push(&ex(&[2, 4, 5, 6])).unwrap();
        assert_eq!(row.len(), 4);
        assert_eq!(p.flush().unwrap().len(), 4);

        let mut p = Packer::new(4, false);
        let row = p.push(&ex(&[2, 1])).unwrap();
        assert_eq!(row.segment_ids, vec![1, 1]);
        assert!(p.is_empty());
    }
}
