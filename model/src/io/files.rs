//! Opening a model by path: a Hugging Face directory or a `.gguf` file, or a Hub id naming one in the Hugging
//! Face cache (`super::hub`). Both give a config, weights under transformers' names and a tokenizer.
use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use crate::config::GemmaConfig;
use crate::error::{ModelError, Result};
use crate::io::safetensors::SafetensorsDir;
use crate::io::weights::WeightSource;

pub struct ModelFiles {
    pub path: PathBuf,
    pub config: GemmaConfig,
    pub weights: Box<dyn WeightSource>,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
}

pub fn is_gguf(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

impl ModelFiles {
    pub fn open(path: &Path) -> Result<Self> {
        let resolved = crate::io::hub::resolve_model(path)?;
        let path = resolved.as_path();
        if !path.exists() {
            return Err(ModelError::format(path, "no such file or directory"));
        }
        if is_gguf(path) {
            return Self::open_gguf(path);
        }
        if !path.is_dir() {
            return Err(ModelError::format(
                path,
                "expected a model directory (config.json, *.safetensors) or a .gguf file",
            ));
        }
        let config_path = path.join("config.json");
        if !config_path.exists() {
            return Err(ModelError::format(path, "config.json is missing from this model directory"));
        }
        let config = GemmaConfig::from_file(&config_path)?;
        // A bitsandbytes checkpoint (`quantization_config`) is read through its quant states.
        let weights = crate::io::bnb::open(path, SafetensorsDir::open(path)?)?;
        let tokenizer = load_tokenizer(path)?;
        let chat_template = std::fs::read_to_string(path.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("chat_template").and_then(|c| c.as_str()).map(str::to_string));
        Ok(Self { path: path.to_path_buf(), config, weights, tokenizer, chat_template })
    }

    fn open_gguf(path: &Path) -> Result<Self> {
        let model = crate::io::gguf::model::GgufModel::open(path)?;
        let config = GemmaConfig::from_json(&model.config_json()?, path)?;
        let tokenizer = model.tokenizer()?;
        let chat_template = model.chat_template();
        Ok(Self { path: path.to_path_buf(), config, weights: Box::new(model), tokenizer, chat_template })
    }
}

/// Only the tokenizer of a model directory (`tokenizer.json`) or a `.gguf` file (its `tokenizer.ggml.*` metadata).
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if is_gguf(path) {
        return crate::io::gguf::model::GgufModel::open(path)?.tokenizer();
    }
    let tok_path = path.join("tokenizer.json");
    Tokenizer::from_file(&tok_path).map_err(|e| ModelError::Tokenizer {
        path: tok_path.clone(),
        msg: if tok_path.exists() { e.to_string() } else { "tokenizer.json is missing".into() },
    })
}
