//! The training recipe: a TOML file, `--set section.key=value` overrides, and the checked [`Recipe`].
//!
//! Parsing keeps TOML's spans, so an unknown key or a value of the wrong type is reported as
//! `FILE:LINE: key `section.key`: …`; an override that is wrong is reported as `--set section.key=value: …`.
//! [`Recipe::validate`] then checks ranges and combinations before any file is opened or model loaded.
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lapidary_data::{Columns, Roles, RowFormat, Stopping, TrainOn};
use lapidary_model::nn::lora::TARGETS;
use lapidary_model::peft::adapter::EXPERT_PARAMETERS;
use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::common::{BackendKind, Dtype, Quant};

/// The whole recipe, as written to `OUT/config.toml` once resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub model: ModelSection,
    #[serde(default)]
    pub lora: LoraSection,
    pub data: DataSection,
    #[serde(default)]
    pub train: TrainSection,
    pub output: OutputSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A Hugging Face model directory or a `.gguf` file, or a Hub id (`ORG/NAME[@REVISION]`,
    /// `ORG/NAME/FILE.gguf`) read from the Hugging Face cache.
    pub path: PathBuf,
    /// How the frozen base is stored: `none` (f32), `nf4` (QLoRA), `int8`, or `gguf` (a `.gguf` model's
    /// projections in the file's own blocks, the weights llama.cpp runs). Unset: see [`Self::quant`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant: Option<QuantName>,
    /// What the model computes in: `f32` (default) or `bf16` (bitsandbytes' `bnb_4bit_compute_dtype`; for
    /// GPUs). LoRA weights and the optimizer stay f32 either way.
    #[serde(default)]
    pub compute_dtype: Dtype,
}

/// `none | nf4 | int8 | gguf` as written in the recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantName {
    None,
    Nf4,
    Int8,
    Gguf,
}

impl From<QuantName> for Quant {
    fn from(q: QuantName) -> Self {
        match q {
            QuantName::None => Quant::None,
            QuantName::Nf4 => Quant::Nf4,
            QuantName::Int8 => Quant::Int8,
            QuantName::Gguf => Quant::Gguf,
        }
    }
}

