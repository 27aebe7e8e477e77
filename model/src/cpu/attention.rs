//! Fused causal attention on the host, flash-attention style: the queries of a block meet the keys one tile
//! at a time with an online softmax, so the `[heads × seq × keys]` scores never exist; the backward
//! recomputes each tile's probabilities from the saved log-sum-exp (FlashAttention-2, Dao 2023).
//!
//! Layouts are the model's: `q`, `out`, `dout` `[batch, seq, heads, d]`, `k`, `v` `[batch, keys, kv_heads, d]`,
//! `lse` `[batch, seq, heads]`. Grouped queries: the `rep = heads / kv_heads` query heads sharing a KV head
//! are stacked as rows of one block (row = position × rep + head-in-group), so each key tile is multiplied
//! once for all of them. Masked pairs (`AttnMask`) get probability exactly 0, and a key tile no query of the
//! block can see is skipped — causal attention does about half the work of the full product.
//!
//! Parallel over (row, KV head, query block) in the forward; over (row, KV head, key-tile group) in the
//! backward, where each task owns its keys' dK/dV and a private partial dQ that is summed at the end.
use rayon::prelude::*;

use super::gemm::{matmul_serial, Mat};
use super::math::{exp, tanh};
use crate::mask::AttnMask;

/// Query rows (positions × grouped heads) per block.
const ROWS: usize = 128;
/// Keys per tile.
const KEYS: usize = 128;

/// The shapes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub q_len: usize,
    pub k_len: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl Dims {
    fn rep(&self) -> usize {
        self.heads / self.kv_heads
    }
    /// Query positions per block.
    fn block(&self) -> usize {
        (ROWS / self.rep()).max(1)
    }
    fn blocks(&self) -> usize {
        self.q_len.div_ceil(self.block())
    }
    fn tiles(&self) -> usize {
        self.k_len.div_ceil(KEYS)
    }
    fn check(&self, q: &[f32], k: &[f32], v: &[f32]) {
        assert!(self.kv_heads > 0 && self.heads.is_multiple_of(self.kv_heads), "heads must be a multiple of kv_heads");
        assert_eq!(q.len(), self.batch * self.q_len * self.heads * self.head_dim, "attention: q has the wrong size");
        let kv = self.batch * self.k_len * self.kv_heads * self.head_dim;
        assert!(k.len() == kv && v.len() == kv, "attention: k/v have the wrong size");
    }
}

/// The grouped rows of positions `i0..i1`, KV head `g`, of a `[batch, seq, heads, d]` tensor (times `scale`),
/// as a contiguous `[(i1 - i0) · rep, d]` matrix.
fn gather(x: &[f32], dims: &Dims, b: usize, g: usize, (i0, i1): (usize, usize), scale: f32) -> Vec<f32> {
    let (rep, d) = (dims.rep(), dims.head_dim);
    let mut out = Vec::with_capacity((i1 - i0) * rep * d);
    for i in i0..i1 {
        let start = ((b * dims.q_len + i) * dims.heads + g * rep) * d;
        out.extend(x[start..start + rep * d].iter().map(|&e| e * scale));
    }
    out
}

/// The inverse of [`gather`]: writes grouped rows back into a `[batch, seq, heads, d]` tensor.
fn scatter(dst: &mut [f32], rows: &[f32], dims: &Dims, b: usize, g: usize, i0: usize) {
    let (rep, d) = (dims.rep(), dims.head_dim);
    for (n, chunk) in rows.chunks(rep * d).enumerate() {
        let start = ((b * dims.q_len + i0 + n) * dims.heads + g * rep) * d;
        dst[start..start + rep * d].copy_from_slice(chunk);
    }
}

/// Keys (or values) `j0..j0 + n` of KV head `g` in row `b`, as a strided `[n, d]` view.
fn kv_tile<'a>(x: &'a [f32], dims: &Dims, b: usize, g: usize, j0: usize, n: usize) -> Mat<'a> {
    let d = dims.head_dim;
    let start = ((b * dims.k_len + j0) * dims.kv_heads + g) * d;
    Mat { data: &x[start..], rows: n, cols: d, row_stride: dims.kv_heads * d, col_stride: 1 }
}

