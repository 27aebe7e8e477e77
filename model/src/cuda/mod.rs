//! The CUDA backend (`crate::backends::CudaGpu`, feature `cuda`): Burn's `CubeBackend` on the CUDA runtime,
//! with QLoRA's frozen matmul as every CubeCL backend does it (`crate::cube`: device NF4/int8 kernels,
//! packed weights resident, dense weights transient) and the product itself through cuBLAS:
//!
//! - `cublas`: cuBLAS on the buffers Burn allocated (Burn's CubeCL matmul measured 38–95 TFLOP/s
//!   in bf16 on an H100, cuBLAS at ~790);
//! - `device`: finding the GPU without a panic when there is none, and the driver's view of its memory.
//!
//! Switch, read once per process, so that one GPU session can compare paths without rebuilding:
//! `LAPIDARY_CUBLAS=0`: Burn's matmul instead of cuBLAS; `LAPIDARY_CUBLAS=tf32`: cuBLAS with TF32 tensor
//! cores for f32 products (faster, ~1e-3 relative error); anything else: cuBLAS in full f32.
//!
//! Status: all of this compiles, and everything but cuBLAS and the driver calls also runs, and is tested, on
//! the wgpu runtime (`crate::cube::tests`); none of it has run on an NVIDIA GPU yet. `tests/gpu.rs` checks
//! it against the CPU backend where one is present.
pub mod cublas;
pub mod device;
pub mod stream;

use std::sync::OnceLock;

use burn::tensor::DType;
use burn_cubecl::tensor::CubeTensor;

use crate::cube::gemm::Gemm;

pub use cubecl::cuda::{CudaDevice, CudaRuntime};
pub use cublas::Math;
pub use device::{device_used_bytes, probe, CudaUnavailable, DeviceInfo};

/// How f32 products are done: `None` for Burn's matmul (`LAPIDARY_CUBLAS`, read once).
pub fn cublas_math() -> Option<Math> {
    static MATH: OnceLock<Option<Math>> = OnceLock::new();
    *MATH.get_or_init(|| match std::env::var("LAPIDARY_CUBLAS").as_deref() {
        Ok("0") | Ok("off") | Ok("burn") => None,
        Ok("tf32") => Some(Math::Tf32),
        _ => Some(Math::F32),
    })
}

/// cuBLAS when it is on and takes these tensors. A cuBLAS failure (a missing libcublas, an error status) is
/// reported once on stderr and the product falls back to Burn's, which is slower but gives the same result:
/// the trait's methods cannot return an error.
impl Gemm for CudaRuntime {
    fn vendor_matmul(
        a: &CubeTensor<Self>,
        b: &CubeTensor<Self>,
        transpose_b: bool,
        out: DType,
    ) -> Option<CubeTensor<Self>> {
        let math = cublas_math()?;
        match cublas::matmul_as(a.clone(), b.clone(), false, transpose_b, out, math) {
            Ok(c) => Some(c),
            Err(e) => {
                static WARNED: OnceLock<()> = OnceLock::new();
                WARNED.get_or_init(|| eprintln!("warning: cuBLAS unavailable ({e}); using Burn's matmul instead"));
                None
            }
        }
    }
}

/// [`crate::cube::memory::sample_now`] on GPU 0's client (the one `CudaGpu` tensors use), for callers without
/// a tensor.
pub fn sample_gpu0() -> crate::cube::memory::MemoryStats {
    use cubecl::Runtime;
    let client = CudaRuntime::client(&cubecl::cuda::CudaDevice::default());
    crate::cube::memory::sample_now(&client)
}
