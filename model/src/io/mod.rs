//! Weights and tokenizers in and out, as the ecosystem stores them: the [`weights::WeightSource`] view every
//! loader reads (f32 host tensors under transformers' names), a transformers directory of safetensors
//! (`safetensors`), GGUF files (`gguf`), finding a model's files (`files`; a Hub id through the Hugging Face
//! cache: `hub`), published shapes with random weights for benchmarks (`shapes`); out: transformers
//! directories (`hf_dir`), files written whole (`atomic`). No Burn here: tensors become the model's in `crate::gemma::load`.
pub mod atomic;
pub mod bnb;
pub mod files;
pub mod gguf;
pub mod hf_dir;
pub mod hub;
pub mod safetensors;
pub mod shapes;
pub mod weights;
