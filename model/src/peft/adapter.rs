//! LoRA adapters in PEFT's format: `adapter_config.json` + `adapter_model.safetensors` with PEFT's key names
//! (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`, `[r, in]`; `lora_B.weight`, `[out, r]`;
//! with `use_dora`, also `….q_proj.lora_magnitude_vector`, `[out]`, without `.weight`, as PEFT saves it).
use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::gemma::model::{linears, linears_mut, Gemma};
use crate::io::atomic::write_atomic;
use crate::io::safetensors::to_f32;
use crate::nn::dora::Dora;
use crate::nn::lora::{lora_scale, LoraAdapter, MAGNITUDE, TARGETS};
use crate::ops::gemma_backend::GemmaBackend;

/// The fields of PEFT's `adapter_config.json` we read and write (PEFT ignores none of them; we ignore the rest).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdapterConfig {
    #[serde(default = "lora_type")]
    pub peft_type: String,
    /// PEFT writes `null` when `LoraConfig` was given no task type; read that as CAUSAL_LM.
    #[serde(default = "causal_lm", deserialize_with = "null_as_causal_lm")]
    pub task_type: String,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: TargetModules,
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA (`crate::nn::dora`): a trained magnitude per output row of each targeted projection.
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default = "none_bias")]
    pub bias: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub inference_mode: bool,
    /// PEFT's `target_parameters`: Gemma 4's routed experts (`experts.gate_up_proj`, `experts.down_proj`).
    #[serde(default, deserialize_with = "null_as_empty", skip_serializing_if = "Vec::is_empty")]
    pub target_parameters: Vec<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// The expert parameters PEFT's `target_parameters` can name in a Gemma 4 layer, in the order the layer
/// defines them (which is the order PEFT nests their wrappers: the first is the inner `base_layer`).
pub const EXPERT_PARAMETERS: [&str; 2] = ["experts.gate_up_proj", "experts.down_proj"];

/// PEFT's name for a key under our module paths (`gemma::model::EXPERTS_GATE_UP` is PEFT's path when both expert
/// parameters are targeted; with only `gate_up_proj` its wrapper is the outer one, `experts`).
pub fn to_peft_name(name: &str, cfg: &AdapterConfig) -> String {
    if only_gate_up(cfg) {
        name.replace(".experts.base_layer.lora_", ".experts.lora_")
    } else {
        name.to_string()
    }
}

/// The inverse of [`to_peft_name`].
pub fn from_peft_name(name: &str, cfg: &AdapterConfig) -> String {
    if only_gate_up(cfg) {
        name.replace(".experts.lora_", ".experts.base_layer.lora_")
    } else {
        name.to_string()
    }
}

fn only_gate_up(cfg: &AdapterConfig) -> bool {
    cfg.target_parameters.iter().any(|t| t.ends_with(EXPERT_PARAMETERS[0]))
        && !cfg.target_parameters.iter().any(|t| t.ends_with(EXPERT_PARAMETERS[1]))
}

fn lora_type() -> String {
    "LORA".into()
}
fn causal_lm() -> String {
    "CAUSAL_LM".into()
}
fn null_as_causal_lm<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_else(causal_lm))
}
fn none_bias() -> String {
    "none".into()
}

/// PEFT writes `target_modules` as a list (or a regex string, which we don't support).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TargetModules {
    List(Vec<String>),
    Regex(String),
}

impl AdapterConfig {
    pub fn new(r: usize, alpha: f64, dropout: f64, targets: &[String], rslora: bool, base: Option<String>) -> Self {
        let mut t = targets.to_vec();
        t.sort();
        Self {
            peft_type: lora_type(),
            task_type: causal_lm(),
            r,
            lora_alpha: alpha,
            lora_dropout: dropout,
            target_modules: TargetModules::List(t),
            use_rslora: rslora,
            use_dora: false,
            base_model_name_or_path: base,
            bias: none_bias(),
            fan_in_fan_out: false,
            inference_mode: true,
            target_parameters: Vec::new(),
        }
    }

    /// The same config with LoRA on these expert parameters too (PEFT's `target_parameters`).
    pub fn with_target_parameters(mut self, params: &[String]) -> Self {
        self.target_parameters = params.to_vec();
        self
    }
    /// The same config with DoRA on (or off).
    pub fn with_dora(mut self, on: bool) -> Self {
        self.use_dora = on;
        self
    }
    pub fn scale(&self) -> f64 {
        lora_scale(self.r, self.lora_alpha, self.use_rslora)
    }
}

pub const PEFT_PREFIX: &str = "base_model.model.model.layers";

/// PEFT's key for one tensor (`lora_A`, `lora_B` or DoRA's `lora_magnitude_vector`) of one module
/// (`layers.3.mlp.up_proj`). PEFT saves the magnitude without `.weight`.
pub fn peft_key(module: &str, ab: &str) -> String {
    if ab == MAGNITUDE {
        format!("base_model.model.model.{module}.{ab}")
    } else {
        format!("base_model.model.model.{module}.{ab}.weight")
    }
}