impl ModelSection {
    /// `quant`, or when unset: `gguf` for a `.gguf` model (the adapter trains against the values llama.cpp
    /// will run, at the file's bytes in memory, as fast as `nf4` on CPU; docs/benchmarks.md), the stored kind
    /// for a bitsandbytes checkpoint, `nf4` otherwise.
    pub fn quant(&self) -> Quant {
        self.quant.map(Quant::from).unwrap_or_else(|| crate::common::default_quant(&self.path, Quant::Nf4))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSection {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<String>,
    /// PEFT's `target_parameters`: LoRA on a Gemma 4 MoE's routed experts (`experts.gate_up_proj`,
    /// `experts.down_proj`); needs `dropout = 0`, as in PEFT.
    pub target_parameters: Vec<String>,
    pub rslora: bool,
    /// DoRA (PEFT's `use_dora`): also train a magnitude per output row of each targeted projection.
    pub use_dora: bool,
}

impl Default for LoraSection {
    fn default() -> Self {
        Self {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            targets: TARGETS.iter().map(|s| s.to_string()).collect(),
            target_parameters: Vec::new(),
            rslora: false,
            use_dora: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// The training set; or several, weighted, in `[[data.sources]]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<PathBuf>,
    /// Training sets mixed as `datasets.interleave_datasets(probabilities=weights/sum, seed=train.seed)` mixes
    /// them (see lapidary_data::mix).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceSection>,
    /// When a mixture ends: `first_exhausted` (a source ran out) or `all_exhausted` (every source did).
    #[serde(default)]
    pub stopping_strategy: Stopping,
    #[serde(default)]
    pub eval: Option<PathBuf>,
    /// Without `eval`: this fraction of the training rows is held out and evaluated on (`eval_loss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_split: Option<f64>,
    /// The dataset's column for a field a format reads: `{instruction = "question"}`.
    #[serde(default, skip_serializing_if = "Columns::is_empty")]
    pub columns: Columns,
    /// ShareGPT `from` names per chat role: `{user = ["human", "user"], assistant = ["gpt", "model"]}`.
    #[serde(default)]
    pub roles: Roles,
    /// Chat rows with `completion_only`: train every assistant turn (`all_assistant`) or the last (`last_turn`).
    #[serde(default)]
    pub train_on: TrainOn,
    #[serde(default)]
    pub format: RowFormat,
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    #[serde(default)]
    pub packing: bool,
    #[serde(default = "yes")]
    pub completion_only: bool,
    /// Rows held for shuffling; 0 keeps the file order.
    #[serde(default = "default_shuffle_buffer")]
    pub shuffle_buffer: usize,
    #[serde(default)]
    pub skip_bad_rows: bool,
}

/// One training set of a mixture (`[[data.sources]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    pub path: PathBuf,
    /// Relative weight: only the ratios matter.
    #[serde(default = "one")]
    pub weight: f64,
    /// This source's row format; `data.format` when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<RowFormat>,
}

fn one() -> f64 {
    1.0
}

fn default_max_seq_len() -> usize {
    512
}
fn yes() -> bool {
    true
}
fn default_shuffle_buffer() -> usize {
    10_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheduler {
    Constant,
    Linear,
    Cosine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendName {
    Ndarray,
    Flex,
    Cuda,
}

impl From<BackendName> for BackendKind {
    fn from(b: BackendName) -> Self {
        match b {
            BackendName::Ndarray => BackendKind::Ndarray,
            BackendName::Flex => BackendKind::Flex,
            BackendName::Cuda => BackendKind::Cuda,
        }
    }
}

/// What the trainer measures on `data.eval` at each evaluation (see `super::eval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalMetric {
    /// Mean NLL per trained target of the eval rows, read as training rows (`eval_loss`).
    Loss,
    /// Greedy generation against `answer` on `{"prompt", "answer"}` rows (`eval_exact_match`, the accuracy).
    ExactMatch,
    /// Multiple choice on `{"prompt", "choices", "answer": index}` rows (`eval_acc`, `eval_acc_norm`).
    Choice,
}

impl EvalMetric {
    pub fn name(self) -> &'static str {
        match self {
            EvalMetric::Loss => "loss",
            EvalMetric::ExactMatch => "exact_match",
            EvalMetric::Choice => "choice",
        }
    }
}

/// `train.eval_metrics`: one metric name or a list of them.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<EvalMetric>, D::Error> {
    use serde::de::{self, IntoDeserializer, SeqAccess, Visitor};
    struct OneOrMany;
    impl<'de> Visitor<'de> for OneOrMany {
        type Value = Vec<EvalMetric>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a metric (\"loss\", \"exact_match\" or \"choice\") or a list of them")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(vec![EvalMetric::deserialize(s.into_deserializer())?])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut v = Vec::new();
            while let Some(m) = seq.next_element()? {
                v.push(m);
            }
            Ok(v)
        }
    }
    d.deserialize_any(OneOrMany)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Optimizer steps. With `epochs` too, whichever ends first.
    pub max_steps: Option<u64>,
    /// Passes over the training data.
    pub epochs: Option<u64>,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub scheduler: Scheduler,
    pub warmup_steps: u64,
    /// 0 disables clipping.
    pub max_grad_norm: f64,
    /// Keep only each decoder layer's input in the forward and recompute the layer in the backward: about
    /// half the memory of a step for about a third more time (same gradients).
    pub gradient_checkpointing: bool,
    pub seed: u64,
    /// Evaluate every N steps (and at the start and the end); 0: only at the start and the end.
    pub eval_every: u64,
    /// What each evaluation measures on `data.eval`: `loss`, `exact_match`, `choice`, or a list of them.
    #[serde(deserialize_with = "one_or_many")]
    pub eval_metrics: Vec<EvalMetric>,
    /// exact_match: most tokens generated per eval row (greedy).
    pub eval_max_new_tokens: usize,
    /// exact_match: a generation also ends at its first newline (and is compared up to it).
    pub eval_stop_at_newline: bool,
    /// Checkpoint every N steps (and at the end); 0: only at the end.
    pub save_every: u64,
    pub keep_checkpoints: usize,
    /// Eval batch size; defaults to `batch_size`.
    pub eval_batch_size: Option<usize>,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    /// Data parallelism: replicas of the model in this process, each taking its share of every step
    /// (`N`, or for CUDA a list of GPU indices `[0, 1]`); a step is `grad_accum × replicas` micro-batches.
    #[serde(skip_serializing_if = "Devices::is_one")]
    pub devices: Devices,
    /// Backend. `flex` (CPU) by default: its backward pass is bit-reproducible from one process to the next,
    /// which exact resume needs (burn-ndarray's differs in the last bits between runs). `cuda`: an NVIDIA GPU,
    /// in binaries built with `--features cuda`.
    pub backend: BackendName,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            max_steps: None,
            epochs: None,
            batch_size: 4,
            grad_accum: 1,
            lr: 2e-4,
            weight_decay: 0.0,
            scheduler: Scheduler::Cosine,
            warmup_steps: 10,
            max_grad_norm: 1.0,
            gradient_checkpointing: false,
            seed: 0,
            eval_every: 50,
            eval_metrics: vec![EvalMetric::Loss],
            eval_max_new_tokens: 32,
            eval_stop_at_newline: false,
            save_every: 100,
            keep_checkpoints: 3,
            eval_batch_size: None,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            backend: BackendName::Flex,
            devices: Devices::Count(1),
        }
    }
}

