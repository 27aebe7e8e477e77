//! The trainable parameters: every LoRA `A` and `B` of the model, as host [`Param`]s in a fixed order
//! (layer, projection, A before B), and the way back into the model's tensors.
use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::tensor::{Tensor, TensorData};
use lapidary_model::adapter::{linears_mut, peft_key, AdapterConfig};
use lapidary_model::layers::lora::LoraAdapter;
use lapidary_model::quant::FrozenMatmul;
use lapidary_model::Gemma;

use super::optim::{read_f32, write_f32_safetensors, Param};

/// Every adapter of the model with its PEFT module path (`layers.3.mlp.up_proj`), in a fixed order.
pub fn adapters_mut<B: FrozenMatmul>(model: &mut Gemma<B>) -> Vec<(String, &mut LoraAdapter<B>)> {
    linears_mut(model).into_iter().filter_map(|(module, lin)| lin.adapter.as_mut().map(|ad| (module, ad))).collect()
}

fn host<B: burn::tensor::backend::Backend>(t: &Tensor<B, 2>) -> Vec<f32> {
    t.to_data().convert::<f32>().to_vec().unwrap_or_default()
}

/// The adapters' current values.
pub fn read_params<B: FrozenMatmul>(model: &mut Gemma<B>) -> Vec<Param> {
    let mut out = Vec::new();
    for (module, ad) in adapters_mut(model) {
        for (ab, t) in [("lora_A", &ad.a), ("lora_B", &ad.b)] {
            let [r, c] = t.dims();
            out.push(Param { name: peft_key(&module, ab), shape: [r, c], value: host(t) });
        }
    }
    out
}

/// Puts `params` into the model; `train` marks them as requiring gradients.
pub fn write_params<B: FrozenMatmul>(model: &mut Gemma<B>, params: &[Param], train: bool) {
    let device = model.device.clone();
    let make = |p: &Param| {
        let t = Tensor::<B, 2>::from_data(TensorData::new(p.value.clone(), p.shape.to_vec()), &device);
        if train {
            t.require_grad()
        } else {
            t
        }
    };
    for (i, (_, ad)) in adapters_mut(model).into_iter().enumerate() {
        ad.a = make(&params[2 * i]);
        ad.b = make(&params[2 * i + 1]);
    }
}

/// Writes `params` as a PEFT adapter directory: `adapter_model.safetensors` (f32, PEFT's key names) and
/// `adapter_config.json`. Each file goes to a temporary name first.
pub fn write_adapter(params: &[Param], cfg: &AdapterConfig, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let tensors: Vec<(String, [usize; 2], &[f32])> =
        params.iter().map(|p| (p.name.clone(), p.shape, p.value.as_slice())).collect();
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    write_f32_safetensors(&dir.join("adapter_model.safetensors"), &tensors, meta)?;
    let json = serde_json::to_vec_pretty(cfg)?;
    lapidary_model::adapter::write_atomic(&dir.join("adapter_config.json"), &json)?;
    Ok(())
}

/// Reads the values of `like` (same names and shapes) from an adapter directory written by [`write_adapter`].
pub fn read_adapter(like: &[Param], dir: &Path) -> Result<Vec<Param>> {
    let path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    if st.len() != like.len() {
        bail!("{}: {} tensors, this run trains {}", path.display(), st.len(), like.len());
    }
    like.iter()
        .map(|p| Ok(Param { name: p.name.clone(), shape: p.shape, value: read_f32(&st, &path, &p.name, p.shape)? }))
        .collect()
}
