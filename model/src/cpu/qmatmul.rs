//! Products by packed weights (NF4, int8, a GGUF file's ggml blocks) on the host, without ever holding their
//! dense form: rows of the weight are decoded into a small buffer that stays in cache and multiplied at once,
//! so each weight byte is read from memory once per product. Generation (one token: a matrix–vector
//! product) is bound by reading the weights, so reading 4–8 bits per weight instead of 32 is the speed-up;
//! llama.cpp does the same, but also rounds the activations to 8 bits, which we do not (f32 activations,
//! so the results are those of multiplying by the dequantized weight, summation order aside).
//!
//! - `decode_rows`: rows of any packed weight, bit-identical to its reference dequantization (the same
//!   per-block functions, compiled a second time with AVX2 so that they vectorise).
//! - `packed_matmul`: `x · Wᵀ`. Up to [`SMALL_N`] rows of `x`: each task decodes a few weight rows into an
//!   L1-sized buffer and takes their dot products with every row of `x`. More rows: each task decodes a tile
//!   of weight rows and multiplies it by all of `x` with the `gemm` crate.
//! - `packed_matmul_dx`: `dy · W`, the input gradient, tile by tile.
use std::cell::RefCell;

use half::{bf16, f16};
use rayon::prelude::*;

use super::bf16::{narrow, narrow_into, widen_vec};
use super::bf16_gemm::{self, PackedA, PackedB, View, NR};
use super::gemm::{matmul_serial, Mat};
use super::qdot;
use crate::quant::ggml::dequant as gq;
use crate::quant::ggml::GgmlType;
use crate::quant::int8::INV_127;
use crate::quant::nf4::{dynamic_map, nf4_code, NF4_BLOCK};
use crate::quant::{GgmlWeight, Nf4Weight, PackedWeight};

/// Up to this many rows of `x`, the matrix–vector kernel (dot products); above, tiles and `gemm`.
pub const SMALL_N: usize = 4;
/// Floats of decoded weight per task of the matrix–vector kernel (16 KiB: in L1 with the rows of `x`).
const VEC_TASK_FLOATS: usize = 4096;
/// Floats of decoded weight per tile of the matrix–matrix kernels (256 KiB: in L2 while `gemm` reads it).
const TILE_FLOATS: usize = 1 << 16;

thread_local! {
    /// Each rayon worker's decode buffer, reused across calls.
    static BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn with_buf<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < len {
            b.resize(len, 0.0);
        }
        f(&mut b[..len])
    })
}

/// Rows `r0 .. r0 + out.len() / in` of `w`, row-major, bit-identical to the same rows of `w.dequantize()`.
pub fn decode_rows(w: &PackedWeight, r0: usize, out: &mut [f32]) {
    let inp = w.shape()[1];
    assert!(inp > 0 && out.len().is_multiple_of(inp), "decode_rows: buffer is not whole rows");
    let rows = out.len() / inp;
    assert!(r0 + rows <= w.shape()[0], "decode_rows: rows past the weight");
    match w {
        PackedWeight::Ggml(g) => decode_ggml(g, r0, rows, out),
        PackedWeight::Nf4(q) => nf4_range(q, r0 * inp, out),
        PackedWeight::Int8(q) => int8_rows(&q.cb[r0 * inp..(r0 + rows) * inp], &q.scb[r0..r0 + rows], out),
    }
}

