//! ggml (GGUF) blocks dequantized by a CubeCL kernel: a `--quant gguf` weight's bytes, as the file stores
//! them, stay on the device, and each product gets its dense weight from one launch (one thread per element),
//! as for NF4 (`super::dequant`). Same values as `crate::quant::ggml::dequant` (ggml's reference, which
//! gguf-py's fixture vectors pin): the same f32 operations in the same order, the f16 scales widened exactly.
//!
//! Layout on the device: the blocks' bytes unchanged, as little-endian `u32` words (the tail zero-padded), so
//! that the resident bytes are the file's. Blocks are not 4-byte aligned (a Q4_0 block is 18 bytes), so the
//! kernel picks each byte out of its word with a shift rather than reading typed fields; re-laying the blocks
//! out at upload (scales widened to f32, aligned) would cost more memory than the file and a second,
//! per-type host layout to keep in step with ggml's. A thread reads its element's scale, min and quant bytes
//! (each byte one word load, the same words as its neighbours', so mostly from the cache).
//!
//! Types: every type `GgmlWeight` accepts ([`on_device`]) except F64, which few devices compute in; its
//! weights stay on the host path (`crate::cube::weights`).
//!
//! Rounding: on the wgpu runtime (tested on Mesa's lavapipe, `crate::cube::tests`) the values equal the host's
//! bit for bit. A compiler may contract `d · q − m` (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K) into one fused
//! multiply-add, as NVRTC may for NF4 (`super::dequant`), moving such a value by its last bit.
use burn::tensor::DType;
use cubecl::prelude::*;

use crate::quant::ggml::{GgmlType, GgmlWeight};

/// Byte `k` of the blocks.
#[cube]
fn byte(w: &Array<u32>, k: usize) -> u32 {
    (w[k / 4] >> (u32::cast_from(k % 4) * 8)) & 0xff
}

/// A signed byte's value.
#[cube]
fn signed(b: u32) -> f32 {
    // Two's complement: bytes 128..=255 are -128..=-1.
    f32::cast_from(b) - 256.0 * f32::cast_from(b >> 7)
}

/// The f16 at byte `k` widened to f32 exactly (as `half::f16::to_f32`), from its bits: devices without f16
/// arithmetic read it too.
#[cube]
fn f16_at(w: &Array<u32>, k: usize) -> f32 {
    let h = byte(w, k) | (byte(w, k + 1) << 8);
    let sign = (h & 0x8000) << 16;
    let exp = (h >> 10) & 0x1f;
    let mant = h & 0x3ff;
    let mut bits = sign | ((exp + 112) << 23) | (mant << 13);
    if exp == 0 {
        // Zero or subnormal: mant · 2⁻²⁴, exact (a normal f32).
        bits = sign | u32::reinterpret(f32::cast_from(mant) * 5.9604645e-8);
    }
    if exp == 31 {
        // Infinity, or a NaN made quiet.
        let quiet = u32::cast_from(mant != 0) << 22;
        bits = sign | 0x7f80_0000 | quiet | (mant << 13);
    }
    f32::reinterpret(bits)
}

/// The little-endian u32 at byte `k`.
#[cube]
fn u32_at(w: &Array<u32>, k: usize) -> u32 {
    byte(w, k) | (byte(w, k + 1) << 8) | (byte(w, k + 2) << 16) | (byte(w, k + 3) << 24)
}

/// Q4_0 / Q4_1's 4-bit code of element `j` of the block whose quants start at byte `qs`: the low nibbles are
/// elements 0..16, the high ones 16..32.
#[cube]
fn nibble32(w: &Array<u32>, qs: usize, j: usize) -> u32 {
    (byte(w, qs + j % 16) >> (4 * u32::cast_from(j / 16))) & 0xf
}

/// Q5_0 / Q5_1's 5-bit code: the nibble, and bit `j` of `qh` as the fifth bit.
#[cube]
fn five_bits(w: &Array<u32>, qh: usize, qs: usize, j: usize) -> u32 {
    nibble32(w, qs, j) | (((u32_at(w, qh) >> u32::cast_from(j)) & 1) << 4)
}

/// Q4_K / Q5_K's 6-bit scale (`min` false) or min (`min` true) of sub-block `s`, from the 12 scale bytes at
/// `sb` (ggml's `get_scale_min_k4`).
#[cube]
fn scale_min_k4(w: &Array<u32>, sb: usize, s: usize, min: bool) -> u32 {
    let o = if min { 4usize } else { 0usize };
    let mut v = byte(w, sb + s + o) & 63;
    if s >= 4 {
        // Low four bits from byte s + 4 (low nibble: scale, high: min), high two from the top of byte s - 4
        // (scale) or s (min).
        let lo = (byte(w, sb + s + 4) >> u32::cast_from(o)) & 0xf;
        v = lo | ((byte(w, sb + s - 4 + o) >> 6) << 4);
    }
    v
}

