//! Pre-quantized bitsandbytes checkpoints (`unsloth/gemma-…-bnb-4bit` style): what transformers'
//! `save_pretrained` writes for a model loaded with `load_in_4bit` / `load_in_8bit`. config.json has a
//! `quantization_config` (`quant_method = "bitsandbytes"`); each quantized linear's `X.weight` is stored packed,
//! with its quant state beside it:
//! - 4-bit: `X.weight` (two NF4 codes per byte, high nibble first; stored as `bnb_4bit_quant_storage`, whose
//!   bytes are the same whatever the dtype), `X.weight.absmax` (u8 codes with double quantization, else f32),
//!   `X.weight.quant_map` (the 16 NF4 values), with double quantization `X.weight.nested_absmax` (f32 per 256
//!   blocks) and `X.weight.nested_quant_map` (the 8-bit dynamic map), and
//!   `X.weight.quant_state.bitsandbytes__nf4`: JSON bytes with the shape, block sizes and the nested offset.
//! - 8-bit: `X.weight` (int8 `CB`), `X.SCB` (f32 per row), `X.weight_format` (0: row-major).
//!
//! `BnbWeights` hands these states out as our `Nf4Weight` / `Int8Weight` unchanged (same bytes, same
//! dequantized values: `crate::quant::nf4` is bitsandbytes' NF4), and everything else as the directory stores
//! it. Its tensor names are the model's: the quant-state tensors are not parameters.
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::io::safetensors::SafetensorsDir;
use crate::io::weights::{HostTensor, WeightSource};
use crate::quant::nf4::{dynamic_map, nf4_code, ABSMAX_BLOCK, NF4_BLOCK};
use crate::quant::{Int8Weight, Nf4Weight, PackedWeight, QuantKind};

/// Suffixes of the tensors that carry a weight's quant state rather than a parameter.
const STATE_SUFFIXES: [&str; 6] =
    [".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".SCB", ".weight_format"];
const QUANT_STATE: &str = ".quant_state.bitsandbytes__";

/// The parts of a bitsandbytes `quantization_config` that decide how the weights are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BnbConfig {
    /// `Nf4` (`load_in_4bit`, nf4) or `Int8` (`load_in_8bit`).
    pub kind: QuantKind,
}

/// The bitsandbytes quantization a `config.json` value declares: `None` without a `quantization_config`; an
/// error naming the key for one we cannot read (another method, fp4, an unknown storage type).
pub fn read_config(path: &Path, config: &Value) -> Result<Option<BnbConfig>> {
    let Some(q) = config.get("quantization_config") else { return Ok(None) };
    let err = |key: &str, msg: String| ModelError::Config {
        path: path.to_path_buf(),
        key: format!("quantization_config.{key}"),
        msg,
    };
    let flag = |k: &str| q.get(k).or_else(|| q.get(format!("_{k}"))).and_then(Value::as_bool).unwrap_or(false);
    let (four, eight) = (flag("load_in_4bit"), flag("load_in_8bit"));
    // Old transformers wrote no quant_method for bitsandbytes configs.
    let method =
        q.get("quant_method").and_then(Value::as_str).unwrap_or(if four || eight { "bitsandbytes" } else { "" });
    if method != "bitsandbytes" {
        return Err(err(
            "quant_method",
            format!(
                "{:?} checkpoints are not supported: lapidary reads bitsandbytes checkpoints (load_in_4bit with nf4, \
                 load_in_8bit) and unquantized ones; use the unquantized model",
                q.get("quant_method").unwrap_or(&Value::Null)
            ),
        ));
    }
    if four {
        // BitsAndBytesConfig's default quant type is fp4.
        let qt = q.get("bnb_4bit_quant_type").and_then(Value::as_str).unwrap_or("fp4");
        if qt != "nf4" {
            return Err(err(
                "bnb_4bit_quant_type",
                format!(
                    "{qt:?} is not supported: lapidary reads 4-bit checkpoints quantized with \"nf4\" (QLoRA's); use \
                     an nf4 checkpoint or the unquantized model"
                ),
            ));
        }
        // The storage dtype only relabels the packed bytes (`torch.Tensor.view`): the bytes are the same.
        let storage = q.get("bnb_4bit_quant_storage").and_then(Value::as_str).unwrap_or("uint8");
        if !["uint8", "bfloat16", "float16", "float32"].contains(&storage) {
            return Err(err(
                "bnb_4bit_quant_storage",
                format!("{storage:?} is not supported (uint8, bfloat16, float16 or float32 are)"),
            ));
        }
        return Ok(Some(BnbConfig { kind: QuantKind::Nf4 }));
    }
    if eight {
        if q.get("llm_int8_has_fp16_weight").and_then(Value::as_bool) == Some(true) {
            return Err(err(
                "llm_int8_has_fp16_weight",
                "true is not supported: such a checkpoint keeps 16-bit weights; load it without quantization_config"
                    .into(),
            ));
        }
        return Ok(Some(BnbConfig { kind: QuantKind::Int8 }));
    }
    Err(err("load_in_4bit", "a bitsandbytes config with neither load_in_4bit nor load_in_8bit set".into()))
}

