//! `lapidary merge`: LoRA adapter(s) folded into the base weights, written as a directory transformers loads
//! as it is (config.json, model.safetensors or shards + index, tokenizer files, generation_config.json).
//!
//! Several adapters are combined with PEFT's `add_weighted_adapter` semantics (see `lapidary_model::peft::merge`).
//! Every merge checks itself before the directory gets its real name: the written model, read back from disk,
//! and the base plus the (combined) adapter evaluated in f32 on a few fixed probe texts must give the same
//! mean loss within a dtype-dependent tolerance (see [`tolerance`]).
//!
//! `--out X.gguf` writes the merged model as the GGUF llama.cpp runs instead
//! (`lapidary_model::io::gguf::model_writer`): from a GGUF base its metadata and tokenizer verbatim, and with
//! `--dtype same` (the default there) every tensor the adapters leave alone byte for byte. The check reads
//! the written file back through the GGUF reader; the reference is the base as the file holds it (each tensor
//! rounded through its written type) plus the adapters, see [`gguf_tolerance`]. The file is written as
//! `X.partial.gguf` and renamed only once the check passes.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use lapidary_model::io::files::is_gguf;
use lapidary_model::io::gguf::model_writer::{GgufDtype, ModelGguf};
use lapidary_model::io::gguf::{GgmlType, GgufModel};
use lapidary_model::io::hf_dir::{
    config_with_dtype, side_files, source_config, HfDirWriter, OutDtype, MAX_SHARD_BYTES,
};
use lapidary_model::io::weights::{HostTensor, WeightSource};
use lapidary_model::peft::merge::{
    combine, projection_names, read_adapter, set_adapters, BaseKind, BaseView, LoraPair, MergePlan, Method,
};
use lapidary_model::quant::QuantKind;
use lapidary_model::GemmaBackend;
use lapidary_model::ModelFiles;
use serde_json::json;