/// `vis[i · nk + j]` for positions `i0..i1` and keys `j0..j0 + nk`; whether any is visible.
fn tile_mask(mask: &AttnMask, b: usize, (i0, i1): (usize, usize), j0: usize, nk: usize, vis: &mut Vec<bool>) -> bool {
    vis.clear();
    vis.extend((i0..i1).flat_map(|i| (j0..j0 + nk).map(move |j| (i, j))).map(|(i, j)| mask.visible(b, i, j)));
    vis.iter().any(|&x| x)
}

/// Softcapped score (Gemma 2): `cap · tanh(s / cap)`.
#[inline(always)]
fn cap_score(s: f32, softcap: Option<f32>) -> f32 {
    match softcap {
        Some(c) => c * tanh(s / c),
        None => s,
    }
}

/// The online-softmax step of one block over one tile: `s` holds the raw scores `[rows, nk]`; leaves
/// `exp(z − m_new)` in it (0 where masked), updates the running max `m` and sum `l` of each row, and scales
/// each row of the accumulated output `acc` `[rows, d]` by `exp(m_old − m_new)`.
#[inline(always)]
fn online_softmax_impl(
    s: &mut [f32],
    vis: &[bool],
    rep: usize,
    softcap: Option<f32>,
    m: &mut [f32],
    l: &mut [f32],
    acc: &mut [f32],
) {
    let nk = vis.len() / (m.len() / rep);
    let d = acc.len() / m.len();
    for (row, srow) in s.chunks_exact_mut(nk).enumerate() {
        let vrow = &vis[(row / rep) * nk..(row / rep + 1) * nk];
        let mut tmax = f32::NEG_INFINITY;
        for (x, &v) in srow.iter_mut().zip(vrow) {
            *x = cap_score(*x, softcap);
            if v {
                tmax = tmax.max(*x);
            }
        }
        let m_new = m[row].max(tmax);
        if m_new == f32::NEG_INFINITY {
            // Nothing visible to this row yet.
            srow.fill(0.0);
            continue;
        }
        let mut sum = 0f32;
        for (x, &v) in srow.iter_mut().zip(vrow) {
            *x = if v { exp(*x - m_new) } else { 0.0 };
            sum += *x;
        }
        let alpha = if m[row] == f32::NEG_INFINITY { 0.0 } else { exp(m[row] - m_new) };
        if alpha != 1.0 {
            acc[row * d..(row + 1) * d].iter_mut().for_each(|a| *a *= alpha);
        }
        l[row] = l[row] * alpha + sum;
        m[row] = m_new;
    }
}

/// The backward's elementwise step of one block over one tile: `s` holds the raw scores and `dp = dO · Vᵀ`;
/// leaves `P = exp(z − lse)` in `s` and `dS = P ∘ (dP − D) ∘ dz/ds` in `dp`.
#[inline(always)]
fn backward_rows_impl(
    s: &mut [f32],
    dp: &mut [f32],
    vis: &[bool],
    rep: usize,
    softcap: Option<f32>,
    lse: &[f32],
    dsum: &[f32],
) {
    let nk = vis.len() / (lse.len() / rep);
    for (row, (srow, dprow)) in s.chunks_exact_mut(nk).zip(dp.chunks_exact_mut(nk)).enumerate() {
        let vrow = &vis[(row / rep) * nk..(row / rep + 1) * nk];
        for ((x, dpx), &v) in srow.iter_mut().zip(dprow.iter_mut()).zip(vrow) {
            if !v || lse[row] == f32::INFINITY {
                *x = 0.0;
                *dpx = 0.0;
                continue;
            }
            let z = cap_score(*x, softcap);
            let p = exp(z - lse[row]);
            let dz = softcap.map_or(1.0, |c| 1.0 - (z / c) * (z / c));
            *x = p;
            *dpx = p * (*dpx - dsum[row]) * dz;
        }
    }
}

// The elementwise passes, compiled a second time with AVX2+FMA and picked at run time.
avx2_dispatch!(fn online_softmax(
    s: &mut [f32],
    vis: &[bool],
    rep: usize,
    cap: Option<f32>,
    m: &mut [f32],
    l: &mut [f32],
    acc: &mut [f32],
) => online_softmax_impl);

