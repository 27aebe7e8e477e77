//! A whole Gemma 1/2/3 model written as the GGUF llama.cpp runs: what its `convert_hf_to_gguf.py` writes from
//! a model directory (metadata keys, values and order; tensor names, order and types; norms stored `1 + w`),
//! or, from a GGUF, the input file again with its metadata verbatim (tokenizer included) and its tensors in
//! its order, each re-encoded only where its type or values change.
//!
//! Types (`--dtype`): f32 / f16 / bf16 / q8_0 as the converter's `--outtype` (1-D tensors and norms F32;
//! q8_0 rows that are not whole blocks of 32 in F16); q4_0 and the k-quants as llama-quantize chooses per
//! tensor (`quant::ggml::preset`: `--pure` for a single type, its fallbacks for rows that are not whole
//! blocks; the Q4_K_M / Q5_K_M mixes); `same` keeps each tensor's type in the input GGUF.
//!
//! Deliberate differences from the converter (HF input): `general.name` is the directory's name title-cased
//! (the converter's heuristics also split out basename / size / version from names like `gemma-3-270m-it`);
//! `general.size_label` is written as it computes it; no other `general.*` keys (license, tags... come from a
//! model card we do not parse). Gemma 4 is refused.
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::arch::{GemmaArch, GGUF_NORM_SHIFT};
use super::file::{GgufFile, GgufValue};
use super::model::{gguf_to_hf_name, GgufModel};
use super::tokenizer_meta::tokenizer_metadata;
use super::writer::GgufWriter;
use crate::error::{ModelError, Result};
use crate::io::weights::{HostTensor, WeightSource};
use crate::quant::ggml::dequant::dequantize_blocks;
use crate::quant::ggml::encode::encode;
use crate::quant::ggml::preset::{llama_quantize_order, Planner, Target};
use crate::quant::ggml::GgmlType;

/// `--dtype` of a GGUF model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum GgufDtype {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q4_K,
    Q5_K,
    Q6_K,
    Q4_K_M,
    Q5_K_M,
    /// Each tensor in the type the input GGUF stores it in.
    Same,
}

impl std::str::FromStr for GgufDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        use GgufDtype::*;
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => F32,
            "f16" | "float16" => F16,
            "bf16" | "bfloat16" => Bf16,
            "q8_0" => Q8_0,
            "q4_0" => Q4_0,
            "q4_k" => Q4_K,
            "q5_k" => Q5_K,
            "q6_k" => Q6_K,
            "q4_k_m" => Q4_K_M,
            "q5_k_m" => Q5_K_M,
            "same" => Same,
            other => {
                return Err(format!(
                    "unknown GGUF dtype `{other}` (expected f32, f16, bf16, q8_0, q4_0, q4_k, q5_k, q6_k, q4_k_m, \
                     q5_k_m or same)"
                ))
            }
        })
    }
}

