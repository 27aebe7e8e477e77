//! NF4 (4-bit NormalFloat) quantization exactly as bitsandbytes 0.50 does it for `load_in_4bit` with
//! `bnb_4bit_quant_type = "nf4"` and `bnb_4bit_use_double_quant = True`:
//!
//! 1. The weight, flattened row-major, is cut into blocks of 64; each block's absmax scales it into [-1, 1].
//! 2. Each scaled value becomes the index of the nearest NF4 code (`torch.bucketize` on the midpoints, so an
//!    exact midpoint goes to the lower code), two indices per byte, the first in the high nibble.
//! 3. Double quantization: the f32 absmax values minus their mean (`offset`) are quantized blockwise to 8 bits
//!    with block size 256 against the signed dynamic map (bitsandbytes' CPU kernel: binary search, then the
//!    nearer neighbour, ties to the left).
//!
//! Dequantization: `w = NF4[q] * (DYN[qabsmax] * absmax2 + offset)`, all in f32 as bitsandbytes does.
use rayon::prelude::*;

use super::dynamic_map::DYNAMIC_MAP_BITS;

pub const NF4_BLOCK: usize = 64;
pub const ABSMAX_BLOCK: usize = 256;

/// The 16 NF4 codes (bitsandbytes `get_4bit_type("nf4")`), as f32 bit patterns.
const NF4_BITS: [u32; 16] = [
    0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f, 0xbdba7871, 0x00000000, 0x3da2faff,
    0x3e24cae3, 0x3e7c04dd, 0x3ead033a, 0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000,
];

pub fn nf4_code() -> [f32; 16] {
    NF4_BITS.map(f32::from_bits)
}

pub fn dynamic_map() -> [f32; 256] {
    DYNAMIC_MAP_BITS.map(f32::from_bits)
}

/// A weight in bitsandbytes' NF4 + double-quant layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Weight {
    /// Logical shape, `[out_features, in_features]`.
    pub shape: [usize; 2],
    /// Two 4-bit codes per byte, high nibble first: `ceil(n / 2)` bytes.
    pub packed: Vec<u8>,
    /// Per 64-block absmax, 8-bit quantized: `ceil(n / 64)` bytes.
    pub absmax_q: Vec<u8>,
    /// Per 256-block scale of the quantized absmax: `ceil(n / 64 / 256)` values.
    pub absmax2: Vec<f32>,
    /// Mean of the f32 absmax values, added back after dequantizing them.
    pub offset: f32,
    /// `absmax2` holds one value per `1 << nested_shift` 64-blocks: 8 (256, bitsandbytes' double quantization),
    /// or 0 for a checkpoint saved without double quantization ([`Nf4Weight::single_level`]).
    pub nested_shift: u32,
}

impl Nf4Weight {
    pub fn quantize(data: &[f32], shape: [usize; 2]) -> Self {
        assert_eq!(data.len(), shape[0] * shape[1], "nf4: data does not match its shape");
        let n = data.len();
        let code = nf4_code();
        let mut mids = [0f32; 15];
        for i in 0..15 {
            mids[i] = (code[i] + code[i + 1]) / 2.0;
        }
        let full = n - n % NF4_BLOCK;
        let mut absmax: Vec<f32> = data.chunks(NF4_BLOCK).map(|b| b.iter().fold(0f32, |m, x| m.max(x.abs()))).collect();
        // bitsandbytes scales full blocks by a reciprocal but divides the last partial block; the last bit of
        // a scaled value can differ between the two, so do the same.
        // An odd count is padded with a scaled 0.0, i.e. code 7 (NF4's zero), as bitsandbytes pads.
        let mut codes = vec![7u8; n + n % 2];
        codes[..n].par_chunks_mut(NF4_BLOCK).zip(data.par_chunks(NF4_BLOCK)).enumerate().for_each(|(b, (q, x))| {
            let am = absmax[b].max(1e-38);
            let inv = 1.0 / am;
            let partial = b * NF4_BLOCK >= full;
            for (q, &x) in q.iter_mut().zip(x) {
                let s = if partial { x / am } else { x * inv }.clamp(-1.0, 1.0);
                // bucketize(right=False): the number of midpoints strictly below s.
                *q = mids.partition_point(|&m| m < s) as u8;
            }
        });
        // A partial last block's absmax is clamped to 1e-38 too (it is computed after the clamp there).
        if !n.is_multiple_of(NF4_BLOCK) {
            if let Some(last) = absmax.last_mut() {
                *last = last.max(1e-38);
            }
        }
        let packed = codes.chunks(2).map(|p| (p[0] << 4) | p[1]).collect();
        let (absmax_q, absmax2, offset) = double_quantize(&absmax);
        Nf4Weight { shape, packed, absmax_q, absmax2, offset, nested_shift: ABSMAX_BLOCK.trailing_zeros() }
    }

    /// A weight bitsandbytes quantized without double quantization (`bnb_4bit_use_double_quant = False`): one
    /// f32 absmax per 64-block. Held in the double-quantized layout every kernel reads, exactly: each block's
    /// quantized absmax selects the dynamic map's 1.0, its own f32 absmax is its second-level scale and the
    /// offset is 0, so a block's scale is `1.0 · absmax + 0.0`, the stored f32.
    pub fn single_level(shape: [usize; 2], packed: Vec<u8>, absmax: Vec<f32>) -> Self {
        debug_assert_eq!(dynamic_map()[255], 1.0);
        Nf4Weight { shape, packed, absmax_q: vec![255; absmax.len()], absmax2: absmax, offset: 0.0, nested_shift: 0 }
    }

