//! Writing a transformers model directory: `config.json` with its dtype, the weights as `model.safetensors`
//! or shards with their index (transformers' default 5 GB shards), and the tokenizer and generation files,
//! copied from the source model or rebuilt from a GGUF's metadata. Everything goes to `OUT.partial` first
//! and is renamed when complete.
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::atomic::write_atomic;
use super::files::is_gguf;
use super::gguf::model::GgufModel;
use super::weights::HostTensor;
use crate::error::{ModelError, Result};

/// The dtype tensors are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutDtype {
    F32,
    F16,
    Bf16,
}

impl std::str::FromStr for OutDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(OutDtype::F32),
            "f16" | "float16" => Ok(OutDtype::F16),
            "bf16" | "bfloat16" => Ok(OutDtype::Bf16),
            other => Err(format!("unknown dtype `{other}` (expected bf16, f16 or f32)")),
        }
    }
}

impl OutDtype {
    /// As `config.json` names it.
    pub fn torch_name(self) -> &'static str {
        match self {
            OutDtype::F32 => "float32",
            OutDtype::F16 => "float16",
            OutDtype::Bf16 => "bfloat16",
        }
    }
    pub fn st_dtype(self) -> safetensors::Dtype {
        match self {
            OutDtype::F32 => safetensors::Dtype::F32,
            OutDtype::F16 => safetensors::Dtype::F16,
            OutDtype::Bf16 => safetensors::Dtype::BF16,
        }
    }
    pub fn size(self) -> usize {
        if self == OutDtype::F32 {
            4
        } else {
            2
        }
    }
    /// The value this dtype stores for `x` (round to nearest even, as torch's `.to(dtype)`).
    pub fn round(self, x: f32) -> f32 {
        match self {
            OutDtype::F32 => x,
            OutDtype::F16 => half::f16::from_f32(x).to_f32(),
            OutDtype::Bf16 => half::bf16::from_f32(x).to_f32(),
        }
    }
    pub fn bytes(self, v: &[f32]) -> Vec<u8> {
        match self {
            OutDtype::F32 => bytemuck::cast_slice(v).to_vec(),
            OutDtype::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
            OutDtype::Bf16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
        }
    }
}

/// transformers' default `max_shard_size` ("5GB").
pub const MAX_SHARD_BYTES: usize = 5_000_000_000;

/// A transformers model directory being written: everything goes to `OUT.partial`, and `commit` renames it
/// to `OUT`, so an interrupted run never leaves a half-written directory under the real name.
pub struct HfDirWriter {
    pub out: PathBuf,
    pub tmp: PathBuf,
}

impl HfDirWriter {
    /// Fails if `out` exists and `overwrite` is false.
    pub fn begin(out: &Path, overwrite: bool) -> Result<Self> {
        if out.exists() && !overwrite {
            return Err(ModelError::format(out, "already exists (pass --overwrite to replace it)"));
        }
        let tmp = out.with_extension("partial");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
        Ok(Self { out: out.to_path_buf(), tmp })
    }

    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.tmp.join(name), bytes)
    }

    pub fn write_json(&self, name: &str, v: &Value) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(v).map_err(|e| ModelError::Other(format!("{name}: {e}")))?;
        self.write_file(name, &bytes)
    }

    /// Writes the tensors `names` (name, shape; each fetched by `get` when its shard is written) as
    /// `model.safetensors`, or as shards of at most `max_shard` bytes with `model.safetensors.index.json`.
    pub fn write_weights(
        &self,
        names: &[(String, Vec<usize>)],
        dtype: OutDtype,
        max_shard: usize,
        mut get: impl FnMut(&str) -> Result<HostTensor>,
    ) -> Result<()> {
        // Group by size first (from the shapes), then read, convert and write shard by shard.
        let mut shards: Vec<Vec<(String, usize)>> = vec![Vec::new()];
        let mut cur = 0usize;
        let mut total = 0usize;
        for (n, shape) in names {
            let bytes = shape.iter().product::<usize>() * dtype.size();
            if cur > 0 && cur + bytes > max_shard {
                shards.push(Vec::new());
                cur = 0;
            }
            cur += bytes;
            total += bytes;
            shards.last_mut().expect("one shard").push((n.clone(), bytes));
        }
        let count = shards.len();
        let file_name = |i: usize| {
            if count == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", i + 1, count)
            }
        };
        let mut weight_map = serde_json::Map::new();
        for (i, shard) in shards.iter().enumerate() {
            let mut data = Vec::with_capacity(shard.len());
            for (n, _) in shard {
                let t = get(n)?;
                data.push((n.clone(), t.shape, dtype.bytes(&t.data)));
                weight_map.insert(n.clone(), file_name(i).into());
            }
            let views = data
                .iter()
                .map(|(n, s, b)| {
                    safetensors::tensor::TensorView::new(dtype.st_dtype(), s.clone(), b)
                        .map(|v| (n.clone(), v))
                        .map_err(|e| ModelError::Other(format!("tensor {n}: {e}")))
                })
                .collect::<Result<Vec<_>>>()?;
            let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
            let bytes = safetensors::tensor::serialize(views, Some(meta))
                .map_err(|e| ModelError::Other(format!("serializing {}: {e}", file_name(i))))?;
            self.write_file(&file_name(i), &bytes)?;
        }
        if count > 1 {
            self.write_json(
                "model.safetensors.index.json",
                &json!({ "metadata": { "total_size": total }, "weight_map": weight_map }),
            )?;
        }
        Ok(())
    }

    /// Renames `OUT.partial` to `OUT`, replacing what was there.
    pub fn commit(self) -> Result<PathBuf> {
        if self.out.exists() {
            std::fs::remove_dir_all(&self.out).map_err(|e| ModelError::io(&self.out, e))?;
        }
        std::fs::rename(&self.tmp, &self.out).map_err(|e| ModelError::io(&self.out, e))?;
        Ok(self.out)
    }
}

