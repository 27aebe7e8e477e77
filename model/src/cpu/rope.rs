//! Rotary embeddings on host slices, "rotate half" layout: for each head and `i < d/2`,
//! `(x_i, x_{i+d/2}) ← (x_i·cos − x_{i+d/2}·sin, x_{i+d/2}·cos + x_i·sin)`. Its backward is the same rotation
//! with `−sin`, so one kernel serves both.
use rayon::prelude::*;

/// `x`: `[rows, heads, d]`; `cos`, `sin`: `[rows, d]` (one table row per token, shared by its heads, both
/// halves equal; only the first is read).
/// `sign = -1.0` rotates backwards (the gradient).
pub fn rotate(x: &[f32], cos: &[f32], sin: &[f32], heads: usize, d: usize, sign: f32) -> Vec<f32> {
    rotate_with::<false>(x, cos, sin, heads, d, sign)
}

/// [`rotate`] on bf16 values (given as f32), rounding as torch computes `q·cos + rotate_half(q)·sin` in bf16:
/// the table rounded to bf16, each product rounded, then their sum.
pub fn rotate_bf16(x: &[f32], cos: &[f32], sin: &[f32], heads: usize, d: usize, sign: f32) -> Vec<f32> {
    rotate_with::<true>(x, cos, sin, heads, d, sign)
}

#[inline(always)]
fn rnd<const ROUND: bool>(x: f32) -> f32 {
    if ROUND {
        super::bf16::widen(super::bf16::bits(x))
    } else {
        x
    }
}

fn rotate_with<const ROUND: bool>(x: &[f32], cos: &[f32], sin: &[f32], heads: usize, d: usize, sign: f32) -> Vec<f32> {
    let rows = cos.len() / d;
    assert!(x.len() == rows * heads * d && sin.len() == cos.len(), "rope: shapes do not match");
    let half = d / 2;
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(heads * d).zip(x.par_chunks(heads * d)).enumerate().for_each(|(r, (o, x))| {
        let (c, s) = (&cos[r * d..r * d + half], &sin[r * d..r * d + half]);
        for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            let (x1, x2) = x.split_at(half);
            let (o1, o2) = o.split_at_mut(half);
            for i in 0..half {
                let (ci, si) = (rnd::<ROUND>(c[i]), sign * rnd::<ROUND>(s[i]));
                let r = rnd::<ROUND>;
                o1[i] = r(r(x1[i] * ci) - r(x2[i] * si));
                o2[i] = r(r(x2[i] * ci) + r(x1[i] * si));
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    /// Forward against the rotate-half formula; backward = transpose (⟨R x, y⟩ = ⟨x, Rᵀ y⟩).
    #[test]
    fn rotation_and_its_transpose() {
        let (rows, heads, d) = (3, 2, 8);
        let x: Vec<f32> = (0..rows * heads * d).map(|i| (i as f32 * 0.37).sin()).collect();
        let y: Vec<f32> = (0..rows * heads * d).map(|i| (i as f32 * 0.91).cos()).collect();
        let ang: Vec<f32> = (0..rows * d).map(|i| ((i % d) % (d / 2)) as f32 * 0.3 + (i / d) as f32).collect();
        let (cos, sin): (Vec<f32>, Vec<f32>) = ang.iter().map(|a| (a.cos(), a.sin())).unzip();
        let rx = super::rotate(&x, &cos, &sin, heads, d, 1.0);
        for r in 0..rows {
            for h in 0..heads {
                for i in 0..d {
                    let xi = |j: usize| x[(r * heads + h) * d + j];
                    let rot = if i < d / 2 { -xi(i + d / 2) } else { xi(i - d / 2) };
                    let want = xi(i) * cos[r * d + i] + rot * sin[r * d + i];
                    assert!((rx[(r * heads + h) * d + i] - want).abs() < 1e-6);
                }
            }
        }
        let rty = super::rotate(&y, &cos, &sin, heads, d, -1.0);
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f32>();
        assert!((dot(&rx, &y) - dot(&x, &rty)).abs() < 1e-4);
    }
}
