//! numpy's `np.random.default_rng(seed)` and `Generator.choice(n, p=...)`, draw for draw, so that mixing data
//! sources gives the rows `datasets.interleave_datasets(probabilities=..., seed=...)` gives (see
//! [`crate::mix`]; tested against it in `data/tests/mix.rs`).
//!
//! `default_rng(seed)` is PCG64 (a 128-bit LCG with the XSL-RR output, `rand_pcg::Pcg64`) seeded by
//! `SeedSequence(seed).generate_state(4, uint64)`: the state from words 0-1, the stream from words 2-3. No crate
//! implements numpy's `SeedSequence` hash, so it is written out here from numpy's `bit_generator.pyx`.
//! `Generator.random()` is `(next_u64 >> 11) · 2⁻⁵³`; `choice(n, size, p)` draws one such double per sample
//! and returns the first index whose `p.cumsum() / p.cumsum()[-1]` exceeds it (`searchsorted(side='right')`).

use rand_pcg::rand_core::Rng;
use rand_pcg::Pcg64;

const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;
const POOL_SIZE: usize = 4;

/// `SeedSequence(seed)`'s entropy pool (no spawn key).
fn seed_pool(seed: u64) -> [u32; POOL_SIZE] {
    // A Python int as little-endian 32-bit words; 0 is one zero word.
    let entropy: Vec<u32> = if seed >> 32 == 0 { vec![seed as u32] } else { vec![seed as u32, (seed >> 32) as u32] };
    let mut hash_const = INIT_A;
    let mut hashmix = |value: u32| {
        let mut v = value ^ hash_const;
        hash_const = hash_const.wrapping_mul(MULT_A);
        v = v.wrapping_mul(hash_const);
        v ^ (v >> XSHIFT)
    };
    let mix = |x: u32, y: u32| {
        let r = MIX_MULT_L.wrapping_mul(x).wrapping_sub(MIX_MULT_R.wrapping_mul(y));
        r ^ (r >> XSHIFT)
    };
    let mut pool = [0u32; POOL_SIZE];
    for (i, p) in pool.iter_mut().enumerate() {
        *p = hashmix(entropy.get(i).copied().unwrap_or(0));
    }
    for src in 0..POOL_SIZE {
        for dst in 0..POOL_SIZE {
            if src != dst {
                let h = hashmix(pool[src]);
                pool[dst] = mix(pool[dst], h);
            }
        }
    }
    // Entropy longer than the pool (never for a u64 seed) would be mixed in here.
    pool
}

/// `SeedSequence(seed).generate_state(n, np.uint64)`.
fn generate_state(seed: u64, n: usize) -> Vec<u64> {
    let pool = seed_pool(seed);
    let mut hash_const = INIT_B;
    let words: Vec<u32> = (0..2 * n)
        .map(|i| {
            let mut v = pool[i % POOL_SIZE] ^ hash_const;
            hash_const = hash_const.wrapping_mul(MULT_B);
            v = v.wrapping_mul(hash_const);
            v ^ (v >> XSHIFT)
        })
        .collect();
    words.chunks_exact(2).map(|w| w[0] as u64 | (w[1] as u64) << 32).collect()
}

/// `np.random.default_rng(seed)`.
pub struct NumpyRng {
    pcg: Pcg64,
}

impl NumpyRng {
    pub fn new(seed: u64) -> Self {
        let s = generate_state(seed, 4);
        let state = (s[0] as u128) << 64 | s[1] as u128;
        let stream = (s[2] as u128) << 64 | s[3] as u128;
        Self { pcg: Pcg64::new(state, stream) }
    }

    /// `Generator.random()`: uniform in [0, 1) with 53 random bits.
    pub fn random(&mut self) -> f64 {
        (self.pcg.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }
}

/// `Generator.choice(len(p), p=p)`, one sample at a time (a `size=k` call draws the same doubles in order).
pub struct WeightedChoice {
    rng: NumpyRng,
    cdf: Vec<f64>,
}

impl WeightedChoice {
    /// `p` must be non-negative and sum to 1 (as numpy checks; [`crate::mix`] normalises the weights).
    pub fn new(seed: u64, p: &[f64]) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = p
            .iter()
            .map(|x| {
                acc += x; // numpy's cumsum adds in order
                acc
            })
            .collect();
        let last = *cdf.last().expect("at least one probability");
        cdf.iter_mut().for_each(|c| *c /= last);
        Self { rng: NumpyRng::new(seed), cdf }
    }

    pub fn draw(&mut self) -> usize {
        let u = self.rng.random();
        // searchsorted(side='right'): the count of entries <= u. The last entry is 1.0 > u, so this is < n.
        self.cdf.partition_point(|&c| c <= u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Printed once by numpy 2.4.6 (`SeedSequence(s).generate_state(4, np.uint64)`, `default_rng(s).random(2)`,
    /// `default_rng(3).choice(3, size=12, p=[0.5, 0.3, 0.2])`); the mixing built on this is tested against
    /// `datasets.interleave_datasets` itself in data/tests/mix.rs.
    #[test]
    fn matches_numpy() {
        assert_eq!(
            generate_state(0, 4),
            [0xdb2cd7e7b0f478be, 0xabf4641a2c71ba49, 0x20c6ed6d9d7b8d41, 0x2c4099de223c39d4]
        );
        let big = (1 << 40) + 7;
        assert_eq!(
            generate_state(big, 4),
            [0x0d8672e10e3d1a15, 0x9aef4ada4ecfa161, 0x999c1c3b83dba903, 0x408927dc0dc8a316]
        );
        let mut r = NumpyRng::new(0);
        assert_eq!([r.random(), r.random()], [0.6369616873214543, 0.2697867137638703]);
        let mut r = NumpyRng::new(big);
        assert_eq!([r.random(), r.random()], [0.829812891829413, 0.25530515834910417]);
        let mut c = WeightedChoice::new(3, &[0.5, 0.3, 0.2]);
        let drawn: Vec<usize> = (0..12).map(|_| c.draw()).collect();
        assert_eq!(drawn, [0, 0, 2, 1, 0, 0, 0, 0, 1, 0, 0, 1]);
    }
}
