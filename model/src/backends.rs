//! The concrete backends. CPU: burn-flex (default) or burn-ndarray (`--backend ndarray`); both f32 storage.
//! With the `cuda` feature, `CudaGpu` (an NVIDIA GPU, see `crate::cuda`); with `wgpu`, `WgpuGpu`
//! (`crate::cube::wgpu`). Everything in the model is generic over `crate::ops::GemmaBackend`; these aliases
//! are what the CLI and tests instantiate.
//!
//! Why flex is the default: on the real Gemma 3 270M (2 cores) a forward costs about the same on both once
//! dense weights are stored contiguously, but the LM-head loss over the 262k vocabulary is ~4x faster on
//! flex, whose buffers our host kernels use without a copy (`lapidary bench --backend flex|ndarray`; see
//! docs/benchmarks.md).
pub type NdArrayCpu = burn_ndarray::NdArray<f32>;
pub type FlexCpu = burn_flex::Flex<f32>;
/// The default CPU backend.
pub type Cpu = FlexCpu;
pub type CpuAutodiff = burn_autodiff::Autodiff<Cpu>;

/// The CUDA backend (feature `cuda`; `crate::cuda` implements `GemmaBackend` for it): f32, on the first GPU.
///
/// The plain `CubeBackend`, not `burn::backend::Cuda`: burn-cuda's default wraps it in `Fusion`, whose tensors
/// are lazy descriptions rather than `CubeTensor`s with a device buffer, and our custom ops (cuBLAS on the raw
/// buffers, the NF4 kernel) need the buffers. Burn's own ops still run as CubeCL kernels, unfused.
#[cfg(feature = "cuda")]
pub type CudaGpu = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;
#[cfg(feature = "cuda")]
pub type CudaAutodiff = burn_autodiff::Autodiff<CudaGpu>;

/// The wgpu backend (feature `wgpu`; `crate::cube` implements `GemmaBackend` for it): f32, on the default
/// adapter. Here it is the CubeCL code's test bed, on Mesa's CPU Vulkan driver.
#[cfg(feature = "wgpu")]
pub type WgpuGpu = burn_cubecl::CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i32, u32>;
