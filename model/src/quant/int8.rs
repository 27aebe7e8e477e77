//! 8-bit frozen base in the layout bitsandbytes uses for `load_in_8bit` (`Int8Params`): per output row, the
//! absmax `SCB` and `CB = round(W * (127 / SCB))` as int8 (round half to even, as `torch.round`).
//!
//! Difference from bitsandbytes' LLM.int8() matmul, on purpose: bitsandbytes also quantizes the *activations*
//! row-wise to int8 and runs an int8 GEMM, keeping activation columns with an outlier (|x| >= 6.0) in
//! 16/32-bit. We dequantize the weight (`CB * SCB / 127`, bitsandbytes' own dequantization) and multiply in
//! full precision, so our result is the exact product with the int8 weight and never loses activation precision;
//! it differs from bitsandbytes by that activation rounding only (see the tolerance in the tests).
use rayon::prelude::*;

#[derive(Debug, Clone, PartialEq)]
pub struct Int8Weight {
    /// `[out_features, in_features]`.
    pub shape: [usize; 2],
    /// Row-major int8 codes.
    pub cb: Vec<i8>,
    /// Per-row absmax.
    pub scb: Vec<f32>,
}

/// bitsandbytes multiplies by this f32 constant instead of dividing by 127.
#[allow(clippy::excessive_precision)] // the literal bitsandbytes writes, so the f32 is the same
pub(crate) const INV_127: f32 = 7.874015718698502e-3;

impl Int8Weight {
    pub fn quantize(data: &[f32], shape: [usize; 2]) -> Self {
        assert_eq!(data.len(), shape[0] * shape[1], "int8: data does not match its shape");
        let cols = shape[1];
        let scb: Vec<f32> = data.par_chunks(cols).map(|r| r.iter().fold(0f32, |m, x| m.max(x.abs()))).collect();
        let mut cb = vec![0i8; data.len()];
        cb.par_chunks_mut(cols).zip(data.par_chunks(cols)).zip(&scb).for_each(|((q, r), &s)| {
            // torch evaluates `127.0 / row_stats` as `row_stats.reciprocal() * 127.0`; the last bit matters.
            let k = (1.0f32 / s) * 127.0;
            for (q, &x) in q.iter_mut().zip(r) {
                let v = (x * k).round_ties_even();
                // A zero row gives 0 * inf = NaN in bitsandbytes too; store 0 there.
                *q = if v.is_finite() { v as i8 } else { 0 };
            }
        });
        Int8Weight { shape, cb, scb }
    }

    pub fn dequantize_into(&self, out: &mut [f32]) {
        let cols = self.shape[1];
        out.par_chunks_mut(cols).zip(self.cb.par_chunks(cols)).zip(&self.scb).for_each(|((o, q), &s)| {
            for (o, &q) in o.iter_mut().zip(q) {
                *o = q as f32 * s * INV_127;
            }
        });
    }

    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.cb.len()];
        self.dequantize_into(&mut out);
        out
    }

    pub fn resident_bytes(&self) -> usize {
        self.cb.len() + self.scb.len() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_derived_row() {
        // Row absmax 2.0: 1.0 -> round(63.5) = 64 (ties to even), -2.0 -> -127, 0.5 -> round(31.75) = 32.
        let w = Int8Weight::quantize(&[1.0, -2.0, 0.5, 0.0], [1, 4]);
        assert_eq!(w.cb, vec![64, -127, 32, 0]);
        assert_eq!(w.scb, vec![2.0]);
        let d = w.dequantize();
        assert!((d[1] + 2.0).abs() < 1e-6);
        assert!((d[0] - 64.0 * 2.0 / 127.0).abs() < 1e-6);
    }
}
