//! Gemma's gated activation `gelu_tanh(gate) · up` and its backward on host slices, in one pass each
//! (Burn's composed version makes several passes and keeps their intermediates for the backward).
//! `gelu_tanh(x) = ½x(1 + tanh(√(2/π)(x + 0.044715x³)))`, transformers' `gelu_pytorch_tanh`.
use rayon::prelude::*;

use super::math::tanh;

const K: f32 = 0.797_884_6; // √(2/π)
const C: f32 = 0.044_715;
/// Elements per parallel task.
const TASK: usize = 1 << 14;

#[inline(always)]
fn forward_impl(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(g).zip(u) {
        let t = tanh(K * (x + C * x * x * x));
        *o = 0.5 * x * (1.0 + t) * y;
    }
}

#[inline(always)]
fn backward_impl(g: &[f32], u: &[f32], dout: &[f32], dg: &mut [f32], du: &mut [f32]) {
    for i in 0..g.len() {
        let (x, y, d) = (g[i], u[i], dout[i]);
        let t = tanh(K * (x + C * x * x * x));
        let gelu = 0.5 * x * (1.0 + t);
        let dgelu = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * K * (1.0 + 3.0 * C * x * x);
        dg[i] = d * y * dgelu;
        du[i] = d * gelu;
    }
}

avx2_dispatch!(fn forward_chunk(g: &[f32], u: &[f32], out: &mut [f32]) => forward_impl);
avx2_dispatch!(fn backward_chunk(g: &[f32], u: &[f32], dout: &[f32], dg: &mut [f32], du: &mut [f32]) => backward_impl);

/// `gelu_tanh(g) · u`.
pub fn forward(g: &[f32], u: &[f32]) -> Vec<f32> {
    assert_eq!(g.len(), u.len(), "geglu: gate and up differ in size");
    let mut out = vec![0f32; g.len()];
    out.par_chunks_mut(TASK)
        .zip(g.par_chunks(TASK).zip(u.par_chunks(TASK)))
        .for_each(|(o, (g, u))| forward_chunk(g, u, o));
    out
}

/// `(d/dg, d/du)` of `Σ dout · gelu_tanh(g) · u`.
pub fn backward(g: &[f32], u: &[f32], dout: &[f32]) -> (Vec<f32>, Vec<f32>) {
    assert!(g.len() == u.len() && g.len() == dout.len(), "geglu backward: sizes differ");
    let (mut dg, mut du) = (vec![0f32; g.len()], vec![0f32; g.len()]);
    dg.par_chunks_mut(TASK)
        .zip(du.par_chunks_mut(TASK))
        .zip(g.par_chunks(TASK).zip(u.par_chunks(TASK)).zip(dout.par_chunks(TASK)))
        .for_each(|((dg, du), ((g, u), d))| backward_chunk(g, u, d, dg, du));
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
