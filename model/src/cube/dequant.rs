//! NF4 and int8 dequantization as CubeCL kernels: one thread per weight element, the same arithmetic as the
//! host code (`crate::quant::nf4`, `crate::quant::int8`), in f32, written in the product's dtype (f32, or
//! bf16 with `--dtype bf16`: one rounding, no f32 copy).
//!
//! The packed bytes travel as `u32` words (four bytes each, little-endian, the tail zero-padded) so that the
//! kernels only read 32-bit types, which every CubeCL target handles the same way; a byte is picked out with a
//! shift. Layouts, from bitsandbytes:
//! - NF4: element `i` is the high nibble of byte `i / 2` when `i` is even, the low nibble when odd; its
//!   64-block `b = i / 64` has the quantized absmax byte `absmax_q[b]`, rebuilt as
//!   `DYN[absmax_q[b]] · absmax2[b / nested_block] + offset` (`nested_block` 256, or 1 for a checkpoint saved
//!   without double quantization), and `w = NF4[code] · absmax`.
//! - int8: `w = CB[i] · SCB[row] · (1/127)` (bitsandbytes' constant), `CB` signed.
//!
//! Rounding: the kernels compute the same f32 operations in the same order as the host, but NVRTC may
//! contract `a · b + c` (the absmax) into one fused multiply-add, which rounds once instead of twice; a
//! dequantized value can then differ from the host's in its last bit. `tests/gpu.rs` allows 2 ulp.
//!
//! Tested on the wgpu runtime (`crate::cube::tests`, on Mesa's CPU Vulkan driver where there is no GPU) and,
//! where a GPU is, on CUDA (`tests/gpu.rs`); their index arithmetic is also replayed on the host in CI.
use burn::tensor::DType;
use cubecl::prelude::*;

/// `tables[0..16]` are the NF4 codes, `tables[16..272]` the signed dynamic map of the double quantization.
#[cube(launch)]
fn nf4_kernel<F: Float>(
    packed: &Array<u32>,
    absmax_q: &Array<u32>,
    absmax2: &Array<f32>,
    tables: &Array<f32>,
    offset: f32,
    nested_block: u32,
    out: &mut Array<F>,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i >= out.len() {
        terminate!();
    }
    let byte_index = i / 2;
    let byte = (packed[byte_index / 4] >> (u32::cast_from(byte_index % 4) * 8)) & 0xff;
    // Even elements sit in the high nibble.
    let code = (byte >> (4 - 4 * u32::cast_from(i % 2))) & 0xf;
    let block = i / 64;
    let q = (absmax_q[block / 4] >> (u32::cast_from(block % 4) * 8)) & 0xff;
    let absmax = tables[16 + usize::cast_from(q)] * absmax2[block / usize::cast_from(nested_block)] + offset;
    out[i] = F::cast_from(tables[usize::cast_from(code)] * absmax);
}

#[cube(launch)]
fn int8_kernel<F: Float>(
    cb: &Array<u32>,
    scb: &Array<f32>,
    cols: u32,
    inv_127: f32,
    out: &mut Array<F>,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i >= out.len() {
        terminate!();
    }
    let byte = (cb[i / 4] >> (u32::cast_from(i % 4) * 8)) & 0xff;
    // Two's complement: bytes 128..=255 are -128..=-1.
    let value = f32::cast_from(byte) - 256.0 * f32::cast_from(byte >> 7);
    out[i] = F::cast_from(value * scb[i / usize::cast_from(cols)] * inv_127);
}

/// Bytes as little-endian `u32` words, the tail padded with zeros.
pub fn words(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks(4).map(|c| c.iter().rev().fold(0u32, |w, &b| (w << 8) | b as u32)).collect()
}

/// Device buffers of one NF4 weight (what `crate::cube::weights` caches per weight).
#[derive(Debug, Clone)]
pub struct Nf4Device {
    pub numel: usize,
    pub packed: (cubecl::server::Handle, usize),
    pub absmax_q: (cubecl::server::Handle, usize),
    pub absmax2: (cubecl::server::Handle, usize),
    pub tables: (cubecl::server::Handle, usize),
    pub offset: f32,
    /// 64-blocks per `absmax2` value.
    pub nested_block: u32,
}

