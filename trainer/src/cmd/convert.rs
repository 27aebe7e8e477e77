//! `lapidary convert`: a GGUF file → a directory transformers loads (config.json, model.safetensors,
//! tokenizer.json, tokenizer_config.json). Weights are written in f32 (dequantized), under transformers' names,
//! with Gemma norms back in transformers' `w` convention.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use lapidary_model::adapter::write_atomic;
use lapidary_model::source::is_gguf;
use lapidary_model::WeightSource;
use serde_json::json;

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
    let gguf = lapidary_model::gguf::GgufModel::open(&a.model)?;
    let config = gguf.config_json()?;
    // Check it is a config we can read before writing anything.
    lapidary_model::GemmaConfig::from_json(&config, &a.model)?;
    let tokenizer = gguf.tokenizer()?;
    let tmp = a.out.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut tensors = Vec::new();
    for name in gguf.names() {
        let t = gguf.get(&name)?;
        tensors.push((name, t.shape, bytemuck::cast_slice::<f32, u8>(&t.data).to_vec()));
    }
    let views = tensors
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let bytes = safetensors::tensor::serialize(views, Some(meta))?;
    write_atomic(&tmp.join("model.safetensors"), &bytes)?;
    write_atomic(&tmp.join("config.json"), &serde_json::to_vec_pretty(&config)?)?;
    tokenizer.save(tmp.join("tokenizer.json"), false).map_err(|e| anyhow::anyhow!("writing tokenizer.json: {e}"))?;
    let tok_name = |id: Option<u64>| id.and_then(|i| tokenizer.id_to_token(i as u32));
    let cfg_u = |k: &str| config.get(k).and_then(|v| v.as_u64());
    let mut tc = json!({
        "tokenizer_class": "GemmaTokenizer",
        "add_bos_token": true,
        "add_eos_token": false,
        "bos_token": tok_name(cfg_u("bos_token_id")),
        "eos_token": tok_name(cfg_u("eos_token_id")),
        "pad_token": tok_name(cfg_u("pad_token_id")),
        "unk_token": tokenizer.id_to_token(3),
        "model_max_length": cfg_u("max_position_embeddings"),
    });
    if let Some(t) = gguf.chat_template() {
        tc["chat_template"] = t.into();
    }
    write_atomic(&tmp.join("tokenizer_config.json"), &serde_json::to_vec_pretty(&tc)?)?;
    if a.out.exists() {
        std::fs::remove_dir_all(&a.out).with_context(|| format!("removing {}", a.out.display()))?;
    }
    std::fs::rename(&tmp, &a.out).with_context(|| format!("renaming {} to {}", tmp.display(), a.out.display()))?;
    println!("wrote {}", a.out.display());
    Ok(())
}
