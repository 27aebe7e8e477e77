//! f32 values into ggml's storage types, as llama.cpp's reference code writes them: `ggml_fp32_to_fp16` and
//! `ggml_fp32_to_bf16` (round to nearest even) and ggml's `quantize_row_*_ref` (ggml-quants.c) for the block
//! types — the functions `llama-quantize` runs when it has no importance matrix. The 32-element blocks (Q4_0,
//! Q4_1, Q5_0, Q5_1, Q8_0) are here, the k-quants in `kquants`. Byte-identical to llama.cpp (checked against
//! `ggml_quantize_chunk` and `llama-quantize` outputs, tests/ggml_quantize.rs); C's `(int8_t)` / `(uint8_t)`
//! casts truncate toward zero and `roundf` rounds halves away from zero, as Rust's `as` and `f32::round` do.
use half::{bf16, f16};
use rayon::prelude::*;

use super::kquants;
use super::types::GgmlType;

/// Blocks one rayon task encodes (k-quant super-blocks cost ~100x a 32-block; both stay well above overhead).
const BLOCKS_PER_TASK: usize = 64;

/// `values` (a whole number of rows of `row` elements) in `dtype`: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
/// Q2_K, Q3_K, Q4_K, Q5_K or Q6_K. `Err` names what does not fit (a row that is not whole blocks, an
/// unsupported type).
pub fn encode(dtype: GgmlType, values: &[f32], row: usize) -> Result<Vec<u8>, String> {
    if row == 0 || !values.len().is_multiple_of(row) {
        return Err(format!("{} values are not whole rows of {row}", values.len()));
    }
    // llama-quantize refuses what would store an inf or NaN (ggml_validate_row_data); so do we, by naming it.
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!("value {} at row {}, column {} is not finite", values[i], i / row, i % row));
    }
    let f: fn(&[f32], &mut [u8]) = match dtype {
        GgmlType::F32 => return Ok(values.iter().flat_map(|x| x.to_le_bytes()).collect()),
        GgmlType::F16 => {
            if let Some(i) = values.iter().position(|v| !f16::from_f32(*v).is_finite()) {
                return Err(overflow(dtype, values[i], i, row));
            }
            return Ok(values.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect());
        }
        GgmlType::BF16 => {
            if let Some(i) = values.iter().position(|v| !bf16_rne(*v).is_finite()) {
                return Err(overflow(dtype, values[i], i, row));
            }
            return Ok(values.iter().flat_map(|x| bf16_rne(*x).to_le_bytes()).collect());
        }
        GgmlType::Q4_0 => q4_0_block,
        GgmlType::Q4_1 => q4_1_block,
        GgmlType::Q5_0 => q5_0_block,
        GgmlType::Q5_1 => q5_1_block,
        GgmlType::Q8_0 => q8_0_block,
        GgmlType::Q2_K => kquants::q2_k,
        GgmlType::Q3_K => kquants::q3_k,
        GgmlType::Q4_K => kquants::q4_k,
        GgmlType::Q5_K => kquants::q5_k,
        GgmlType::Q6_K => kquants::q6_k,
        other => {
            return Err(format!(
                "writing {other} is not supported (f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_k..q6_k)"
            ))
        }
    };
    let (block, block_bytes) = dtype.block_layout().expect("a supported type has a layout");
    if !row.is_multiple_of(block) {
        return Err(format!("rows of {row} elements are not whole {dtype} blocks of {block}"));
    }
    let mut out = vec![0u8; values.len() / block * block_bytes];
    out.par_chunks_mut(block_bytes * BLOCKS_PER_TASK).zip(values.par_chunks(block * BLOCKS_PER_TASK)).for_each(
        |(y, x)| {
            for (yb, xb) in y.chunks_exact_mut(block_bytes).zip(x.chunks_exact(block)) {
                f(xb, yb);
            }
        },
    );
    // The f16 scales and mins of each block overflow for values beyond about 65504 times the level count.
    for (i, b) in out.chunks_exact(block_bytes).enumerate() {
        for &at in f16_fields(dtype) {
            let v = f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]]));
            if !v.is_finite() {
                let first = i * block;
                let amax = values[first..first + block].iter().fold(0f32, |m, v| m.max(v.abs()));
                return Err(format!(
                    "{dtype} block at row {}, column {}: its f16 scale overflows (largest magnitude {amax}); \
                     llama-quantize refuses such values too",
                    first / row,
                    first % row
                ));
            }
        }
    }
    Ok(out)
}

fn overflow(dtype: GgmlType, v: f32, i: usize, row: usize) -> String {
    format!("value {v} at row {}, column {} overflows {dtype}", i / row, i % row)
}