avx2_dispatch!(fn backward_rows(
    s: &mut [f32],
    dp: &mut [f32],
    vis: &[bool],
    rep: usize,
    cap: Option<f32>,
    lse: &[f32],
    dsum: &[f32],
) => backward_rows_impl);

/// `(out, lse)`: `softmax(cap(scaling · q·kᵀ) | mask) · v` and the log-sum-exp of each (position, head)'s
/// visible scores (`+inf` for a query that sees nothing, whose output is 0).
pub fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: Dims,
    mask: &AttnMask,
    scaling: f32,
    softcap: Option<f32>,
) -> (Vec<f32>, Vec<f32>) {
    dims.check(q, k, v);
    let (rep, d, bs) = (dims.rep(), dims.head_dim, dims.block());
    let tasks: Vec<(usize, usize, usize)> = (0..dims.batch)
        .flat_map(|b| (0..dims.kv_heads).flat_map(move |g| (0..dims.blocks()).map(move |blk| (b, g, blk))))
        .collect();
    let blocks: Vec<(Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|&(b, g, blk)| {
            let span = (blk * bs, ((blk + 1) * bs).min(dims.q_len));
            let rows = (span.1 - span.0) * rep;
            let qs = gather(q, &dims, b, g, span, scaling);
            let (mut acc, mut m, mut l) = (vec![0f32; rows * d], vec![f32::NEG_INFINITY; rows], vec![0f32; rows]);
            let (mut s, mut vis) = (vec![0f32; rows * KEYS], Vec::new());
            for j0 in (0..dims.k_len).step_by(KEYS) {
                let nk = KEYS.min(dims.k_len - j0);
                if !tile_mask(mask, b, span, j0, nk, &mut vis) {
                    continue;
                }
                let s = &mut s[..rows * nk];
                matmul_serial(s, Mat::rows(&qs, rows, d), kv_tile(k, &dims, b, g, j0, nk).t(), false);
                online_softmax(s, &vis, rep, softcap, &mut m, &mut l, &mut acc);
                matmul_serial(&mut acc, Mat::rows(s, rows, nk), kv_tile(v, &dims, b, g, j0, nk), true);
            }
            let lse: Vec<f32> =
                m.iter().zip(&l).map(|(&m, &l)| if l > 0.0 { m + l.ln() } else { f32::INFINITY }).collect();
            for (row, &l) in acc.chunks_exact_mut(d).zip(&l) {
                let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
                row.iter_mut().for_each(|x| *x *= inv);
            }
            (acc, lse)
        })
        .collect();
    let mut out = vec![0f32; q.len()];
    let mut lse = vec![0f32; q.len() / d];
    for (&(b, g, blk), (o, ls)) in tasks.iter().zip(&blocks) {
        scatter(&mut out, o, &dims, b, g, blk * bs);
        for (n, chunk) in ls.chunks(rep).enumerate() {
            let start = (b * dims.q_len + blk * bs + n) * dims.heads + g * rep;
            lse[start..start + rep].copy_from_slice(chunk);
        }
    }
    (out, lse)
}

/// What the backward of one (row, KV head) needs of its queries, gathered once: scaled queries, dO,
/// the log-sum-exp and `D = rowsum(dO ∘ O)`, all in grouped row order.
struct Grouped {
    qs: Vec<f32>,
    dout: Vec<f32>,
    lse: Vec<f32>,
    dsum: Vec<f32>,
}