/// `config.json` with its dtype key (`dtype` in transformers 5, `torch_dtype` in 4.x) set to `dtype`, and
/// no `quantization_config`: the weights written are dense (a bitsandbytes base is written dequantized).
pub fn config_with_dtype(mut config: Value, dtype: OutDtype) -> Value {
    if let Some(obj) = config.as_object_mut() {
        obj.remove("quantization_config");
        if obj.contains_key("torch_dtype") {
            obj.insert("torch_dtype".into(), dtype.torch_name().into());
        }
        if obj.contains_key("dtype") || !obj.contains_key("torch_dtype") {
            obj.insert("dtype".into(), dtype.torch_name().into());
        }
    }
    config
}

/// `generation_config.json` from the config's special token ids.
pub fn generation_config(config: &Value) -> Value {
    json!({
        "bos_token_id": config.get("bos_token_id"),
        "eos_token_id": config.get("eos_token_id"),
        "pad_token_id": config.get("pad_token_id"),
    })
}

/// The tokenizer and generation files of a model, as transformers reads them: copied from a model directory
/// (generation_config.json made from `config` when absent), or built from a GGUF's metadata.
pub fn side_files(model: &Path, config: &Value) -> Result<Vec<(String, Vec<u8>)>> {
    let to_vec = |v: &Value| serde_json::to_vec_pretty(v).map_err(|e| ModelError::Other(e.to_string()));
    let mut out = Vec::new();
    if is_gguf(model) {
        let gguf = GgufModel::open(model)?;
        let tokenizer = gguf.tokenizer()?;
        let json = tokenizer
            .to_string(false)
            .map_err(|e| ModelError::Tokenizer { path: model.to_path_buf(), msg: e.to_string() })?;
        out.push(("tokenizer.json".into(), json.into_bytes()));
        let tok_name = |id: Option<u64>| id.and_then(|i| tokenizer.id_to_token(i as u32));
        let cfg_u = |k: &str| config.get(k).and_then(|v| v.as_u64());
        // Says what tokenizer.json does: Gemma 1-3 GGUF tokenizers prepend BOS, Gemma 4's (as transformers
        // builds it from the file) does not.
        let adds_bos = cfg_u("bos_token_id")
            .is_some_and(|b| tokenizer.encode("a", true).is_ok_and(|e| e.get_ids().first() == Some(&(b as u32))));
        let mut tc = json!({
            "tokenizer_class": "GemmaTokenizer",
            "add_bos_token": adds_bos,
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
        out.push(("tokenizer_config.json".into(), to_vec(&tc)?));
        out.push(("generation_config.json".into(), to_vec(&generation_config(config))?));
        return Ok(out);
    }
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "tokenizer.model",
        "chat_template.jinja",
        "generation_config.json",
    ] {
        let p = model.join(name);
        if p.exists() {
            out.push((name.to_string(), std::fs::read(&p).map_err(|e| ModelError::io(&p, e))?));
        }
    }
    if !out.iter().any(|(n, _)| n == "generation_config.json") {
        out.push(("generation_config.json".into(), to_vec(&generation_config(config))?));
    }
    Ok(out)
}

/// The model's `config.json`: read from a directory, or rebuilt from a GGUF's metadata.
pub fn source_config(model: &Path) -> Result<Value> {
    if is_gguf(model) {
        return GgufModel::open(model)?.config_json();
    }
    let p = model.join("config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| ModelError::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::format(&p, format!("not valid JSON: {e}")))
}
