//! `lapidary convert`:
//! - a GGUF file → a directory transformers loads (config.json, model.safetensors, tokenizer.json,
//!   tokenizer_config.json, generation_config.json). Weights are written in f32 (dequantized), under
//!   transformers' names, with Gemma norms back in transformers' `w` convention. The writing is shared with
//!   `lapidary merge` (`lapidary_model::io::hf_dir::HfDirWriter`, `side_files`).
//! - `--adapter DIR --out X.gguf`: a PEFT LoRA adapter → the GGUF adapter llama.cpp loads with `--lora`
//!   (`lapidary_model::peft::gguf_adapter`), for the base `--model` (a .gguf file or a model directory).
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use lapidary_model::io::files::is_gguf;
use lapidary_model::io::hf_dir::{side_files, source_config, HfDirWriter, OutDtype, MAX_SHARD_BYTES};
use lapidary_model::peft::gguf_adapter::adapter_to_gguf;
use lapidary_model::quant::ggml::GgmlType;
use lapidary_model::{GemmaConfig, WeightSource};

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The .gguf file (or, with --adapter, the adapter's base: a .gguf file or a model directory); a Hub id
    /// names either (see `lapidary eval --help`).
    #[arg(long, value_parser = crate::common::model_path)]
    pub model: PathBuf,
    /// A PEFT LoRA adapter directory to write as a llama.cpp GGUF adapter (--out must end in .gguf).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    /// With --adapter: the tensors' type (q8_0 keeps rows that are not whole blocks of 32 in f16).
    #[arg(long, value_enum, default_value_t = AdapterDtype::F32)]
    pub dtype: AdapterDtype,
    /// Replace an existing output.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AdapterDtype {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
}

/// Both outputs are replaced only with `--overwrite`; checked before anything is read.
fn refuse_existing_out(a: &ConvertArgs) -> Result<()> {
    if a.out.exists() && !a.overwrite {
        bail!("{}: already exists (pass --overwrite to replace it)", a.out.display());
    }
    Ok(())
}

fn convert_adapter(a: &ConvertArgs, adapter: &Path) -> Result<()> {
    if a.out.extension().is_none_or(|e| e != "gguf") {
        bail!("{}: an adapter is written as llama.cpp's GGUF adapter: the output must end in .gguf", a.out.display());
    }
    refuse_existing_out(a)?;
    // The base's architecture, from its config (a GGUF's is rebuilt from its metadata); no weights are read.
    let arch = GemmaConfig::from_json(&source_config(&a.model)?, &a.model)?.arch;
    let dtype = match a.dtype {
        AdapterDtype::F32 => GgmlType::F32,
        AdapterDtype::F16 => GgmlType::F16,
        AdapterDtype::Bf16 => GgmlType::BF16,
        AdapterDtype::Q8_0 => GgmlType::Q8_0,
    };
    adapter_to_gguf(adapter, arch, dtype)?.write(&a.out)?;
    println!("wrote {}", a.out.display());
    Ok(())
}

pub fn run(a: ConvertArgs) -> Result<()> {
    if let Some(adapter) = &a.adapter {
        return convert_adapter(&a, adapter);
    }
    if !is_gguf(&a.model) {
        bail!("{}: convert reads a .gguf file", a.model.display());
    }
    refuse_existing_out(&a)?;
    let gguf = lapidary_model::io::gguf::GgufModel::open(&a.model)?;
    let config = gguf.config_json()?;
    // Check it is a config we can read before writing anything.
    GemmaConfig::from_json(&config, &a.model)?;
    let w = HfDirWriter::begin(&a.out, a.overwrite)?;
    let names = gguf.names().into_iter().map(|n| Ok((n.clone(), gguf.shape(&n)?))).collect::<Result<Vec<_>>>()?;
    w.write_weights(&names, OutDtype::F32, MAX_SHARD_BYTES, |n| gguf.get(n))?;
    w.write_json("config.json", &config)?;
    for (name, bytes) in side_files(&a.model, &config)? {
        w.write_file(&name, &bytes)?;
    }
    w.commit()?;
    println!("wrote {}", a.out.display());
    Ok(())
}
