//! The LM head's cross-entropy on host slices (f32): `Σ −log softmax(cap(h·Eᵀ))[target]` and its gradient
//! with respect to the hidden states, computed together while a tile of logits is at hand, so
//! `[tokens × vocab]` logits never exist. Matrix products by the `gemm` crate, vocabulary tiles with an
//! online softmax (`super::softmax`). burn-flex runs it on its own buffers (`crate::ops::cpu_backends`);
//! the Burn-op reference is `crate::ops::lm_head`.
use rayon::prelude::*;

use super::gemm::{matmul, Mat};
use super::qmatmul::decode_rows;
use super::softmax::{tile_row, RowState};
use crate::quant::PackedWeight;

/// The table's rows as the loss reads them: a dense row-major `[vocab, h]` slice, or a packed weight whose
/// rows are decoded tile by tile (a GGUF file's token embedding under `--quant gguf`).
#[derive(Clone, Copy)]
pub enum TableRows<'a> {
    Dense(&'a [f32]),
    Packed(&'a PackedWeight),
}

impl<'a> TableRows<'a> {
    fn vocab(&self, h: usize) -> usize {
        match self {
            TableRows::Dense(t) => t.len() / h,
            TableRows::Packed(w) => w.shape()[0],
        }
    }

    /// Rows `v0 .. v0 + n`, `[n, h]`: borrowed when dense, else decoded into `buf` (in parallel).
    fn rows<'b>(&self, v0: usize, n: usize, h: usize, buf: &'b mut Vec<f32>) -> &'b [f32]
    where
        'a: 'b,
    {
        match *self {
            TableRows::Dense(t) => &t[v0 * h..(v0 + n) * h],
            TableRows::Packed(w) => {
                buf.resize(n * h, 0.0);
                let per = (super::qmatmul::SMALL_N * 1024 / h).max(1);
                buf.par_chunks_mut(per * h).enumerate().for_each(|(i, c)| decode_rows(w, v0 + i * per, c));
                &buf[..n * h]
            }
        }
    }
}

/// Host path tiling: rows of hidden states per chunk, and table rows per vocabulary tile (the tile of `E`
/// is ~16 MiB, so it is still in the last-level cache when the second matmul reads it again).
pub const HOST_ROWS: usize = 1024;
pub const HOST_TILE_FLOATS: usize = 1 << 22;

/// The same on host slices: `hidden` `[n, h]`, `table` `[vocab, h]`, both row-major. Returns `Σ nll` and,
/// when `grad`, `d Σnll / d hidden` `[n, h]`.
///
/// For a chunk of rows `H`, the vocabulary is walked in tiles `E_t` with an online softmax (as flash
/// attention does over keys): `Z = H·E_tᵀ`, running max `m` and sum `s` per row, and the gradient
/// accumulated as `acc += exp(Z − m)·E_t`, rescaled whenever `m` grows. At the end
/// `d/dh = acc / s − E[target]`. Two matmuls per tile, as without tiling, but only a `rows × tile` buffer,
/// and every tile multiplies all rows of the chunk at once.
pub fn nll_grad_host(
    hidden: &[f32],
    table: TableRows,
    h: usize,
    targets: &[(usize, u32)],
    softcap: Option<f64>,
    grad: bool,
) -> (f64, Option<Vec<f32>>) {
    let tile = (HOST_TILE_FLOATS / h.max(1)).max(64) / 64 * 64;
    nll_grad_host_tiled(hidden, table, h, targets, softcap, grad, HOST_ROWS, tile)
}

#[allow(clippy::too_many_arguments)] // the public entry point fixes the last two
pub fn nll_grad_host_tiled(
    hidden: &[f32],
    table: TableRows,
    h: usize,
    targets: &[(usize, u32)],
    softcap: Option<f64>,
    grad: bool,
    rows: usize,
    tile: usize,
) -> (f64, Option<Vec<f32>>) {
    let vocab = table.vocab(h);
    let (mut tile_buf, mut row_buf) = (Vec::new(), Vec::new());
    let n = hidden.len() / h;
    let cap = softcap.map(|c| c as f32);
    let mut dh = grad.then(|| vec![0f32; n * h]);
    let mut buf = vec![0f32; rows.min(targets.len()) * tile.min(vocab)];
    let mut total = 0f64;
    for part in targets.chunks(rows) {
        let c = part.len();
        let mut hc = Vec::with_capacity(c * h);
        for &(r, _) in part {
            hc.extend_from_slice(&hidden[r * h..(r + 1) * h]);
        }
        let hm = Mat::rows(&hc, c, h);
        let mut states = vec![RowState::default(); c];
        let mut acc = vec![0f32; if grad { c * h } else { 0 }];
        for v0 in (0..vocab).step_by(tile) {
            let vt = tile.min(vocab - v0);
            let et = Mat::rows(table.rows(v0, vt, h, &mut tile_buf), vt, h);
            let z = &mut buf[..c * vt];
            matmul(z, hm, et.t(), false);
            let rescales: Vec<f32> = z
                .par_chunks_mut(vt)
                .zip(states.par_iter_mut())
                .zip(part.par_iter())
                .map(|((row, st), &(_, t))| {
                    let local = (t as usize).checked_sub(v0).filter(|&i| i < vt);
                    tile_row(row, st, local, cap, grad)
                })
                .collect();
            if grad {
                for (a, &r) in acc.chunks_mut(h).zip(&rescales) {
                    if r != 1.0 {
                        a.iter_mut().for_each(|x| *x *= r);
                    }
                }
                matmul(&mut acc, Mat::rows(z, c, vt), et, true);
            }
        }
        total += states.iter().map(|st| st.nll() as f64).sum::<f64>();
        if let Some(dh) = dh.as_mut() {
            for (k, &(r, t)) in part.iter().enumerate() {
                let st = &states[k];
                let own = cap.map_or(1.0, |c| 1.0 - (st.z_target / c) * (st.z_target / c));
                let e_t = table.rows(t as usize, 1, h, &mut row_buf);
                let inv = 1.0 / st.s;
                for ((d, a), e) in dh[r * h..(r + 1) * h].iter_mut().zip(&acc[k * h..(k + 1) * h]).zip(e_t) {
                    *d += a * inv - own * e;
                }
            }
        }
    }
    (total, dh)
}