/// `train.devices`: how many replicas, or which GPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Devices {
    Count(usize),
    List(Vec<usize>),
}

impl Devices {
    fn is_one(&self) -> bool {
        *self == Devices::Count(1)
    }

    /// The device index of each replica (`N`: 0..N).
    pub fn indices(&self) -> Vec<usize> {
        match self {
            Devices::Count(n) => (0..*n).collect(),
            Devices::List(l) => l.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    pub dir: PathBuf,
    /// Also log the metrics as TensorBoard event files in `OUT/tensorboard/`.
    #[serde(default = "yes")]
    pub tensorboard: bool,
}

impl Recipe {
    /// Reads `path`, applies `overrides` (`section.key=value`), deserialises and validates. Relative paths
    /// in the recipe stay relative to the working directory, as a user typing them would expect. A Hub id in
    /// `model.path` becomes its snapshot folder in the Hugging Face cache here (downloaded if need be), so
    /// `OUT/config.toml` records the exact commit trained on and a resume checks it is the same.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Recipe> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let mut recipe = Self::parse(&text, path, overrides)?;
        recipe.validate().with_context(|| format!("{}: invalid recipe", path.display()))?;
        recipe.model.path = lapidary_model::io::hub::resolve_model(&recipe.model.path)
            .with_context(|| format!("{}: model.path", path.display()))?;
        Ok(recipe)
    }

    /// Parses recipe text (`path` only names the file in messages).
    pub fn parse<'a>(text: &'a str, path: &Path, overrides: &'a [String]) -> Result<Recipe> {
        let mut root = DeTable::parse(text).map_err(|e| anyhow::anyhow!("{}", located(path, text, &e, None)))?;
        // Overridden values get spans past the end of the text, one per override, so an error in one of
        // them is reported against the `--set` argument instead of a line of the file.
        for (i, arg) in overrides.iter().enumerate() {
            let span = text.len() + i..text.len() + i;
            apply_override(root.get_mut(), arg, span)?;
        }
        let de = toml::de::Deserializer::from(root);
        Recipe::deserialize(de).map_err(|e| {
            let over = e
                .span()
                .filter(|s| s.start >= text.len())
                .map(|s| &overrides[(s.start - text.len()).min(overrides.len() - 1)]);
            anyhow::anyhow!("{}", located(path, text, &e, over.map(String::as_str)))
        })
    }

