//! What several subcommands share: model arguments, backend choice (and `dispatch!`, which runs a function
//! on the chosen one), loading a model with its adapter, tokenizing, generation stop ids, JSON output.
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use lapidary_model::dtype::ComputeDtype;
use lapidary_model::quant::QuantKind;
use lapidary_model::GemmaBackend;
use lapidary_model::{Gemma, ModelFiles};

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Quant {
    None,
    Nf4,
    Int8,
    /// A `.gguf` model's projections in the file's own blocks (Q4_K, Q5_0, Q8_0, ...), dequantized per product.
    Gguf,
}

impl From<Quant> for QuantKind {
    fn from(q: Quant) -> Self {
        match q {
            Quant::None => QuantKind::None,
            Quant::Nf4 => QuantKind::Nf4,
            Quant::Int8 => QuantKind::Int8,
            Quant::Gguf => QuantKind::Gguf,
        }
    }
}

/// What the model computes in (`lapidary_model::dtype`).
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    /// f32 everywhere (the default; what the CPU backends are fastest in).
    #[default]
    F32,
    /// bf16 activations, embedding and dequantized weights; norms, softmaxes, the loss and LoRA in f32, as
    /// bitsandbytes' `bnb_4bit_compute_dtype=bfloat16` with PEFT. For GPUs.
    Bf16,
}

impl From<Dtype> for ComputeDtype {
    fn from(d: Dtype) -> Self {
        match d {
            Dtype::F32 => ComputeDtype::F32,
            Dtype::Bf16 => ComputeDtype::Bf16,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum BackendKind {
    /// burn-flex, f32 (the faster; default).
    Flex,
    /// burn-ndarray, f32.
    Ndarray,
    /// An NVIDIA GPU (CubeCL + cuBLAS), f32; needs a binary built with `--features cuda`.
    Cuda,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Flex => "flex",
            BackendKind::Ndarray => "ndarray",
            BackendKind::Cuda => "cuda",
        }
    }

    /// What the products run on, for the user: on burn-flex f32, bf16 by AVX512-BF16 ("native") or bf16
    /// widened to f32 where the CPU lacks it ("emulated"; `lapidary_model::cpu::bf16`).
    pub fn compute_path(self, dtype: ComputeDtype) -> String {
        let bf16 = dtype == ComputeDtype::Bf16;
        match self {
            BackendKind::Flex => lapidary_model::cpu::bf16::cpu_path(bf16).to_string(),
            BackendKind::Ndarray => format!("{} in burn-ndarray's ops", if bf16 { "bf16" } else { "f32" }),
            BackendKind::Cuda => format!("{} on CUDA", if bf16 { "bf16" } else { "f32" }),
        }
    }
}

/// Checks, before any tensor is made, that `--backend cuda` can run here: a clear error instead of the
/// panic the CUDA bindings give when there is no driver or no GPU.
#[cfg(feature = "cuda")]
pub fn cuda_ready() -> Result<()> {
    lapidary_model::cuda::probe().map(|_| ()).map_err(|e| anyhow::anyhow!("--backend cuda: {e}"))
}

/// The error `--backend cuda` gives in a binary built without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub fn built_without_cuda() -> anyhow::Error {
    anyhow::anyhow!(
        "--backend cuda: this binary was built without CUDA: rebuild with `cargo build --release --features cuda`"
    )
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A Hugging Face model directory, a .gguf file, or a Hub id: ORG/NAME[@REVISION] or
    /// ORG/NAME[@REVISION]/FILE.gguf, read from the Hugging Face cache (HF_HUB_CACHE, HF_HOME/hub,
    /// ~/.cache/huggingface/hub) and downloaded into it when missing (HF_TOKEN for gated models; not with
    /// HF_HUB_OFFLINE=1).
    #[arg(long, value_parser = model_path)]
    pub model: PathBuf,
    /// A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// How the frozen base is stored [default: gguf for a .gguf model (its own blocks, multiplied as
    /// stored, as llama.cpp does: the same results as none, in a third of the memory and, for generation,
    /// several times faster); for a bitsandbytes checkpoint the kind it stores (nf4 or int8, taken as
    /// stored); none otherwise].
    #[arg(long, value_enum)]
    pub quant: Option<Quant>,
    /// Backend: flex or ndarray (CPU), cuda (an NVIDIA GPU; binaries built with `--features cuda`).
    #[arg(long, value_enum, default_value = "flex")]
    pub backend: BackendKind,
    /// What the model computes in.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Dtype,
}