/// The quantization a model directory's config.json declares (for defaults: `None` on any error, which
/// opening the model reports properly).
pub fn stored_quant(dir: &Path) -> Option<QuantKind> {
    let path = dir.join("config.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
    read_config(&path, &v).ok().flatten().map(|c| c.kind)
}

/// The weights of a model directory: `raw` as it is, or read through its bitsandbytes quant states when
/// config.json declares them.
pub fn open(dir: &Path, raw: SafetensorsDir) -> Result<Box<dyn WeightSource>> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| ModelError::format(&path, format!("not valid JSON: {e}")))?;
    Ok(match read_config(&path, &v)? {
        Some(config) => Box::new(BnbWeights { inner: raw, config, dir: dir.to_path_buf() }),
        None => Box::new(raw),
    })
}

pub struct BnbWeights {
    inner: SafetensorsDir,
    config: BnbConfig,
    dir: PathBuf,
}

/// A 4-bit weight's `quant_state.bitsandbytes__nf4` JSON.
struct QuantState {
    shape: [usize; 2],
    /// `Some(offset)` with double quantization.
    nested_offset: Option<f32>,
}

impl BnbWeights {
    fn is_state(name: &str) -> bool {
        name.contains(QUANT_STATE) || STATE_SUFFIXES.iter().any(|s| name.ends_with(s))
    }

    /// An error naming the shard file and the tensor.
    fn err(&self, name: &str, msg: impl std::fmt::Display) -> ModelError {
        let path = self.inner.raw(name).map(|r| r.0.to_path_buf()).unwrap_or_else(|_| self.dir.clone());
        ModelError::format(path, format!("tensor `{name}`: {msg}"))
    }

    /// The raw bytes of `name`'s state tensor `name{suffix}`, checked for dtype and element count.
    fn state(&self, name: &str, suffix: &str, dtype: Dtype, len: usize) -> Result<&[u8]> {
        let full = format!("{name}{suffix}");
        if !self.inner.contains(&full) {
            return Err(self.err(
                name,
                format!("is stored quantized (it has a bitsandbytes quant state) but `{full}` is missing"),
            ));
        }
        let (_, dt, shape, bytes) = self.inner.raw(&full)?;
        let count: usize = shape.iter().product();
        if dt != dtype || count != len {
            return Err(self.err(&full, format!("expected {len} values of {dtype:?}, found {shape:?} of {dt:?}")));
        }
        Ok(bytes)
    }

    fn f32s(bytes: &[u8]) -> Vec<f32> {
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    /// The quant state of a 4-bit weight, `None` for a weight stored unquantized.
    fn quant_state(&self, name: &str) -> Result<Option<QuantState>> {
        let nf4 = format!("{name}{QUANT_STATE}nf4");
        if !self.inner.contains(&nf4) {
            if self.inner.contains(&format!("{name}{QUANT_STATE}fp4")) {
                return Err(self.err(name, "is quantized as fp4; lapidary reads nf4 4-bit weights only"));
            }
            if self.inner.contains(&format!("{name}.absmax")) {
                return Err(self.err(name, format!("has an absmax but no quant state (`{nf4}` is missing)")));
            }
            return Ok(None);
        }
        let (_, _, _, bytes) = self.inner.raw(&nf4)?;
        let bad = |msg: String| self.err(&nf4, msg);
        let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let field = |k: &str| v.get(k).ok_or_else(|| bad(format!("no `{k}`")));
        if field("quant_type")?.as_str() != Some("nf4") {
            return Err(bad(format!("quant_type {} is not supported (nf4 is)", field("quant_type")?)));
        }
        if field("blocksize")?.as_u64() != Some(NF4_BLOCK as u64) {
            return Err(bad(format!(
                "blocksize {} is not supported (bitsandbytes' default, {NF4_BLOCK}, is)",
                field("blocksize")?
            )));
        }
        let shape: Vec<usize> = field("shape")?
            .as_array()
            .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect())
            .ok_or_else(|| bad("`shape` is not a list of sizes".into()))?;
        let [o, i] = shape[..] else {
            return Err(bad(format!("shape {shape:?}: only 2-D linear weights are quantized by bitsandbytes")));
        };
        let nested_offset = match v.get("nested_blocksize") {
            None => None,
            Some(b) => {
                if b.as_u64() != Some(ABSMAX_BLOCK as u64) {
                    return Err(bad(format!(
                        "nested_blocksize {b} is not supported (bitsandbytes' double quantization uses {ABSMAX_BLOCK})"
                    )));
                }
                if let Some(d) = v.get("nested_dtype").and_then(Value::as_str) {
                    if d != "float32" {
                        return Err(bad(format!("nested_dtype {d:?} is not supported (float32 is)")));
                    }
                }
                // Written from the f32 offset (`offset.item()`), so the f64 is that f32 exactly.
                Some(field("nested_offset")?.as_f64().ok_or_else(|| bad("`nested_offset` is not a number".into()))?
                    as f32)
            }
        };
        Ok(Some(QuantState { shape: [o, i], nested_offset }))
    }