    /// Range and consistency checks; every message names the key.
    pub fn validate(&self) -> Result<()> {
        let (l, d, t) = (&self.lora, &self.data, &self.train);
        if l.r == 0 {
            bail!("lora.r must be at least 1");
        }
        if !(l.alpha.is_finite() && l.alpha > 0.0) {
            bail!("lora.alpha must be a positive number, got {}", l.alpha);
        }
        if !(0.0..1.0).contains(&l.dropout) {
            bail!("lora.dropout must be in [0, 1), got {}", l.dropout);
        }
        if l.targets.is_empty() {
            bail!("lora.targets is empty; list some of {}", TARGETS.join(", "));
        }
        for tgt in &l.targets {
            if !TARGETS.contains(&tgt.as_str()) {
                bail!("lora.targets: unknown projection `{tgt}` (expected some of {})", TARGETS.join(", "));
            }
        }
        for p in &l.target_parameters {
            if !EXPERT_PARAMETERS.contains(&p.as_str()) {
                bail!(
                    "lora.target_parameters: unknown parameter `{p}` (expected some of {})",
                    EXPERT_PARAMETERS.join(", ")
                );
            }
        }
        if !l.target_parameters.is_empty() && l.dropout != 0.0 {
            bail!(
                "lora.target_parameters needs lora.dropout = 0 (LoRA on a parameter is merged into the weight per \
                 forward, where dropout cannot apply; PEFT refuses it too), got {}",
                l.dropout
            );
        }
        if l.use_dora && !l.target_parameters.is_empty() {
            bail!(
                "lora.use_dora with lora.target_parameters {:?}: PEFT does not support DoRA on expert parameters; \
                 drop one of them",
                l.target_parameters
            );
        }
        if d.max_seq_len < 2 {
            bail!("data.max_seq_len must be at least 2, got {}", d.max_seq_len);
        }
        self.validate_data_recipe()?;
        if t.max_steps.is_none() && t.epochs.is_none() {
            bail!("set train.max_steps or train.epochs (how long to train)");
        }
        if t.max_steps == Some(0) {
            bail!("train.max_steps must be at least 1");
        }
        if t.epochs == Some(0) {
            bail!("train.epochs must be at least 1");
        }
        if t.batch_size == 0 {
            bail!("train.batch_size must be at least 1");
        }
        if t.eval_batch_size == Some(0) {
            bail!("train.eval_batch_size must be at least 1");
        }
        if t.grad_accum == 0 {
            bail!("train.grad_accum must be at least 1");
        }
        let devices = t.devices.indices();
        if devices.is_empty() {
            bail!("train.devices must be at least 1 (or a non-empty list of GPU indices), got {:?}", t.devices);
        }
        if let Some(d) = devices.iter().enumerate().find_map(|(i, d)| devices[..i].contains(d).then_some(d)) {
            bail!("train.devices lists GPU {d} twice: {:?}", t.devices);
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            bail!("train.lr must be a positive number, got {}", t.lr);
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            bail!("train.weight_decay must be a non-negative number, got {}", t.weight_decay);
        }
        if !(t.max_grad_norm.is_finite() && t.max_grad_norm >= 0.0) {
            bail!("train.max_grad_norm must be a non-negative number (0 disables clipping), got {}", t.max_grad_norm);
        }
        for (k, v) in [("adam_beta1", t.adam_beta1), ("adam_beta2", t.adam_beta2)] {
            if !(0.0..1.0).contains(&v) {
                bail!("train.{k} must be in [0, 1), got {v}");
            }
        }
        if !(t.adam_eps.is_finite() && t.adam_eps > 0.0) {
            bail!("train.adam_eps must be a positive number, got {}", t.adam_eps);
        }
        self.validate_eval_metrics()?;
        if t.keep_checkpoints == 0 {
            bail!("train.keep_checkpoints must be at least 1 (resuming needs one)");
        }
        if self.output.dir.as_os_str().is_empty() {
            bail!("output.dir is empty");
        }
        Ok(())
    }