    pub fn numel(&self) -> usize {
        self.shape[0] * self.shape[1]
    }

    /// The f32 absmax of every 64-block, rebuilt from the double-quantized form.
    pub fn absmax(&self) -> Vec<f32> {
        let dynm = dynamic_map();
        (0..self.absmax_q.len()).map(|b| self.block_scale(b, &dynm)).collect()
    }

    /// The absmax of 64-block `b` (`dynm`: [`dynamic_map`]), computed as bitsandbytes dequantizes it.
    #[inline(always)]
    pub fn block_scale(&self, b: usize, dynm: &[f32; 256]) -> f32 {
        dynm[self.absmax_q[b] as usize] * self.absmax2[b >> self.nested_shift] + self.offset
    }

    /// Dequantize into `out` (row-major `[out_features, in_features]`).
    pub fn dequantize_into(&self, out: &mut [f32]) {
        assert_eq!(out.len(), self.numel());
        let code = nf4_code();
        let absmax = self.absmax();
        out.par_chunks_mut(NF4_BLOCK).enumerate().for_each(|(b, o)| {
            let scale = absmax[b];
            let base = b * NF4_BLOCK;
            for (j, v) in o.iter_mut().enumerate() {
                let i = base + j;
                let byte = self.packed[i / 2];
                let q = if i.is_multiple_of(2) { byte >> 4 } else { byte & 0x0f };
                *v = code[q as usize] * scale;
            }
        });
    }

    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.numel()];
        self.dequantize_into(&mut out);
        out
    }

    /// Bytes held: packed codes, quantized absmax, second-level scales and the offset.
    pub fn resident_bytes(&self) -> usize {
        self.packed.len() + self.absmax_q.len() + self.absmax2.len() * 4 + 4
    }
}

/// bitsandbytes `quantize_blockwise(absmax - offset, blocksize=256)` on CPU.
fn double_quantize(absmax: &[f32]) -> (Vec<u8>, Vec<f32>, f32) {
    // torch's `mean()` of an f32 tensor accumulates in higher precision (pairwise/cascade sum); summing in
    // f64 and rounding once gives the same f32 for the block counts we meet.
    let offset = (absmax.iter().map(|&x| x as f64).sum::<f64>() / absmax.len().max(1) as f64) as f32;
    let centred: Vec<f32> = absmax.iter().map(|&x| x - offset).collect();
    let mut search = dynamic_map();
    // bitsandbytes' CPU kernel sets code[0] = -1 before searching (the map starts at -0.993).
    search[0] = -1.0;
    let mut q = vec![0u8; centred.len()];
    let mut scales = Vec::with_capacity(centred.len().div_ceil(ABSMAX_BLOCK));
    for (block, (qb, xb)) in q.chunks_mut(ABSMAX_BLOCK).zip(centred.chunks(ABSMAX_BLOCK)).enumerate() {
        let _ = block;
        let am = xb.iter().fold(-f32::MAX, |m, x| m.max(x.abs()));
        scales.push(am);
        for (q, &x) in qb.iter_mut().zip(xb) {
            let v = x / am;
            // The largest index whose code is <= v, then the nearer of it and its right neighbour.
            let mut idx = search.partition_point(|&c| c <= v).saturating_sub(1);
            if idx < 255 {
                let dl = (v - search[idx]).abs();
                let dr = (v - search[idx + 1]).abs();
                if dr < dl {
                    idx += 1;
                }
            }
            *q = idx as u8;
        }
    }
    (q, scales, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_exactly_for_code_multiples() {
        // A block whose values are code[k] * absmax quantizes to k and dequantizes to within absmax's
        // double-quantization error.
        let code = nf4_code();
        let data: Vec<f32> = (0..128).map(|i| code[i % 16] * 2.0).collect();
        let w = Nf4Weight::quantize(&data, [2, 64]);
        for (i, b) in w.packed.iter().enumerate() {
            assert_eq!(b >> 4, ((2 * i) % 16) as u8);
            assert_eq!(b & 15, ((2 * i + 1) % 16) as u8);
        }
        let back = w.dequantize();
        for (a, b) in back.iter().zip(&data) {
            assert!((a - b).abs() <= 2.0 * 0.01, "{a} vs {b}");
        }
    }

    #[test]
    fn single_level_scales_are_the_stored_absmax() {
        // Awkward f32 absmax values (not representable by the 8-bit map) come back bit for bit.
        let absmax = vec![0.123_456_79f32, 3.0e-7, 17.25, 1.0e-38];
        let packed: Vec<u8> = (0..128u32).map(|i| (i * 37 % 256) as u8).collect();
        let w = Nf4Weight::single_level([4, 64], packed.clone(), absmax.clone());
        assert_eq!(w.absmax(), absmax);
        let code = nf4_code();
        let d = w.dequantize();
        for (i, v) in d.iter().enumerate() {
            let q = if i % 2 == 0 { packed[i / 2] >> 4 } else { packed[i / 2] & 15 };
            assert_eq!(v.to_bits(), (code[q as usize] * absmax[i / 64]).to_bits());
        }
    }
}
