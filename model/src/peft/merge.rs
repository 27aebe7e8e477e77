//! Merging LoRA adapters into a base model, and writing a model as a directory transformers loads as it is.
//!
//! One adapter merges as PEFT's `merge_and_unload` does: `W' = W + w·s·B·A` (`s` = alpha/r or alpha/√r, `w`
//! the optional weight, 1 by default). Several adapters are first combined into one LoRA pair per projection
//! with the semantics of PEFT's `add_weighted_adapter` (peft 0.21, `tuners/lora/model.py` and
//! `utils/merge_utils.py`), then merged the same way. What PEFT does, checked against its source:
//! - `cat`: `A = [w₁s₁A₁; w₂s₂A₂; …]` stacked along the rank, `B = [B₁ B₂ …]`, scale 1. So `ΔW = Σ wᵢsᵢBᵢAᵢ`,
//!   exact; the ranks may differ.
//! - `linear`, `ties`, `dare_linear`, `dare_ties`: the A's and the B's are combined *separately*, the A's with
//!   weights `sign(wᵢsᵢ)·√|wᵢsᵢ|` and the B's with `√|wᵢsᵢ|`, and the result has scale 1. So `linear` gives
//!   `ΔW = (Σ√·Bᵢ)(Σ±√·Aᵢ)`, cross terms included (PEFT calls it "a very rough approximation"); ties/dare prune
//!   and sign-elect the factors, not `ΔW`. (Only PEFT's `*_svd` variants work on the full `ΔW`; they are not
//!   offered here.) These need equal ranks.
//! - `ties`: keep the `int(density·numel)` largest |values| of each factor, elect each entry's sign from the
//!   sum of the pruned (unweighted) factors (`>= 0` → +), and average the weighted entries that agree with it.
//! - `dare_*`: keep each entry with probability `density` and divide by `density`, then sum (`dare_linear`) or
//!   elect signs as ties (`dare_ties`). The masks come from our own seeded RNG: torch's stream cannot be
//!   reproduced, so only the distribution matches PEFT (bit-for-bit only at density 1, where nothing is pruned).
//! - A projection only some adapters target is combined from those adapters alone, as PEFT does.
//!
//! A DoRA adapter (`use_dora`) merges alone, as PEFT's `merge_and_unload` merges it
//! (`DoraLinearVariant.merge_safe`): `W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖`, the norm per output row of the
//! unmerged base plus the delta. Combining it with others, or weighting it, is refused: PEFT's
//! `add_weighted_adapter` gives the combination a fresh magnitude, dropping the trained ones.
//!
//! One deliberate difference: PEFT's combined adapter keeps `use_rslora` of the first adapter with
//! `lora_alpha = r = new_rank`, which scales it by `√new_rank` instead of 1 for rsLoRA adapters; we use 1.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};

use crate::error::{ModelError, Result};
use crate::gemma::model::Gemma;
use crate::gemma::model::{linears, linears_mut};
use crate::io::hf_dir::OutDtype;
use crate::io::weights::{HostTensor, WeightSource};
use crate::nn::dora::Dora;
use crate::nn::lora::LoraAdapter;
use crate::ops::gemma_backend::GemmaBackend;
use crate::peft::adapter::{load_adapter, AdapterConfig};

/// How several adapters are combined (PEFT's `combination_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Linear,
    Cat,
    Ties,
    DareLinear,
    DareTies,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "linear" => Method::Linear,
            "cat" => Method::Cat,
            "ties" => Method::Ties,
            "dare_linear" => Method::DareLinear,
            "dare_ties" => Method::DareTies,
            other => {
                return Err(format!(
                    "unknown merge method `{other}` (expected linear, cat, ties, dare_linear or dare_ties)"
                ))
            }
        })
    }
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Linear => "linear",
            Method::Cat => "cat",
            Method::Ties => "ties",
            Method::DareLinear => "dare_linear",
            Method::DareTies => "dare_ties",
        }
    }
    fn needs_density(self) -> bool {
        matches!(self, Method::Ties | Method::DareLinear | Method::DareTies)
    }
}

