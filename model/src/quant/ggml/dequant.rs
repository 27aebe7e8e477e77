//! Dequantization of ggml block formats to f32, following ggml's reference `dequantize_row_*`
//! (ggml-quants.c) and gguf-py's `gguf/quants.py` operation for operation, so that results are bit-identical
//! (f16 scales widened exactly, products formed in the same order, no fused multiply-add).
use half::{bf16, f16};
use rayon::prelude::*;

use super::types::GgmlType;

const QK_K: usize = 256;
/// Blocks handed to one rayon task.
const BLOCKS_PER_TASK: usize = 256;

#[inline(always)]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

type BlockFn = fn(&[u8], &mut [f32]);

/// Dequantize `bytes` (whole blocks of `dtype`) into `out`, whose length must be the number of elements.
pub fn dequantize_blocks(dtype: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let (block, block_bytes) = dtype.block_layout().ok_or_else(|| format!("unknown type {dtype}"))?;
    #[allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87; the workspace says 1.85
    if out.len() % block != 0 {
        return Err(format!("{} elements is not a whole number of {dtype} blocks of {block}", out.len()));
    }
    let n_blocks = out.len() / block;
    if bytes.len() != n_blocks * block_bytes {
        return Err(format!(
            "{} bytes of {dtype} data for {} elements; expected {}",
            bytes.len(),
            out.len(),
            n_blocks * block_bytes
        ));
    }
    let f: BlockFn = match dtype {
        GgmlType::F32 => |b, y| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => |b, y| y[0] = f16_at(b, 0),
        GgmlType::BF16 => |b, y| y[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        GgmlType::F64 => |b, y| y[0] = f64::from_le_bytes(b[..8].try_into().unwrap()) as f32,
        GgmlType::I8 => |b, y| y[0] = b[0] as i8 as f32,
        GgmlType::I16 => |b, y| y[0] = i16::from_le_bytes([b[0], b[1]]) as f32,
        GgmlType::I32 => |b, y| y[0] = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q2_K => q2_k,
        GgmlType::Q3_K => q3_k,
        GgmlType::Q4_K => q4_k,
        GgmlType::Q5_K => q5_k,
        GgmlType::Q6_K => q6_k,
        GgmlType::Q8_K => q8_k,
        other => return Err(format!("type {other} cannot be dequantized")),
    };
    // Scalar types: group many elements per task, as a "block" of 1 element is tiny.
    let per_task = if block == 1 { 1 << 16 } else { BLOCKS_PER_TASK };
    out.par_chunks_mut(block * per_task).zip(bytes.par_chunks(block_bytes * per_task)).for_each(|(y, b)| {
        for (yb, bb) in y.chunks_exact_mut(block).zip(b.chunks_exact(block_bytes)) {
            f(bb, yb);
        }
    });
    Ok(())
}

/// Q4_0: `d: f16, qs: [u8; 16]`; y[j] = (lo - 8) * d, y[j + 16] = (hi - 8) * d.
#[inline(always)]
pub(crate) fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1: `d: f16, m: f16, qs: [u8; 16]`; y = q * d + m.
#[inline(always)]
pub(crate) fn q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0F) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// Q5_0: `d: f16, qh: u32, qs: [u8; 16]`; fifth bit of element j in bit j of qh; y = (q - 16) * d.
#[inline(always)]
pub(crate) fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        let x0 = ((qs[j] & 0x0F) | xh0) as i32 - 16;
        let x1 = ((qs[j] >> 4) | xh1) as i32 - 16;
        y[j] = x0 as f32 * d;
        y[j + 16] = x1 as f32 * d;
    }
}

/// Q5_1: `d: f16, m: f16, qh: u32, qs: [u8; 16]`; y = q * d + m.
#[inline(always)]
pub(crate) fn q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        let x0 = (qs[j] & 0x0F) | xh0;
        let x1 = (qs[j] >> 4) | xh1;
        y[j] = x0 as f32 * d + m;
        y[j + 16] = x1 as f32 * d + m;
    }
}

/// Q8_0: `d: f16, qs: [i8; 32]`; y = q * d.
#[inline(always)]
pub(crate) fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

