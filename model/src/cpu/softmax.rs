//! One row of the LM-head cross-entropy over one tile of the vocabulary, online: the running max and sum of
//! the softmax, and (for the gradient) `exp(z − m)` times the softcap's derivative for Gemma 2, from which
//! the caller assembles `d loss / d logits = softmax(z) − onehot(target)` (`crate::cpu::lm_head`).
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

/// The running state of one row's softmax over the vocabulary tiles seen so far.
#[derive(Debug, Clone, Copy)]
pub struct RowState {
    /// Largest (softcapped) logit so far.
    pub m: f32,
    /// `Σ exp(z − m)` so far.
    pub s: f32,
    /// The target's (softcapped) logit, once its tile has been seen.
    pub z_target: f32,
}

impl Default for RowState {
    fn default() -> Self {
        Self { m: f32::NEG_INFINITY, s: 0.0, z_target: f32::NAN }
    }
}

impl RowState {
    /// `-log softmax(z)[target]` once every tile has been seen.
    pub fn nll(&self) -> f32 {
        self.m + self.s.ln() - self.z_target
    }
}

#[inline(always)]
fn tile_row_impl(row: &mut [f32], st: &mut RowState, target: Option<usize>, softcap: Option<f32>, grad: bool) -> f32 {
    if let Some(cap) = softcap {
        // Scalar tanh: only Gemma 2 softcaps its logits.
        row.iter_mut().for_each(|x| *x = cap * (*x / cap).tanh());
    }
    if let Some(t) = target {
        st.z_target = row[t];
    }
    let m = st.m.max(max(row));
    // exp(-inf) = 0 on the first tile: nothing accumulated yet.
    let rescale = if st.m == f32::NEG_INFINITY { 0.0 } else { exp(st.m - m) };
    let added = match (grad, softcap) {
        (false, _) => sum_exp(row, m, false),
        (true, None) => sum_exp(row, m, true),
        (true, Some(cap)) => {
            // Σ e and, in place, e·(1 − (z/cap)²): the softcap's derivative, d z / d logit = 1 − tanh².
            let mut acc = [0f32; LANES];
            let mut chunks = row.chunks_exact_mut(LANES);
            for c in &mut chunks {
                for l in 0..LANES {
                    let (z, e) = (c[l], exp(c[l] - m));
                    acc[l] += e;
                    c[l] = e * (1.0 - (z / cap) * (z / cap));
                }
            }
            let mut sum: f32 = acc.iter().sum();
            for x in chunks.into_remainder() {
                let e = exp(*x - m);
                sum += e;
                *x = e * (1.0 - (*x / cap) * (*x / cap));
            }
            sum
        }
    };
    st.s = st.s * rescale + added;
    st.m = m;
    rescale
}

avx2_dispatch!(
    /// One row of one vocabulary tile, online (flash-attention style): `row` holds the tile's raw logits and
    /// `target` the target's index when it falls in this tile. Updates the running max and sum of `st`; with
    /// `grad`, leaves `exp(z − m)` (times the softcap's derivative) in `row`, where `m` is the new running
    /// max. Returns `exp(m_old − m)`, the factor anything accumulated from earlier tiles must be scaled by.
    pub fn tile_row(row: &mut [f32], st: &mut RowState, target: Option<usize>, softcap: Option<f32>, grad: bool) -> f32
        => tile_row_impl
);

#[cfg(test)]
mod tests {
    use super::*;

    /// A row processed in three tiles: the running max and sum, the target's logit and the rescaled
    /// `exp(z − m)` values give the textbook loss and gradient (in f64), with and without softcapping.
    #[test]
    fn tiles_combine_to_the_definition() {
        let n = 1003; // tiles of 400, 400 and 203: not multiples of the lane count
        let logits: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 40.0).collect();
        let target = 417;
        for softcap in [None, Some(30.0f32)] {
            let mut st = RowState::default();
            let mut grad = vec![0f64; n];
            for t0 in (0..n).step_by(400) {
                let t1 = (t0 + 400).min(n);
                let mut row = logits[t0..t1].to_vec();
                let tgt = (t0..t1).contains(&target).then(|| target - t0);
                let rescale = tile_row(&mut row, &mut st, tgt, softcap, true) as f64;
                grad[..t0].iter_mut().for_each(|g| *g *= rescale);
                grad[t0..t1].iter_mut().zip(&row).for_each(|(g, r)| *g = *r as f64);
            }
            let z: Vec<f64> =
                logits.iter().map(|&l| softcap.map_or(l as f64, |c| c as f64 * (l as f64 / c as f64).tanh())).collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            let nll = st.nll() as f64;
            assert!((nll - (lse - z[target])).abs() < 1e-4, "{softcap:?}: {nll} vs {}", lse - z[target]);
            for j in 0..n {
                let d = softcap.map_or(1.0, |c| 1.0 - (z[j] / c as f64).powi(2));
                let want = (z[j] - lse).exp() * d; // softmax part; the one-hot part is the caller's
                let got = grad[j] / st.s as f64;
                assert!((got - want).abs() < 1e-6, "{softcap:?} grad[{j}]: {got} vs {want}");
            }
        }
    }
}