/// One projection's LoRA pair on the host: `ΔW = scale · B · A`. For a Gemma 4 expert stack (`experts > 1`),
/// PEFT's `ParamWrapper` layout: `A` `[r, in]` holds expert `e`'s rows at `e·r/E..`, `B` `[out, r]` its columns
/// `e, e + E, …`, and `ΔW` is `[experts, out, in]` (`scale · B_e · A_e` per expert).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPair {
    /// `[r, in]`, row-major.
    pub a: Vec<f32>,
    /// `[out, r]`, row-major.
    pub b: Vec<f32>,
    pub r: usize,
    pub inp: usize,
    pub out: usize,
    pub scale: f64,
    pub experts: usize,
    /// DoRA's magnitude `[out]`, for a DoRA adapter.
    pub magnitude: Option<Vec<f32>>,
}

impl LoraPair {
    /// `scale · B · A`, `[out, in]` row-major (f64 accumulation); `[experts, out, in]` for an expert stack.
    pub fn delta(&self) -> Vec<f32> {
        if self.experts > 1 {
            let (e_n, r) = (self.experts, self.r / self.experts);
            return (0..e_n)
                .flat_map(|e| {
                    let a = self.a[e * r * self.inp..(e + 1) * r * self.inp].to_vec();
                    let b = (0..self.out)
                        .flat_map(|o| (0..r).map(move |k| (o, k)))
                        .map(|(o, k)| self.b[o * self.r + k * e_n + e]);
                    let one = LoraPair {
                        a,
                        b: b.collect(),
                        r,
                        inp: self.inp,
                        out: self.out,
                        scale: self.scale,
                        experts: 1,
                        magnitude: None,
                    };
                    one.delta()
                })
                .collect();
        }
        let (r, inp) = (self.r, self.inp);
        let mut d = vec![0f32; self.out * inp];
        let mut acc = vec![0f64; inp];
        for (o, row) in d.chunks_mut(inp).enumerate() {
            acc.iter_mut().for_each(|x| *x = 0.0);
            for k in 0..r {
                let bk = self.b[o * r + k] as f64;
                for (x, av) in acc.iter_mut().zip(&self.a[k * inp..(k + 1) * inp]) {
                    *x += bk * *av as f64;
                }
            }
            for (y, x) in row.iter_mut().zip(&acc) {
                *y = (x * self.scale) as f32;
            }
        }
        d
    }
}

/// An adapter read for merging: its config and, per PEFT module path (`layers.0.self_attn.q_proj`), its pair
/// with the adapter's own scale.
#[derive(Debug, Clone)]
pub struct LoadedAdapter {
    pub dir: PathBuf,
    pub config: AdapterConfig,
    pub modules: BTreeMap<String, LoraPair>,
}

/// Reads a PEFT adapter for `model` (checked as `load_adapter` checks it: every tensor must fit a projection
/// of this model); leaves the model without adapters.
pub fn read_adapter<B: GemmaBackend>(model: &mut Gemma<B>, dir: &Path) -> Result<LoadedAdapter> {
    let config = load_adapter(model, dir)?;
    let mut modules = BTreeMap::new();
    for (name, lin) in linears(model) {
        let Some(ad) = &lin.adapter else { continue };
        let [r, inp] = ad.a.dims();
        let [out, _] = ad.b.dims();
        let host = |t: &Tensor<B, 2>| t.to_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
        let experts = lin.base.experts();
        let magnitude = ad.dora.as_ref().map(|d| host(&d.magnitude));
        modules.insert(
            name,
            LoraPair { a: host(&ad.a), b: host(&ad.b), r, inp, out, scale: ad.scale, experts, magnitude },
        );
    }
    set_adapters(model, &BTreeMap::new());
    Ok(LoadedAdapter { dir: dir.to_path_buf(), config, modules })
}

/// Puts `pairs` on the model's projections (and removes every other adapter).
pub fn set_adapters<B: GemmaBackend>(model: &mut Gemma<B>, pairs: &BTreeMap<String, LoraPair>) {
    let device = model.device.clone();
    for (module, lin) in linears_mut(model) {
        lin.adapter = pairs.get(&module).map(|p| LoraAdapter {
            a: Tensor::from_data(TensorData::new(p.a.clone(), [p.r, p.inp]), &device),
            b: Tensor::from_data(TensorData::new(p.b.clone(), [p.out, p.r]), &device),
            scale: p.scale,
            dropout: 0.0,
            dora: p.magnitude.clone().map(|m| Dora::for_base(&lin.base, Some(m), &device)),
        });
    }
}