/// Q3_K's signed 6-bit scale of sub-block `s`, from the 12 scale bytes at `sb` (ggml's `kmask` unpacking):
/// the low four bits are a nibble of byte `4·(s/4 % 2) + s % 4` (low for s < 8, high after), the high two
/// are bits `2·(s/4)` of byte `8 + s % 4`.
#[cube]
fn scale_q3_k(w: &Array<u32>, sb: usize, s: usize) -> f32 {
    let (i, k) = (s / 4, s % 4);
    let lo = (byte(w, sb + (i % 2) * 4 + k) >> (4 * u32::cast_from(i / 2))) & 0xf;
    let hi = (byte(w, sb + 8 + k) >> (2 * u32::cast_from(i))) & 3;
    f32::cast_from(lo | (hi << 4)) - 32.0
}

/// One value of a block: element `j` of the block at byte `b`, as `crate::quant::ggml::dequant` computes it.
#[cube]
fn value(w: &Array<u32>, b: usize, j: usize, #[comptime] kind: u32) -> f32 {
    let mut v = f32::new(0.0);
    if comptime!(kind == 0) {
        // F32
        v = f32::reinterpret(u32_at(w, b));
    } else if comptime!(kind == 1) {
        // F16
        v = f16_at(w, b);
    } else if comptime!(kind == 30) {
        // BF16: the top half of an f32.
        v = f32::reinterpret((byte(w, b) | (byte(w, b + 1) << 8)) << 16);
    } else if comptime!(kind == 24) {
        // I8
        v = signed(byte(w, b));
    } else if comptime!(kind == 25) {
        // I16
        let x = byte(w, b) | (byte(w, b + 1) << 8);
        v = f32::cast_from(x) - 65536.0 * f32::cast_from(x >> 15);
    } else if comptime!(kind == 26) {
        // I32: one rounding, as `i32 as f32`.
        v = f32::cast_from(i32::reinterpret(u32_at(w, b)));
    } else if comptime!(kind == 2) {
        // Q4_0: d, 16 bytes of nibbles; (q - 8) · d.
        v = (f32::cast_from(nibble32(w, b + 2, j)) - 8.0) * f16_at(w, b);
    } else if comptime!(kind == 3) {
        // Q4_1: d, m, nibbles; q · d + m.
        v = f32::cast_from(nibble32(w, b + 4, j)) * f16_at(w, b) + f16_at(w, b + 2);
    } else if comptime!(kind == 6) {
        // Q5_0: d, qh, nibbles; (q - 16) · d.
        v = (f32::cast_from(five_bits(w, b + 2, b + 6, j)) - 16.0) * f16_at(w, b);
    } else if comptime!(kind == 7) {
        // Q5_1: d, m, qh, nibbles; q · d + m.
        v = f32::cast_from(five_bits(w, b + 4, b + 8, j)) * f16_at(w, b) + f16_at(w, b + 2);
    } else if comptime!(kind == 8) {
        // Q8_0: d, 32 signed bytes; q · d.
        v = signed(byte(w, b + 2 + j)) * f16_at(w, b);
    } else if comptime!(kind == 15) {
        // Q8_K: d as f32, 256 signed bytes; d · q.
        v = f32::reinterpret(u32_at(w, b)) * signed(byte(w, b + 4 + j));
    } else if comptime!(kind == 10) {
        // Q2_K: 16 scale bytes (low nibble scale, high min), 64 bytes of 2-bit codes, d, dmin at 80, 82.
        // Element j: half n = j / 128 of the codes, shift 2·(j % 128 / 32), byte j % 32 of that half.
        let sc = byte(w, b + j / 16);
        let q = (byte(w, b + 16 + 32 * (j / 128) + j % 32) >> (2 * u32::cast_from(j % 128 / 32))) & 3;
        let dl = f16_at(w, b + 80) * f32::cast_from(sc & 0xf);
        let ml = f16_at(w, b + 82) * f32::cast_from(sc >> 4);
        v = dl * f32::cast_from(q) - ml;
    } else if comptime!(kind == 11) {
        // Q3_K: hmask (32), 2-bit codes (64), scales (12), d at 108. The high bit (set: no offset, clear:
        // minus 4) is bit `j / 32` of hmask byte j % 32.
        let low = (byte(w, b + 32 + 32 * (j / 128) + j % 32) >> (2 * u32::cast_from(j % 128 / 32))) & 3;
        let high = (byte(w, b + j % 32) >> u32::cast_from(j / 32)) & 1;
        let dl = f16_at(w, b + 108) * scale_q3_k(w, b + 96, j / 16);
        v = dl * (f32::cast_from(low) - 4.0 + 4.0 * f32::cast_from(high));
    } else if comptime!(kind == 12) {
        // Q4_K: d, dmin, 12 scale bytes, 128 bytes of nibbles: 64-element groups g, the low nibbles of bytes
        // 32g..32g+32 then the high ones (sub-blocks 2g, 2g+1).
        let s = j / 32;
        let q = (byte(w, b + 16 + 32 * (j / 64) + j % 32) >> (4 * u32::cast_from(s % 2))) & 0xf;
        let d1 = f16_at(w, b) * f32::cast_from(scale_min_k4(w, b + 4, s, false));
        let m1 = f16_at(w, b + 2) * f32::cast_from(scale_min_k4(w, b + 4, s, true));
        v = d1 * f32::cast_from(q) - m1;
    } else if comptime!(kind == 13) {
        // Q5_K: as Q4_K with qh (32 bytes at 16): bit s of qh byte j % 32 adds 16.
        let s = j / 32;
        let lo = (byte(w, b + 48 + 32 * (j / 64) + j % 32) >> (4 * u32::cast_from(s % 2))) & 0xf;
        let hi = (byte(w, b + 16 + j % 32) >> u32::cast_from(s)) & 1;
        let d1 = f16_at(w, b) * f32::cast_from(scale_min_k4(w, b + 4, s, false));
        let m1 = f16_at(w, b + 2) * f32::cast_from(scale_min_k4(w, b + 4, s, true));
        v = d1 * f32::cast_from(lo + 16 * hi) - m1;
    } else if comptime!(kind == 14) {
        // Q6_K: ql (128), qh (64), signed scales (16), d at 208. Half n = j / 128, quarter t = j % 128 / 32,
        // l = j % 32: nibble t / 2 of ql byte 64n + l + 32·(t % 2), bits 2t of qh byte 128 + 32n + l, scale
        // 8n + l / 16 + 2t; (d · scale) · (q - 32).
        let (n, t, l) = (j / 128, j % 128 / 32, j % 32);
        let lo = (byte(w, b + 64 * n + l + 32 * (t % 2)) >> (4 * u32::cast_from(t / 2))) & 0xf;
        let hi = (byte(w, b + 128 + 32 * n + l) >> (2 * u32::cast_from(t))) & 3;
        let sc = signed(byte(w, b + 192 + 8 * n + l / 16 + 2 * t));
        v = f16_at(w, b + 208) * sc * (f32::cast_from(lo | (hi << 4)) - 32.0);
    }
    v
}

