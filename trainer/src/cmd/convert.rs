//! `lapidary convert`: a GGUF file → a directory transformers loads (config.json, model.safetensors,
//! tokenizer.json, tokenizer_config.json, generation_config.json). Weights are written in f32 (dequantized),
//! under transformers' names, with Gemma norms back in transformers' `w` convention. The writing is shared
//! with `lapidary merge` (`lapidary_model::io::hf_dir::HfDirWriter`, `side_files`).
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use lapidary_model::io::files::is_gguf;
use lapidary_model::io::hf_dir::{side_files, HfDirWriter, OutDtype, MAX_SHARD_BYTES};
use lapidary_model::WeightSource;

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing output directory.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: ConvertArgs) -> Result<()> {
    if !is_gguf(&a.model) {
        bail!("{}: convert reads a .gguf file", a.model.display());
    }
    if a.out.exists() && !a.overwrite {
        bail!("{}: already exists (pass --overwrite to replace it)", a.out.display());
    }
    let gguf = lapidary_model::io::gguf::GgufModel::open(&a.model)?;
    let config = gguf.config_json()?;
    // Check it is a config we can read before writing anything.
    lapidary_model::GemmaConfig::from_json(&config, &a.model)?;
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