/// What to combine and how.
#[derive(Debug, Clone)]
pub struct MergePlan {
    pub method: Method,
    /// One per adapter (1.0 each when not given).
    pub weights: Vec<f64>,
    /// Fraction kept by ties/dare, in (0, 1].
    pub density: Option<f64>,
    /// Seeds the dare masks.
    pub seed: u64,
}

/// Checks the plan against the adapters before any work: weight count, density, equal ranks where needed.
pub fn check_plan(plan: &MergePlan, adapters: &[LoadedAdapter]) -> Result<()> {
    if adapters.is_empty() {
        return Err(ModelError::Other("no adapter to merge (pass --adapter DIR)".into()));
    }
    if plan.weights.len() != adapters.len() {
        return Err(ModelError::Other(format!(
            "{} weights for {} adapters: pass one weight per --adapter",
            plan.weights.len(),
            adapters.len()
        )));
    }
    if let Some(w) = plan.weights.iter().find(|w| !w.is_finite()) {
        return Err(ModelError::Other(format!("weight {w} is not a finite number")));
    }
    if adapters.len() > 1 && plan.method.needs_density() {
        match plan.density {
            None => {
                return Err(ModelError::Other(format!(
                    "--density is required for the {} method (the fraction of values kept, in (0, 1])",
                    plan.method.name()
                )))
            }
            Some(d) if !(d > 0.0 && d <= 1.0) => {
                return Err(ModelError::Other(format!("--density {d} is outside (0, 1]")))
            }
            _ => {}
        }
    }
    if adapters.len() > 1 && plan.method != Method::Cat {
        let r0 = adapters[0].config.r;
        if let Some(other) = adapters.iter().find(|a| a.config.r != r0) {
            return Err(ModelError::Other(format!(
                "the {} method needs adapters of equal rank, but {} has r={} and {} has r={} (use --method cat, \
                 which concatenates ranks)",
                plan.method.name(),
                adapters[0].dir.display(),
                r0,
                other.dir.display(),
                other.config.r
            )));
        }
    }
    Ok(())
}