/// Element `i` of the tensor: block `i / block`, whose bytes start at `(i / block) · block_bytes`.
#[cube(launch)]
fn ggml_kernel<F: Float>(
    bytes: &Array<u32>,
    out: &mut Array<F>,
    #[comptime] kind: u32,
    #[comptime] block: u32,
    #[comptime] block_bytes: u32,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i >= out.len() {
        terminate!();
    }
    let (block, block_bytes) = (comptime!(block as usize), comptime!(block_bytes as usize));
    out[i] = F::cast_from(value(bytes, (i / block) * block_bytes, i % block, kind));
}

/// Whether the kernel reads `dtype` (every type `GgmlWeight` accepts but F64).
pub fn on_device(dtype: GgmlType) -> bool {
    dtype.is_supported() && dtype != GgmlType::F64
}

/// Device buffer of one ggml weight: its blocks' bytes as words.
#[derive(Debug, Clone)]
pub struct GgmlDevice {
    pub dtype: GgmlType,
    pub shape: [usize; 2],
    pub bytes: (cubecl::server::Handle, usize),
}

impl GgmlDevice {
    /// Uploads the blocks (`dtype` must be one [`on_device`] accepts).
    pub fn upload<R: Runtime>(client: &ComputeClient<R>, w: &GgmlWeight) -> Self {
        assert!(on_device(w.dtype), "{} has no ggml kernel", w.dtype);
        let bytes = super::dequant::upload_u32(client, &super::dequant::words(&w.bytes));
        GgmlDevice { dtype: w.dtype, shape: w.shape, bytes }
    }

    /// The dense weight, row-major `[out, in]`, into a new buffer of `out · in` values of `dtype` (a float
    /// type; computed in f32, rounded once).
    pub fn dequantize<R: Runtime>(&self, client: &ComputeClient<R>, dtype: DType) -> cubecl::server::Handle {
        let n = self.shape[0] * self.shape[1];
        let out = client.empty(n.max(1) * dtype.size());
        let (block, block_bytes) = self.dtype.block_layout().expect("a supported type has a layout");
        let (cube_count, cube_dim) = super::launch::elementwise(client, n);
        ggml_kernel::launch::<R>(
            client,
            cube_count,
            cube_dim,
            // SAFETY: the handle holds `bytes.1` words; the kernel reads only the blocks of `n` elements.
            unsafe { ArrayArg::from_raw_parts(self.bytes.0.clone(), self.bytes.1) },
            // SAFETY: `out` holds `n` values of `dtype` (at least one).
            unsafe { ArrayArg::from_raw_parts(out.clone(), n) },
            self.dtype.id(),
            block as u32,
            block_bytes as u32,
            dtype.into(),
        );
        out
    }

    /// Bytes held on the device: the blocks, padded to a whole word.
    pub fn resident_bytes(&self) -> usize {
        4 * self.bytes.1
    }
}

#[cfg(test)]
mod tests {
    /// The kernel's subnormal f16 factor is 2⁻²⁴ exactly.
    #[test]
    fn two_to_the_minus_24() {
        assert_eq!(5.9604645e-8f32, 2f32.powi(-24));
    }
}
