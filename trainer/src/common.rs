//! What several subcommands share: model arguments, backend choice, loading a model with its adapter.
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use lapidary_model::quant::{FrozenMatmul, QuantKind};
use lapidary_model::{Gemma, ModelFiles};

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Quant {
    None,
    Nf4,
    Int8,
}

impl From<Quant> for QuantKind {
    fn from(q: Quant) -> Self {
        match q {
            Quant::None => QuantKind::None,
            Quant::Nf4 => QuantKind::Nf4,
            Quant::Int8 => QuantKind::Int8,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum BackendKind {
    /// burn-flex, f32 (the faster; default).
    Flex,
    /// burn-ndarray, f32.
    Ndarray,
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A Hugging Face model directory or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// How the frozen base is stored.
    #[arg(long, value_enum, default_value = "none")]
    pub quant: Quant,
    /// CPU backend.
    #[arg(long, value_enum, default_value = "flex")]
    pub backend: BackendKind,
}

pub struct Loaded<B: FrozenMatmul> {
    pub files: ModelFiles,
    pub model: Gemma<B>,
}

pub fn load<B: FrozenMatmul>(args: &ModelArgs) -> Result<Loaded<B>> {
    let files = ModelFiles::open(&args.model)?;
    let device = B::Device::default();
    let mut model =
        lapidary_model::load::load_gemma::<B>(&files.config, files.weights.as_ref(), args.quant.into(), &device)
            .with_context(|| format!("loading {}", args.model.display()))?;
    if let Some(dir) = &args.adapter {
        lapidary_model::adapter::load_adapter(&mut model, dir)
            .with_context(|| format!("loading adapter {}", dir.display()))?;
    }
    Ok(Loaded { files, model })
}

/// Runs `$f::<Backend>($args)` for the backend chosen in `$kind`.
#[macro_export]
macro_rules! dispatch {
    ($kind:expr, $f:ident, $($arg:expr),*) => {
        match $kind {
            $crate::common::BackendKind::Ndarray => $f::<lapidary_model::backend::NdArrayCpu>($($arg),*),
            $crate::common::BackendKind::Flex => $f::<lapidary_model::backend::FlexCpu>($($arg),*),
        }
    };
}

/// Token ids with BOS added as transformers adds it (the tokenizer's post-processor).
pub fn encode(tok: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>> {
    let enc = tok.encode(text, true).map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?;
    Ok(enc.get_ids().to_vec())
}

pub fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string(v).unwrap_or_default());
}
