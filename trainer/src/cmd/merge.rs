//! `lapidary merge`: LoRA adapter(s) folded into the base weights, written as a directory transformers loads
//! as it is (config.json, model.safetensors or shards + index, tokenizer files, generation_config.json).
//!
//! Several adapters are combined with PEFT's `add_weighted_adapter` semantics (see `lapidary_model::peft::merge`).
//! Every merge checks itself before the directory gets its real name: the written model, read back from disk,
//! and the base plus the (combined) adapter evaluated in f32 on a few fixed probe texts must give the same
//! mean loss within a dtype-dependent tolerance (see [`tolerance`]).
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use lapidary_model::io::hf_dir::{
    config_with_dtype, side_files, source_config, HfDirWriter, OutDtype, MAX_SHARD_BYTES,
};
use lapidary_model::peft::merge::{combine, read_adapter, set_adapters, BaseKind, BaseView, MergePlan, Method};
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
    /// Dtype of the written weights: bf16, f16 or f32 (default: the base's config dtype, f32 for GGUF).
    #[arg(long)]
    pub dtype: Option<OutDtype>,
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
    let dtype = a.dtype.unwrap_or_else(|| {
        let name = config.get("dtype").or_else(|| config.get("torch_dtype")).and_then(|v| v.as_str());
        name.and_then(|n| n.parse().ok()).unwrap_or(OutDtype::F32)
    });
    let view = BaseView::new(files.weights.as_ref(), a.base, dtype);
    let device = B::Device::default();

    // The reference: the base as the merge sees it (rounded to the output dtype) plus the adapter(s) in f32.
    let mut model = lapidary_model::gemma::load::load_gemma::<B>(&files.config, &view, QuantKind::None, &device)
        .with_context(|| format!("loading {}", a.model.display()))?;
    let adapters = a
        .adapter
        .iter()
        .map(|d| read_adapter(&mut model, d).with_context(|| format!("adapter {}", d.display())))
        .collect::<Result<Vec<_>>>()?;
    let plan = MergePlan { method: a.method, weights: weights.clone(), density: a.density, seed: a.seed };
    let pairs = combine(&plan, &adapters)?;
    set_adapters(&mut model, &pairs);
    let probe = PROBE.iter().map(|t| crate::common::encode(&files.tokenizer, t)).collect::<Result<Vec<_>>>()?;
    let reference = eval_rows(&model, &probe, None).loss;
    drop(model);

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
    let tol = tolerance(dtype);
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

pub fn run(a: MergeArgs) -> Result<()> {
    crate::common::dispatch!(a.backend, run_on, a)
}
