//! f32 safetensors files of named tensors (2-D matrices, and DoRA's 1-D magnitudes): what adapter files (`adapter_model.safetensors`) and AdamW's
//! moments (`optimizer.safetensors`) are stored as. Its own module so that [`super::params`] and
//! [`super::optim`] both use it without reaching into each other.
use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Tensor `name` of `st` (read from `path`, named in errors) as f32 values, checked to be F32 of `shape`.
pub fn read_f32(st: &safetensors::SafeTensors, path: &Path, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let t = st.tensor(name).with_context(|| format!("{}: no tensor `{name}`", path.display()))?;
    if t.dtype() != safetensors::Dtype::F32 || t.shape() != shape {
        bail!("{}: tensor `{name}` is {:?} {:?}, expected F32 {:?}", path.display(), t.dtype(), t.shape(), shape);
    }
    Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// Writes `tensors` (name, shape, values) with `meta` as one safetensors file, atomically.
pub fn write_f32_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, &[f32])],
    meta: HashMap<String, String>,
) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| bytemuck::cast_slice(v).to_vec()).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map_err(|e| anyhow::anyhow!("tensor {n}: {e}"))?;
            Ok((n.clone(), v))
        })
        .collect::<Result<Vec<_>>>()?;
    let data = safetensors::tensor::serialize(views, Some(meta)).context("serialising safetensors")?;
    lapidary_model::io::atomic::write_atomic(path, &data)?;
    Ok(())
}