use crate::common::BackendKind;
use crate::eval::loss::eval_rows;

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The base: a Hugging Face model directory or a .gguf file, or a Hub id (see `lapidary eval --help`).
    #[arg(long, value_parser = crate::common::model_path)]
    pub model: PathBuf,
    /// A PEFT LoRA adapter directory; repeat to combine several.
    #[arg(long, required = true)]
    pub adapter: Vec<PathBuf>,
    /// One weight per adapter, comma-separated (default 1 each). Negative weights subtract.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub weights: Option<Vec<f64>>,
    /// How several adapters combine, as PEFT's add_weighted_adapter: linear, cat, ties, dare_linear, dare_ties.
    #[arg(long, default_value = "linear")]
    pub method: Method,
    /// Fraction of values ties/dare keep, in (0, 1]; required by those methods.
    #[arg(long)]
    pub density: Option<f64>,
    /// Seeds the dare masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// What the deltas are added to: the original weights, or the NF4-dequantized weights a QLoRA adapter
    /// was trained against.
    #[arg(long, default_value = "original")]
    pub base: BaseKind,
    /// Dtype of the written weights. A directory: bf16, f16 or f32 (default: the base's config dtype, f32 for
    /// GGUF). A .gguf --out: also q8_0, q4_0, q4_k, q5_k, q6_k, q4_k_m, q5_k_m, or same (each tensor in the
    /// base GGUF's type; the default for a GGUF base, else the config dtype).
    #[arg(long)]
    pub dtype: Option<String>,
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing output directory.
    #[arg(long)]
    pub overwrite: bool,
    /// CPU backend for the verification.
    #[arg(long, value_enum, default_value = "flex")]
    pub backend: BackendKind,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Fixed probe texts for the self-check (tokenized with the model's tokenizer, BOS added).
const PROBE: [&str; 3] = [
    "The quick brown fox jumps over the lazy dog.",
    "Merging an adapter must not change what the model predicts.",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10",
];

/// Largest |merged − reference| probe loss accepted. The reference is the base rounded to the output dtype
/// plus the adapter in f32; the merged model rounds `W + ΔW` instead, so the difference is one rounding of
/// each projection weight: below 1e-5 in f32 (summation order only), ~1e-4 in f16 (10-bit mantissa) and
/// ~1e-3 in bf16 (7-bit mantissa) on the fixtures; the tolerances leave an order of magnitude of room.
pub fn tolerance(dtype: OutDtype) -> f64 {
    match dtype {
        OutDtype::F32 => 1e-4,
        OutDtype::F16 => 2e-3,
        OutDtype::Bf16 => 2e-2,
    }
}

/// The merge check's reference: its mean loss on the probe texts, the combined adapters, the probe rows.
struct Reference {
    loss: f64,
    pairs: BTreeMap<String, LoraPair>,
    probe: Vec<Vec<u32>>,
}

/// The reference: `base` (the base as the output will hold it) in f32 with the combined adapters.
fn reference<B: GemmaBackend>(
    a: &MergeArgs,
    files: &ModelFiles,
    base: &dyn WeightSource,
    weights: &[f64],
) -> Result<Reference> {
    let device = B::Device::default();
    let mut model = lapidary_model::gemma::load::load_gemma::<B>(&files.config, base, QuantKind::None, &device)
        .with_context(|| format!("loading {}", a.model.display()))?;
    let adapters = a
        .adapter
        .iter()
        .map(|d| read_adapter(&mut model, d).with_context(|| format!("adapter {}", d.display())))
        .collect::<Result<Vec<_>>>()?;
    let plan = MergePlan { method: a.method, weights: weights.to_vec(), density: a.density, seed: a.seed };
    let pairs = combine(&plan, &adapters)?;
    set_adapters(&mut model, &pairs);
    let probe = PROBE.iter().map(|t| crate::common::encode(&files.tokenizer, t)).collect::<Result<Vec<_>>>()?;
    Ok(Reference { loss: eval_rows(&model, &probe, None).loss, pairs, probe })
}

fn run_on<B: GemmaBackend>(a: MergeArgs) -> Result<()> {
    if a.out.exists() && !a.overwrite {
        bail!("{}: already exists (pass --overwrite to replace it)", a.out.display());
    }
    let weights = a.weights.clone().unwrap_or_else(|| vec![1.0; a.adapter.len()]);
    if weights.len() != a.adapter.len() {
        bail!("{} weights for {} adapters: pass one weight per --adapter", weights.len(), a.adapter.len());
    }
    let files = ModelFiles::open(&a.model)?;
    let config = source_config(&a.model)?;
    let config_dtype = {
        let name = config.get("dtype").or_else(|| config.get("torch_dtype")).and_then(|v| v.as_str());
        name.and_then(|n| n.parse().ok()).unwrap_or(OutDtype::F32)
    };
    if is_gguf(&a.out) {
        let default = match (is_gguf(&a.model), config_dtype) {
            (true, _) => "same",
            (false, OutDtype::F32) => "f32",
            (false, OutDtype::F16) => "f16",
            (false, OutDtype::Bf16) => "bf16",
        };
        let dtype: GgufDtype = a.dtype.as_deref().unwrap_or(default).parse().map_err(anyhow::Error::msg)?;
        return run_gguf::<B>(a, files, weights, dtype);
    }
    let dtype = match a.dtype.as_deref() {
        None => config_dtype,
        Some(d) => d.parse::<OutDtype>().map_err(|e| match d.parse::<GgufDtype>() {
            Ok(_) => anyhow::anyhow!(
                "--dtype {d} is a GGUF type: a model directory is written in bf16, f16 or f32 (an --out ending \
                 in .gguf writes {d})"
            ),
            Err(_) => anyhow::Error::msg(e),
        })?,
    };
    let view = BaseView::new(files.weights.as_ref(), a.base, dtype);
    let device = B::Device::default();
    // The reference: the base as the merge sees it (rounded to the output dtype) plus the adapter(s) in f32.
    let Reference { loss: reference, pairs, probe } = reference::<B>(&a, &files, &view, &weights)?;

    let w = HfDirWriter::begin(&a.out, a.overwrite)?;
    let names = files
        .weights
        .names()
        .into_iter()
        .map(|n| Ok((n.clone(), files.weights.shape(&n)?)))
        .collect::<Result<Vec<_>>>()?;
    w.write_weights(&names, dtype, MAX_SHARD_BYTES, |n| view.merged(n, &pairs))?;
    w.write_json("config.json", &config_with_dtype(config.clone(), dtype))?;
    for (name, bytes) in side_files(&a.model, &config)? {
        w.write_file(&name, &bytes)?;
    }

    // The check: the directory as written, read back.
    let written = ModelFiles::open(&w.tmp)?;
    let merged_model = lapidary_model::gemma::load::load_gemma::<B>(
        &written.config,
        written.weights.as_ref(),
        QuantKind::None,
        &device,
    )
    .with_context(|| format!("reading back {}", w.tmp.display()))?;
    let merged = eval_rows(&merged_model, &probe, None).loss;
    let diff = (merged - reference).abs();
    let tol = tolerance_override().unwrap_or_else(|| tolerance(dtype));
    let base_desc = match a.base {
        BaseKind::Original => format!("the original weights of {}", a.model.display()),
        BaseKind::Dequantized => {
            format!("the NF4-dequantized weights of {} (as QLoRA trained against)", a.model.display())
        }
    };
    let base_name = match a.base {
        BaseKind::Original => "original",
        BaseKind::Dequantized => "dequantized",
    };
    let report = json!({
        "out": a.out, "model": a.model, "adapters": a.adapter, "weights": weights,
        "method": if a.adapter.len() == 1 { "single" } else { a.method.name() },
        "density": a.density, "seed": a.seed, "base": base_name, "dtype": dtype.torch_name(),
        "reference_loss": reference, "merged_loss": merged, "diff": diff, "tolerance": tol,
    });
    w.write_json("lapidary_merge.json", &report)?;
    // A NaN difference fails too.
    if diff.is_nan() || diff > tol {
        bail!(
            "verification failed: probe loss of the merged model {merged:.6} vs base + adapters {reference:.6} \
             (|diff| {diff:.3e} > tolerance {tol:.0e} for {}); the unverified output is left in {}",
            dtype.torch_name(),
            w.tmp.display()
        );
    }
    w.commit()?;
    if a.json {
        crate::common::print_json(&report);
    } else {
        let method = if a.adapter.len() == 1 {
            "1 adapter".to_string()
        } else {
            format!("{} adapters ({}, weights {:?})", a.adapter.len(), a.method.name(), weights)
        };
        println!("merged {method} into {base_desc}");
        println!(
            "probe loss: base + adapters {reference:.6}, merged {merged:.6}, |diff| {diff:.2e} (tolerance {tol:.0e} for {})",
            dtype.torch_name()
        );
        println!("wrote {} ({})", a.out.display(), dtype.torch_name());
    }
    Ok(())
}

/// Largest |merged − reference| probe loss accepted for a GGUF output whose merged projections are written
/// in `ty`. The reference holds each base tensor as the file does (rounded through its written type) plus the
/// adapters in f32, so the difference is one rounding of each merged projection in `ty` instead of the base's
/// rounding in `ty`: its size is the type's step. f32/f16/bf16 as for a directory ([`tolerance`]). The block
/// types' steps are amax/127 (Q8_0) up to ~amax/15 (4-bit) per block; measured on the tiny Gemma 1-3 fixtures
/// and their adapters (probe losses ~6): Q8_0 5e-4..7e-3, 5-bit (Q5_K_M, Q5_0/Q5_1 fallbacks, `same` from a
/// Q5_K_M base) 8e-3..1.6e-2, 4-bit (Q4_0, Q4_K_M) 9e-3..1.5e-2; each bound leaves ~7-10x of that.
pub fn gguf_tolerance(ty: GgmlType) -> f64 {
    match ty {
        GgmlType::F32 => tolerance(OutDtype::F32),
        GgmlType::F16 => tolerance(OutDtype::F16),
        GgmlType::BF16 => tolerance(OutDtype::Bf16),
        GgmlType::Q8_0 => 5e-2,
        GgmlType::Q6_K | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => 0.1,
        _ => 0.2,
    }
}

/// A test hook: `LAPIDARY_TEST_MERGE_TOLERANCE` replaces the tolerance (a negative one makes every check
/// fail, so tests can see what a failed check leaves behind).
fn tolerance_override() -> Option<f64> {
    std::env::var("LAPIDARY_TEST_MERGE_TOLERANCE").ok().and_then(|v| v.parse().ok())
}

/// The base as a GGUF file of `dtype` holds it: every tensor rounded through its written type, or as the
/// base GGUF stores it where the type stays.
struct AsWritten<'a> {
    view: &'a BaseView<'a>,
    plan: &'a ModelGguf<'a>,
    /// Each planned tensor's written type, by its Hugging Face name.
    by_hf: BTreeMap<String, (usize, GgmlType)>,
}