    fn nf4(&self, name: &str) -> Result<Option<Nf4Weight>> {
        let Some(qs) = self.quant_state(name)? else { return Ok(None) };
        let n = qs.shape[0] * qs.shape[1];
        let blocks = n.div_ceil(NF4_BLOCK);
        let (_, _, _, bytes) = self.inner.raw(name)?;
        if bytes.len() < n.div_ceil(2) {
            return Err(self
                .err(name, format!("{} packed bytes for {n} 4-bit values (expected {})", bytes.len(), n.div_ceil(2))));
        }
        let packed = bytes[..n.div_ceil(2)].to_vec();
        let code = Self::f32s(self.state(name, ".quant_map", Dtype::F32, 16)?);
        if code.iter().map(|x| x.to_bits()).ne(nf4_code().iter().map(|x| x.to_bits())) {
            return Err(self.err(&format!("{name}.quant_map"), "is not bitsandbytes' NF4 code table"));
        }
        Ok(Some(match qs.nested_offset {
            Some(offset) => {
                let absmax_q = self.state(name, ".absmax", Dtype::U8, blocks)?.to_vec();
                let absmax2 =
                    Self::f32s(self.state(name, ".nested_absmax", Dtype::F32, blocks.div_ceil(ABSMAX_BLOCK))?);
                let map = Self::f32s(self.state(name, ".nested_quant_map", Dtype::F32, 256)?);
                if map.iter().map(|x| x.to_bits()).ne(dynamic_map().iter().map(|x| x.to_bits())) {
                    return Err(self.err(
                        &format!("{name}.nested_quant_map"),
                        "is not bitsandbytes' signed dynamic map (the only double quantization lapidary reads)",
                    ));
                }
                Nf4Weight {
                    shape: qs.shape,
                    packed,
                    absmax_q,
                    absmax2,
                    offset,
                    nested_shift: ABSMAX_BLOCK.trailing_zeros(),
                }
            }
            None => {
                Nf4Weight::single_level(qs.shape, packed, Self::f32s(self.state(name, ".absmax", Dtype::F32, blocks)?))
            }
        }))
    }

    fn int8(&self, name: &str) -> Result<Option<Int8Weight>> {
        let Some(row) = name.strip_suffix(".weight") else { return Ok(None) };
        let scb_name = format!("{row}.SCB");
        let (_, dtype, shape, bytes) = self.inner.raw(name)?;
        if !self.inner.contains(&scb_name) {
            if dtype == Dtype::I8 {
                return Err(self.err(name, format!("is stored as int8 but `{scb_name}` (its row scales) is missing")));
            }
            return Ok(None);
        }
        let [o, i] = shape[..] else {
            return Err(self.err(name, format!("shape {shape:?}: an int8 weight must be 2-D")));
        };
        if dtype != Dtype::I8 {
            return Err(self.err(name, format!("has row scales `{scb_name}` but is stored as {dtype:?}, not int8")));
        }
        let format_name = format!("{name}_format");
        if self.inner.contains(&format_name) {
            let (_, _, _, f) = self.inner.raw(&format_name)?;
            if f.iter().any(|&b| b != 0) {
                return Err(self.err(&format_name, "is not 0 (row-major): GPU-specific int8 layouts are not supported"));
            }
        }
        let scb = Self::f32s(self.state(row, ".SCB", Dtype::F32, o)?);
        let cb = bytes.iter().map(|&b| b as i8).collect();
        Ok(Some(Int8Weight { shape: [o, i], cb, scb }))
    }
}

impl WeightSource for BnbWeights {
    fn path(&self) -> &Path {
        &self.dir
    }
    fn names(&self) -> Vec<String> {
        self.inner.names().into_iter().filter(|n| !Self::is_state(n)).collect()
    }
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        if self.config.kind == QuantKind::Nf4 {
            if let Some(qs) = self.quant_state(name)? {
                return Ok(qs.shape.to_vec());
            }
        }
        self.inner.shape(name)
    }
    fn get(&self, name: &str) -> Result<HostTensor> {
        match self.packed(name)? {
            Some(p) => Ok(HostTensor::new(p.shape().to_vec(), p.dequantize())),
            None => self.inner.get(name),
        }
    }
    fn stored_quant(&self) -> Option<QuantKind> {
        Some(self.config.kind)
    }
    fn packed(&self, name: &str) -> Result<Option<PackedWeight>> {
        Ok(match self.config.kind {
            QuantKind::Nf4 => self.nf4(name)?.map(PackedWeight::Nf4),
            _ => self.int8(name)?.map(PackedWeight::Int8),
        })
    }
}
