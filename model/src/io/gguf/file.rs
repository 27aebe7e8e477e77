//! GGUF reading: the container format of llama.cpp / ggml.
//!
//! * [`GgufFile`] memory-maps a GGUF v2 or v3 file, parses its header, metadata key/values (every value type,
//!   nested arrays included) and tensor infos, and checks every length and offset against the file before it is
//!   used. It never panics on bad input: a truncated file, a bad magic, a tensor whose data runs past the end...
//!   all come back as a [`ModelError`] naming the file (and the tensor or key).
//! * [`GgufFile::dequantize`] turns one tensor (F32, F16, BF16, F64, I8/I16/I32, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
//!   Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K) into f32, bit-exactly as ggml's reference `dequantize_row_*` and
//!   gguf-py's `gguf.quants.dequantize` do, in parallel over blocks.
//! * `GgufModel` (`super::model`) is a `WeightSource` over a Gemma / Gemma 2 / Gemma 3 GGUF, under
//!   Hugging Face names and conventions, and rebuilds the model's `config.json` and tokenizer.
//!
//! Shapes: GGUF lists dimensions innermost first (`ne[0]` is the contiguous one); [`TensorInfo::shape`] and
//! every [`HostTensor`] are in row-major / PyTorch order, i.e. reversed (`[out_features, in_features]`).
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};
use crate::io::weights::HostTensor;
use crate::quant::ggml::dequant::dequantize_blocks;
use crate::quant::ggml::types::{supported_list, GgmlType};

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most 4 dimensions (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;
/// Arrays nested deeper than this are refused (nothing real nests more than one level).
const MAX_ARRAY_DEPTH: u32 = 8;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    U64(u64),
    I64(i64),
    F64(f64),
    /// An array; all items have the same type (`item_type`, the GGUF value type id), possibly arrays themselves.
    Array {
        item_type: u32,
        items: Vec<GgufValue>,
    },
}

impl GgufValue {
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::F32(_) => "f32",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F64(_) => "f64",
            GgufValue::Array { .. } => "array",
        }
    }

    /// Any integer type that fits in u64 (negative values do not).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U8(v) => Some(v as i64),
            GgufValue::U16(v) => Some(v as i64),
            GgufValue::U32(v) => Some(v as i64),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I8(v) => Some(v as i64),
            GgufValue::I16(v) => Some(v as i64),
            GgufValue::I32(v) => Some(v as i64),
            GgufValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Any float or integer value as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array { items, .. } => Some(items),
            _ => None,
        }
    }

    /// A JSON rendering (arrays as lists), for debugging and dumps.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            GgufValue::U8(v) => Value::from(*v),
            GgufValue::I8(v) => Value::from(*v),
            GgufValue::U16(v) => Value::from(*v),
            GgufValue::I16(v) => Value::from(*v),
            GgufValue::U32(v) => Value::from(*v),
            GgufValue::I32(v) => Value::from(*v),
            GgufValue::F32(v) => Value::from(*v as f64),
            GgufValue::Bool(v) => Value::from(*v),
            GgufValue::String(v) => Value::from(v.clone()),
            GgufValue::U64(v) => Value::from(*v),
            GgufValue::I64(v) => Value::from(*v),
            GgufValue::F64(v) => Value::from(*v),
            GgufValue::Array { items, .. } => Value::Array(items.iter().map(|v| v.to_json()).collect()),
        }
    }
}

/// One tensor's header entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions as GGUF stores them: innermost (contiguous) first.
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Absolute byte range of the data in the file; `None` for an unknown type (size unknown).
    pub data_range: Option<(usize, usize)>,
}

impl TensorInfo {
    /// Shape in row-major / PyTorch order (GGUF dims reversed).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
    pub fn numel(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }
}

enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed, memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    version: u32,
    alignment: u64,
    data_offset: u64,
    /// Metadata in file order.
    metadata: Vec<(String, GgufValue)>,
    meta_index: BTreeMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: BTreeMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked little-endian cursor over the file bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, msg: impl fmt::Display) -> ModelError {
        ModelError::format(self.path, format!("{msg} (at byte {} of {})", self.pos, self.buf.len()))
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!("truncated file: {what} needs {n} bytes, {} left", self.remaining())));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            return Err(self.err(format!(
                "{what}: string length {len} runs past the end of the file ({} bytes left)",
                self.remaining()
            )));
        }
        let bytes = self.take(len as usize, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            // llama.cpp accepts any bytes; keep the value rather than refusing the file.
            Err(_) => Ok(String::from_utf8_lossy(bytes).into_owned()),
        }
    }

    /// The smallest encoded size of a value of this type (to bound array lengths before allocating).
    fn min_value_size(&self, ty: u32, what: &str) -> Result<usize> {
        Ok(match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 => 8,
            9 => 12,
            10..=12 => 8,
            other => return Err(self.err(format!("{what}: unknown metadata value type {other}"))),
        })
    }

    fn value(&mut self, ty: u32, what: &str, depth: u32) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(self.u8(what)?),
            1 => GgufValue::I8(self.u8(what)? as i8),
            2 => GgufValue::U16(self.u16(what)?),
            3 => GgufValue::I16(self.u16(what)? as i16),
            4 => GgufValue::U32(self.u32(what)?),
            5 => GgufValue::I32(self.u32(what)? as i32),
            6 => GgufValue::F32(f32::from_bits(self.u32(what)?)),
            7 => match self.u8(what)? {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.err(format!("{what}: bool value {b} is neither 0 nor 1"))),
            },
            8 => GgufValue::String(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!("{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}")));
                }
                let item_type = self.u32(what)?;
                let len = self.u64(what)?;
                let min = self.min_value_size(item_type, what)?;
                if len.saturating_mul(min as u64) > self.remaining() as u64 {
                    return Err(self.err(format!(
                        "{what}: array of {len} items of type {item_type} runs past the end of the file"
                    )));
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(item_type, what, depth + 1)?);
                }
                GgufValue::Array { item_type, items }
            }
            10 => GgufValue::U64(self.u64(what)?),
            11 => GgufValue::I64(self.u64(what)? as i64),
            12 => GgufValue::F64(f64::from_bits(self.u64(what)?)),
            other => return Err(self.err(format!("{what}: unknown metadata value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Memory-map and parse a GGUF file.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| ModelError::io(&path, e))?;
        // SAFETY: the map is read-only; like every mmap-based loader we assume the file is not truncated or
        // rewritten by another process while we hold it.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
        Self::parse(path, Storage::Mmap(mmap))
    }

    /// Parse GGUF bytes held in memory; `path` is only used in error messages.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<GgufFile> {
        Self::parse(path.into(), Storage::Owned(bytes))
    }

    fn parse(path: PathBuf, storage: Storage) -> Result<GgufFile> {
        let buf = storage.bytes();
        let mut r = Reader { buf, pos: 0, path: &path };
        let magic = r
            .take(4, "magic")
            .map_err(|_| ModelError::format(&path, format!("not a GGUF file: only {} bytes long", buf.len())))?;
        if magic != GGUF_MAGIC {
            return Err(ModelError::format(
                &path,
                format!("not a GGUF file: bad magic {:02x?} (expected \"GGUF\")", magic),
            ));
        }
        let version = r.u32("version")?;
        if version == 1 {
            return Err(ModelError::format(&path, "GGUF version 1 is not supported (only 2 and 3)"));
        }
        if version != 2 && version != 3 {
            let hint =
                if version.swap_bytes() == 2 || version.swap_bytes() == 3 { " (a big-endian file?)" } else { "" };
            return Err(ModelError::format(
                &path,
                format!("unsupported GGUF version {version}{hint}; only 2 and 3 are read"),
            ));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // Each KV needs at least 8 (key length) + 4 (type) + 1 bytes; each tensor info at least 8+4+4+8.
        if n_kv.saturating_mul(13) > r.remaining() as u64 {
            return Err(r.err(format!("metadata count {n_kv} is larger than the file can hold")));
        }
        if n_tensors.saturating_mul(24) > r.remaining() as u64 {
            return Err(r.err(format!("tensor count {n_tensors} is larger than the file can hold")));
        }

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut meta_index = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key #{i}"))?;
            let ty = r.u32(&format!("type of metadata `{key}`"))?;
            let value = r.value(ty, &format!("metadata `{key}`"), 0)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(r.err(format!("metadata key `{key}` appears twice")));
            }
            metadata.push((key, value));
        }

        let alignment = match meta_index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(ModelError::format(
                        &path,
                        format!("general.alignment is {v:?}; it must be a power of two"),
                    ))
                }
            },
        };

        let mut infos = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(&format!("name of tensor #{i}"))?;
            let what = format!("tensor `{name}`");
            let n_dims = r.u32(&what)?;
            if n_dims > MAX_DIMS {
                return Err(r.err(format!("{what} has {n_dims} dimensions; ggml allows at most {MAX_DIMS}")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&what)?);
            }
            let ty = r.u32(&what)?;
            let offset = r.u64(&what)?;
            infos.push((name, dims, GgmlType::from_id(ty), offset));
        }
        let header_end = r.pos as u64;
        let data_offset = header_end.div_ceil(alignment) * alignment;
        let file_len = buf.len() as u64;

        let mut tensors = Vec::with_capacity(infos.len());
        let mut tensor_index = BTreeMap::new();
        for (name, dims, dtype, offset) in infos {
            let fail = |msg: String| ModelError::format(&path, format!("tensor `{name}`: {msg}"));
            let mut numel: u64 = 1;
            for &d in &dims {
                numel = numel.checked_mul(d).ok_or_else(|| fail(format!("dimensions {dims:?} overflow")))?;
            }
            if offset % alignment != 0 {
                return Err(fail(format!("data offset {offset} is not a multiple of the alignment {alignment}")));
            }
            let data_range = match dtype.block_layout() {
                None => None,
                Some((block, bytes)) => {
                    let ne0 = dims.first().copied().unwrap_or(1);
                    if ne0 % block as u64 != 0 {
                        return Err(fail(format!(
                            "innermost dimension {ne0} is not a multiple of the {dtype} block size {block}"
                        )));
                    }
                    let size = (numel / block as u64)
                        .checked_mul(bytes as u64)
                        .ok_or_else(|| fail("data size overflows".into()))?;
                    let start = data_offset
                        .checked_add(offset)
                        .ok_or_else(|| fail(format!("data offset {offset} overflows")))?;
                    let end = start.checked_add(size).ok_or_else(|| fail("data size overflows".into()))?;
                    if end > file_len {
                        return Err(fail(format!(
                            "data (bytes {start}..{end}, {dtype} {dims:?}) runs past the end of the file ({file_len} bytes): truncated?"
                        )));
                    }
                    Some((start as usize, end as usize))
                }
            };
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(fail("appears twice".into()));
            }
            tensors.push(TensorInfo { name, dims, dtype, offset, data_range });
        }

        Ok(GgufFile { path, storage, version, alignment, data_offset, metadata, meta_index, tensors, tensor_index })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// Absolute offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn config_err(&self, key: &str, msg: String) -> ModelError {
        ModelError::Config { path: self.path.clone(), key: key.to_owned(), msg }
    }

    fn typed<T>(&self, key: &str, want: &str, f: impl Fn(&GgufValue) -> Option<T>) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| {
                self.config_err(key, format!("expected {want}, found {} {}", v.type_name(), short_debug(v)))
            }),
        }
    }

    /// A string value; `Ok(None)` when absent, an error when present with another type.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.config_err(key, format!("expected a string, found {}", v.type_name()))),
        }
    }
    /// An integer value of any integer type that fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>> {
        self.typed(key, "an unsigned 32-bit integer", |v| v.as_u64().and_then(|x| u32::try_from(x).ok()))
    }
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "an unsigned integer", |v| v.as_u64())
    }
    pub fn get_i64(&self, key: &str) -> Result<Option<i64>> {
        self.typed(key, "an integer", |v| v.as_i64())
    }
    /// A float (f32 or f64; integers are accepted too).
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        self.typed(key, "a number", |v| v.as_f64().map(|x| x as f32))
    }
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "a number", |v| v.as_f64())
    }
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a bool", |v| v.as_bool())
    }
    pub fn get_array(&self, key: &str) -> Result<Option<&[GgufValue]>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::Array { items, .. }) => Ok(Some(items)),
            Some(v) => Err(self.config_err(key, format!("expected an array, found {}", v.type_name()))),
        }
    }
    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(items) = self.get_array(key)? else { return Ok(None) };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .ok_or_else(|| self.config_err(key, format!("item {i} is {}, expected a string", v.type_name())))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
    /// An array of numbers as f32.
    pub fn get_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>> {
        let Some(items) = self.get_array(key)? else { return Ok(None) };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| self.config_err(key, format!("item {i} is {}, expected a number", v.type_name())))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
    /// An array of integers as i64.
    pub fn get_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(items) = self.get_array(key)? else { return Ok(None) };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_i64()
                    .ok_or_else(|| self.config_err(key, format!("item {i} is {}, expected an integer", v.type_name())))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")?.ok_or_else(|| self.config_err("general.architecture", "missing".into()))
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
    fn require(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_info(name)
            .ok_or_else(|| ModelError::MissingTensor { path: self.path.clone(), name: name.to_owned() })
    }

    /// The raw bytes of a tensor's data.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.require(name)?;
        let (start, end) = info.data_range.ok_or_else(|| self.unsupported(info))?;
        Ok(&self.storage.bytes()[start..end])
    }

    /// The error for a tensor whose type cannot be read: it names the file, the tensor, its type and the types
    /// we read.
    pub(crate) fn unsupported(&self, info: &TensorInfo) -> ModelError {
        ModelError::UnsupportedDtype {
            path: self.path.clone(),
            name: info.name.clone(),
            dtype: info.dtype.to_string(),
            supported: supported_list(),
        }
    }

    /// Dequantize a tensor (by GGUF name) to f32, shape in row-major order (GGUF dims reversed).
    pub fn dequantize(&self, name: &str) -> Result<HostTensor> {
        let info = self.require(name)?;
        if !info.dtype.is_supported() {
            return Err(self.unsupported(info));
        }
        let bytes = self.tensor_bytes(name)?;
        let mut out = vec![0f32; info.numel()];
        dequantize_blocks(info.dtype, bytes, &mut out)
            .map_err(|msg| ModelError::format(&self.path, format!("tensor `{name}`: {msg}")))?;
        Ok(HostTensor { shape: info.shape(), data: out })
    }
}

fn short_debug(v: &GgufValue) -> String {
    let s = format!("{v:?}");
    if s.len() > 80 {
        format!(
            "{}...",
            &s[..s.char_indices().take_while(|(i, _)| *i < 77).last().map(|(i, c)| i + c.len_utf8()).unwrap_or(0)]
        )
    } else {
        s
    }
}