    /// `data.train` or `data.sources`, the weights, the split, the renames, the roles.
    fn validate_data_recipe(&self) -> Result<()> {
        let d = &self.data;
        match (&d.train, d.sources.is_empty()) {
            (Some(_), false) => bail!("set data.train (one dataset) or [[data.sources]] (several, weighted), not both"),
            (None, true) => bail!("set data.train (the training set) or [[data.sources]] (several, weighted)"),
            _ => {}
        }
        for (i, s) in d.sources.iter().enumerate() {
            if !(s.weight.is_finite() && s.weight > 0.0) {
                bail!("data.sources[{i}].weight ({}) must be a positive number, got {}", s.path.display(), s.weight);
            }
        }
        if let Some(f) = d.eval_split {
            if !(f > 0.0 && f < 1.0) {
                bail!("data.eval_split must be between 0 and 1 (exclusive), got {f}");
            }
            if d.eval.is_some() {
                bail!("data.eval_split holds rows out when there is no data.eval; set one of them");
            }
        }
        if let Err((key, m)) = d.columns.check() {
            bail!("data.columns.{key}: {m}");
        }
        if let Err(m) = d.roles.check() {
            bail!("{m}");
        }
        if d.train_on == TrainOn::LastTurn && !d.completion_only {
            bail!("data.train_on = \"last_turn\" needs data.completion_only = true (otherwise every token is trained)");
        }
        Ok(())
    }

    /// What the training set is: its sources, renames, roles and, with `eval_split`, the training side.
    pub fn train_spec(&self) -> lapidary_data::DataSpec {
        let d = &self.data;
        let sources = match &d.train {
            Some(p) => vec![lapidary_data::Source { path: p.clone(), weight: 1.0, format: None }],
            None => d
                .sources
                .iter()
                .map(|s| lapidary_data::Source { path: s.path.clone(), weight: s.weight, format: s.format })
                .collect(),
        };
        lapidary_data::DataSpec {
            sources,
            stopping: d.stopping_strategy,
            seed: self.train.seed,
            columns: d.columns.clone(),
            roles: d.roles.clone(),
            split: d.eval_split.map(|fraction| lapidary_data::Split {
                fraction,
                seed: self.train.seed,
                side: lapidary_data::Side::Train,
            }),
        }
    }

    /// The rows `data.eval_split` holds out of the training set (`None` without it).
    pub fn eval_split_spec(&self) -> Option<lapidary_data::DataSpec> {
        let mut spec = self.train_spec();
        spec.split.as_mut()?.side = lapidary_data::Side::Eval;
        Some(spec)
    }

    /// The training set, for messages: its file, or its files joined by ` + `.
    pub fn train_label(&self) -> String {
        self.train_spec().label()
    }

    fn validate_eval_metrics(&self) -> Result<()> {
        let t = &self.train;
        let all = "loss, exact_match, choice";
        if t.eval_metrics.is_empty() {
            bail!("train.eval_metrics is empty; list one or more of {all}");
        }
        for (i, m) in t.eval_metrics.iter().enumerate() {
            if t.eval_metrics[..i].contains(m) {
                bail!("train.eval_metrics lists `{}` twice", m.name());
            }
        }
        let has = |m| t.eval_metrics.contains(&m);
        if has(EvalMetric::ExactMatch) && has(EvalMetric::Choice) {
            bail!(
                "train.eval_metrics: exact_match and choice cannot share one eval set (`answer` is a text for one, \
                 an index for the other); keep one of them"
            );
        }
        if self.data.eval.is_none() {
            if let Some(m) = t.eval_metrics.iter().find(|m| **m != EvalMetric::Loss) {
                bail!(
                    "train.eval_metrics has `{}` but data.eval is not set (the rows to evaluate; data.eval_split \
                     gives `loss` only)",
                    m.name()
                );
            }
        }
        if t.eval_max_new_tokens == 0 {
            bail!("train.eval_max_new_tokens must be at least 1");
        }
        Ok(())
    }

