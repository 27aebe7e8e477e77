//! `data.eval_split`: rows held out of training to evaluate on, when no eval file is given.
//!
//! As `datasets.Dataset.train_test_split(test_size=f)` sizes it, a source of `n` rows holds out
//! `k = ceil(f · n)` of them and trains on the other `n - k` (both must be at least one). Which rows: the `k`
//! with the smallest keyed hash of `(seed, source, row index)`, a seeded uniform choice that needs no
//! permutation of the whole dataset in memory (the split is not `train_test_split`'s own shuffle). A row's index
//! counts every row the source yields, malformed ones included, in file order, so the held-out set depends
//! only on the files, the fraction and the seed: the same on every epoch, after a resume, and for the trainer's
//! eval set, which reads exactly the held-out rows.

use std::collections::BinaryHeap;
use std::sync::Arc;

use crate::error::{DataError, Result};
use crate::record::{Row, RowSource};
use crate::shuffle::random_u64;

/// Which side of the split a stream keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Train,
    Eval,
}

/// `(fraction, seed)` of a split; [`held_out`] picks the rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Split {
    pub fraction: f64,
    pub seed: u64,
    pub side: Side,
}

/// Rows a source yields (good and malformed); stops at the first error that is not a row's.
pub fn count_rows(source: Box<dyn RowSource>) -> Result<u64> {
    let mut n = 0;
    for item in source {
        match item {
            Ok(_) => {}
            Err(e) if e.is_row_error() => {}
            Err(e) => return Err(e),
        }
        n += 1;
    }
    Ok(n)
}

/// The sorted indices of the rows source `source` (of `n` rows) holds out; an error when either side is empty.
pub fn held_out(n: u64, fraction: f64, seed: u64, source: usize) -> std::result::Result<Vec<u64>, String> {
    let k = (fraction * n as f64).ceil() as u64;
    if n == 0 || k == 0 || k >= n {
        return Err(format!(
            "data.eval_split = {fraction} of {n} rows leaves {} to train on and {k} to evaluate; both need at least one",
            n.saturating_sub(k)
        ));
    }
    // A stream of the shuffle's generator that no epoch uses (epochs count up from 0).
    let stream = u64::MAX - source as u64;
    let mut heap: BinaryHeap<(u64, u64)> = BinaryHeap::with_capacity(k as usize + 1);
    for i in 0..n {
        heap.push((random_u64(seed, stream, i), i));
        if heap.len() as u64 > k {
            heap.pop(); // the largest key goes: the k smallest stay
        }
    }
    let mut out: Vec<u64> = heap.into_iter().map(|(_, i)| i).collect();
    out.sort_unstable();
    Ok(out)
}

/// The rows of `source` on `side` of the split whose held-out indices are `held`.
pub fn filter(source: Box<dyn RowSource>, held: Arc<Vec<u64>>, side: Side) -> Box<dyn RowSource> {
    let keep = move |(i, _): &(u64, Result<Row, DataError>)| held.binary_search(i).is_ok() == (side == Side::Eval);
    Box::new((0u64..).zip(source).filter(keep).map(|(_, item)| item))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_train_test_split_and_is_seeded() {
        let h = held_out(100, 0.02, 7, 0).unwrap();
        assert_eq!(h.len(), 2); // ceil(0.02 * 100)
        assert_eq!(held_out(101, 0.02, 7, 0).unwrap().len(), 3); // ceil(2.02)
        assert_eq!(h, held_out(100, 0.02, 7, 0).unwrap());
        assert_ne!(held_out(1000, 0.1, 7, 0).unwrap(), held_out(1000, 0.1, 8, 0).unwrap());
        assert_ne!(held_out(1000, 0.1, 7, 0).unwrap(), held_out(1000, 0.1, 7, 1).unwrap());
        assert!(held_out(1, 0.5, 7, 0).unwrap_err().contains("leaves 0 to train on"));
        assert!(held_out(0, 0.5, 7, 0).is_err());
    }
}
