//! LoRA dropout's masks from a counter-based generator: element `i` of the mask keyed by `seed` is a pure
//! function of `(seed, i)`, so any backend makes the same mask without a sequential RNG — the host in
//! parallel, a GPU in one kernel where it is used (`crate::cube::dropout`), with identical values; nothing
//! of the mask's size crosses to a GPU. (A sequential RNG on the host would mean drawing and uploading ~2
//! billion numbers a step for Gemma 2B at 4096 tokens: seconds.)
//!
//! `u(seed, i) = mix(mix(i ⊕ k₀) ⊕ k₁)` with `k₀, k₁` the seed's low and high 32 bits and `mix` Chris
//! Wellons' `lowbias32` integer hash (a bijection on u32 with near-ideal avalanche). An element is dropped
//! when the top 24 bits of `u` fall under `p · 2²⁴`, else it is `1 / (1 − p)` (inverted dropout, as
//! `torch.nn.Dropout`). Integer arithmetic only, so the host and the kernels agree bit for bit.
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

/// `lowbias32`: `x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16` (wrapping).
pub fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// What a mask is made of: the seed's halves, the drop threshold on 24 bits, the value of a kept element.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskParams {
    pub k0: u32,
    pub k1: u32,
    /// Dropped where `u >> 8 < threshold`.
    pub threshold: u32,
    pub keep: f32,
}

impl MaskParams {
    pub fn new(p: f64, seed: u64) -> Self {
        assert!((0.0..1.0).contains(&p), "dropout probability {p} outside [0, 1)");
        Self {
            k0: seed as u32,
            k1: (seed >> 32) as u32,
            threshold: (p * (1u32 << 24) as f64).round() as u32,
            keep: (1.0 / (1.0 - p)) as f32,
        }
    }

    /// Element `i` of the mask.
    pub fn at(&self, i: u32) -> f32 {
        if mix(mix(i ^ self.k0) ^ self.k1) >> 8 < self.threshold {
            0.0
        } else {
            self.keep
        }
    }
}

/// The mask as host values (in parallel).
pub fn mask_values(n: usize, p: f64, seed: u64) -> Vec<f32> {
    assert!(u32::try_from(n).is_ok(), "a dropout mask of {n} elements exceeds the generator's 2^32 counter");
    let m = MaskParams::new(p, seed);
    (0..n as u32).into_par_iter().map(|i| m.at(i)).collect()
}

/// `[rows, cols]` mask on `device`, made on the host (the default of `GemmaBackend::dropout_mask`).
pub fn mask_host<B: Backend>(shape: [usize; 2], p: f64, seed: u64, device: &B::Device) -> FloatTensor<B> {
    let v = mask_values(shape[0] * shape[1], p, seed);
    Tensor::<B, 2>::from_data(TensorData::new(v, shape), device).into_primitive().tensor()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `lowbias32` against values computed independently (Python, 32-bit masking by hand).
    #[test]
    fn mix_is_lowbias32() {
        assert_eq!([0, 1, 2, 0xdead_beef].map(mix), [0, 0x6889_90c0, 0xd113_2181, 0xe628_c683]);
        let m = MaskParams { k0: 0x89ab_cdef, k1: 0x0123_4567, threshold: 0, keep: 1.0 };
        let u = |i: u32| mix(mix(i ^ m.k0) ^ m.k1);
        assert_eq!([0, 1, 2, 3].map(u), [0x1c62_a4a3, 0xf529_b166, 0xe6d7_6bcf, 0x10aa_055c]);
    }

    /// The dropped fraction is `p` within the binomial spread (4σ), kept elements are `1 / (1 − p)`, the
    /// mask's mean is 1 as inverted dropout needs, a seed gives one mask, and another seed another.
    #[test]
    fn masks_drop_p_and_depend_on_the_seed() {
        let n = 1 << 20;
        for p in [0.05, 0.1, 0.5] {
            let v = mask_values(n, p, 42);
            let dropped = v.iter().filter(|&&x| x == 0.0).count() as f64 / n as f64;
            let sigma = (p * (1.0 - p) / n as f64).sqrt();
            assert!((dropped - p).abs() < 4.0 * sigma, "p {p}: dropped {dropped}");
            let keep = (1.0 / (1.0 - p)) as f32;
            assert!(v.iter().all(|&x| x == 0.0 || x == keep));
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
            assert!((mean - 1.0).abs() < 4.0 * sigma / (1.0 - p), "p {p}: mean {mean}");
        }
        assert_eq!(mask_values(1000, 0.1, 7), mask_values(1000, 0.1, 7));
        let (a, b) = (mask_values(1000, 0.1, 7), mask_values(1000, 0.1, 7 | (1 << 40)));
        assert!(a.iter().zip(&b).filter(|(x, y)| x != y).count() > 100, "the high seed bits matter");
        // Neighbouring elements are not correlated: the dropped pairs are p² of the pairs.
        let v = mask_values(n, 0.5, 3);
        let both = v.windows(2).filter(|w| w[0] == 0.0 && w[1] == 0.0).count() as f64 / (n - 1) as f64;
        assert!((both - 0.25).abs() < 4.0 * (0.25f64 * 0.75 / n as f64).sqrt(), "pairs {both}");
        assert!(mask_values(100, 0.0, 1).iter().all(|&x| x == 1.0));
    }
}