/// Device buffers of one int8 weight.
#[derive(Debug, Clone)]
pub struct Int8Device {
    pub shape: [usize; 2],
    pub cb: (cubecl::server::Handle, usize),
    pub scb: (cubecl::server::Handle, usize),
}

pub(super) fn upload_u32<R: Runtime>(client: &ComputeClient<R>, v: &[u32]) -> (cubecl::server::Handle, usize) {
    // A zero-length buffer is not a valid allocation; kernels never read past the real length anyway.
    let v = if v.is_empty() { &[0u32][..] } else { v };
    (client.create_from_slice(bytemuck::cast_slice(v)), v.len())
}

fn upload_f32<R: Runtime>(client: &ComputeClient<R>, v: &[f32]) -> (cubecl::server::Handle, usize) {
    let v = if v.is_empty() { &[0f32][..] } else { v };
    (client.create_from_slice(bytemuck::cast_slice(v)), v.len())
}

impl Nf4Device {
    pub fn upload<R: Runtime>(client: &ComputeClient<R>, w: &crate::quant::nf4::Nf4Weight) -> Self {
        let mut tables = crate::quant::nf4::nf4_code().to_vec();
        tables.extend_from_slice(&crate::quant::nf4::dynamic_map());
        Nf4Device {
            numel: w.numel(),
            packed: upload_u32(client, &words(&w.packed)),
            absmax_q: upload_u32(client, &words(&w.absmax_q)),
            absmax2: upload_f32(client, &w.absmax2),
            tables: upload_f32(client, &tables),
            offset: w.offset,
            nested_block: 1 << w.nested_shift,
        }
    }

    /// The dense weight, row-major `[out, in]`, into a new buffer of `numel` values of `dtype` (a float type;
    /// computed in f32, rounded once).
    pub fn dequantize<R: Runtime>(&self, client: &ComputeClient<R>, dtype: DType) -> cubecl::server::Handle {
        let out = client.empty(self.numel.max(1) * dtype.size());
        let arg = |h: &(cubecl::server::Handle, usize)| unsafe { ArrayArg::from_raw_parts(h.0.clone(), h.1) };
        let (cube_count, cube_dim) = super::launch::elementwise(client, self.numel);
        nf4_kernel::launch::<R>(
            client,
            cube_count,
            cube_dim,
            arg(&self.packed),
            arg(&self.absmax_q),
            arg(&self.absmax2),
            arg(&self.tables),
            self.offset,
            self.nested_block,
            // SAFETY: `out` holds `numel` values of `dtype` (at least one).
            unsafe { ArrayArg::from_raw_parts(out.clone(), self.numel) },
            dtype.into(),
        );
        out
    }

    /// Bytes held on the device.
    pub fn resident_bytes(&self) -> usize {
        4 * (self.packed.1 + self.absmax_q.1 + self.absmax2.1 + self.tables.1)
    }
}

/// bitsandbytes' f32 constant for 1/127 (`crate::quant::int8` uses the same).
#[allow(clippy::excessive_precision)]
pub const INV_127: f32 = 7.874015718698502e-3;

impl Int8Device {
    pub fn upload<R: Runtime>(client: &ComputeClient<R>, w: &crate::quant::int8::Int8Weight) -> Self {
        let bytes: Vec<u8> = w.cb.iter().map(|&b| b as u8).collect();
        Int8Device { shape: w.shape, cb: upload_u32(client, &words(&bytes)), scb: upload_f32(client, &w.scb) }
    }

    pub fn dequantize<R: Runtime>(&self, client: &ComputeClient<R>, dtype: DType) -> cubecl::server::Handle {
        let n = self.shape[0] * self.shape[1];
        let out = client.empty(n.max(1) * dtype.size());
        let (cube_count, cube_dim) = super::launch::elementwise(client, n);
        int8_kernel::launch::<R>(
            client,
            cube_count,
            cube_dim,
            unsafe { ArrayArg::from_raw_parts(self.cb.0.clone(), self.cb.1) },
            unsafe { ArrayArg::from_raw_parts(self.scb.0.clone(), self.scb.1) },
            self.shape[1].max(1) as u32,
            INV_127,
            unsafe { ArrayArg::from_raw_parts(out.clone(), n) },
            dtype.into(),
        );
        out
    }

    pub fn resident_bytes(&self) -> usize {
        4 * (self.cb.1 + self.scb.1)
    }
}