/// One LoRA pair per projection that merges as PEFT's `add_weighted_adapter` result would (see the module doc).
pub fn combine(plan: &MergePlan, adapters: &[LoadedAdapter]) -> Result<BTreeMap<String, LoraPair>> {
    check_plan(plan, adapters)?;
    let mut modules: Vec<&String> = adapters.iter().flat_map(|a| a.modules.keys()).collect();
    modules.sort();
    modules.dedup();
    let mut rng = rand::rngs::StdRng::seed_from_u64(plan.seed);
    let mut out = BTreeMap::new();
    for m in modules {
        let present: Vec<(&LoraPair, f64)> =
            adapters.iter().zip(&plan.weights).filter_map(|(a, w)| a.modules.get(m).map(|p| (p, *w))).collect();
        let (p0, _) = present[0];
        if p0.experts > 1 && adapters.len() > 1 {
            // PEFT's add_weighted_adapter does not combine target_parameters adapters either.
            return Err(ModelError::Other(format!(
                "`{m}`: adapters with LoRA on the experts (target_parameters) merge one at a time, not combined"
            )));
        }
        if p0.magnitude.is_some() && adapters.len() > 1 {
            return Err(ModelError::Other(format!(
                "`{m}`: a DoRA adapter (use_dora) merges alone, not combined with others: PEFT's \
                 add_weighted_adapter would replace its trained magnitude"
            )));
        }
        if adapters.len() == 1 {
            // PEFT's single-adapter case reduces to `w·s·B·A`; keep the factors as they are.
            let (p, w) = present[0];
            if p.magnitude.is_some() && w != 1.0 {
                return Err(ModelError::Other(format!(
                    "`{m}`: a DoRA adapter (use_dora) merges with weight 1 only (got {w}): its magnitude fixes \
                     each row's norm, so a weight on the delta has no PEFT meaning"
                )));
            }
            out.insert(m.clone(), LoraPair { scale: p.scale * w, ..p.clone() });
            continue;
        }
        let pair = match plan.method {
            Method::Cat => {
                let r: usize = present.iter().map(|(p, _)| p.r).sum();
                let mut a = Vec::with_capacity(r * p0.inp);
                let mut b = vec![0f32; p0.out * r];
                let mut col = 0;
                for (p, w) in &present {
                    let f = (w * p.scale) as f32;
                    a.extend(p.a.iter().map(|x| x * f));
                    for o in 0..p.out {
                        b[o * r + col..o * r + col + p.r].copy_from_slice(&p.b[o * p.r..(o + 1) * p.r]);
                    }
                    col += p.r;
                }
                LoraPair { a, b, r, inp: p0.inp, out: p0.out, scale: 1.0, experts: 1, magnitude: None }
            }
            method => {
                let ws: Vec<f64> = present.iter().map(|(p, w)| w * p.scale).collect();
                let wa: Vec<f32> =
                    ws.iter().map(|x| (x.abs().sqrt() * if *x >= 0.0 { 1.0 } else { -1.0 }) as f32).collect();
                let wb: Vec<f32> = ws.iter().map(|x| x.abs().sqrt() as f32).collect();
                let a_s: Vec<&[f32]> = present.iter().map(|(p, _)| p.a.as_slice()).collect();
                let b_s: Vec<&[f32]> = present.iter().map(|(p, _)| p.b.as_slice()).collect();
                let density = plan.density.unwrap_or(1.0);
                let a = combine_tensors(method, &a_s, &wa, density, &mut rng);
                let b = combine_tensors(method, &b_s, &wb, density, &mut rng);
                LoraPair { a, b, r: p0.r, inp: p0.inp, out: p0.out, scale: 1.0, experts: 1, magnitude: None }
            }
        };
        out.insert(m.clone(), pair);
    }
    Ok(out)
}

/// PEFT's `task_arithmetic` / `ties` / `dare_linear` / `dare_ties` on equally shaped tensors (f32, as torch).
fn combine_tensors(method: Method, ts: &[&[f32]], w: &[f32], density: f64, rng: &mut impl Rng) -> Vec<f32> {
    let pruned: Vec<Vec<f32>> = ts
        .iter()
        .map(|t| match method {
            Method::Ties => magnitude_prune(t, density),
            Method::DareLinear | Method::DareTies => random_prune(t, density, rng),
            _ => t.to_vec(),
        })
        .collect();
    let n = ts[0].len();
    match method {
        Method::Ties | Method::DareTies => (0..n)
            .map(|j| {
                // Majority sign from the sum of the (unweighted) pruned tensors; 0 counts as +.
                let total: f32 = pruned.iter().map(|t| t[j]).sum();
                let major = if total >= 0.0 { 1.0 } else { -1.0 };
                let (mut sum, mut count) = (0f32, 0f32);
                for (t, wi) in pruned.iter().zip(w) {
                    if sign(t[j]) == major {
                        sum += t[j] * wi;
                        count += 1.0;
                    }
                }
                sum / count.max(1.0)
            })
            .collect(),
        _ => (0..n).map(|j| pruned.iter().zip(w).map(|(t, wi)| t[j] * wi).sum()).collect(),
    }
}

fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Keeps the `int(density · numel)` entries of largest magnitude (PEFT's `magnitude_based_pruning`).
fn magnitude_prune(t: &[f32], density: f64) -> Vec<f32> {
    if density >= 1.0 {
        return t.to_vec();
    }
    let k = (density * t.len() as f64) as usize;
    let mut idx: Vec<usize> = (0..t.len()).collect();
    idx.sort_by(|&i, &j| t[j].abs().total_cmp(&t[i].abs()));
    let mut out = vec![0f32; t.len()];
    for &i in &idx[..k] {
        out[i] = t[i];
    }
    out
}

/// Keeps each entry with probability `density`, rescaled by `1/density` (PEFT's `random_pruning`).
fn random_prune(t: &[f32], density: f64, rng: &mut impl Rng) -> Vec<f32> {
    if density >= 1.0 {
        return t.to_vec();
    }
    t.iter().map(|x| if rng.random::<f64>() < density { x / density as f32 } else { 0.0 }).collect()
}

// ------------------------------------------------------------------------------------------------------------
// Which weights the deltas are added to, and the merged tensors.

/// The base the deltas are added to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseKind {
    /// The checkpoint's full-precision weights (for a quantized GGUF, its dequantized tensors).
    Original,
    /// The projections quantized to NF4 and dequantized: what a QLoRA adapter was trained against.
    Dequantized,
}

