//! `lapidary convert`:
//! - a GGUF file → a directory transformers loads (config.json, model.safetensors, tokenizer.json,
//!   tokenizer_config.json, generation_config.json). Weights are written in f32 (dequantized), under
//!   transformers' names, with Gemma norms back in transformers' `w` convention. The writing is shared with
//!   `lapidary merge` (`lapidary_model::io::hf_dir::HfDirWriter`, `side_files`).
//! - `--adapter DIR --out X.gguf`: a PEFT LoRA adapter → the GGUF adapter llama.cpp loads with `--lora`
//!   (`lapidary_model::peft::gguf_adapter`), for the base `--model` (a .gguf file or a model directory).
//! - a model (directory or .gguf) `--out X.gguf --dtype T`: the whole model as the GGUF llama.cpp runs
//!   (`lapidary_model::io::gguf::model_writer`); from a GGUF its metadata and tokenizer are kept verbatim.
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use lapidary_model::io::files::is_gguf;
use lapidary_model::io::gguf::model_writer::{GgufDtype, ModelGguf};
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
    /// The tensors' type. With --adapter: f32 (default), f16, bf16, q8_0 (rows that are not whole blocks of 32
    /// in f16). A model written as .gguf: f32, f16, bf16, q8_0, q4_0, q4_k, q5_k, q6_k, q4_k_m, q5_k_m or
    /// same (each tensor as the input GGUF has it; the default for a .gguf input, f16 for a directory, as
    /// llama.cpp's converter). Not for a model directory output (written in f32).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Replace an existing output.
    #[arg(long)]
    pub overwrite: bool,
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
    let dtype = match a.dtype.as_deref().unwrap_or("f32") {
        "f32" => GgmlType::F32,
        "f16" => GgmlType::F16,
        "bf16" => GgmlType::BF16,
        "q8_0" => GgmlType::Q8_0,
        other => bail!("--dtype {other}: an adapter is written in f32, f16, bf16 or q8_0"),
    };
    adapter_to_gguf(adapter, arch, dtype)?.write(&a.out)?;
    println!("wrote {}", a.out.display());
    Ok(())
}

/// A model (directory or GGUF) → a GGUF model file.
fn convert_model_gguf(a: &ConvertArgs) -> Result<()> {
    let default = if is_gguf(&a.model) { "same" } else { "f16" };
    let dtype: GgufDtype = a.dtype.as_deref().unwrap_or(default).parse().map_err(anyhow::Error::msg)?;
    refuse_existing_out(a)?;
    let writer = if is_gguf(&a.model) {
        let gguf = lapidary_model::io::gguf::GgufModel::open(&a.model)?;
        let plan = ModelGguf::from_gguf(&gguf)?;
        // Every tensor as the file has it (copied, or re-encoded from its stored values).
        plan.build(dtype, |_| Ok(None))?
    } else {
        let config = source_config(&a.model)?;
        let files = lapidary_model::ModelFiles::open(&a.model)?;
        let weights = files.weights.as_ref();
        let plan = ModelGguf::from_hf_dir(&a.model, &config, weights)?;
        plan.build(dtype, |t| weights.get(&t.hf).map(Some))?
    };
    writer.write(&a.out)?;
    println!("wrote {} ({})", a.out.display(), dtype.name());
    Ok(())
}

pub fn run(a: ConvertArgs) -> Result<()> {
    if let Some(adapter) = &a.adapter {
        return convert_adapter(&a, adapter);
    }
    if is_gguf(&a.out) {
        return convert_model_gguf(&a);
    }
    if !is_gguf(&a.model) {
        bail!(
            "{}: a model directory is converted to GGUF only (an --out ending in .gguf); a directory output is \
             written from a .gguf file",
            a.model.display()
        );
    }
    if let Some(d) = a.dtype.as_deref().filter(|d| *d != "f32") {
        bail!("--dtype {d}: a model directory output is written in f32; --dtype applies to .gguf outputs");
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
