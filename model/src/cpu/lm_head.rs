//! The LM head's cross-entropy on host slices (f32): `Σ −log softmax(cap(h·Eᵀ))[target]` and its gradient
//! with respect to the hidden states, computed together while a tile of logits is at hand, so
//! `[tokens × vocab]` logits never exist. Matrix products by the `gemm` crate, vocabulary tiles with an
//! online softmax (`super::softmax`). burn-flex runs it on its own buffers (`crate::ops::cpu_backends`);
//! the Burn-op reference is `crate::ops::lm_head`.
use rayon::prelude::*;

use half::bf16;

use super::bf16::{narrow, round_in_place, widen_into};
use super::bf16_gemm::{self, Kernel, PackedA, PackedB, View};
use super::gemm::{matmul, Mat};
use super::qmatmul::decode_rows;
use super::softmax::{tile_row, RowState};
use crate::quant::PackedWeight;

/// The table's rows as the loss reads them: a dense row-major `[vocab, h]` slice, or a packed weight whose
/// rows are decoded tile by tile (a GGUF file's token embedding under `--quant gguf`).
#[derive(Clone, Copy)]
pub enum TableRows<'a> {
    Dense(&'a [f32]),
    /// A bf16 table (a model computing in bf16 keeps its embedding in bf16).
    DenseBf16(&'a [bf16]),
    Packed(&'a PackedWeight),
}

/// Rows of the table for the bf16 products: borrowed as stored, or decoded.
enum Tile<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

impl Tile<'_> {
    /// `E_tᵀ` `[h, vt]` packed (the logits' right operand).
    fn pack_t(&self, vt: usize, h: usize, kernel: Kernel) -> PackedB {
        match self {
            Tile::F32(e) => PackedB::new(View::rows(e, vt, h).t(), kernel),
            Tile::Bf16(e) => PackedB::new(View::rows(e, vt, h).t(), kernel),
        }
    }
    /// `E_t` `[vt, h]` packed (the gradient's right operand).
    fn pack(&self, vt: usize, h: usize, kernel: Kernel) -> PackedB {
        match self {
            Tile::F32(e) => PackedB::from_rows(e, vt, h, kernel),
            Tile::Bf16(e) => PackedB::from_rows(e, vt, h, kernel),
        }
    }
}

impl<'a> TableRows<'a> {
    fn vocab(&self, h: usize) -> usize {
        match self {
            TableRows::Dense(t) => t.len() / h,
            TableRows::DenseBf16(t) => t.len() / h,
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
            TableRows::DenseBf16(t) => {
                buf.resize(n * h, 0.0);
                widen_into(&t[v0 * h..(v0 + n) * h], &mut buf[..n * h]);
                &buf[..n * h]
            }
            TableRows::Packed(w) => {
                buf.resize(n * h, 0.0);
                let per = (super::qmatmul::SMALL_N * 1024 / h).max(1);
                buf.par_chunks_mut(per * h).enumerate().for_each(|(i, c)| decode_rows(w, v0 + i * per, c));
                &buf[..n * h]
            }
        }
    }
}

impl<'a> TableRows<'a> {
    /// Rows `v0 .. v0 + n` for the bf16 products: a bf16 table borrowed, others as [`Self::rows`] gives them.
    fn tile<'b>(&self, v0: usize, n: usize, h: usize, buf: &'b mut Vec<f32>) -> Tile<'b>
    where
        'a: 'b,
    {
        match *self {
            TableRows::DenseBf16(t) => Tile::Bf16(&t[v0 * h..(v0 + n) * h]),
            _ => Tile::F32(self.rows(v0, n, h, buf)),
        }
    }
}

/// Host path tiling: rows of hidden states per chunk, and table rows per vocabulary tile (the tile of `E`
/// is ~16 MiB, so it is still in the last-level cache when the second matmul reads it again).
pub const HOST_ROWS: usize = 1024;
pub const HOST_TILE_FLOATS: usize = 1 << 22;

