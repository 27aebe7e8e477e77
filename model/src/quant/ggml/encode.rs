//! f32 values into ggml's storage types, as llama.cpp's reference code writes them (`ggml_fp32_to_fp16`,
//! `ggml_fp32_to_bf16` and `quantize_row_q8_0_ref` in ggml; gguf-py's `quants.py` does the same): round to
//! nearest even for f16 and bf16; Q8_0 as blocks of 32 with `d = amax / 127` stored as f16 and
//! `q = round(x · (1/d))`, halves away from zero. Used to write GGUF files byte for byte as llama.cpp would.
use half::{bf16, f16};

use super::types::GgmlType;

/// `values` (a whole number of rows of `row` elements) in `dtype`: F32, F16, BF16 or Q8_0. `Err` names what
/// does not fit.
pub fn encode(dtype: GgmlType, values: &[f32], row: usize) -> Result<Vec<u8>, String> {
    match dtype {
        GgmlType::F32 => Ok(values.iter().flat_map(|x| x.to_le_bytes()).collect()),
        GgmlType::F16 => Ok(values.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect()),
        GgmlType::BF16 => Ok(values.iter().flat_map(|x| bf16_rne(*x).to_le_bytes()).collect()),
        GgmlType::Q8_0 => {
            if !row.is_multiple_of(32) {
                return Err(format!("rows of {row} elements are not whole Q8_0 blocks of 32"));
            }
            Ok(values.chunks(32).flat_map(q8_0_block).collect())
        }
        other => Err(format!("writing {other} is not supported (f32, f16, bf16, q8_0)")),
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

fn q8_0_block(x: &[f32]) -> Vec<u8> {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut out = f16::from_f32(d).to_le_bytes().to_vec();
    // C's roundf: halves away from zero (f32::round).
    out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
    out
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
}
