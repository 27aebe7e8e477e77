//! LoRA dropout's mask as one CubeCL kernel (`GemmaBackend::dropout_mask` on the CubeCL backends): the
//! counter-based generator of `crate::ops::dropout`, element by element on the device, so the mask (as
//! large as the adapter's input: `[tokens × 16384]` for Gemma 2B's `down_proj`) is neither drawn nor
//! uploaded by the host. Same integer arithmetic, so the same values as the host's.
use burn::tensor::{DType, Shape};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::launch::{arg, elementwise};
use crate::ops::dropout::MaskParams;

/// `lowbias32`, as `crate::ops::dropout::mix` (u32 products wrap on every CubeCL target).
#[cube]
fn mix(x: u32) -> u32 {
    let mut x = x;
    x ^= x >> 16;
    x *= 0x7feb_352du32;
    x ^= x >> 15;
    x *= 0x846c_a68bu32;
    x ^ (x >> 16)
}

#[cube(launch)]
fn dropout_mask_kernel(out: &mut Array<f32>, k0: u32, k1: u32, threshold: u32, keep: f32) {
    let i = ABSOLUTE_POS;
    if i >= out.len() {
        terminate!();
    }
    let u = mix(mix(i as u32 ^ k0) ^ k1);
    out[i] = if u >> 8 < threshold { f32::new(0.0) } else { keep };
}

/// The `[rows, cols]` f32 mask for `(p, seed)` on `device`.
pub fn mask<R: CubeRuntime>(shape: [usize; 2], p: f64, seed: u64, device: &R::Device) -> CubeTensor<R> {
    let n = shape[0] * shape[1];
    assert!(u32::try_from(n).is_ok(), "a dropout mask of {n} elements exceeds the generator's 2^32 counter");
    let m = MaskParams::new(p, seed);
    let client = R::client(device);
    let handle = client.empty(n.max(1) * DType::F32.size());
    let out = CubeTensor::new_contiguous(client.clone(), device.clone(), Shape::new(shape), handle, DType::F32);
    let (count, dim) = elementwise(&client, n);
    dropout_mask_kernel::launch::<R>(&client, count, dim, arg(&out), m.k0, m.k1, m.threshold, m.keep);
    out
}