impl WeightSource for AsWritten<'_> {
    fn path(&self) -> &Path {
        self.view.path()
    }
    fn names(&self) -> Vec<String> {
        self.view.names()
    }
    fn shape(&self, name: &str) -> lapidary_model::Result<Vec<usize>> {
        self.view.shape(name)
    }
    fn get(&self, name: &str) -> lapidary_model::Result<HostTensor> {
        let t = self.view.get(name)?;
        let Some(&(i, ty)) = self.by_hf.get(name) else { return Ok(t) };
        let planned = &self.plan.tensors[i];
        if planned.stored == Some(ty) && self.view.base == BaseKind::Original {
            return Ok(t);
        }
        self.plan.round_trip(planned, ty, t)
    }
}

fn run_gguf<B: GemmaBackend>(a: MergeArgs, files: ModelFiles, weights: Vec<f64>, dtype: GgufDtype) -> Result<()> {
    let gguf_base = if is_gguf(&a.model) { Some(GgufModel::open(&a.model)?) } else { None };
    let plan = match &gguf_base {
        Some(g) => ModelGguf::from_gguf(g)?,
        None => ModelGguf::from_hf_dir(&a.model, &source_config(&a.model)?, files.weights.as_ref())?,
    };
    // Every type is settled before any work (an unknown or unavailable one is an error now, not after).
    let types = plan.types(dtype)?;
    let view = BaseView::new(files.weights.as_ref(), a.base, OutDtype::F32);
    let by_hf = plan.tensors.iter().zip(&types).enumerate().map(|(i, (t, ty))| (t.hf.clone(), (i, *ty))).collect();
    let as_written = AsWritten { view: &view, plan: &plan, by_hf };
    let device = B::Device::default();

    let Reference { loss: reference, pairs, probe } = reference::<B>(&a, &files, &as_written, &weights)?;

    // A tensor is written from new values where an adapter changes it (or the base is the NF4-dequantized
    // one); every other tensor of a GGUF base is taken as the file has it.
    let projections = projection_names(files.weights.as_ref());
    let changed =
        |hf: &str| projections.get(hf).is_some_and(|m| pairs.contains_key(m) || a.base == BaseKind::Dequantized);
    let merged_types: Vec<GgmlType> =
        plan.tensors.iter().zip(&types).filter(|(t, _)| changed(&t.hf)).map(|(_, ty)| *ty).collect();
    let writer = plan.build(dtype, |t| {
        if gguf_base.is_some() && !changed(&t.hf) {
            Ok(None)
        } else {
            view.merged(&t.hf, &pairs).map(Some)
        }
    })?;
    let tmp = partial_path(&a.out);
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&tmp, writer.to_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
    drop(writer);

    // The check: the file as written, read back through the GGUF reader.
    let written = ModelFiles::open(&tmp)?;
    let merged_model = lapidary_model::gemma::load::load_gemma::<B>(
        &written.config,
        written.weights.as_ref(),
        QuantKind::None,
        &device,
    )
    .with_context(|| format!("reading back {}", tmp.display()))?;
    let merged = eval_rows(&merged_model, &probe, None).loss;
    let diff = (merged - reference).abs();
    // The coarsest type a merged projection is written in sets the bound.
    let tol = tolerance_override()
        .unwrap_or_else(|| merged_types.iter().map(|t| gguf_tolerance(*t)).fold(tolerance(OutDtype::F32), f64::max));
    let report = json!({
        "out": a.out, "model": a.model, "adapters": a.adapter, "weights": weights,
        "method": if a.adapter.len() == 1 { "single" } else { a.method.name() },
        "density": a.density, "seed": a.seed, "base": match a.base { BaseKind::Original => "original", BaseKind::Dequantized => "dequantized" },
        "dtype": dtype.name(), "format": "gguf",
        "reference_loss": reference, "merged_loss": merged, "diff": diff, "tolerance": tol,
    });
    if diff.is_nan() || diff > tol {
        bail!(
            "verification failed: probe loss of the merged GGUF {merged:.6} vs base + adapters {reference:.6} \
             (|diff| {diff:.3e} > tolerance {tol:.0e} for {}); nothing was written to {}; the unverified file is \
             left in {}",
            dtype.name(),
            a.out.display(),
            tmp.display()
        );
    }
    std::fs::rename(&tmp, &a.out).with_context(|| format!("renaming {} to {}", tmp.display(), a.out.display()))?;
    if a.json {
        crate::common::print_json(&report);
    } else {
        println!("merged {} adapter(s) into {}", a.adapter.len(), a.model.display());
        println!(
            "probe loss: base + adapters {reference:.6}, merged {merged:.6}, |diff| {diff:.2e} (tolerance {tol:.0e} for {})",
            dtype.name()
        );
        println!("wrote {} ({})", a.out.display(), dtype.name());
    }
    Ok(())
}

/// `X.gguf` → `X.partial.gguf`: where the file is written until its check passes (still a `.gguf`, so the
/// check reads it as one).
pub fn partial_path(out: &Path) -> PathBuf {
    out.with_extension("partial.gguf")
}

pub fn run(a: MergeArgs) -> Result<()> {
    crate::common::dispatch!(a.backend, run_on, a)
}