/// Byte offsets of a block's f16 fields (d, and m / dmin where there is one), which ggml validates.
fn f16_fields(dtype: GgmlType) -> &'static [usize] {
    match dtype {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

/// ggml's `ggml_compute_fp32_to_bf16`: round to nearest even; NaN stays a (quiet) NaN.
fn bf16_rne(x: f32) -> bf16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return bf16::from_bits(((u >> 16) | 64) as u16);
    }
    bf16::from_bits(((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16)
}

/// The element of largest magnitude (the first such, with its sign), as Q4_0/Q5_0 scan for it.
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Q4_0: `d = max / -8` (max: the signed element of largest magnitude, so it maps to level 0), `q = x/d + 8.5`
/// truncated, capped at 15; element j in the low nibble of byte j, j + 16 in its high nibble.
fn q4_0_block(x: &[f32], y: &mut [u8]) {
    let d = signed_absmax(x) / -8.0;
    let id = inverse(d);
    y[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    for j in 0..16 {
        let xi0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let xi1 = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
        y[2 + j] = xi0 | (xi1 << 4);
    }
}

/// Q4_1: `d = (max - min) / 15`, `m = min`, `q = (x - min)/d + 0.5` truncated, capped at 15.
fn q4_1_block(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    y[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    y[2..4].copy_from_slice(&f16::from_f32(min).to_le_bytes());
    for j in 0..16 {
        let xi0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let xi1 = (((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
        y[4 + j] = xi0 | (xi1 << 4);
    }
}

/// Q5_0: as Q4_0 with 32 levels (`d = max / -16`); the fifth bits go to `qh` (bit j for element j).
fn q5_0_block(x: &[f32], y: &mut [u8]) {
    let d = signed_absmax(x) / -16.0;
    let id = inverse(d);
    y[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    let mut qh = 0u32;
    for j in 0..16 {
        let xi0 = ((x[j] * id + 16.5) as i8).min(31) as u8;
        let xi1 = ((x[j + 16] * id + 16.5) as i8).min(31) as u8;
        y[6 + j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= (((xi0 & 0x10) >> 4) as u32) << j;
        qh |= (((xi1 & 0x10) >> 4) as u32) << (j + 16);
    }
    y[2..6].copy_from_slice(&qh.to_le_bytes());
}

/// Q5_1: as Q4_1 with 32 levels (`d = (max - min) / 31`, no cap in ggml either).
fn q5_1_block(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    y[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    y[2..4].copy_from_slice(&f16::from_f32(min).to_le_bytes());
    let mut qh = 0u32;
    for j in 0..16 {
        let xi0 = ((x[j] - min) * id + 0.5) as u8;
        let xi1 = ((x[j + 16] - min) * id + 0.5) as u8;
        y[8 + j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= (((xi0 & 0x10) >> 4) as u32) << j;
        qh |= (((xi1 & 0x10) >> 4) as u32) << (j + 16);
    }
    y[4..8].copy_from_slice(&qh.to_le_bytes());
}

/// Q8_0: `d = amax / 127`, `q = roundf(x / d)` (halves away from zero: `f32::round`).
fn q8_0_block(x: &[f32], y: &mut [u8]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    y[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    for (q, v) in y[2..34].iter_mut().zip(x) {
        *q = (v * id).round() as i8 as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::ggml::dequant::dequantize_blocks;

    #[test]
    fn encodings_round_trip_through_the_reference_dequantization() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 64) as f32 - 31.5) * 0.173).collect();
        for (dtype, tol) in
            [(GgmlType::F32, 0.0), (GgmlType::F16, 1e-3), (GgmlType::BF16, 8e-3), (GgmlType::Q8_0, 0.5 / 127.0)]
        {
            let bytes = encode(dtype, &x, 64).unwrap();
            let mut back = vec![0f32; 64];
            dequantize_blocks(dtype, &bytes, &mut back).unwrap();
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in x.iter().zip(&back) {
                assert!((a - b).abs() <= tol * amax + 1e-7, "{dtype}: {a} -> {b}");
            }
        }
    }

    /// Hand-derived Q8_0 block (exact in binary): amax 63.5 → d = 0.5, 1/d = 2; 31.75 → 63.5 → 64 and 0.25 →
    /// 0.5 → 1 (halves away from zero), −0.25 → −1. bf16 of 1 + 2⁻⁸ (a tie) rounds to even (1.0), 1 + 3·2⁻⁸ up.
    #[test]
    fn hand_derived_values() {
        let mut x = vec![0f32; 32];
        x[0] = 63.5;
        x[1] = 31.75;
        x[2] = 0.25;
        x[3] = -0.25;
        let b = encode(GgmlType::Q8_0, &x, 32).unwrap();
        assert_eq!(&b[..2], &f16::from_f32(0.5).to_le_bytes());
        assert_eq!(b[2] as i8, 127);
        assert_eq!(b[3] as i8, 64);
        assert_eq!((b[4] as i8, b[5] as i8, b[6] as i8), (1, -1, 0));
        assert_eq!(bf16_rne(1.0 + 1.0 / 256.0), bf16::from_f32(1.0));
        assert_eq!(bf16_rne(1.0 + 3.0 / 256.0).to_f32(), 1.0 + 4.0 / 256.0);
        assert!(encode(GgmlType::Q8_0, &x[..16], 16).is_err());
        assert!(encode(GgmlType::Q4_K, &x, 32).unwrap_err().contains("Q4_K"));
    }

    /// What llama-quantize refuses (non-finite values, scales beyond f16) is an error naming the place; rows
    /// that are not whole blocks and types without an encoder too.
    #[test]
    fn refusals_name_the_row_and_column() {
        let mut x = vec![0.5f32; 512];
        x[300] = f32::NAN;
        assert_eq!(encode(GgmlType::Q4_K, &x, 256).unwrap_err(), "value NaN at row 1, column 44 is not finite");
        x[300] = 1e9;
        for t in [GgmlType::Q4_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q2_K, GgmlType::Q6_K] {
            let e = encode(t, &x, 256).unwrap_err();
            assert!(e.contains("row 1, column") && e.contains("overflows"), "{t}: {e}");
        }
        let e = encode(GgmlType::F16, &x, 256).unwrap_err();
        assert_eq!(e, "value 1000000000 at row 1, column 44 overflows F16");
        assert!(encode(GgmlType::BF16, &x, 256).is_ok());
        assert!(encode(GgmlType::Q5_K, &[0.0; 640], 640).unwrap_err().contains("not whole Q5_K blocks of 256"));
        assert!(encode(GgmlType::Q8_0, &x[..500], 256).unwrap_err().contains("whole rows"));
        assert!(encode(GgmlType::IQ4_NL, &x, 256).unwrap_err().contains("IQ4_NL"));
    }
}