/// A tensor's shape in PEFT's file: the magnitude, `[1, out]` here, is 1-D there.
pub fn peft_shape(name: &str, shape: [usize; 2]) -> Vec<usize> {
    if name.ends_with(MAGNITUDE) {
        vec![shape[1]]
    } else {
        shape.to_vec()
    }
}

fn short(module: &str) -> &str {
    module.rsplit('.').next().unwrap_or(module)
}

/// Adds fresh adapters (PEFT's default init) to the targeted projections.
pub fn init_lora<B: GemmaBackend>(model: &mut Gemma<B>, cfg: &AdapterConfig, seed: u64) -> Result<()> {
    let targets = match &cfg.target_modules {
        TargetModules::List(l) => l.clone(),
        TargetModules::Regex(r) => {
            return Err(ModelError::Other(format!(
                "regex target_modules `{r}` are not supported; list the projections"
            )))
        }
    };
    for t in &targets {
        if !TARGETS.contains(&t.as_str()) {
            return Err(ModelError::Other(format!(
                "unknown LoRA target `{t}` (expected some of {})",
                TARGETS.join(", ")
            )));
        }
    }
    let mut experts = Vec::new();
    for p in &cfg.target_parameters {
        let Some(e) = EXPERT_PARAMETERS.iter().position(|x| p == x || p.ends_with(&format!(".{x}"))) else {
            return Err(ModelError::Other(format!(
                "unknown LoRA target parameter `{p}` (expected some of {})",
                EXPERT_PARAMETERS.join(", ")
            )));
        };
        experts.push(e);
    }
    if !experts.is_empty() && cfg.lora_dropout != 0.0 {
        // As PEFT: LoRA on a parameter is merged into the weight per forward, where dropout cannot apply.
        return Err(ModelError::Other(format!(
            "LoRA on the experts (target_parameters) needs lora_dropout = 0, as in PEFT (got {})",
            cfg.lora_dropout
        )));
    }
    if !experts.is_empty() && cfg.use_dora {
        // PEFT's ParamWrapper raises "does not work with use_dora=True".
        return Err(ModelError::Other(format!(
            "use_dora with LoRA on the experts (target_parameters {:?}): PEFT does not support DoRA on expert \
             parameters; drop one of them",
            cfg.target_parameters
        )));
    }
    if !experts.is_empty() && model.config.moe.is_none() {
        return Err(ModelError::Other(format!(
            "target_parameters {:?}: this model has no experts (only Gemma 4 mixture-of-experts checkpoints do)",
            cfg.target_parameters
        )));
    }
    let device = model.device.clone();
    for (module, lin) in linears_mut(model) {
        let expert = expert_of(&module);
        let wanted = match expert {
            Some(e) => experts.contains(&e),
            None => targets.iter().any(|t| t == short(&module)),
        };
        if wanted {
            lin.init_adapter(cfg.r, cfg.scale(), cfg.lora_dropout, cfg.use_dora, seed, &device);
        }
    }
    Ok(())
}

/// Which of [`EXPERT_PARAMETERS`] a module path (from `gemma::model::linears`) is, if an expert stack.
fn expert_of(module: &str) -> Option<usize> {
    use crate::gemma::model::{EXPERTS_DOWN, EXPERTS_GATE_UP};
    if module.ends_with(&format!(".{EXPERTS_GATE_UP}")) {
        Some(0)
    } else if module.ends_with(&format!(".{EXPERTS_DOWN}")) {
        Some(1)
    } else {
        None
    }
}

/// Loads a PEFT adapter directory onto the model (replacing any adapter it had).
/// A PEFT LoRA adapter directory's config and tensors (f32, by PEFT key, sorted by name), checked to be LoRA.
pub fn read_adapter_files(dir: &Path) -> Result<(AdapterConfig, AdapterTensors)> {
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
    let cfg: AdapterConfig = serde_json::from_str(&text)
        .map_err(|e| ModelError::format(&cfg_path, format!("not a PEFT LoRA adapter config: {e}")))?;
    if cfg.peft_type != "LORA" {
        return Err(ModelError::Config {
            path: cfg_path,
            key: "peft_type".into(),
            msg: format!("`{}` is not LORA", cfg.peft_type),
        });
    }
    let st_path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&st_path).map_err(|e| ModelError::io(&st_path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| ModelError::format(&st_path, format!("not a valid safetensors file: {e}")))?;
    let mut tensors = AdapterTensors::new();
    for (name, view) in st.tensors() {
        let data = to_f32(&st_path, &name, view.dtype(), view.data())?;
        tensors.insert(from_peft_name(&name, &cfg), (view.shape().to_vec(), data));
    }
    Ok((cfg, tensors))
}

/// An adapter's tensors: PEFT key → (shape, f32 values).
pub type AdapterTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