impl std::str::FromStr for BaseKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "original" => Ok(BaseKind::Original),
            "dequantized" => Ok(BaseKind::Dequantized),
            other => Err(format!("unknown base `{other}` (expected original or dequantized)")),
        }
    }
}

/// Maps checkpoint tensor names to PEFT module paths (`model.layers.3.mlp.up_proj.weight` →
/// `layers.3.mlp.up_proj`), for the text model's decoder projections and Gemma 4's expert stacks
/// (`model.layers.3.experts.gate_up_proj` → `layers.3.experts.base_layer`, `…down_proj` → `layers.3.experts`).
pub fn projection_names(src: &dyn WeightSource) -> BTreeMap<String, String> {
    const PREFIXES: [&str; 3] = ["model.", "language_model.model.", "model.language_model."];
    let names = src.names();
    let prefix = PREFIXES
        .iter()
        .find(|p| names.iter().any(|n| *n == format!("{p}embed_tokens.weight")))
        .copied()
        .unwrap_or("model.");
    names
        .into_iter()
        .filter_map(|n| {
            let rel = n.strip_prefix(prefix)?;
            if let Some(layer) = rel.strip_prefix("layers.") {
                let (i, param) = layer.split_once('.')?;
                let module = match param {
                    "experts.gate_up_proj" => Some(crate::gemma::model::EXPERTS_GATE_UP),
                    "experts.down_proj" => Some(crate::gemma::model::EXPERTS_DOWN),
                    _ => None,
                };
                if let (Some(m), true) = (module, i.parse::<usize>().is_ok()) {
                    return Some((n.clone(), format!("layers.{i}.{m}")));
                }
            }
            let rel = rel.strip_suffix(".weight")?;
            let mut parts = rel.split('.');
            let ok = parts.next() == Some("layers")
                && parts.next().is_some_and(|i| i.parse::<usize>().is_ok())
                && matches!(parts.next(), Some("self_attn" | "mlp"))
                && parts.next().is_some_and(|p| crate::nn::lora::TARGETS.contains(&p))
                && parts.next().is_none();
            ok.then(|| (n.clone(), rel.to_string()))
        })
        .collect()
}

/// A view of a weight source as the merge sees its base: projections optionally NF4-round-tripped, every
/// tensor rounded to the output dtype. Loading a model from it and adding the adapters in f32 gives the
/// reference the merged model is checked against.
pub struct BaseView<'a> {
    pub src: &'a dyn WeightSource,
    pub base: BaseKind,
    pub dtype: OutDtype,
    projections: BTreeMap<String, String>,
}

impl<'a> BaseView<'a> {
    pub fn new(src: &'a dyn WeightSource, base: BaseKind, dtype: OutDtype) -> Self {
        Self { src, base, dtype, projections: projection_names(src) }
    }

    /// The tensor before rounding: the projection NF4-round-tripped when the base is `Dequantized`.
    fn base_tensor(&self, name: &str) -> Result<HostTensor> {
        let t = self.src.get(name)?;
        // A pre-quantized (bitsandbytes) checkpoint trains against its weights as stored, which `get` gives
        // dequantized: rounding them to NF4 again would move them.
        let stored = self.src.stored_quant().is_some();
        if self.base == BaseKind::Dequantized && !stored && self.projections.contains_key(name) && t.shape.len() >= 2 {
            // Per matrix: the experts of a 3-D stack are quantized one by one, as loading does.
            let [o, i] = [t.shape[t.shape.len() - 2], t.shape[t.shape.len() - 1]];
            let w =
                t.data.chunks(o * i).flat_map(|m| crate::quant::Nf4Weight::quantize(m, [o, i]).dequantize()).collect();
            return Ok(HostTensor::new(t.shape, w));
        }
        Ok(t)
    }