/// `--model`'s value as a local path: a Hub id becomes its snapshot folder (or GGUF file) in the Hugging Face
/// cache here, once, so that everything reading the model (config, weights, tokenizer, chat template) reads
/// the same files.
pub fn model_path(s: &str) -> std::result::Result<PathBuf, String> {
    lapidary_model::io::hub::resolve_model(std::path::Path::new(s)).map_err(|e| e.to_string())
}

impl ModelArgs {
    /// `--quant`, or its default for this model (see the flag's help).
    pub fn quant(&self) -> Quant {
        self.quant.unwrap_or_else(|| default_quant(&self.model, Quant::None))
    }
}

/// How a model is stored when nothing says: a `.gguf` file in its own blocks (the values llama.cpp runs, the
/// file's bytes in memory); a bitsandbytes checkpoint in the kind it stores; anything else `otherwise`
/// (`none` to evaluate, `nf4` to train: QLoRA).
pub fn default_quant(model: &std::path::Path, otherwise: Quant) -> Quant {
    if lapidary_model::io::files::is_gguf(model) {
        return Quant::Gguf;
    }
    match lapidary_model::io::bnb::stored_quant(model) {
        Some(QuantKind::Nf4) => Quant::Nf4,
        Some(QuantKind::Int8) => Quant::Int8,
        _ => otherwise,
    }
}

pub struct Loaded<B: GemmaBackend> {
    pub files: ModelFiles,
    pub model: Gemma<B>,
}

pub fn load<B: GemmaBackend>(args: &ModelArgs) -> Result<Loaded<B>> {
    let files = ModelFiles::open(&args.model)?;
    let device = B::Device::default();
    let mut model = lapidary_model::gemma::load::load_gemma::<B>(
        &files.config,
        files.weights.as_ref(),
        args.quant().into(),
        &device,
    )
    .with_context(|| format!("loading {}", args.model.display()))?
    .with_compute_dtype(args.dtype.into());
    if let Some(dir) = &args.adapter {
        lapidary_model::peft::adapter::load_adapter(&mut model, dir)
            .with_context(|| format!("loading adapter {}", dir.display()))?;
    }
    Ok(Loaded { files, model })
}

/// Runs `$f::<Backend>($args)` for the backend chosen in `$kind` (`$f` returns `anyhow::Result`). `cuda`
/// first checks that a GPU is there, and in a binary built without the feature is an error. Crate-local:
/// callers name it `crate::common::dispatch!`.
macro_rules! dispatch {
    ($kind:expr, $f:ident, $($arg:expr),*) => {
        match $kind {
            $crate::common::BackendKind::Ndarray => $f::<lapidary_model::backends::NdArrayCpu>($($arg),*),
            $crate::common::BackendKind::Flex => $f::<lapidary_model::backends::FlexCpu>($($arg),*),
            #[cfg(feature = "cuda")]
            $crate::common::BackendKind::Cuda => {
                $crate::common::cuda_ready().and_then(|()| $f::<lapidary_model::backends::CudaGpu>($($arg),*))
            }
            #[cfg(not(feature = "cuda"))]
            $crate::common::BackendKind::Cuda => Err($crate::common::built_without_cuda()),
        }
    };
}
pub(crate) use dispatch;

/// Token ids with BOS added as transformers adds it (the tokenizer's post-processor).
pub fn encode(tok: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>> {
    let enc = tok.encode(text, true).map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?;
    Ok(enc.get_ids().to_vec())
}

/// Ids that end a generation: the config's EOS ids (`eos`) plus `<end_of_turn>` when the vocabulary has it
/// (`lapidary generate` and the exact-match metric).
pub fn stop_ids_for(eos: &[u32], tok: &tokenizers::Tokenizer) -> Vec<u32> {
    let mut ids = eos.to_vec();
    if let Some(id) = tok.token_to_id("<end_of_turn>") {
        ids.push(id);
    }
    ids
}

pub fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string(v).unwrap_or_default());
}
