//! The trainable parameters: every LoRA `A` and `B` (and DoRA magnitude) of the model in a fixed order
//! (layer, projection, A, B, magnitude: `LoraAdapter::trainables`), kept on the model's device as ONE flat f32 tensor ([`Params`]), and the host form
//! ([`Param`]) that adapter and checkpoint files are written from.
//!
//! Why flat: the optimizer then runs a dozen whole-buffer ops per step instead of a dozen per matrix (Gemma
//! 2B with r = 16 on every projection has 252 of them: ~3,000 kernel launches a step on a GPU), and nothing
//! crosses to the host in a step but the loss and the gradient norm. The model's adapters are views of the
//! flat tensor (`slice` + `reshape`), made leaves of their own so autodiff gives one gradient per matrix.
use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use lapidary_model::gemma::linears_mut;
use lapidary_model::nn::lora::LoraAdapter;
use lapidary_model::peft::adapter::{peft_key, peft_shape, to_peft_name, AdapterConfig};
use lapidary_model::Gemma;
use lapidary_model::GemmaBackend;

use super::tensor_file::{read_f32, write_f32_safetensors};

/// One trainable matrix on the host: a LoRA `A` or `B`, or a DoRA magnitude (`[1, out]`; 1-D in PEFT's
/// file), named by its PEFT key.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// e.g. `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`
    pub name: String,
    pub shape: [usize; 2],
    pub value: Vec<f32>,
}

/// Where one matrix lives in the flat buffers.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    /// The PEFT key.
    pub name: String,
    pub shape: [usize; 2],
    /// First element in the flat buffer.
    pub offset: usize,
}

impl Slot {
    pub fn len(&self) -> usize {
        self.shape[0] * self.shape[1]
    }

    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// Every trainable matrix, end to end in one f32 tensor on the model's device.
#[derive(Debug, Clone)]
pub struct Params<B: Backend> {
    pub slots: Vec<Slot>,
    /// `[Σ len]`
    pub flat: Tensor<B, 1>,
}

/// Every adapter of the model with its PEFT module path (`layers.3.mlp.up_proj`), in a fixed order.
pub fn adapters_mut<B: GemmaBackend>(model: &mut Gemma<B>) -> Vec<(String, &mut LoraAdapter<B>)> {
    linears_mut(model).into_iter().filter_map(|(module, lin)| lin.adapter.as_mut().map(|ad| (module, ad))).collect()
}

/// The slots of `shapes` (PEFT key, shape) laid end to end.
fn layout(shapes: impl IntoIterator<Item = (String, [usize; 2])>) -> Vec<Slot> {
    let mut offset = 0;
    shapes
        .into_iter()
        .map(|(name, shape)| {
            let s = Slot { name, shape, offset };
            offset += s.len();
            s
        })
        .collect()
}

impl<B: GemmaBackend> Params<B> {
    /// The adapters' current values, gathered on the device.
    pub fn read(model: &mut Gemma<Autodiff<B>>) -> Self {
        let mut shapes = Vec::new();
        let mut parts = Vec::new();
        for (module, ad) in adapters_mut(model) {
            for (ab, t) in ad.trainables() {
                shapes.push((peft_key(&module, ab), t.dims()));
                parts.push(t.clone().inner().reshape([-1]));
            }
        }
        let flat = if parts.is_empty() { Tensor::zeros([0], &model.device) } else { Tensor::cat(parts, 0) };
        Self { slots: layout(shapes), flat }
    }

    /// Puts the values into the model as views of the flat tensor; `train` makes each a leaf that requires
    /// gradients.
    pub fn write(&self, model: &mut Gemma<Autodiff<B>>, train: bool) {
        let view = |s: &Slot| {
            let t =
                Tensor::<Autodiff<B>, 2>::from_inner(self.flat.clone().narrow(0, s.offset, s.len()).reshape(s.shape));
            if train {
                t.require_grad()
            } else {
                t
            }
        };
        let mut slots = self.slots.iter();
        for (_, ad) in adapters_mut(model) {
            for t in ad.trainables_mut() {
                *t = view(slots.next().expect("one slot per trainable tensor"));
            }
        }
    }
}

impl<B: Backend> Params<B> {
    pub fn len(&self) -> usize {
        self.slots.last().map_or(0, |s| s.offset + s.len())
    }

    /// Host copies, one per matrix (one download).
    pub fn to_host(&self) -> Vec<Param> {
        split(&self.slots, &download(&self.flat))
    }

    /// `like`'s layout with `values` (same names and shapes), uploaded in one piece.
    pub fn from_host(values: &[Param], device: &B::Device) -> Self {
        let slots = layout(values.iter().map(|p| (p.name.clone(), p.shape)));
        let flat: Vec<f32> = values.iter().flat_map(|p| p.value.iter().copied()).collect();
        Self { slots, flat: upload(flat, device) }
    }
}

/// A flat f32 tensor's values.
pub fn download<B: Backend>(t: &Tensor<B, 1>) -> Vec<f32> {
    t.to_data().convert::<f32>().to_vec().unwrap_or_default()
}

pub fn upload<B: Backend>(v: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

/// `flat` cut into the matrices of `slots`.
pub fn split(slots: &[Slot], flat: &[f32]) -> Vec<Param> {
    slots.iter().map(|s| Param { name: s.name.clone(), shape: s.shape, value: flat[s.range()].to_vec() }).collect()
}

/// Writes `params` as a PEFT adapter directory: `adapter_model.safetensors` (f32, PEFT's key names) and
/// `adapter_config.json`. Each file goes to a temporary name first.
pub fn write_adapter(params: &[Param], cfg: &AdapterConfig, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let tensors: Vec<(String, Vec<usize>, &[f32])> =
        params.iter().map(|p| (to_peft_name(&p.name, cfg), peft_shape(&p.name, p.shape), p.value.as_slice())).collect();
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    write_f32_safetensors(&dir.join("adapter_model.safetensors"), &tensors, meta)?;
    let json = serde_json::to_vec_pretty(cfg)?;
    lapidary_model::io::atomic::write_atomic(&dir.join("adapter_config.json"), &json)?;
    Ok(())
}

/// Reads the values of `like` (same names and shapes) from an adapter directory written by [`write_adapter`].
pub fn read_adapter(like: &[Slot], dir: &Path) -> Result<Vec<Param>> {
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("{}: cannot read", cfg_path.display()))?;
    let cfg: AdapterConfig =
        serde_json::from_str(&text).with_context(|| format!("{}: not an adapter config", cfg_path.display()))?;
    let cfg = &cfg;
    let path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    if st.len() != like.len() {
        bail!("{}: {} tensors, this run trains {}", path.display(), st.len(), like.len());
    }
    like.iter()
        .map(|s| {
            let value = read_f32(&st, &path, &to_peft_name(&s.name, cfg), &peft_shape(&s.name, s.shape))?;
            Ok(Param { name: s.name.clone(), shape: s.shape, value })
        })
        .collect()
}