    /// The merged tensor: `base + ΔW` for a projection with a delta, rounded to the output dtype.
    pub fn merged(&self, name: &str, pairs: &BTreeMap<String, LoraPair>) -> Result<HostTensor> {
        let mut t = self.base_tensor(name)?;
        if let Some(p) = self.projections.get(name).and_then(|m| pairs.get(m)) {
            let expected = if p.experts > 1 { vec![p.experts, p.out, p.inp] } else { vec![p.out, p.inp] };
            if t.shape != expected {
                return Err(ModelError::Shape {
                    path: self.src.path().to_path_buf(),
                    name: name.into(),
                    expected,
                    actual: t.shape,
                });
            }
            for (w, d) in t.data.iter_mut().zip(p.delta()) {
                *w += d;
            }
            if let Some(m) = &p.magnitude {
                dora_rescale(&mut t.data, m);
            }
        }
        t.data.iter_mut().for_each(|x| *x = self.dtype.round(*x));
        Ok(t)
    }
}

/// DoRA's merge of `W + ΔW` (`[out, in]` row-major, updated in place): each row times `m_o / ‖row‖`.
fn dora_rescale(w: &mut [f32], magnitude: &[f32]) {
    let inp = w.len() / magnitude.len();
    for (row, m) in w.chunks_mut(inp).zip(magnitude) {
        let norm = row.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
        let f = (*m as f64 / norm) as f32;
        row.iter_mut().for_each(|x| *x *= f);
    }
}

impl WeightSource for BaseView<'_> {
    fn path(&self) -> &Path {
        self.src.path()
    }
    fn names(&self) -> Vec<String> {
        self.src.names()
    }
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.src.shape(name)
    }
    fn get(&self, name: &str) -> Result<HostTensor> {
        let mut t = self.base_tensor(name)?;
        t.data.iter_mut().for_each(|x| *x = self.dtype.round(*x));
        Ok(t)
    }
}

