//! One row of the LM-head cross-entropy, in place: from the raw logits of a row to its loss
//! `-log softmax(z)[target]` and, when asked, `d loss / d logits = softmax(z) - onehot(target)` (times the
//! softcap's derivative for Gemma 2).
//!
//! Over a 262k-word vocabulary this touches a megabyte per row, so it is written to vectorise: the
//! reductions keep eight lanes, `exp` is a branch-free polynomial (Cephes' `expf`, ~1 ulp) instead of the
//! scalar libm call, and the whole row is compiled a second time with AVX2+FMA and picked at run time (the
//! binary itself targets baseline x86-64, so the compiler could not otherwise use them).

use super::math::exp;

const LANES: usize = 8;

#[inline(always)]
fn max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    rest.iter().chain(acc.iter()).fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

/// `Σ exp(x - m)`; with `store`, also `x ← exp(x - m)`.
#[inline(always)]
fn sum_exp(row: &mut [f32], m: f32, store: bool) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            let e = exp(c[l] - m);
            if store {
                c[l] = e;
            }
            acc[l] += e;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for x in chunks.into_remainder() {
        let e = exp(*x - m);
        if store {
            *x = e;
        }
        s += e;
    }
    s
}

#[inline(always)]
fn xent_row_impl(row: &mut [f32], target: usize, softcap: Option<f32>, grad: bool) -> f32 {
    if let Some(cap) = softcap {
        // Scalar tanh: only Gemma 2 softcaps its logits.
        row.iter_mut().for_each(|x| *x = cap * (*x / cap).tanh());
    }
    let m = max(row);
    let zt = row[target];
    match (grad, softcap) {
        (false, _) => {
            let s = sum_exp(row, m, false);
            m + s.ln() - zt
        }
        (true, None) => {
            let s = sum_exp(row, m, true);
            let inv = 1.0 / s;
            row.iter_mut().for_each(|x| *x *= inv);
            row[target] -= 1.0;
            m + s.ln() - zt
        }
        (true, Some(cap)) => {
            let lse = m + sum_exp(row, m, false).ln();
            // d z / d logit = 1 - tanh² = 1 - (z / cap)².
            row.iter_mut().for_each(|x| {
                let t = *x / cap;
                *x = exp(*x - lse) * (1.0 - t * t);
            });
            let t = zt / cap;
            row[target] -= 1.0 - t * t;
            lse - zt
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn xent_row_avx2(row: &mut [f32], target: usize, softcap: Option<f32>, grad: bool) -> f32 {
    xent_row_impl(row, target, softcap, grad)
}

/// `row`: the raw logits of one position (overwritten). Returns `-log softmax(cap(row))[target]`; with
/// `grad`, leaves its gradient with respect to the raw logits in `row`.
pub fn xent_row(row: &mut [f32], target: usize, softcap: Option<f32>, grad: bool) -> f32 {
    assert!(target < row.len(), "target {target} outside a row of {} logits", row.len());
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function was compiled for (checked just above).
        return unsafe { xent_row_avx2(row, target, softcap, grad) };
    }
    xent_row_impl(row, target, softcap, grad)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the textbook definition in f64, with and without softcapping.
    #[test]
    fn loss_and_gradient_match_the_definition() {
        let n = 1003; // not a multiple of the lane count
        let logits: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 40.0).collect();
        for softcap in [None, Some(30.0f32)] {
            for grad in [false, true] {
                let target = 417;
                let mut row = logits.clone();
                let nll = xent_row(&mut row, target, softcap, grad);
                let z: Vec<f64> = logits
                    .iter()
                    .map(|&l| softcap.map_or(l as f64, |c| c as f64 * (l as f64 / c as f64).tanh()))
                    .collect();
                let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                assert!((nll as f64 - (lse - z[target])).abs() < 1e-4, "{softcap:?}: {nll} vs {}", lse - z[target]);
                if grad {
                    for j in 0..n {
                        let dz = (z[j] - lse).exp() - if j == target { 1.0 } else { 0.0 };
                        let d = softcap.map_or(1.0, |c| 1.0 - (z[j] / c as f64).powi(2));
                        assert!(
                            (row[j] as f64 - dz * d).abs() < 1e-6,
                            "{softcap:?} grad[{j}]: {} vs {}",
                            row[j],
                            dz * d
                        );
                    }
                }
            }
        }
    }
}