fn decode_ggml(g: &GgmlWeight, r0: usize, rows: usize, out: &mut [f32]) {
    let (block, block_bytes) = g.dtype.block_layout().expect("checked by GgmlWeight::new");
    let row_bytes = g.shape[1] / block * block_bytes;
    let b = &g.bytes[r0 * row_bytes..(r0 + rows) * row_bytes];
    match g.dtype {
        GgmlType::F32 => f32_le(b, out),
        GgmlType::F16 => f16_le(b, out),
        GgmlType::BF16 => bf16_le(b, out),
        GgmlType::Q4_0 => q4_0(b, out),
        GgmlType::Q4_1 => q4_1(b, out),
        GgmlType::Q5_0 => q5_0(b, out),
        GgmlType::Q5_1 => q5_1(b, out),
        GgmlType::Q8_0 => q8_0(b, out),
        GgmlType::Q2_K => q2_k(b, out),
        GgmlType::Q3_K => q3_k(b, out),
        GgmlType::Q4_K => q4_k(b, out),
        GgmlType::Q5_K => q5_k(b, out),
        GgmlType::Q6_K => q6_k(b, out),
        GgmlType::Q8_K => q8_k(b, out),
        // Any other type GgmlWeight accepts (F64, I8..I32): the reference, which handles them all.
        other => gq::dequantize_blocks(other, b, out).expect("checked by GgmlWeight::new"),
    }
}

/// Applies a ggml block function to every block: inlined into each caller below, so that the second
/// compilation with AVX2 vectorises the block function's loops.
#[inline(always)]
fn each_block<const BLOCK: usize, const BYTES: usize>(b: &[u8], y: &mut [f32], f: fn(&[u8], &mut [f32])) {
    for (bb, yb) in b.chunks_exact(BYTES).zip(y.chunks_exact_mut(BLOCK)) {
        f(bb, yb)
    }
}

macro_rules! block_decoder {
    ($name:ident, $imp:ident, $f:path, $block:expr, $bytes:expr) => {
        #[inline(always)]
        fn $imp(b: &[u8], y: &mut [f32]) {
            each_block::<$block, $bytes>(b, y, $f)
        }
        avx2_dispatch!(fn $name(b: &[u8], y: &mut [f32]) => $imp);
    };
}

block_decoder!(q4_0, q4_0_imp, gq::q4_0, 32, 18);
block_decoder!(q4_1, q4_1_imp, gq::q4_1, 32, 20);
block_decoder!(q5_0, q5_0_imp, gq::q5_0, 32, 22);
block_decoder!(q5_1, q5_1_imp, gq::q5_1, 32, 24);
block_decoder!(q8_0, q8_0_imp, gq::q8_0, 32, 34);
block_decoder!(q2_k, q2_k_imp, gq::q2_k, 256, 84);
block_decoder!(q3_k, q3_k_imp, gq::q3_k, 256, 110);
block_decoder!(q4_k, q4_k_imp, gq::q4_k, 256, 144);
block_decoder!(q5_k, q5_k_imp, gq::q5_k, 256, 176);
block_decoder!(q6_k, q6_k_imp, gq::q6_k, 256, 210);
block_decoder!(q8_k, q8_k_imp, gq::q8_k, 256, 292);

