//! PEFT's formats and operations on adapters: reading and writing LoRA adapters (`adapter`), and folding
//! them into the base, or combining several, as PEFT's `merge_and_unload` / `add_weighted_adapter` do
//! (`merge`), and writing one as llama.cpp's GGUF LoRA adapter (`gguf_adapter`).
pub mod adapter;
pub mod gguf_adapter;
pub mod merge;