// ------------------------------------------------------------------------------------------------------------
// Writing a transformers directory (shared with `lapidary convert`).

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::hf_dir::HfDirWriter;

    fn pair(r: usize, inp: usize, out: usize, seed: u64, scale: f64) -> LoraPair {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut v = |n: usize| (0..n).map(|_| rng.random::<f32>() - 0.5).collect::<Vec<_>>();
        LoraPair { a: v(r * inp), b: v(out * r), r, inp, out, scale, experts: 1, magnitude: None }
    }

    fn adapter(r: usize, seed: u64, scale: f64) -> LoadedAdapter {
        let config = AdapterConfig::new(r, scale * r as f64, 0.0, &["q_proj".into()], false, None);
        let modules = BTreeMap::from([("layers.0.self_attn.q_proj".to_string(), pair(r, 6, 5, seed, scale))]);
        LoadedAdapter { dir: PathBuf::from(format!("a{seed}")), config, modules }
    }

    fn plan(method: Method, weights: Vec<f64>, density: Option<f64>) -> MergePlan {
        MergePlan { method, weights, density, seed: 7 }
    }

    fn close(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// cat is exact: ΔW = Σ wᵢ sᵢ Bᵢ Aᵢ.
    #[test]
    fn cat_sums_the_weighted_deltas() {
        let ads = [adapter(2, 1, 2.0), adapter(3, 2, 0.5)];
        let c = combine(&plan(Method::Cat, vec![0.7, -1.3], None), &ads).unwrap();
        let got = c["layers.0.self_attn.q_proj"].delta();
        let d0 = ads[0].modules["layers.0.self_attn.q_proj"].delta();
        let d1 = ads[1].modules["layers.0.self_attn.q_proj"].delta();
        let want: Vec<f32> = d0.iter().zip(&d1).map(|(x, y)| 0.7 * x - 1.3 * y).collect();
        assert!(close(&got, &want) < 1e-5, "{}", close(&got, &want));
    }

    /// dare at density 1 is the plain linear/ties result; at density 0.5 about half the entries survive,
    /// rescaled by 2 (so the mean is kept).
    #[test]
    fn dare_keeps_density_and_expectation() {
        let ads = [adapter(2, 1, 2.0), adapter(2, 2, 2.0)];
        for (dare, plain) in [(Method::DareLinear, Method::Linear), (Method::DareTies, Method::Ties)] {
            let a = combine(&plan(dare, vec![0.5, 0.5], Some(1.0)), &ads).unwrap();
            let b = combine(&plan(plain, vec![0.5, 0.5], Some(1.0)), &ads).unwrap();
            assert_eq!(a, b);
        }
        let t: Vec<f32> = (0..20000).map(|i| 1.0 + (i % 7) as f32).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let p = random_prune(&t, 0.5, &mut rng);
        let kept = p.iter().filter(|x| **x != 0.0).count() as f64 / t.len() as f64;
        assert!((kept - 0.5).abs() < 0.02, "kept {kept}");
        let mean = |v: &[f32]| v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64;
        assert!((mean(&p) / mean(&t) - 1.0).abs() < 0.03);
    }

    /// An expert stack's ΔW by hand, in PEFT's ParamWrapper layout (`einsum("o r e, e r i -> e o i")`): two
    /// experts, rank 1, A rows per expert, B columns interleaved by expert.
    #[test]
    fn expert_delta_follows_peft_layout() {
        let p = LoraPair {
            a: vec![1.0, 2.0, 3.0, 4.0],
            b: vec![5.0, 7.0],
            r: 2,
            inp: 2,
            out: 1,
            scale: 0.5,
            experts: 2,
            magnitude: None,
        };
        assert_eq!(p.delta(), vec![2.5, 5.0, 10.5, 14.0]);
    }

    /// ties by hand on three entries.
    #[test]
    fn ties_elects_signs_and_averages_agreeing_entries() {
        let t1 = [1.0f32, -2.0, 0.5];
        let t2 = [-3.0f32, -1.0, 0.25];
        let got =
            combine_tensors(Method::Ties, &[&t1, &t2], &[1.0, 2.0], 1.0, &mut rand::rngs::StdRng::seed_from_u64(0));
        // entry 0: sum -2 → sign −, only t2 agrees: -3·2 / 1. entry 1: both −: (-2·1 + -1·2)/2. entry 2: both +.
        assert_eq!(got, vec![-6.0, -2.0, (0.5 + 0.5) / 2.0]);
        // magnitude pruning keeps int(0.67·3) = 2 largest.
        assert_eq!(magnitude_prune(&t2, 0.67), vec![-3.0, -1.0, 0.0]);
    }

    #[test]
    fn unequal_ranks_and_weight_counts_are_rejected() {
        let ads = [adapter(2, 1, 1.0), adapter(3, 2, 1.0)];
        let e = combine(&plan(Method::Linear, vec![1.0, 1.0], None), &ads).unwrap_err().to_string();
        assert!(e.contains("equal rank") && e.contains("r=3"), "{e}");
        let e = combine(&plan(Method::Cat, vec![1.0], None), &ads).unwrap_err().to_string();
        assert!(e.contains("1 weights for 2 adapters"), "{e}");
    }

    /// Shards above the limit get an index that `SafetensorsDir` reads back.
    #[test]
    fn sharded_weights_read_back() {
        let out = std::env::temp_dir().join(format!("lapidary-shard-test-{}", std::process::id()));
        let w = HfDirWriter::begin(&out, true).unwrap();
        let names: Vec<(String, Vec<usize>)> = (0..3).map(|i| (format!("t{i}"), vec![4, 4])).collect();
        let get = |n: &str| {
            let i: f32 = n[1..].parse().unwrap();
            Ok(HostTensor::new(vec![4, 4], vec![i; 16]))
        };
        w.write_weights(&names, OutDtype::Bf16, 70, get).unwrap();
        let dir = w.commit().unwrap();
        assert!(dir.join("model.safetensors.index.json").exists());
        assert!(dir.join("model-00002-of-00002.safetensors").exists());
        let st = crate::io::safetensors::SafetensorsDir::open(&dir).unwrap();
        assert_eq!(st.get("t2").unwrap().data, vec![2.0; 16]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