/// Q8_K: `d: f32, qs: [i8; 256], bsums: [i16; 16]`; y = d * q.
#[inline(always)]
pub(crate) fn q8_k(b: &[u8], y: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for j in 0..QK_K {
        y[j] = d * (b[4 + j] as i8) as f32;
    }
}

/// Q2_K: `scales: [u8; 16], qs: [u8; 64], d: f16, dmin: f16`.
#[inline(always)]
pub(crate) fn q2_k(b: &[u8], y: &mut [f32]) {
    let scales = &b[0..16];
    let d = f16_at(b, 80);
    let min = f16_at(b, 82);
    let mut is = 0;
    let mut yi = 0;
    for n in 0..2 {
        let q = &b[16 + 32 * n..16 + 32 * n + 32];
        for shift in [0u32, 2, 4, 6] {
            for half in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * (sc & 0x0F) as f32;
                let ml = min * (sc >> 4) as f32;
                for l in 0..16 {
                    y[yi] = dl * ((q[l + 16 * half] >> shift) & 3) as f32 - ml;
                    yi += 1;
                }
            }
        }
    }
}

/// Q3_K: `hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16`.
#[inline(always)]
pub(crate) fn q3_k(b: &[u8], y: &mut [f32]) {
    let hm = &b[0..32];
    let qs = &b[32..96];
    let sb = &b[96..108];
    let d_all = f16_at(b, 108);
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let a0 = u32::from_le_bytes([sb[0], sb[1], sb[2], sb[3]]);
    let a1 = u32::from_le_bytes([sb[4], sb[5], sb[6], sb[7]]);
    let tmp = u32::from_le_bytes([sb[8], sb[9], sb[10], sb[11]]);
    let aux = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut scales = [0i8; 16];
    for (i, a) in aux.iter().enumerate() {
        for (k, byte) in a.to_le_bytes().iter().enumerate() {
            scales[4 * i + k] = *byte as i8;
        }
    }
    let mut is = 0;
    let mut yi = 0;
    let mut m: u8 = 1;
    for n in 0..2 {
        let q = &qs[32 * n..32 * n + 32];
        for shift in [0u32, 2, 4, 6] {
            for half in 0..2 {
                let dl = d_all * (scales[is] as i32 - 32) as f32;
                is += 1;
                for l in 0..16 {
                    let idx = l + 16 * half;
                    let low = ((q[idx] >> shift) & 3) as i32;
                    let high = if hm[idx] & m != 0 { 0 } else { 4 };
                    y[yi] = dl * (low - high) as f32;
                    yi += 1;
                }
            }
            m = m.wrapping_shl(1);
        }
    }
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K / Q5_K block (ggml's `get_scale_min_k4`).
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Q4_K: `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`.
#[inline(always)]
pub(crate) fn q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for g in 0..4 {
        let q = &qs[32 * g..32 * g + 32];
        let (sc, m) = scale_min_k4(2 * g, scales);
        let d1 = d * sc as f32;
        let m1 = min * m as f32;
        let (sc, m) = scale_min_k4(2 * g + 1, scales);
        let d2 = d * sc as f32;
        let m2 = min * m as f32;
        let yb = &mut y[64 * g..64 * g + 64];
        for l in 0..32 {
            yb[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            yb[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// Q5_K: `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`.
#[inline(always)]
pub(crate) fn q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    let mut u1: u8 = 1;
    let mut u2: u8 = 2;
    for g in 0..4 {
        let ql = &qs[32 * g..32 * g + 32];
        let (sc, m) = scale_min_k4(2 * g, scales);
        let d1 = d * sc as f32;
        let m1 = min * m as f32;
        let (sc, m) = scale_min_k4(2 * g + 1, scales);
        let d2 = d * sc as f32;
        let m2 = min * m as f32;
        let yb = &mut y[64 * g..64 * g + 64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            yb[l] = d1 * ((ql[l] & 0x0F) + h1) as f32 - m1;
            yb[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
        }
        u1 = u1.wrapping_shl(2);
        u2 = u2.wrapping_shl(2);
    }
}

/// Q6_K: `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`.
#[inline(always)]
pub(crate) fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let yb = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            yb[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            yb[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            yb[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            yb[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}