pub fn load_adapter<B: GemmaBackend>(model: &mut Gemma<B>, dir: &Path) -> Result<AdapterConfig> {
    let (cfg, tensors) = read_adapter_files(dir)?;
    let st_path = dir.join("adapter_model.safetensors");
    let device = model.device.clone();
    let scale = cfg.scale();
    let mut used = 0;
    if !cfg.use_dora {
        if let Some(k) = tensors.keys().find(|k| k.ends_with(MAGNITUDE)) {
            return Err(ModelError::format(
                &st_path,
                format!("tensor `{k}` is DoRA's magnitude, but adapter_config.json does not set use_dora = true"),
            ));
        }
    }
    for (module, lin) in linears_mut(model) {
        lin.adapter = None;
        let key = |ab: &str| peft_key(&module, ab);
        let (Some(a), Some(b)) = (tensors.get(&key("lora_A")), tensors.get(&key("lora_B"))) else { continue };
        let (a_shape, b_shape) = lin.adapter_shapes(cfg.r);
        for (name, t, want) in [(key("lora_A"), a, a_shape), (key("lora_B"), b, b_shape)] {
            if t.0 != want {
                return Err(ModelError::Shape {
                    path: st_path.clone(),
                    name,
                    expected: want.to_vec(),
                    actual: t.0.clone(),
                });
            }
        }
        let dora = if cfg.use_dora {
            let name = key(MAGNITUDE);
            let Some((shape, m)) = tensors.get(&name) else {
                return Err(ModelError::format(
                    &st_path,
                    format!(
                        "no tensor `{name}`: adapter_config.json sets use_dora, which needs a magnitude per module"
                    ),
                ));
            };
            if lin.base.experts() > 1 {
                return Err(ModelError::format(
                    &st_path,
                    format!("`{name}`: DoRA on expert parameters (PEFT has none)"),
                ));
            }
            let want = vec![b_shape[0]];
            if *shape != want {
                return Err(ModelError::Shape { path: st_path.clone(), name, expected: want, actual: shape.clone() });
            }
            used += 1;
            Some(Dora::for_base(&lin.base, Some(m.clone()), &device))
        } else {
            None
        };
        let mut ad = LoraAdapter {
            a: Tensor::from_data(TensorData::new(a.1.clone(), a_shape), &device),
            b: Tensor::from_data(TensorData::new(b.1.clone(), b_shape), &device),
            scale,
            dropout: cfg.lora_dropout,
            dora,
        };
        // A loaded adapter is evaluated or merged as it is: its DoRA norm is computed once, not per call.
        if let Some(d) = &ad.dora {
            let norm = d.weight_norm(&lin.base, &ad.a, &ad.b, scale);
            ad.dora.as_mut().expect("just checked").norm = Some(norm);
        }
        lin.adapter = Some(ad);
        used += 2;
    }
    if used == 0 || used != tensors.len() {
        let unknown: Vec<&String> = tensors.keys().filter(|k| !k.starts_with(PEFT_PREFIX)).take(3).collect();
        return Err(ModelError::format(
            &st_path,
            format!(
                "{} of its {} tensors match this model's layers (is it an adapter for another model?){}",
                used,
                tensors.len(),
                if unknown.is_empty() { String::new() } else { format!("; unexpected keys such as {unknown:?}") }
            ),
        ));
    }
    Ok(cfg)
}

/// Writes the model's adapters as PEFT does, each file to a temporary name then renamed.
pub fn save_adapter<B: GemmaBackend>(model: &Gemma<B>, cfg: &AdapterConfig, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (module, lin) in linears(model) {
        let Some(ad) = &lin.adapter else { continue };
        for (ab, t) in ad.trainables() {
            let name = peft_key(&module, ab);
            let shape = peft_shape(&name, t.dims());
            let v: Vec<f32> = t.to_data().convert::<f32>().to_vec().unwrap_or_default();
            data.push((to_peft_name(&name, cfg), shape, bytemuck::cast_slice(&v).to_vec()));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, s, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map_err(|e| ModelError::Other(format!("adapter tensor {n}: {e}")))?;
            Ok((n.clone(), v))
        })
        .collect::<Result<_>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let bytes = safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| ModelError::Other(format!("serializing adapter: {e}")))?;
    write_atomic(&dir.join("adapter_model.safetensors"), &bytes)?;
    let json = serde_json::to_vec_pretty(cfg).map_err(|e| ModelError::Other(e.to_string()))?;
    write_atomic(&dir.join("adapter_config.json"), &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_config_with_null_task_type_reads() {
        let json = r#"{"peft_type": "LORA", "task_type": null, "r": 4, "lora_alpha": 8,
                       "target_modules": ["q_proj", "v_proj"], "use_rslora": true}"#;
        let cfg: AdapterConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg.task_type, "CAUSAL_LM");
        // rsLoRA: alpha / sqrt(r) = 8 / 2.
        assert_eq!(cfg.scale(), 4.0);
    }
}