#[inline(always)]
fn f32_le_imp(b: &[u8], y: &mut [f32]) {
    for (v, c) in y.iter_mut().zip(b.chunks_exact(4)) {
        *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}
avx2_dispatch!(fn f32_le(b: &[u8], y: &mut [f32]) => f32_le_imp);

fn f16_le(b: &[u8], y: &mut [f32]) {
    // Through a u16 slice: `half`'s slice conversion uses F16C when the CPU has it.
    let mut bits = [0u16; 256];
    for (yc, bc) in y.chunks_mut(256).zip(b.chunks(512)) {
        for (h, c) in bits.iter_mut().zip(bc.chunks_exact(2)) {
            *h = u16::from_le_bytes([c[0], c[1]]);
        }
        let halves: &[f16] = half::slice::HalfBitsSliceExt::reinterpret_cast(&bits[..yc.len()]);
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(halves, yc);
    }
}

#[inline(always)]
fn bf16_le_imp(b: &[u8], y: &mut [f32]) {
    for (v, c) in y.iter_mut().zip(b.chunks_exact(2)) {
        *v = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
    }
}
avx2_dispatch!(fn bf16_le(b: &[u8], y: &mut [f32]) => bf16_le_imp);

/// Int8 rows: `q * SCB * (1/127)`, in bitsandbytes' order (`crate::quant::int8`).
#[inline(always)]
fn int8_rows_imp(cb: &[i8], scb: &[f32], y: &mut [f32]) {
    let cols = y.len() / scb.len().max(1);
    for ((yr, qr), &s) in y.chunks_exact_mut(cols).zip(cb.chunks_exact(cols)).zip(scb) {
        for (v, &q) in yr.iter_mut().zip(qr) {
            *v = q as f32 * s * INV_127;
        }
    }
}
avx2_dispatch!(fn int8_rows(cb: &[i8], scb: &[f32], y: &mut [f32]) => int8_rows_imp);

/// Elements `start .. start + y.len()` of an NF4 weight (blocks of 64 run over row ends, so any range).
fn nf4_range(q: &Nf4Weight, start: usize, y: &mut [f32]) {
    let code = nf4_code();
    let dynm = dynamic_map();
    let mut i = start;
    let mut done = 0;
    while done < y.len() {
        let b = i / NF4_BLOCK;
        let scale = q.block_scale(b, &dynm);
        let take = ((b + 1) * NF4_BLOCK - i).min(y.len() - done);
        let part = &mut y[done..done + take];
        if i.is_multiple_of(2) && take.is_multiple_of(2) {
            nf4_pairs(&q.packed[i / 2..(i + take) / 2], &code, scale, part);
        } else {
            for (k, v) in part.iter_mut().enumerate() {
                let e = i + k;
                let byte = q.packed[e / 2];
                let c = if e.is_multiple_of(2) { byte >> 4 } else { byte & 0x0f };
                *v = code[c as usize] * scale;
            }
        }
        i += take;
        done += take;
    }
}

#[inline(always)]
fn nf4_pairs_imp(packed: &[u8], code: &[f32; 16], scale: f32, y: &mut [f32]) {
    for (pair, &byte) in y.chunks_exact_mut(2).zip(packed) {
        pair[0] = code[(byte >> 4) as usize] * scale;
        pair[1] = code[(byte & 0x0f) as usize] * scale;
    }
}
avx2_dispatch!(fn nf4_pairs(packed: &[u8], code: &[f32; 16], scale: f32, y: &mut [f32]) => nf4_pairs_imp);

/// `Σ a[i]·b[i]` with eight independent partial sums (vectorised by the AVX2 compilation).
#[inline(always)]
fn dot_imp(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, ar) = a.split_at(a.len() / 16 * 16);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(16).zip(bc.chunks_exact(16)) {
        for k in 0..16 {
            acc[k] = x[k].mul_add(y[k], acc[k]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s = x.mul_add(*y, s);
    }
    s
}

/// `y[r·n + j] = w_r · x_j` for the `rows` decoded weight rows in `w` and the `n` rows of `x`.
#[inline(always)]
fn dots_imp(w: &[f32], x: &[f32], inp: usize, y: &mut [f32]) {
    let n = x.len() / inp;
    for (wr, yr) in w.chunks_exact(inp).zip(y.chunks_exact_mut(n)) {
        for (xj, v) in x.chunks_exact(inp).zip(yr.iter_mut()) {
            *v = dot_imp(wr, xj);
        }
    }
}
avx2_dispatch!(fn dots(w: &[f32], x: &[f32], inp: usize, y: &mut [f32]) => dots_imp);

/// `x · Wᵀ` for `x` row-major `[n, in]`: row-major `[n, out]`.
pub fn packed_matmul(x: &[f32], n: usize, w: &PackedWeight) -> Vec<f32> {
    let [out, inp] = w.shape();
    assert_eq!(x.len(), n * inp, "packed_matmul: x does not match the weight's input size");
    if n == 0 || out == 0 {
        return vec![0.0; n * out];
    }
    if n <= SMALL_N {
        // Transposed result `[out, n]`: each task owns a run of weight rows.
        let mut yt = vec![0f32; out * n];
        if qdot::has_kernel(w) {
            // Blocks multiplied as stored (`super::qdot`). No buffer to keep in L1 here: a few tasks per
            // thread, enough to balance the load.
            let rows = out.div_ceil(4 * rayon::current_num_threads()).max(16);
            let xs = qdot::sums32(x);
            yt.par_chunks_mut(rows * n).enumerate().for_each(|(t, yc)| qdot::dot_rows(w, t * rows, x, &xs, yc));
        } else {
            let rows = (VEC_TASK_FLOATS / inp).max(1);
            yt.par_chunks_mut(rows * n).enumerate().for_each(|(t, yc)| {
                let r = yc.len() / n;
                with_buf(r * inp, |buf| {
                    decode_rows(w, t * rows, buf);
                    dots(buf, x, inp, yc);
                })
            });
        }
        if n == 1 {
            return yt;
        }
        let mut y = vec![0f32; n * out];
        for (r, v) in yt.chunks_exact(n).enumerate() {
            for (j, &e) in v.iter().enumerate() {
                y[j * out + r] = e;
            }
        }
        return y;
    }
    let rows = (TILE_FLOATS / inp).max(1);
    let xm = Mat::rows(x, n, inp);
    let tiles: Vec<Vec<f32>> = (0..out.div_ceil(rows))
        .into_par_iter()
        .map(|t| {
            let r = rows.min(out - t * rows);
            let mut z = vec![0f32; n * r];
            with_buf(r * inp, |buf| {
                decode_rows(w, t * rows, buf);
                matmul_serial(&mut z, xm, Mat::rows(buf, r, inp).t(), false);
            });
            z
        })
        .collect();
    let mut y = vec![0f32; n * out];
    for (t, z) in tiles.iter().enumerate() {
        let r = z.len() / n;
        for (yr, zr) in y.chunks_exact_mut(out).zip(z.chunks_exact(r)) {
            yr[t * rows..t * rows + r].copy_from_slice(zr);
        }
    }
    y
}

/// `dy · W` for `dy` row-major `[n, out]`: row-major `[n, in]` (the input gradient of [`packed_matmul`]).
/// Rows of `dy` are split between the threads; each walks the weight tile by tile.
pub fn packed_matmul_dx(dy: &[f32], n: usize, w: &PackedWeight) -> Vec<f32> {
    let [out, inp] = w.shape();
    assert_eq!(dy.len(), n * out, "packed_matmul_dx: dy does not match the weight's output size");
    let mut dx = vec![0f32; n * inp];
    if n == 0 || out == 0 {
        return dx;
    }
    let rows = (TILE_FLOATS / inp).max(1);
    // Each part decodes the whole weight: worth it only with enough rows to amortise that.
    let parts = if n >= 64 { rayon::current_num_threads().min(n / 32).max(1) } else { 1 };
    let per = n.div_ceil(parts);
    dx.par_chunks_mut(per * inp).zip(dy.par_chunks(per * out)).for_each(|(dxc, dyc)| {
        let nc = dyc.len() / out;
        with_buf(rows.min(out) * inp, |buf| {
            for (t, r0) in (0..out).step_by(rows).enumerate() {
                let r = rows.min(out - r0);
                let wt = &mut buf[..r * inp];
                decode_rows(w, r0, wt);
                let dyv = Mat { data: &dyc[r0..], rows: nc, cols: r, row_stride: out, col_stride: 1 };
                matmul_serial(dxc, dyv, Mat::rows(wt, r, inp), t > 0);
            }
        })
    });
    dx
}

/// `x · Wᵀ` for bf16 `x` row-major `[n, in]`: row-major `[n, out]` in bf16. The weight is decoded to bf16
/// (as bitsandbytes dequantizes for a bf16 compute dtype) and the bf16 products are summed in f32
/// (`super::bf16_gemm`), tile by tile as in [`packed_matmul`]. Up to [`SMALL_N`] rows (generation), `x` is
/// widened and multiplied by the weight as stored, as in f32.
pub fn packed_matmul_bf16(x: &[bf16], n: usize, w: &PackedWeight) -> Vec<bf16> {
    let [out, inp] = w.shape();
    assert_eq!(x.len(), n * inp, "packed_matmul_bf16: x does not match the weight's input size");
    if n <= SMALL_N || out == 0 {
        return narrow(&packed_matmul(&widen_vec(x), n, w));
    }
    let kernel = bf16_gemm::kernel();
    let a = PackedA::new(View::rows(x, n, inp), kernel);
    let rows = (TILE_FLOATS / inp).max(1).div_ceil(NR) * NR;
    let tiles: Vec<Vec<f32>> = (0..out.div_ceil(rows))
        .into_par_iter()
        .map(|t| {
            let r = rows.min(out - t * rows);
            let mut z = vec![0f32; n * r];
            // Not the thread's `with_buf` buffer: packing runs on rayon too, and a task stolen while this one
            // waits inside it would borrow that buffer a second time.
            let mut buf = vec![0f32; r * inp];
            decode_rows(w, t * rows, &mut buf);
            let b = PackedB::new(View::rows(&buf, r, inp).t(), kernel);
            bf16_gemm::gemm(&mut z, r, &a, 0, &b, false, false);
            z
        })
        .collect();
    let mut y = vec![bf16::ZERO; n * out];
    for (t, z) in tiles.iter().enumerate() {
        let r = z.len() / n;
        for (yr, zr) in y.chunks_exact_mut(out).zip(z.chunks_exact(r)) {
            narrow_into(zr, &mut yr[t * rows..t * rows + r]);
        }
    }
    y
}

/// `dy · W` for bf16 `dy` row-major `[n, out]`: row-major `[n, in]` in bf16 (the input gradient of
/// [`packed_matmul_bf16`]). The weight is decoded tile by tile (in parallel), each tile multiplied by all
/// rows of `dy` (in parallel over its columns).
pub fn packed_matmul_dx_bf16(dy: &[bf16], n: usize, w: &PackedWeight) -> Vec<bf16> {
    let [out, inp] = w.shape();
    assert_eq!(dy.len(), n * out, "packed_matmul_dx_bf16: dy does not match the weight's output size");
    if n <= SMALL_N || out == 0 {
        return narrow(&packed_matmul_dx(&widen_vec(dy), n, w));
    }
    let kernel = bf16_gemm::kernel();
    let a = PackedA::new(View::rows(dy, n, out), kernel);
    // An even number of weight rows per tile (`A` is read from an even column), ~1 MiB decoded.
    let rows = ((4 * TILE_FLOATS / inp).max(2) / 2 * 2).min(out.div_ceil(2) * 2);
    let per = (VEC_TASK_FLOATS / inp).max(1);
    let mut dx = vec![0f32; n * inp];
    let mut buf = vec![0f32; rows * inp];
    for (t, r0) in (0..out).step_by(rows).enumerate() {
        let r = rows.min(out - r0);
        let tile = &mut buf[..r * inp];
        tile.par_chunks_mut(per * inp).enumerate().for_each(|(i, c)| decode_rows(w, r0 + i * per, c));
        let b = PackedB::from_rows(&tile[..], r, inp, kernel);
        bf16_gemm::gemm(&mut dx, inp, &a, r0, &b, t > 0, true);
    }
    narrow(&dx)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::quant::ggml::SUPPORTED_TYPES;
    use crate::quant::Int8Weight;
    use crate::testing::values;

    /// Random bytes make valid blocks of every ggml type (a NaN or infinite scale stays NaN or infinite in
    /// both decoders).
    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    fn ggml_weight(dtype: GgmlType, out: usize, inp: usize, seed: u64) -> PackedWeight {
        let (block, bytes) = dtype.block_layout().unwrap();
        let mut b = random_bytes(out * inp / block * bytes, seed);
        // Keep the scales (and f16 / bf16 / f32 elements) finite and below about 2, so that products can be
        // compared: the offsets of the f16 fields in each block (ggml-common.h), whose high byte is masked.
        let (f16_at, f32_at): (&[usize], &[usize]) = match dtype {
            GgmlType::F16 => (&[0], &[]),
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => (&[0], &[]),
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => (&[0, 2], &[]),
            GgmlType::Q2_K => (&[80, 82], &[]),
            GgmlType::Q3_K => (&[108], &[]),
            GgmlType::Q6_K => (&[208], &[]),
            GgmlType::F32 | GgmlType::Q8_K => (&[], &[0]),
            GgmlType::BF16 => (&[], &[]),
            _ => (&[], &[]),
        };
        for c in b.chunks_exact_mut(bytes) {
            f16_at.iter().for_each(|&o| c[o + 1] &= 0x3b);
            f32_at.iter().for_each(|&o| c[o + 3] &= 0x3f);
            match dtype {
                GgmlType::BF16 => c[1] &= 0x3f,
                GgmlType::F64 => c[7] &= 0x3f,
                _ => {}
            }
        }
        PackedWeight::Ggml(GgmlWeight::new(dtype, [out, inp], b).unwrap())
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
    }

    /// Every weight kind this crate packs: the ggml types GgmlWeight takes, NF4 (with a row length that is
    /// not a multiple of its 64-element blocks too) and int8.
    pub(crate) fn weights(out: usize, inp: usize) -> Vec<(String, PackedWeight)> {
        let mut ws = vec![];
        for (i, &t) in SUPPORTED_TYPES.iter().enumerate() {
            let (block, _) = t.block_layout().unwrap();
            if inp.is_multiple_of(block) && GgmlWeight::new(t, [1, block], vec![0; t.block_layout().unwrap().1]).is_ok()
            {
                ws.push((format!("{t}"), ggml_weight(t, out, inp, i as u64 + 1)));
            }
        }
        let dense = values(out * inp, 5, 1.0);
        ws.push(("nf4".into(), PackedWeight::Nf4(Nf4Weight::quantize(&dense, [out, inp]))));
        ws.push(("int8".into(), PackedWeight::Int8(Int8Weight::quantize(&dense, [out, inp]))));
        ws
    }

    #[test]
    fn decoded_rows_are_the_reference_dequantization_bit_for_bit() {
        for (out, inp) in [(7, 512), (5, 96)] {
            for (name, w) in weights(out, inp) {
                let want = w.dequantize();
                for (r0, rows) in [(0, out), (1, 2), (out - 1, 1)] {
                    let mut got = vec![0f32; rows * inp];
                    decode_rows(&w, r0, &mut got);
                    assert!(
                        same_bits(&got, &want[r0 * inp..(r0 + rows) * inp]),
                        "{name} rows {r0}+{rows} of {out}x{inp}"
                    );
                }
            }
        }
    }

    /// For the ggml types with a fused kernel (`super::qdot`), the matrix–vector path (n <= SMALL_N: blocks
    /// multiplied as stored) equals decoding the weight and multiplying with `gemm`, up to summation order
    /// (relative to the size of the terms).
    #[test]
    fn fused_matrix_vector_products_equal_decode_then_gemm() {
        let (out, inp) = (300, 768); // rows of 3 blocks of 256, tasks of several rows and a last partial one
        let mut checked = vec![];
        for (name, w) in weights(out, inp) {
            if !matches!(&w, PackedWeight::Ggml(_)) || !qdot::has_kernel(&w) {
                continue;
            }
            let mut wd = vec![0f32; out * inp];
            decode_rows(&w, 0, &mut wd);
            for n in [1, 3, SMALL_N] {
                let x = values(n * inp, 21 + n as u64, 1.0);
                let y = packed_matmul(&x, n, &w);
                let mut want = vec![0f32; n * out];
                matmul_serial(&mut want, Mat::rows(&x, n, inp), Mat::rows(&wd, out, inp).t(), false);
                for i in 0..n {
                    for o in 0..out {
                        let size: f64 = (0..inp).map(|k| (x[i * inp + k] * wd[o * inp + k]).abs() as f64).sum();
                        let (got, want) = (y[i * out + o], want[i * out + o]);
                        assert!(
                            ((got - want) as f64).abs() <= 2e-6 * size,
                            "{name} n={n} y[{i},{o}]: {got} (fused) vs {want} (decode + gemm)"
                        );
                    }
                }
            }
            checked.push(name);
        }
        eprintln!("fused kernels checked: {checked:?}");
        // Where the CPU has the kernels at all (AVX2, FMA, F16C), it has them for these.
        if checked.iter().any(|c| c == "Q4_K") {
            for t in ["Q4_1", "Q5_1", "Q2_K", "Q3_K", "Q5_K"] {
                assert!(checked.iter().any(|c| c == t), "{t}: no fused kernel");
            }
        }
    }

    /// In bf16, the products equal multiplying the bf16 values of `x` by the weight dequantized and rounded to
    /// bf16 (summed in f64 here), within the final rounding to bf16; the same for the input gradient.
    #[test]
    fn bf16_products_equal_multiplying_by_the_weight_rounded_to_bf16() {
        use crate::cpu::bf16::{narrow, widen_vec};
        let (out, inp) = (300, 512);
        for (name, w) in weights(out, inp) {
            let mut wd = w.dequantize();
            crate::cpu::bf16::round_in_place(&mut wd);
            let scale = wd.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-30);
            for n in [SMALL_N + 1, 70] {
                let x = narrow(&values(n * inp, 9, 1.0));
                let dy = narrow(&values(n * out, 11, 1.0));
                let (y, dx) =
                    (widen_vec(&packed_matmul_bf16(&x, n, &w)), widen_vec(&packed_matmul_dx_bf16(&dy, n, &w)));
                let (xf, dyf) = (widen_vec(&x), widen_vec(&dy));
                for i in 0..n {
                    for o in 0..out {
                        let want: f64 = (0..inp).map(|k| xf[i * inp + k] as f64 * wd[o * inp + k] as f64).sum();
                        let got = y[i * out + o] as f64;
                        let tol = want.abs() / 256.0 + 1e-6 * scale * inp as f64;
                        assert!((got - want).abs() <= tol, "{name} n={n} y[{i},{o}]: {got} vs {want}");
                    }
                    for k in 0..inp {
                        let want: f64 = (0..out).map(|o| dyf[i * out + o] as f64 * wd[o * inp + k] as f64).sum();
                        let got = dx[i * inp + k] as f64;
                        let tol = want.abs() / 256.0 + 1e-6 * scale * out as f64;
                        assert!((got - want).abs() <= tol, "{name} n={n} dx[{i},{k}]: {got} vs {want}");
                    }
                }
            }
        }
    }

    /// The products equal multiplying by the dequantized weight (summed in f64 here), for the
    /// matrix–vector path (n <= SMALL_N), the tiled one, and the input gradient.
    #[test]
    fn products_equal_multiplying_by_the_dequantized_weight() {
        let (out, inp) = (300, 512); // several tiles and vector tasks, a last partial one
        for (name, w) in weights(out, inp) {
            let wd = w.dequantize();
            assert!(wd.iter().all(|v| v.is_finite()), "{name}: the test weight should be finite");
            let scale = wd.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-30);
            for n in [1, 3, SMALL_N + 1, 70] {
                let x = values(n * inp, 9, 1.0);
                let y = packed_matmul(&x, n, &w);
                let dy = values(n * out, 11, 1.0);
                let dx = packed_matmul_dx(&dy, n, &w);
                for i in 0..n {
                    for o in (0..out).step_by(7) {
                        let want: f64 = (0..inp).map(|k| x[i * inp + k] as f64 * wd[o * inp + k] as f64).sum();
                        let got = y[i * out + o] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * scale * inp as f64,
                            "{name} n={n} y[{i},{o}]: {got} vs {want}"
                        );
                    }
                    for k in (0..inp).step_by(13) {
                        let want: f64 = (0..out).map(|o| dy[i * out + o] as f64 * wd[o * inp + k] as f64).sum();
                        let got = dx[i * inp + k] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * scale * out as f64,
                            "{name} n={n} dx[{i},{k}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
