//! A seeded shuffle buffer with bounded memory and a counter-based random stream.
//!
//! The buffer holds up to `capacity` items. Once full, each incoming item replaces a uniformly chosen slot and
//! the displaced item is emitted; at the end of the input the rest are emitted in random order (the
//! `datasets.IterableDataset.shuffle` scheme). The `k`-th random draw of an epoch is a pure function of
//! `(seed, epoch, k)`, so the whole order is a function of the seed, the epoch and the input order: the
//! epoch's first `n` outputs can be reproduced by replaying the epoch, which is how a run resumes exactly
//! (see [`crate::pipeline::DataPosition`]). A capacity of 0 or 1 keeps the input order.

/// SplitMix64's finaliser: a bijective 64-bit mixer with good avalanche.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `counter`-th 64-bit random value of epoch `epoch` for `seed`.
pub fn random_u64(seed: u64, epoch: u64, counter: u64) -> u64 {
    mix(mix(mix(seed) ^ epoch) ^ counter)
}

/// Uniform in `0..n` (multiply-shift; bias below 2^-32 for any realistic `n`).
fn below(r: u64, n: usize) -> usize {
    ((r as u128 * n as u128) >> 64) as usize
}

pub struct ShuffleBuffer<T> {
    capacity: usize,
    items: Vec<T>,
    seed: u64,
    epoch: u64,
    draws: u64,
}

impl<T> ShuffleBuffer<T> {
    pub fn new(capacity: usize, seed: u64, epoch: u64) -> Self {
        Self { capacity, items: Vec::with_capacity(capacity.min(1 << 16)), seed, epoch, draws: 0 }
    }

    fn draw(&mut self, n: usize) -> usize {
        let r = random_u64(self.seed, self.epoch, self.draws);
        self.draws += 1;
        below(r, n)
    }

    /// Adds an item; returns the item to emit, if any.
    pub fn push(&mut self, item: T) -> Option<T> {
        if self.capacity <= 1 {
            return Some(item);
        }
        if self.items.len() < self.capacity {
            self.items.push(item);
            return None;
        }
        let j = self.draw(self.capacity);
        Some(std::mem::replace(&mut self.items[j], item))
    }

    /// After the input ended: the next remaining item, in random order.
    pub fn drain_one(&mut self) -> Option<T> {
        if self.items.is_empty() {
            return None;
        }
        let j = self.draw(self.items.len());
        Some(self.items.swap_remove(j))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(n: usize, cap: usize, seed: u64, epoch: u64) -> Vec<usize> {
        let mut b = ShuffleBuffer::new(cap, seed, epoch);
        let mut out: Vec<usize> = (0..n).filter_map(|i| b.push(i)).collect();
        while let Some(x) = b.drain_one() {
            out.push(x);
        }
        out
    }

    #[test]
    fn is_a_seeded_permutation() {
        let a = order(100, 16, 7, 0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, order(100, 16, 7, 0));
        assert_ne!(a, order(100, 16, 8, 0));
        assert_ne!(a, order(100, 16, 7, 1));
        assert_eq!(order(10, 1, 7, 0), (0..10).collect::<Vec<_>>());
        assert_eq!(order(10, 0, 7, 0), (0..10).collect::<Vec<_>>());
    }
}
