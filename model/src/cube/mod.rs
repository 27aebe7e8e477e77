//! Burn's CubeCL backends (`CubeBackend<R, f32, i32, _>` on a CubeCL runtime `R`) with the frozen matmul of
//! QLoRA done our way, for any runtime: the CUDA one (`crate::cuda`, feature `cuda`) and the wgpu one
//! (feature `wgpu`: Vulkan, Metal, DirectX; here, Mesa's CPU Vulkan driver lets the kernels be tested on a
//! machine without a GPU).
//!
//! - `dequant`: NF4 and int8 dequantization as CubeCL kernels, from the packed bytes kept on the device
//!   (uploaded once per weight by `weights`; the dense weight only exists inside one call, as on CPU);
//!   `ggml`: the same for a GGUF file's blocks (`--quant gguf`);
//! - the product itself: a vendor library where the runtime has one ([`Gemm`]: cuBLAS on CUDA), else
//!   Burn's matmul;
//! - `memory`: the pools' high-water marks, for the bench.
//!
//! Switch, read once per process: `LAPIDARY_DEQUANT=host` dequantizes on the host and uploads the dense
//! weight every call (the slow path every backend has, kept as the reference) instead of the kernels.
//!
//! - `geglu`, `rope`, `rms_norm`: GeGLU and RMSNorm forward and backward, RoPE, one kernel each;
//! - `dropout`: LoRA dropout's mask, made on the device (the host's values, by a counter-based generator);
//! - `attention`: the vendor products around one softmax kernel each way, the mask computed on the device
//!   from positions and segments (nothing per key built on the host);
//! - `lm_head`: the LM-head loss's chunks as two vendor products around one kernel (softcap, softmax, the
//!   rows' NLL and the gradient with respect to the logits, in place);
//! - `gemm`: the runtime's vendor product ([`gemm::Gemm`]) or Burn's; `backend`: the ops of
//!   `crate::ops` on `CubeBackend`, each routed to the kernels above.
//!
//! The kernels' checks against the CPU are in `crate::testing::cube` (run by the wgpu tests here, `tests`, and
//! the CUDA ones in tests/gpu.rs).
//!
//! The LoRA products use the vendor product too (`GemmaBackend::dense_matmul`, tracked on `Autodiff`). What
//! stays Burn's: unquantized (`--quant none`) frozen weights' products, residual adds and casts.
pub mod attention;
pub mod backend;
pub mod dequant;
pub mod dropout;
pub mod geglu;
pub mod gemm;
pub mod ggml;
mod launch;
pub mod lm_head;
pub mod memory;
pub mod rms_norm;
pub mod rope;
pub mod weights;
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use gemm::{quietly, Gemm};

#[cfg(all(test, feature = "wgpu"))]
mod ggml_tests;
#[cfg(all(test, feature = "wgpu"))]
mod tests;
