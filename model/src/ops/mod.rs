//! The ops the model runs on a backend, beyond Burn's own, and their backward passes.
//!
//! - [`kernels::Kernels`]: single ops (the product by a packed frozen weight, the vendor dense product,
//!   LoRA dropout's mask, RoPE, GeGLU, RMSNorm);
//! - [`gemma_backend::GemmaBackend`] (`: Kernels`, what everything in the model is generic over): the fused
//!   ops (the LoRA branch, GeGLU with the down projection's adapter, attention, the LM-head loss);
//! - the reference implementation of each op in Burn ops, one file per op: `frozen`, `dropout`, `rope`,
//!   `geglu`, `norm`, `lora`, `attention`, `lm_head` (the traits' defaults; the faster versions are tested
//!   against them), and `frozen_weight` (a frozen linear's weight as the fused ops take it);
//! - who overrides what: `cpu_backends` (burn-flex on the host kernels of `crate::cpu`; burn-ndarray),
//!   `autodiff` (one node and one backward per op), and `crate::cube` (the CubeCL backends).
pub mod attention;
pub mod autodiff;
pub mod cpu_backends;
pub mod dropout;
pub mod frozen;
pub mod frozen_weight;
pub mod geglu;
pub mod gemma_backend;
pub mod kernels;
pub mod lm_head;
pub mod lora;
pub mod norm;
pub mod rope;
#[cfg(test)]
mod tests;

pub use attention::AttnSpec;
pub use frozen_weight::FrozenWeight;
pub use gemma_backend::GemmaBackend;
pub use kernels::{dense, Kernels};
pub use lora::LoraPrims;