impl GgufDtype {
    pub fn name(self) -> &'static str {
        use GgufDtype::*;
        match self {
            F32 => "f32",
            F16 => "f16",
            Bf16 => "bf16",
            Q8_0 => "q8_0",
            Q4_0 => "q4_0",
            Q4_K => "q4_k",
            Q5_K => "q5_k",
            Q6_K => "q6_k",
            Q4_K_M => "q4_k_m",
            Q5_K_M => "q5_k_m",
            Same => "same",
        }
    }

    /// Whether the types are llama-quantize's choice ([`Planner`]) rather than the converter's `--outtype`.
    pub fn uses_planner(self) -> bool {
        use GgufDtype::*;
        matches!(self, Q4_0 | Q4_K | Q5_K | Q6_K | Q4_K_M | Q5_K_M)
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`); `None` for `same` (the input's is kept). A single
    /// k-quant type is what `llama-quantize --pure Q4_K` writes: its `Q4_K` is an alias of the Q4_K_M ftype.
    pub fn file_type(self) -> Option<u32> {
        use GgufDtype::*;
        Some(match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q8_0 => 7,
            Q4_K | Q4_K_M => 15,
            Q5_K | Q5_K_M => 17,
            Q6_K => 18,
            Bf16 => 32,
            Same => return None,
        })
    }
}

/// One tensor of the output, in file order.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    /// The GGUF name (`blk.0.attn_q.weight`).
    pub gguf: String,
    /// The Hugging Face name its values are read under (`model.layers.0.self_attn.q_proj.weight`).
    pub hf: String,
    /// Row-major shape as written (the token table cut to the vocabulary, as the Gemma 3 converter does).
    pub shape: Vec<usize>,
    /// Stored as `1 + w` (Gemma RMSNorm weights).
    pub shift: bool,
    /// Its type in the input GGUF (`None` for a model directory).
    pub stored: Option<GgmlType>,
}

/// A model to be written as GGUF: the metadata and the tensors, from a GGUF or a model directory.
pub struct ModelGguf<'a> {
    pub arch: GemmaArch,
    pub metadata: Vec<(String, GgufValue)>,
    pub tensors: Vec<PlannedTensor>,
    /// The input file, when it is a GGUF (unchanged tensors are taken from its bytes).
    pub file: Option<&'a GgufFile>,
    source: PathBuf,
}

fn refuse_gemma4(path: &Path) -> ModelError {
    ModelError::Config {
        path: path.to_path_buf(),
        key: "architecture".into(),
        msg: "writing a Gemma 4 model as GGUF is not supported (Gemma 1, 2 and 3 are); write a model directory \
              instead (an --out path without .gguf)"
            .into(),
    }
}

impl<'a> ModelGguf<'a> {
    /// From a GGUF: every metadata key as the file has it, every tensor in the file's order.
    pub fn from_gguf(model: &'a GgufModel) -> Result<Self> {
        let file = model.file();
        if model.arch() == GemmaArch::Gemma4 {
            return Err(refuse_gemma4(file.path()));
        }
        let unmapped = model.unmapped_tensors();
        if !unmapped.is_empty() {
            return Err(ModelError::format(
                file.path(),
                format!("tensors {unmapped:?} are not Gemma weights lapidary knows; they would be lost"),
            ));
        }
        let tensors = file
            .tensors()
            .iter()
            .map(|t| {
                let (hf, shift) = gguf_to_hf_name(model.arch(), &t.name).expect("every tensor is mapped");
                PlannedTensor { gguf: t.name.clone(), hf, shape: t.shape(), shift, stored: Some(t.dtype) }
            })
            .collect();
        Ok(Self {
            arch: model.arch(),
            metadata: file.metadata().to_vec(),
            tensors,
            file: Some(file),
            source: file.path().to_path_buf(),
        })
    }

    /// From a model directory (`config.json` = `config`, its weights `weights`), as the converter writes it.
    pub fn from_hf_dir(dir: &Path, config: &Value, weights: &dyn WeightSource) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg = HfConfig { c: config, path: &cfg_path };
        let class = config
            .get("architectures")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .unwrap_or("");
        let arch = match class {
            "GemmaForCausalLM" => GemmaArch::Gemma,
            "Gemma2ForCausalLM" => GemmaArch::Gemma2,
            "Gemma3ForCausalLM" => GemmaArch::Gemma3,
            c if c.starts_with("Gemma4") => return Err(refuse_gemma4(&cfg_path)),
            other => {
                return Err(ModelError::Config {
                    path: cfg_path.clone(),
                    key: "architectures".into(),
                    msg: format!("`{other}` cannot be written as GGUF (Gemma, Gemma 2 and Gemma 3 can)"),
                })
            }
        };
        let tok = tokenizer_metadata(dir, config, arch == GemmaArch::Gemma)?;
        let n_tokens = tok
            .iter()
            .find(|(k, _)| k == "tokenizer.ggml.tokens")
            .and_then(|(_, v)| v.as_array())
            .map_or(0, <[GgufValue]>::len);

        // The converter's tensor order: the checkpoint's names sorted (safetensors' order), `lm_head` dropped
        // (llama.cpp ties the output to the token table for Gemma).
        let mut names = weights.names();
        names.sort();
        let mut tensors = Vec::new();
        for hf in names {
            if hf == "lm_head.weight" {
                continue;
            }
            let (gguf, shift) = hf_to_gguf_name(arch, &hf).ok_or_else(|| {
                ModelError::format(weights.path(), format!("tensor `{hf}` has no GGUF name for {}", arch.gguf_name()))
            })?;
            let mut shape = weights.shape(&hf)?;
            if gguf == "token_embd.weight" && arch == GemmaArch::Gemma3 {
                // Gemma 3: rows past the vocabulary are dropped (`n_vocab_real`).
                if let Some(rows) = shape.first_mut().filter(|r| **r > n_tokens) {
                    *rows = n_tokens;
                }
            }
            tensors.push(PlannedTensor { gguf, hf, shape, shift, stored: None });
        }

        let g = arch.gguf_name();
        let k = |s: &str| format!("{g}.{s}");
        let mut meta = Meta::default();
        meta.set("general.architecture", GgufValue::String(g.into()));
        meta.set("general.type", GgufValue::String("model".into()));
        let dir_name = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into());
        meta.set("general.name", GgufValue::String(title_case(&dir_name)));
        let params: usize = tensors.iter().map(|t| t.shape.iter().product::<usize>()).sum();
        meta.set("general.size_label", GgufValue::String(size_label(params)));

        let layers = cfg.u32("num_hidden_layers")?;
        let u = GgufValue::U32;
        match arch {
            GemmaArch::Gemma | GemmaArch::Gemma2 => {
                // GemmaModel / Gemma2Model.set_gguf_parameters.
                let heads = cfg.u32("num_attention_heads")?;
                let head_dim = cfg.u32("head_dim")?;
                meta.set(&k("context_length"), u(cfg.u32("max_position_embeddings")?));
                meta.set(&k("embedding_length"), u(cfg.u32("hidden_size")?));
                meta.set(&k("block_count"), u(layers));
                meta.set(&k("feed_forward_length"), u(cfg.u32("intermediate_size")?));
                meta.set(&k("attention.head_count"), u(heads));
                meta.set(&k("attention.head_count_kv"), u(cfg.opt_u32("num_key_value_heads")?.unwrap_or(heads)));
                meta.set(&k("attention.layer_norm_rms_epsilon"), GgufValue::F32(cfg.f32("rms_norm_eps")?));
                meta.set(&k("attention.key_length"), u(head_dim));
                meta.set(&k("attention.value_length"), u(head_dim));
                meta.set("general.file_type", u(0));
                if arch == GemmaArch::Gemma2 {
                    meta.set(&k("attn_logit_softcapping"), GgufValue::F32(cfg.f32("attn_logit_softcapping")?));
                    meta.set(&k("final_logit_softcapping"), GgufValue::F32(cfg.f32("final_logit_softcapping")?));
                    meta.set(&k("attention.sliding_window"), u(cfg.u32("sliding_window")?));
                }
            }
            _ => {
                // TextModel.set_gguf_parameters, then Gemma3Model's additions (some keys set twice keep their
                // first place, as gguf-py's writer does).
                meta.set(&k("block_count"), u(layers));
                for (key, hp) in [
                    ("context_length", "max_position_embeddings"),
                    ("embedding_length", "hidden_size"),
                    ("feed_forward_length", "intermediate_size"),
                    ("attention.head_count", "num_attention_heads"),
                    ("attention.head_count_kv", "num_key_value_heads"),
                ] {
                    if let Some(v) = cfg.opt_u32(hp)? {
                        meta.set(&k(key), u(v));
                    }
                }
                let rope = config.get("rope_parameters").or_else(|| config.get("rope_scaling"));
                let rope = rope.filter(|v| v.is_object());
                let full = rope.map(|r| r.get("full_attention").unwrap_or(r));
                if let Some(full) = full {
                    let factor = full.get("factor").and_then(Value::as_f64);
                    match (full.get("rope_type").and_then(Value::as_str), factor) {
                        (Some("linear"), Some(f)) => {
                            meta.set(&k("rope.scaling.type"), GgufValue::String("linear".into()));
                            meta.set(&k("rope.scaling.factor"), GgufValue::F32(f as f32));
                        }
                        (Some("yarn"), _) => {
                            return Err(ModelError::Config {
                                path: cfg_path.clone(),
                                key: "rope_parameters".into(),
                                msg: "yarn RoPE scaling is not written by lapidary (no Gemma uses it)".into(),
                            })
                        }
                        _ => {}
                    }
                    if let Some(t) = full.get("rope_theta").and_then(Value::as_f64) {
                        meta.set(&k("rope.freq_base"), GgufValue::F32(t as f32));
                    }
                }
                let swa = rope
                    .and_then(|r| r.get("sliding_attention"))
                    .and_then(|s| s.get("rope_theta"))
                    .and_then(Value::as_f64);
                if let Some(t) = swa {
                    meta.set(&k("rope.freq_base_swa"), GgufValue::F32(t as f32));
                }
                if let Some(e) = cfg.opt_f32("rms_norm_eps")? {
                    meta.set(&k("attention.layer_norm_rms_epsilon"), GgufValue::F32(e));
                }
                if let Some(h) = cfg.opt_u32("head_dim")? {
                    meta.set(&k("attention.key_length"), u(h));
                    meta.set(&k("attention.value_length"), u(h));
                }
                meta.set("general.file_type", u(0));
                // Gemma3Model: defaults where the config is silent.
                meta.set(&k("context_length"), u(cfg.opt_u32("max_position_embeddings")?.unwrap_or(131_072)));
                meta.set(&k("attention.head_count"), u(cfg.opt_u32("num_attention_heads")?.unwrap_or(8)));
                meta.set(
                    &k("attention.layer_norm_rms_epsilon"),
                    GgufValue::F32(cfg.opt_f32("rms_norm_eps")?.unwrap_or(1e-6)),
                );
                let hd = cfg.opt_u32("head_dim")?.unwrap_or(256);
                meta.set(&k("attention.key_length"), u(hd));
                meta.set(&k("attention.value_length"), u(hd));
                let theta = full.and_then(|f| f.get("rope_theta")).and_then(Value::as_f64).unwrap_or(1_000_000.0);
                meta.set(&k("rope.freq_base"), GgufValue::F32(theta as f32));
                if let Some(c) = config.get("final_logit_softcapping").and_then(Value::as_f64).filter(|c| *c != 0.0) {
                    meta.set(&k("final_logit_softcapping"), GgufValue::F32(c as f32));
                }
                if config.get("sliding_window_pattern").and_then(Value::as_u64) != Some(1) {
                    meta.set(&k("attention.sliding_window"), u(cfg.u32("sliding_window")?));
                }
                meta.set(&k("attention.head_count_kv"), u(cfg.opt_u32("num_key_value_heads")?.unwrap_or(4)));
            }
        }
        meta.set("general.quantization_version", u(2));
        for (key, v) in tok {
            meta.set(&key, v);
        }
        Ok(Self { arch, metadata: meta.0, tensors, file: None, source: dir.to_path_buf() })
    }

    /// The type each tensor (in [`Self::tensors`]' order) is written in for `dtype`.
    pub fn types(&self, dtype: GgufDtype) -> Result<Vec<GgmlType>> {
        let dtype_err = |msg: String| ModelError::Config { path: self.source.clone(), key: "--dtype".into(), msg };
        let fixed = |t: &PlannedTensor, ty: GgmlType| {
            // The converter: 1-D tensors and norms in F32; a q8_0 row that is not whole blocks falls back to F16.
            let cols = t.shape.last().copied().unwrap_or(1);
            if t.shape.len() <= 1 || t.gguf.ends_with("_norm.weight") {
                GgmlType::F32
            } else if ty == GgmlType::Q8_0 && !cols.is_multiple_of(32) {
                GgmlType::F16
            } else {
                ty
            }
        };
        let one = |ty: GgmlType| Ok(self.tensors.iter().map(|t| fixed(t, ty)).collect());
        let target = match dtype {
            GgufDtype::F32 => return one(GgmlType::F32),
            GgufDtype::F16 => return one(GgmlType::F16),
            GgufDtype::Bf16 => return one(GgmlType::BF16),
            GgufDtype::Q8_0 => return one(GgmlType::Q8_0),
            GgufDtype::Same => {
                return self
                    .tensors
                    .iter()
                    .map(|t| {
                        t.stored.ok_or_else(|| {
                            dtype_err(
                                "`same` keeps each tensor's type in the input GGUF, but the input is a model \
                                 directory: pick a type (f32, f16, bf16, q8_0, q4_0, q4_k, q5_k, q6_k, q4_k_m, \
                                 q5_k_m)"
                                    .into(),
                            )
                        })
                    })
                    .collect()
            }
            other => Target::from_name(other.name()).map_err(dtype_err)?,
        };
        let list: Vec<(String, Vec<usize>)> = self.tensors.iter().map(|t| (t.gguf.clone(), t.shape.clone())).collect();
        let n_layer = self.tensors.iter().filter_map(|t| layer_of(&t.gguf)).max().map_or(0, |l| l + 1);
        let planner = Planner::new(target, self.arch.gguf_name(), n_layer, &list).map_err(dtype_err)?;
        self.tensors.iter().map(|t| planner.tensor_type(&t.gguf).map_err(dtype_err)).collect()
    }

    /// `values` (Hugging Face conventions) as the written file will hold them in `ty`: encoded and decoded
    /// again (norms through `1 + w`). What a model read back from the file sees.
    pub fn round_trip(&self, t: &PlannedTensor, ty: GgmlType, values: HostTensor) -> Result<HostTensor> {
        let cols = t.shape.last().copied().unwrap_or(1);
        let fail = |msg: String| ModelError::format(&self.source, format!("tensor `{}` ({}): {msg}", t.gguf, t.hf));
        let mut data = values.data;
        if t.shift {
            data.iter_mut().for_each(|x| *x += GGUF_NORM_SHIFT);
        }
        let bytes = encode(ty, &data, cols).map_err(fail)?;
        dequantize_blocks(ty, &bytes, &mut data).map_err(fail)?;
        if t.shift {
            data.iter_mut().for_each(|x| *x -= GGUF_NORM_SHIFT);
        }
        Ok(HostTensor { shape: values.shape, data })
    }

    /// The GGUF file, its tensors in `dtype`. `values(t)`: the tensor's values under Hugging Face conventions
    /// (norms as `w`), or `None` for "as the input GGUF has it" (its bytes are copied when the type stays, and
    /// re-encoded from the stored values otherwise, so a norm's `1 + w` is not recomputed).
    pub fn build(
        &self,
        dtype: GgufDtype,
        mut values: impl FnMut(&PlannedTensor) -> Result<Option<HostTensor>>,
    ) -> Result<GgufWriter> {
        let mut w = GgufWriter::new();
        // llama-quantize copies every key, then sets these two anew, which moves them to the end.
        let moved = ["general.quantization_version", "general.file_type"];
        for (k, v) in &self.metadata {
            if !(dtype.uses_planner() && moved.contains(&k.as_str())) {
                w.set(k, v.clone());
            }
        }
        if dtype.uses_planner() {
            w.set(moved[0], GgufValue::U32(2));
        }
        if let Some(ft) = dtype.file_type() {
            w.set("general.file_type", GgufValue::U32(ft));
        }
        let types = self.types(dtype)?;
        // llama-quantize's types come in llama-quantize's order (layer number, then name: what converting to f32
        // and quantizing with llama-quantize writes); the converter's types in the converter's.
        let order: Vec<usize> = if dtype.uses_planner() {
            llama_quantize_order(&self.tensors.iter().map(|t| t.gguf.as_str()).collect::<Vec<_>>())
        } else {
            (0..self.tensors.len()).collect()
        };
        for i in order {
            let (t, ty) = (&self.tensors[i], types[i]);
            let cols = t.shape.last().copied().unwrap_or(1);
            let numel: usize = t.shape.iter().product();
            let fail = |msg: String| ModelError::format(&self.source, format!("tensor `{}` ({}): {msg}", t.gguf, t.hf));
            let bytes = match values(t)? {
                Some(v) => {
                    let mut data = v.data;
                    data.truncate(numel);
                    if data.len() != numel {
                        return Err(fail(format!("{} values for shape {:?}", data.len(), t.shape)));
                    }
                    if t.shift {
                        data.iter_mut().for_each(|x| *x += GGUF_NORM_SHIFT);
                    }
                    encode(ty, &data, cols).map_err(fail)?
                }
                None => {
                    let file = self.file.ok_or_else(|| fail("no input GGUF to copy it from".into()))?;
                    let stored = file.tensor_bytes(&t.gguf)?;
                    if t.stored == Some(ty) {
                        stored.to_vec()
                    } else {
                        let info = file.tensor_info(&t.gguf).expect("planned from the file");
                        let mut data = vec![0f32; numel];
                        dequantize_blocks(info.dtype, stored, &mut data).map_err(fail)?;
                        encode(ty, &data, cols).map_err(fail)?
                    }
                }
            };
            w.add_tensor(&t.gguf, ty, &t.shape, bytes);
        }
        Ok(w)
    }
}

/// `blk.N.…` → N.
fn layer_of(gguf: &str) -> Option<usize> {
    gguf.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// Metadata in insertion order; setting a key again keeps its first place (gguf-py's writer does the same).
#[derive(Default)]
struct Meta(Vec<(String, GgufValue)>);

impl Meta {
    fn set(&mut self, key: &str, v: GgufValue) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = v,
            None => self.0.push((key.to_owned(), v)),
        }
    }
}

/// Typed reads of `config.json` with errors naming the key.
struct HfConfig<'a> {
    c: &'a Value,
    path: &'a Path,
}

impl HfConfig<'_> {
    fn err(&self, key: &str, msg: &str) -> ModelError {
        ModelError::Config { path: self.path.to_path_buf(), key: key.into(), msg: msg.into() }
    }
    fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        match self.c.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| self.err(key, "expected an unsigned integer")),
        }
    }
    fn u32(&self, key: &str) -> Result<u32> {
        self.opt_u32(key)?.ok_or_else(|| self.err(key, "missing (needed for the GGUF metadata)"))
    }
    fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.c.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(|x| Some(x as f32)).ok_or_else(|| self.err(key, "expected a number")),
        }
    }
    fn f32(&self, key: &str) -> Result<f32> {
        self.opt_f32(key)?.ok_or_else(|| self.err(key, "missing (needed for the GGUF metadata)"))
    }
}

/// The GGUF name of a Hugging Face tensor (`model.` prefix) for Gemma 1-3, and whether it is a norm stored as
/// `1 + w`: the inverse of [`gguf_to_hf_name`].
pub fn hf_to_gguf_name(arch: GemmaArch, hf: &str) -> Option<(String, bool)> {
    let gguf = match hf {
        "model.embed_tokens.weight" => "token_embd.weight".to_owned(),
        "model.norm.weight" => "output_norm.weight".to_owned(),
        _ => {
            let rest = hf.strip_prefix("model.layers.")?;
            let (layer, param) = rest.split_once('.')?;
            layer.parse::<usize>().ok().filter(|l| l.to_string() == layer)?;
            use GemmaArch::*;
            let tail = match (param, arch) {
                ("self_attn.q_proj.weight", _) => "attn_q.weight",
                ("self_attn.k_proj.weight", _) => "attn_k.weight",
                ("self_attn.v_proj.weight", _) => "attn_v.weight",
                ("self_attn.o_proj.weight", _) => "attn_output.weight",
                ("mlp.gate_proj.weight", _) => "ffn_gate.weight",
                ("mlp.up_proj.weight", _) => "ffn_up.weight",
                ("mlp.down_proj.weight", _) => "ffn_down.weight",
                ("input_layernorm.weight", _) => "attn_norm.weight",
                ("post_attention_layernorm.weight", Gemma) => "ffn_norm.weight",
                ("post_attention_layernorm.weight", Gemma2 | Gemma3) => "post_attention_norm.weight",
                ("pre_feedforward_layernorm.weight", Gemma2 | Gemma3) => "ffn_norm.weight",
                ("post_feedforward_layernorm.weight", Gemma2 | Gemma3) => "post_ffw_norm.weight",
                ("self_attn.q_norm.weight", Gemma3) => "attn_q_norm.weight",
                ("self_attn.k_norm.weight", Gemma3) => "attn_k_norm.weight",
                _ => return None,
            };
            format!("blk.{layer}.{tail}")
        }
    };
    let (back, shift) = gguf_to_hf_name(arch, &gguf)?;
    (back == hf).then_some((gguf, shift))
}

/// gguf-py's `size_label` for a model without experts (`model_weight_count_rounded_notation`, 2 digits).
fn size_label(params: usize) -> String {
    let p = params as f64;
    let (scaled, suffix) = if p > 1e12 {
        (p * 1e-12, "T")
    } else if p > 1e9 {
        (p * 1e-9, "B")
    } else if p > 1e6 {
        (p * 1e-6, "M")
    } else {
        (p * 1e-3, "K")
    };
    let digits = format!("{}", scaled.round() as u64);
    let digits = digits.trim_start_matches('0').len();
    format!("{scaled:.prec$}{suffix}", prec = 2usize.saturating_sub(digits))
}

/// Python's `str.title()` on a directory name, which the converter's metadata starts `general.name` from.
fn title_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_letter = false;
    for c in s.chars() {
        if prev_letter {
            out.extend(c.to_lowercase());
        } else {
            out.extend(c.to_uppercase());
        }
        prev_letter = c.is_alphabetic();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_invert_the_reader_and_labels() {
        for arch in [GemmaArch::Gemma, GemmaArch::Gemma2, GemmaArch::Gemma3] {
            for hf in ["model.layers.3.self_attn.q_proj.weight", "model.layers.0.input_layernorm.weight"] {
                let (g, _) = hf_to_gguf_name(arch, hf).unwrap();
                assert_eq!(gguf_to_hf_name(arch, &g).unwrap().0, hf);
            }
        }
        assert_eq!(
            hf_to_gguf_name(GemmaArch::Gemma, "model.layers.1.post_attention_layernorm.weight").unwrap(),
            ("blk.1.ffn_norm.weight".to_owned(), true)
        );
        assert_eq!(hf_to_gguf_name(GemmaArch::Gemma, "model.layers.1.self_attn.q_norm.weight"), None);
        assert_eq!(size_label(243_456), "243K");
        assert_eq!(size_label(268_098_176), "268M");
        assert_eq!(size_label(1_999_000), "2.0M");
        assert_eq!(title_case("gemma3"), "Gemma3");
    }
}
