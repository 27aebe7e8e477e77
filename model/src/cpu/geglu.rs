//! Gemma's gated activation `gelu_tanh(gate) · up` and its backward on host slices, in one pass each
//! (Burn's composed version makes several passes and keeps their intermediates for the backward).
//! `gelu_tanh(x) = ½x(1 + tanh(√(2/π)(x + 0.044715x³)))`, transformers' `gelu_pytorch_tanh`.
use rayon::prelude::*;

use super::math::tanh;

const K: f32 = 0.797_884_6; // √(2/π)
const C: f32 = 0.044_715;
/// Elements per parallel task.
const TASK: usize = 1 << 14;

/// `x` rounded to bf16 when `ROUND` (the bf16 variants round where torch's bf16 ops do).
#[inline(always)]
fn rnd<const ROUND: bool>(x: f32) -> f32 {
    if ROUND {
        super::bf16::widen(super::bf16::bits(x))
    } else {
        x
    }
}

#[inline(always)]
fn forward_impl<const ROUND: bool>(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(g).zip(u) {
        let t = tanh(K * (x + C * x * x * x));
        *o = if ROUND { rnd::<true>(rnd::<true>(0.5 * x * (1.0 + t)) * y) } else { 0.5 * x * (1.0 + t) * y };
    }
}

#[inline(always)]
fn backward_impl<const ROUND: bool>(g: &[f32], u: &[f32], dout: &[f32], dg: &mut [f32], du: &mut [f32]) {
    for i in 0..g.len() {
        let (x, y, d) = (g[i], u[i], dout[i]);
        let t = tanh(K * (x + C * x * x * x));
        let gelu = 0.5 * x * (1.0 + t);
        let dgelu = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * K * (1.0 + 3.0 * C * x * x);
        // In bf16, autograd of `gelu(g) * u`: the gradient of the product rounded, then gelu's backward.
        dg[i] = rnd::<ROUND>(rnd::<ROUND>(d * y) * dgelu);
        du[i] = rnd::<ROUND>(d * rnd::<ROUND>(gelu));
    }
}

#[inline(always)]
fn forward_f32(g: &[f32], u: &[f32], out: &mut [f32]) {
    forward_impl::<false>(g, u, out)
}
#[inline(always)]
fn forward_bf16(g: &[f32], u: &[f32], out: &mut [f32]) {
    forward_impl::<true>(g, u, out)
}
#[inline(always)]
fn backward_f32(g: &[f32], u: &[f32], dout: &[f32], dg: &mut [f32], du: &mut [f32]) {
    backward_impl::<false>(g, u, dout, dg, du)
}
#[inline(always)]
fn backward_bf16(g: &[f32], u: &[f32], dout: &[f32], dg: &mut [f32], du: &mut [f32]) {
    backward_impl::<true>(g, u, dout, dg, du)
}

avx2_dispatch!(fn forward_chunk(g: &[f32], u: &[f32], out: &mut [f32]) => forward_f32);
avx2_dispatch!(fn forward_chunk_bf16(g: &[f32], u: &[f32], out: &mut [f32]) => forward_bf16);
avx2_dispatch!(fn backward_chunk(g: &[f32], u: &[f32], dout: &[f32], dg: &mut [f32], du: &mut [f32]) => backward_f32);
avx2_dispatch!(fn backward_chunk_bf16(g: &[f32], u: &[f32], dout: &[f32], dg: &mut [f32], du: &mut [f32]) => backward_bf16);

/// `gelu_tanh(g) · u`.
pub fn forward(g: &[f32], u: &[f32]) -> Vec<f32> {
    forward_with(g, u, forward_chunk)
}

/// [`forward`] on bf16 values (given as f32), rounding as torch's bf16 `gelu(g) * u` does: gelu's output,
/// then the product.
pub fn forward_rounded(g: &[f32], u: &[f32]) -> Vec<f32> {
    forward_with(g, u, forward_chunk_bf16)
}

fn forward_with(g: &[f32], u: &[f32], chunk: fn(&[f32], &[f32], &mut [f32])) -> Vec<f32> {
    assert_eq!(g.len(), u.len(), "geglu: gate and up differ in size");
    let mut out = vec![0f32; g.len()];
    out.par_chunks_mut(TASK).zip(g.par_chunks(TASK).zip(u.par_chunks(TASK))).for_each(|(o, (g, u))| chunk(g, u, o));
    out
}

/// `(d/dg, d/du)` of `Σ dout · gelu_tanh(g) · u`.
pub fn backward(g: &[f32], u: &[f32], dout: &[f32]) -> (Vec<f32>, Vec<f32>) {
    backward_with(g, u, dout, backward_chunk)
}

/// [`backward`] on bf16 values, rounding as torch's bf16 autograd does.
pub fn backward_rounded(g: &[f32], u: &[f32], dout: &[f32]) -> (Vec<f32>, Vec<f32>) {
    backward_with(g, u, dout, backward_chunk_bf16)
}

type BackwardChunk = fn(&[f32], &[f32], &[f32], &mut [f32], &mut [f32]);

fn backward_with(g: &[f32], u: &[f32], dout: &[f32], chunk: BackwardChunk) -> (Vec<f32>, Vec<f32>) {
    assert!(g.len() == u.len() && g.len() == dout.len(), "geglu backward: sizes differ");
    let (mut dg, mut du) = (vec![0f32; g.len()], vec![0f32; g.len()]);
    dg.par_chunks_mut(TASK)
        .zip(du.par_chunks_mut(TASK))
        .zip(g.par_chunks(TASK).zip(u.par_chunks(TASK)).zip(dout.par_chunks(TASK)))
        .for_each(|((dg, du), ((g, u), d))| chunk(g, u, d, dg, du));
    (dg, du)
}

#[cfg(test)]
mod tests {
    /// Against the formula in f64 and its derivative by central differences.
    #[test]
    fn forward_and_backward_match_the_formula() {
        let gelu = |x: f64| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
        let n = 40_003;
        let g: Vec<f32> = (0..n).map(|i| (i as f32 / n as f32 - 0.5) * 16.0).collect();
        let u: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        let d: Vec<f32> = (0..n).map(|i| ((i * 11) % 29) as f32 / 14.0 - 1.0).collect();
        let out = super::forward(&g, &u);
        let (dg, du) = super::backward(&g, &u, &d);
        for i in 0..n {
            let (x, y, dd) = (g[i] as f64, u[i] as f64, d[i] as f64);
            assert!((out[i] as f64 - gelu(x) * y).abs() < 2e-6 * (1.0 + x.abs()), "forward at {x}");
            assert!((du[i] as f64 - dd * gelu(x)).abs() < 2e-6 * (1.0 + x.abs()), "d/du at {x}");
            let h = 1e-4;
            let num = (gelu(x + h) - gelu(x - h)) / (2.0 * h);
            assert!((dg[i] as f64 - dd * y * num).abs() < 2e-5, "d/dg at {x}: {} vs {}", dg[i], dd * y * num);
        }
    }
}