/// Table rows per vocabulary tile for hidden size `h`: [`HOST_TILE_FLOATS`] values, a multiple of 64.
fn host_tile(h: usize) -> usize {
    (HOST_TILE_FLOATS / h.max(1)).max(64) / 64 * 64
}

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
    nll_grad_host_tiled(hidden, table, h, targets, softcap, grad, HOST_ROWS, host_tile(h))
}

/// The same for a model computing in bf16 (`crate::dtype`): `hidden` in bf16, the products by the table
/// bf16 × bf16 summed in f32 (`super::bf16_gemm`), the logits rounded to bf16 before the f32 softmax and the
/// softmax's gradient rounded to bf16 before its product by the table, as transformers computes a bf16
/// model's loss; the gradient returned in bf16.
pub fn nll_grad_host_bf16(
    hidden: &[bf16],
    table: TableRows,
    h: usize,
    targets: &[(usize, u32)],
    softcap: Option<f64>,
    grad: bool,
) -> (f64, Option<Vec<bf16>>) {
    let hidden = Hidden::Bf16(hidden, bf16_gemm::kernel());
    let (nll, dh) = tiled(hidden, table, h, targets, softcap, grad, HOST_ROWS, host_tile(h));
    (nll, dh.map(|d| narrow(&d)))
}

/// The hidden states and how their products are computed.
#[derive(Clone, Copy)]
enum Hidden<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16], Kernel),
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
    tiled(Hidden::F32(hidden), table, h, targets, softcap, grad, rows, tile)
}

#[allow(clippy::too_many_arguments)]
fn tiled(
    hidden: Hidden,
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
    let n = match hidden {
        Hidden::F32(x) => x.len(),
        Hidden::Bf16(x, _) => x.len(),
    } / h;
    let cap = softcap.map(|c| c as f32);
    let mut dh = grad.then(|| vec![0f32; n * h]);
    let mut buf = vec![0f32; rows.min(targets.len()) * tile.min(vocab)];
    let mut total = 0f64;
    for part in targets.chunks(rows) {
        let c = part.len();
        // The chunk's rows: f32 for the `gemm` crate, or packed once for the bf16 products of every tile.
        let (hc, packed) = match hidden {
            Hidden::F32(x) => (part.iter().flat_map(|&(r, _)| &x[r * h..(r + 1) * h]).copied().collect(), None),
            Hidden::Bf16(x, kernel) => {
                let hc: Vec<bf16> = part.iter().flat_map(|&(r, _)| &x[r * h..(r + 1) * h]).copied().collect();
                (Vec::new(), Some((PackedA::new(View::rows(&hc, c, h), kernel), kernel)))
            }
        };
        let mut states = vec![RowState::default(); c];
        let mut acc = vec![0f32; if grad { c * h } else { 0 }];
        for v0 in (0..vocab).step_by(tile) {
            let vt = tile.min(vocab - v0);
            let z = &mut buf[..c * vt];
            // The tile's rows, and its product with the chunk's rows.
            let et = match &packed {
                None => {
                    let et = Mat::rows(table.rows(v0, vt, h, &mut tile_buf), vt, h);
                    matmul(z, Mat::rows(&hc, c, h), et.t(), false);
                    Err(et)
                }
                Some((ha, kernel)) => {
                    let et = table.tile(v0, vt, h, &mut tile_buf);
                    bf16_gemm::gemm(z, vt, ha, 0, &et.pack_t(vt, h, *kernel), false, true);
                    round_in_place(z); // bf16 logits, as a bf16 model's LM head gives them
                    Ok((et, *kernel))
                }
            };
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
                match &et {
                    Err(et) => matmul(&mut acc, Mat::rows(z, c, vt), *et, true),
                    Ok((et, kernel)) => {
                        // The softmax's gradient rounded to bf16 (packing rounds it), times the tile.
                        let pa = PackedA::new(View::rows(&z[..], c, vt), *kernel);
                        bf16_gemm::gemm(&mut acc, h, &pa, 0, &et.pack(vt, h, *kernel), true, true);
                    }
                }
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
