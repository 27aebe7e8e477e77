//! `lapidary eval`: mean next-token NLL over all predicted tokens of all rows (each row on its own), or a task
//! metric (`--metric exact_match | choice`); `--compare` runs base and base + adapter side by side.
//!
//! This file is the command: its arguments, their checks, the text / JSON / `--predictions` output and the
//! `--compare` difference. What is measured, and how, is `crate::eval` ([`crate::eval::loss`],
//! [`crate::eval::task_metrics`]), the code the trainer's evals run too.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use lapidary_model::GemmaBackend;
use serde_json::{json, Value};

use crate::common::{load, print_json, ModelArgs};
use crate::eval::loss::eval_file;
use crate::eval::rows::{read_choice_rows, read_exact_rows, ChoiceRow, ExactRow};
use crate::eval::task_metrics::{choice, exact_match, ExactOptions, MatchRule};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Metric {
    /// Mean next-token loss and perplexity; rows `{"text"}` or `{"input_ids"}`.
    Loss,
    /// Greedy generation compared with `answer` after normalisation (lowercase, whitespace collapsed and
    /// trimmed, trailing `.,;:!?` stripped); rows `{"prompt" | "messages", "answer"}`; reports accuracy.
    #[value(name = "exact_match", alias = "exact-match")]
    ExactMatch,
    /// Multiple choice by continuation log-likelihood (lm-evaluation-harness's split; acc and acc_norm, the
    /// latter divided by the choice's length in characters); rows `{"prompt", "choices", "answer": index}`.
    Choice,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL rows (fields depend on --metric).
    #[arg(long)]
    pub data: PathBuf,
    /// What to measure.
    #[arg(long, value_enum, default_value = "loss")]
    pub metric: Metric,
    /// Longer rows are truncated (and counted); for `choice`, the input keeps its last tokens, as lm-eval does.
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// exact_match: most tokens generated per row (greedy).
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// exact_match: wrap each `prompt` as a user turn of the Gemma chat template (rows with `messages` always
    /// use the template).
    #[arg(long)]
    pub chat: bool,
    /// exact_match: also stop at the first newline (the generation is cut there).
    #[arg(long)]
    pub stop_at_newline: bool,
    /// exact_match: `equal` = normalised generation equals the normalised answer; `prefix` = it starts with
    /// the answer, followed by a non-alphanumeric character or nothing.
    #[arg(long = "match", value_enum, default_value = "equal")]
    pub match_rule: MatchRule,
    /// choice: put between the prompt and each choice (lm-eval's `target_delimiter`).
    #[arg(long, default_value = " ", allow_hyphen_values = true)]
    pub target_delimiter: String,
    /// Write one JSON line per row: exact_match `{index, line, prediction, normalized, answers, correct}`,
    /// choice `{index, line, loglikelihoods, lengths, pred, pred_norm, answer, correct, correct_norm}`
    /// (with --compare, each row twice, tagged `"model": "base" | "adapter"`).
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// Evaluate the base model and base + --adapter side by side; reports both and adapter - base.
    #[arg(long)]
    pub compare: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The rows of one metric, read and checked before any model is loaded.
enum Rows {
    Loss(PathBuf),
    Exact(Vec<ExactRow>),
    Choice(Vec<ChoiceRow>),
}

/// Runs the metric on one model: (summary JSON, per-row JSON, text line).
fn evaluate<B: GemmaBackend>(a: &EvalArgs, model: &ModelArgs, rows: &Rows) -> Result<(Value, Vec<Value>, String)> {
    let loaded = load::<B>(model)?;
    let start = std::time::Instant::now();
    let (mut summary, per_row, line) = match rows {
        Rows::Loss(path) => {
            let r = eval_file(&loaded.model, &loaded.files.tokenizer, path, a.max_seq_len)?;
            let line = format!(
                "loss {:.6}  perplexity {:.4}  ({} predicted tokens, {} examples{})",
                r.loss,
                r.loss.exp(),
                r.tokens,
                r.examples,
                if r.truncated > 0 { format!(", {} truncated", r.truncated) } else { String::new() }
            );
            let s = start.elapsed().as_secs_f64();
            let v = json!({
                "loss": r.loss, "perplexity": r.loss.exp(), "tokens": r.tokens, "examples": r.examples,
                "truncated": r.truncated, "seconds": s, "tokens_per_s": r.tokens as f64 / s,
            });
            return Ok((v, Vec::new(), line));
        }
        Rows::Exact(rows) => {
            let opt = ExactOptions {
                max_new_tokens: a.max_new_tokens,
                chat: a.chat,
                stop_at_newline: a.stop_at_newline,
                rule: a.match_rule,
            };
            let (tok, eos) = (&loaded.files.tokenizer, &loaded.files.config.eos_token_ids);
            let template = lapidary_data::ChatTemplate::for_model(&model.model)?;
            let r = exact_match(&loaded.model, tok, template.as_ref(), eos, rows, &opt, &a.data)?;
            let line = format!(
                "exact_match accuracy {:.4}  ({} of {} correct, match = {})",
                r.summary["accuracy"].as_f64().unwrap_or(0.0),
                r.summary["correct"],
                r.summary["examples"],
                a.match_rule.name()
            );
            (r.summary, r.rows, line)
        }
        Rows::Choice(rows) => {
            let r = choice(&loaded.model, &loaded.files.tokenizer, rows, &a.target_delimiter, a.max_seq_len, &a.data)?;
            let line = format!(
                "choice acc {:.4}  acc_norm {:.4}  ({} examples)",
                r.summary["acc"].as_f64().unwrap_or(0.0),
                r.summary["acc_norm"].as_f64().unwrap_or(0.0),
                r.summary["examples"]
            );
            (r.summary, r.rows, line)
        }
    };
    summary["seconds"] = json!(start.elapsed().as_secs_f64());
    Ok((summary, per_row, line))
}

fn write_predictions(path: &Path, rows: &[Value]) -> Result<()> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", path.display()))?,
    );
    for r in rows {
        writeln!(f, "{}", serde_json::to_string(r)?).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    f.flush().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(())
}

