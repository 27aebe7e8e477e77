//! A Hugging Face model directory's weights: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`; F32, F16 and BF16 are converted to f32 on read.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::{ModelError, Result};
use crate::io::weights::{HostTensor, WeightSource};

pub struct SafetensorsDir {
    dir: PathBuf,
    /// One memory map per shard file.
    shards: Vec<(PathBuf, Mmap)>,
    /// Tensor name → shard index.
    index: BTreeMap<String, usize>,
}

impl SafetensorsDir {
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::format(&index_path, format!("not valid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::format(&index_path, "no `weight_map` object"))?;
            let mut names: Vec<String> = map.values().filter_map(|f| f.as_str().map(str::to_string)).collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|f| dir.join(f)).collect()
        } else {
            let single = dir.join("model.safetensors");
            if !single.exists() {
                return Err(ModelError::format(
                    dir,
                    "no model.safetensors or model.safetensors.index.json in this model directory",
                ));
            }
            vec![single]
        };
        let mut shards = Vec::new();
        let mut index = BTreeMap::new();
        for path in files {
            let file = std::fs::File::open(&path).map_err(|e| ModelError::io(&path, e))?;
            // SAFETY: the file is opened read-only and not modified while we hold the map.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| {
                ModelError::format(&path, format!("not a valid safetensors file (truncated or corrupt?): {e}"))
            })?;
            for name in st.names() {
                index.insert(name.to_string(), shards.len());
            }
            shards.push((path, mmap));
        }
        Ok(Self { dir: dir.to_path_buf(), shards, index })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// A tensor as stored: its shard's path, dtype, shape and bytes (for packed formats read as they are).
    pub fn raw(&self, name: &str) -> Result<(&Path, Dtype, Vec<usize>, &[u8])> {
        let (path, view) = self.view(name)?;
        Ok((path, view.dtype(), view.shape().to_vec(), view.data()))
    }

    fn view(&self, name: &str) -> Result<(&Path, safetensors::tensor::TensorView<'_>)> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { path: self.dir.clone(), name: name.to_string() })?;
        let (path, mmap) = &self.shards[i];
        let st = SafeTensors::deserialize(mmap).map_err(|e| ModelError::format(path, e.to_string()))?;
        let view = st.tensor(name).map_err(|e| ModelError::format(path, format!("tensor `{name}`: {e}")))?;
        Ok((path, view))
    }
}

pub fn to_f32(path: &Path, name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => {
            return Err(ModelError::UnsupportedDtype {
                path: path.to_path_buf(),
                name: name.to_string(),
                dtype: format!("{other:?}"),
                supported: "F32, F16, BF16".into(),
            })
        }
    })
}

impl WeightSource for SafetensorsDir {
    fn path(&self) -> &Path {
        &self.dir
    }
    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.view(name)?.1.shape().to_vec())
    }
    fn get(&self, name: &str) -> Result<HostTensor> {
        let (path, view) = self.view(name)?;
        let data = to_f32(path, name, view.dtype(), view.data())?;
        Ok(HostTensor::new(view.shape().to_vec(), data))
    }
}
