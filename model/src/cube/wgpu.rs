//! The wgpu runtime (Vulkan, Metal, DirectX) as a `crate::cube` backend (`crate::backends::WgpuGpu`, feature
//! `wgpu`), with Burn's matmul for the products. On a machine without a GPU, Mesa's CPU Vulkan driver
//! (lavapipe: `apt install mesa-vulkan-drivers`) runs it, slowly but faithfully, which is how the CubeCL
//! kernels are tested there (`crate::cube::tests`).
use std::sync::OnceLock;

use cubecl::wgpu::{WgpuDevice, WgpuRuntime};
use cubecl::Runtime;

use burn_cubecl::kernel::matmul::MatmulStrategy;

use super::gemm::{quietly, Gemm};

impl Gemm for WgpuRuntime {
    /// Burn's default (non-autotuned) kernel: on Mesa's lavapipe some of the kernels autotune may pick
    /// return wrong batched products (seen on 2026-12-02: `[2, 600, 300]ᵀ · [2, 600, 16]` off by 29% of
    /// the scale even with contiguous operands, where another machine's autotune had picked a right one;
    /// `cube::tests::batched_products_of_transposed_views_equal_cpu`). Only the tests run this runtime.
    fn burn_matmul_strategy() -> MatmulStrategy {
        MatmulStrategy::Cube
    }
}

/// Whether the default adapter can be used, or why not. CubeCL panics while it starts a client where wgpu
/// finds no adapter; this starts it once, quietly, so that callers can say why instead.
pub fn probe() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            quietly(|| {
                WgpuRuntime::client(&WgpuDevice::default());
            })
            .map_err(|e| format!("no wgpu adapter ({e}); on a machine without a GPU, install Mesa's lavapipe"))
        })
        .clone()
}

/// Samples the default adapter's pools (`crate::cube::memory`), as `crate::cuda::sample_gpu0` does CUDA's.
pub fn sample_gpu0() -> super::memory::MemoryStats {
    super::memory::sample_now(&WgpuRuntime::client(&WgpuDevice::default()))
}