/// `(dq, dk, dv)` of `Σ dout · out` for [`forward`]'s `out` and `lse`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    dims: Dims,
    mask: &AttnMask,
    scaling: f32,
    softcap: Option<f32>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    dims.check(q, k, v);
    let (rep, d, bs, n_tiles) = (dims.rep(), dims.head_dim, dims.block(), dims.tiles());
    let all = (0, dims.q_len);
    let groups: Vec<(usize, usize)> = (0..dims.batch).flat_map(|b| (0..dims.kv_heads).map(move |g| (b, g))).collect();
    let grouped: Vec<Grouped> = groups
        .par_iter()
        .map(|&(b, g)| {
            let dout = gather(dout, &dims, b, g, all, 1.0);
            let o = gather(out, &dims, b, g, all, 1.0);
            let dsum = dout
                .chunks_exact(d)
                .zip(o.chunks_exact(d))
                .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y).sum())
                .collect();
            let lse = (0..dims.q_len)
                .flat_map(|i| {
                    let start = (b * dims.q_len + i) * dims.heads + g * rep;
                    lse[start..start + rep].iter().copied()
                })
                .collect();
            Grouped { qs: gather(q, &dims, b, g, all, scaling), dout, lse, dsum }
        })
        .collect();
    // Enough key-tile groups per (row, KV head) to keep every thread busy; tiles are dealt round-robin so
    // that early keys (seen by more queries under the causal mask) spread over the groups.
    let parts = (2 * rayon::current_num_threads()).div_ceil(groups.len()).clamp(1, n_tiles.max(1));
    let tasks: Vec<(usize, usize)> = (0..groups.len()).flat_map(|x| (0..parts).map(move |p| (x, p))).collect();
    type TileGrads = Vec<(usize, Vec<f32>, Vec<f32>)>;
    let results: Vec<(Vec<f32>, TileGrads)> = tasks
        .par_iter()
        .map(|&(x, p)| {
            let ((b, g), gr) = (groups[x], &grouped[x]);
            let mut dq = vec![0f32; dims.q_len * rep * d];
            let mut tiles = Vec::new();
            let (mut s, mut dp, mut vis) =
                (vec![0f32; ROWS.max(rep) * KEYS], vec![0f32; ROWS.max(rep) * KEYS], Vec::new());
            for t in (p..n_tiles).step_by(parts) {
                let (j0, nk) = (t * KEYS, KEYS.min(dims.k_len - t * KEYS));
                let (kt, vt) = (kv_tile(k, &dims, b, g, j0, nk), kv_tile(v, &dims, b, g, j0, nk));
                let (mut dk, mut dv) = (vec![0f32; nk * d], vec![0f32; nk * d]);
                for blk in 0..dims.blocks() {
                    let span = (blk * bs, ((blk + 1) * bs).min(dims.q_len));
                    if !tile_mask(mask, b, span, j0, nk, &mut vis) {
                        continue;
                    }
                    let (r0, r1) = (span.0 * rep, span.1 * rep);
                    let rows = r1 - r0;
                    let qb = Mat::rows(&gr.qs[r0 * d..r1 * d], rows, d);
                    let dob = Mat::rows(&gr.dout[r0 * d..r1 * d], rows, d);
                    let (s, dp) = (&mut s[..rows * nk], &mut dp[..rows * nk]);
                    matmul_serial(s, qb, kt.t(), false);
                    matmul_serial(dp, dob, vt.t(), false);
                    backward_rows(s, dp, &vis, rep, softcap, &gr.lse[r0..r1], &gr.dsum[r0..r1]);
                    matmul_serial(&mut dv, Mat::rows(s, rows, nk).t(), dob, true);
                    matmul_serial(&mut dq[r0 * d..r1 * d], Mat::rows(dp, rows, nk), kt, true);
                    matmul_serial(&mut dk, Mat::rows(dp, rows, nk).t(), qb, true);
                }
                tiles.push((j0, dk, dv));
            }
            (dq, tiles)
        })
        .collect();
    let (mut dq, mut dk, mut dv) = (vec![0f32; q.len()], vec![0f32; k.len()], vec![0f32; v.len()]);
    for (x, &(b, g)) in groups.iter().enumerate() {
        let mut sum = vec![0f32; dims.q_len * rep * d];
        for (part, tiles) in &results[x * parts..(x + 1) * parts] {
            sum.iter_mut().zip(part).for_each(|(s, p)| *s += p * scaling);
            for (j0, tk, tv) in tiles {
                for (n, (rk, rv)) in tk.chunks_exact(d).zip(tv.chunks_exact(d)).enumerate() {
                    let start = ((b * dims.k_len + j0 + n) * dims.kv_heads + g) * d;
                    dk[start..start + d].copy_from_slice(rk);
                    dv[start..start + d].copy_from_slice(rv);
                }
            }
        }
        scatter(&mut dq, &sum, &dims, b, g, 0);
    }
    (dq, dk, dv)
}