    /// The resolved recipe as TOML (what `OUT/config.toml` and checkpoints hold).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("serialising the resolved recipe")
    }

    pub fn eval_batch_size(&self) -> usize {
        self.train.eval_batch_size.unwrap_or(self.train.batch_size)
    }

    /// The data pipeline's settings for the training set.
    pub fn train_data(&self) -> lapidary_data::DataConfig {
        lapidary_data::DataConfig {
            format: self.data.format,
            max_seq_len: self.data.max_seq_len,
            batch_size: self.train.batch_size,
            completion_only: self.data.completion_only,
            packing: self.data.packing,
            pad_to: lapidary_data::PadTo::Longest,
            shuffle_buffer: self.data.shuffle_buffer,
            seed: self.train.seed,
            // With max_steps alone the data repeats until the steps are done.
            epochs: self.train.epochs,
            skip_bad_rows: self.data.skip_bad_rows,
            train_on: self.data.train_on,
        }
    }

    /// The eval set: file order, one pass, no packing.
    pub fn eval_data(&self) -> lapidary_data::DataConfig {
        lapidary_data::DataConfig {
            batch_size: self.eval_batch_size(),
            packing: false,
            shuffle_buffer: 0,
            epochs: Some(1),
            ..self.train_data()
        }
    }

    /// Settings a resumed run must share with the run it resumes (anything else, e.g. `max_steps` or
    /// `eval_every`, may change). Returns the first differing key.
    pub fn resume_mismatch(&self, old: &Recipe) -> Option<&'static str> {
        let (a, b) = (self, old);
        let checks: [(&'static str, bool); 20] = [
            ("model.path", a.model.path == b.model.path),
            ("model.quant", a.model.quant() == b.model.quant()),
            ("lora", a.lora == b.lora),
            ("data.train", a.data.train == b.data.train),
            ("data.sources", a.data.sources == b.data.sources),
            ("data.stopping_strategy", a.data.stopping_strategy == b.data.stopping_strategy),
            ("data.eval_split", a.data.eval_split == b.data.eval_split),
            ("data.columns", a.data.columns == b.data.columns),
            ("data.roles", a.data.roles == b.data.roles),
            ("data.train_on", a.data.train_on == b.data.train_on),
            ("data.format", a.data.format == b.data.format),
            ("data.max_seq_len", a.data.max_seq_len == b.data.max_seq_len),
            ("data.packing", a.data.packing == b.data.packing),
            ("data.completion_only", a.data.completion_only == b.data.completion_only),
            ("data.shuffle_buffer", a.data.shuffle_buffer == b.data.shuffle_buffer),
            ("data.skip_bad_rows", a.data.skip_bad_rows == b.data.skip_bad_rows),
            ("train.batch_size", a.train.batch_size == b.train.batch_size),
            ("train.grad_accum", a.train.grad_accum == b.train.grad_accum),
            ("train.seed", a.train.seed == b.train.seed),
            ("train.epochs", a.train.epochs == b.train.epochs),
        ];
        checks.iter().find(|(_, same)| !same).map(|(k, _)| *k)
    }
}

