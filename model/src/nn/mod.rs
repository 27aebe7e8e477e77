//! Gemma's layers, in the order data flows through them: the token table (embedding and tied LM head), the frozen linear and the LoRA (and DoRA) layer over it,
//! RMSNorm, RoPE tables, self-attention with its KV cache, the GeGLU MLP, Gemma 4's mixture of experts and per-layer inputs. Generic over
//! `crate::ops::GemmaBackend`; the arithmetic is the backend's ops.
pub mod attention;
pub mod dora;
pub mod embedding;
pub mod kv_cache;
pub mod linear;
pub mod lora;
pub mod mlp;
pub mod moe;
pub mod norm;
pub mod per_layer;
pub mod rope;