/// The numeric headline keys of a metric, for `--compare`'s difference.
fn headline(metric: Metric) -> &'static [&'static str] {
    match metric {
        Metric::Loss => &["loss", "perplexity"],
        Metric::ExactMatch => &["accuracy", "correct"],
        Metric::Choice => &["acc", "acc_norm"],
    }
}

fn run_on<B: GemmaBackend>(a: EvalArgs) -> Result<()> {
    if a.max_seq_len.is_some_and(|m| m < 2) {
        bail!("--max-seq-len must be at least 2");
    }
    if a.compare && a.model.adapter.is_none() {
        bail!("--compare needs --adapter (it evaluates the base model and base + adapter side by side)");
    }
    if a.metric == Metric::ExactMatch && a.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    if a.predictions.is_some() && a.metric == Metric::Loss {
        bail!("--predictions is for --metric exact_match or choice (loss has no per-row prediction)");
    }
    let rows = match a.metric {
        Metric::Loss => Rows::Loss(a.data.clone()),
        Metric::ExactMatch => Rows::Exact(read_exact_rows(&a.data)?),
        Metric::Choice => Rows::Choice(read_choice_rows(&a.data)?),
    };
    if !a.compare {
        let (summary, per_row, line) = evaluate::<B>(&a, &a.model, &rows)?;
        if let Some(p) = &a.predictions {
            write_predictions(p, &per_row)?;
        }
        if a.json {
            print_json(&summary);
        } else {
            println!("{line}");
        }
        return Ok(());
    }
    let base_args = ModelArgs { adapter: None, ..a.model.clone() };
    let (base, base_rows, base_line) = evaluate::<B>(&a, &base_args, &rows)?;
    let (tuned, tuned_rows, tuned_line) = evaluate::<B>(&a, &a.model, &rows)?;
    if let Some(p) = &a.predictions {
        let tag = |rows: Vec<Value>, name: &'static str| {
            rows.into_iter().map(move |mut r| {
                r["model"] = json!(name);
                r
            })
        };
        let all: Vec<Value> = tag(base_rows, "base").chain(tag(tuned_rows, "adapter")).collect();
        write_predictions(p, &all)?;
    }
    let mut diff = serde_json::Map::new();
    for k in headline(a.metric) {
        if let (Some(x), Some(y)) = (base[*k].as_f64(), tuned[*k].as_f64()) {
            diff.insert(k.to_string(), json!(y - x));
        }
    }
    let metric = match a.metric {
        Metric::Loss => "loss",
        Metric::ExactMatch => "exact_match",
        Metric::Choice => "choice",
    };
    if a.json {
        print_json(&json!({
            "metric": metric, "base": base, "adapter": tuned, "difference": Value::Object(diff),
        }));
    } else {
        println!("base     {base_line}");
        println!("adapter  {tuned_line}");
        let d: Vec<String> = diff.iter().map(|(k, v)| format!("{k} {:+.6}", v.as_f64().unwrap_or(0.0))).collect();
        println!("adapter - base: {}", d.join("  "));
    }
    Ok(())
}

pub fn run(a: EvalArgs) -> Result<()> {
    crate::common::dispatch!(a.model.backend, run_on, a)
}