/// Sets `section.key` (any depth) in the parsed document. The value is parsed as a TOML value
/// (`2e-4`, `true`, `["q_proj"]`, `"x"`); anything that is not one is taken as a bare string
/// (`--set output.dir=runs/a`).
fn apply_override<'a>(root: &mut DeTable<'a>, arg: &'a str, span: Range<usize>) -> Result<()> {
    let Some((key, raw)) = arg.split_once('=') else {
        bail!("--set {arg}: expected section.key=value");
    };
    let path: Vec<&str> = key.trim().split('.').map(str::trim).collect();
    if path.len() < 2 || path.iter().any(|p| p.is_empty()) {
        bail!("--set {arg}: the key must be section.key, e.g. train.lr=1e-4");
    }
    let raw = raw.trim();
    let value = match DeValue::parse(raw) {
        Ok(v) => v.into_inner(),
        Err(_) => DeValue::String(std::borrow::Cow::Borrowed(raw)),
    };
    let mut table = root;
    for (depth, part) in path.iter().enumerate() {
        let k = Spanned::new(span.clone(), std::borrow::Cow::Owned(part.to_string()));
        if depth == path.len() - 1 {
            table.insert(k, Spanned::new(span.clone(), value));
            return Ok(());
        }
        let entry = table.entry(k).or_insert_with(|| Spanned::new(span.clone(), DeValue::Table(DeTable::new())));
        match entry.get_mut() {
            DeValue::Table(t) => table = t,
            other => bail!("--set {arg}: `{}` is a {}, not a section", path[..=depth].join("."), other.type_str()),
        }
    }
    Ok(())
}

