//! The Gemma model: the decoder and its forward pass (`model`), built from a checkpoint (`load`), its loss
//! through the fused LM head (`loss`), generation with the KV cache (`generate`), and the backward pass with
//! gradient checkpointing (`recompute`).
pub mod generate;
pub mod load;
pub mod loss;
pub mod model;
pub mod recompute;

pub use generate::SamplingConfig;
pub use load::load_gemma;
pub use loss::shifted_targets;
pub use model::{linears, linears_mut, Gemma, TokenBatch};
