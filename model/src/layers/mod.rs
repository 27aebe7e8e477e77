//! Gemma's building blocks, in the order data flows through them.
pub mod attention;
pub mod dropout;
pub mod lora;
pub mod mask;
pub mod mlp;
pub mod norm;
pub mod rope;