/// `FILE:LINE: key `a.b`: message`, or `--set ARG: message` for an override.
fn located(path: &Path, text: &str, e: &toml::de::Error, over: Option<&str>) -> String {
    // With no input attached, toml's Display ends with "in `a.b`" naming the key path.
    let shown = e.to_string();
    let keys = shown.lines().find_map(|l| l.strip_prefix("in `").and_then(|l| l.strip_suffix('`'))).map(str::to_string);
    let mut msg = e.message().trim().to_string();
    if let Some(f) = msg.strip_prefix("unknown field `").and_then(|r| r.split('`').next()) {
        let full = match &keys {
            Some(k) => format!("{k}.{f}"),
            None => f.to_string(),
        };
        msg = format!("unknown key `{full}` ({msg})");
    } else if let Some(k) = &keys {
        msg = format!("key `{k}`: {msg}");
    }
    if let Some(arg) = over {
        return format!("--set {arg}: {msg}");
    }
    match e.span() {
        Some(s) => format!("{}:{}: {msg}", path.display(), line_of(text, s.start)),
        None => format!("{}: {msg}", path.display()),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "[model]\npath = \"m\"\n[data]\ntrain = \"t.jsonl\"\n[train]\nmax_steps = 5\n[output]\ndir = \"o\"\n";

    fn parse(text: &str, sets: &[&str]) -> Result<Recipe> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let r = Recipe::parse(text, Path::new("r.toml"), &sets)?;
        r.validate()?;
        Ok(r)
    }

    #[test]
    fn defaults_and_overrides() {
        let r = parse(BASE, &["train.lr=1e-3", "output.dir=runs/x", "lora.targets=[\"q_proj\"]", "data.packing=true"])
            .unwrap();
        assert_eq!(r.train.lr, 1e-3);
        assert_eq!(r.output.dir, PathBuf::from("runs/x"));
        assert_eq!(r.lora.targets, vec!["q_proj".to_string()]);
        assert!(r.data.packing);
        assert_eq!(r.lora.r, 16);
        assert_eq!((r.model.quant, r.model.quant()), (None, Quant::Nf4), "a directory trains on NF4 by default");
        let gguf = parse(BASE, &["model.path=\"m.gguf\""]).unwrap();
        assert_eq!(gguf.model.quant(), Quant::Gguf, "a .gguf trains on its own blocks by default");
        let set = parse(BASE, &["model.path=\"m.gguf\"", "model.quant=\"nf4\""]).unwrap();
        assert_eq!(set.model.quant(), Quant::Nf4);
        assert_eq!(r.model.compute_dtype, Dtype::F32);
        assert_eq!(parse(BASE, &["model.compute_dtype=\"bf16\""]).unwrap().model.compute_dtype, Dtype::Bf16);
        let e = parse(BASE, &["model.compute_dtype=\"fp8\""]).unwrap_err().to_string();
        assert!(e.contains("model.compute_dtype") && e.contains("bf16"), "{e}");
        // The resolved recipe reads back to itself.
        let again = parse(&r.to_toml().unwrap(), &[]).unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = BASE.replace("max_steps = 5", "max_steps = 5\nlearning_rate = 1.0");
        let e = parse(&text, &[]).unwrap_err().to_string();
        assert!(e.contains("r.toml:7") && e.contains("unknown key `train.learning_rate`"), "{e}");
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let text = BASE.replace("max_steps = 5", "max_steps = \"five\"");
        let e = parse(&text, &[]).unwrap_err().to_string();
        assert!(e.contains("r.toml:6") && e.contains("train.max_steps") && e.contains("invalid type"), "{e}");
    }

    #[test]
    fn bad_override_names_the_argument() {
        let e = parse(BASE, &["train.bogus=1"]).unwrap_err().to_string();
        assert!(e.contains("--set train.bogus=1") && e.contains("unknown key `train.bogus`"), "{e}");
        let e = parse(BASE, &["train.lr=fast"]).unwrap_err().to_string();
        assert!(e.contains("--set train.lr=fast") && e.contains("train.lr"), "{e}");
        let e = parse(BASE, &["lr=1"]).unwrap_err().to_string();
        assert!(e.contains("section.key"), "{e}");
    }

    #[test]
    fn validation_names_the_key() {
        for (set, want) in [
            ("lora.r=0", "lora.r"),
            ("lora.dropout=1.0", "lora.dropout"),
            ("lora.targets=[\"qkv\"]", "qkv"),
            ("lora.use_dora=1", "lora.use_dora"),
            ("train.lr=-1.0", "train.lr"),
            ("train.batch_size=0", "train.batch_size"),
            ("data.max_seq_len=1", "data.max_seq_len"),
        ] {
            let e = parse(BASE, &[set]).unwrap_err().to_string();
            assert!(e.contains(want), "{set}: {e}");
        }
        let e = parse(&BASE.replace("max_steps = 5", ""), &[]).unwrap_err().to_string();
        assert!(e.contains("train.max_steps or train.epochs"), "{e}");
    }

    #[test]
    fn eval_metrics_one_or_a_list() {
        assert_eq!(parse(BASE, &[]).unwrap().train.eval_metrics, vec![EvalMetric::Loss]);
        let eval = BASE.replace("train = \"t.jsonl\"\n", "train = \"t.jsonl\"\neval = \"e.jsonl\"\n");
        let r = parse(&eval, &["train.eval_metrics=\"exact_match\""]).unwrap();
        assert_eq!(r.train.eval_metrics, vec![EvalMetric::ExactMatch]);
        let r = parse(&eval, &["train.eval_metrics=[\"loss\", \"choice\"]"]).unwrap();
        assert_eq!(r.train.eval_metrics, vec![EvalMetric::Loss, EvalMetric::Choice]);
        assert_eq!(parse(&r.to_toml().unwrap(), &[]).unwrap(), r);
        for (set, want) in [
            ("train.eval_metrics=\"bleu\"", "unknown variant `bleu`"),
            ("train.eval_metrics=[\"loss\", \"f1\"]", "unknown variant `f1`"),
            ("train.eval_metrics=3", "invalid type"),
            ("train.eval_metrics=[]", "train.eval_metrics is empty"),
            ("train.eval_metrics=[\"loss\", \"loss\"]", "`loss` twice"),
            ("train.eval_metrics=[\"exact_match\", \"choice\"]", "cannot share"),
            ("train.eval_max_new_tokens=0", "train.eval_max_new_tokens"),
        ] {
            let e = parse(&eval, &[set]).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("train.eval_m"), "{set}: {e}");
        }
        let e = parse(BASE, &["train.eval_metrics=\"exact_match\""]).unwrap_err().to_string();
        assert!(e.contains("data.eval is not set"), "{e}");
    }
}
