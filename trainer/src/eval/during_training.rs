//! The trainer's evaluations: at step 0, every `eval_every` steps and at the end, each metric of
//! `train.eval_metrics` is measured on `data.eval` with the implementation `lapidary eval` uses
//! ([`super::task_metrics`]), so a logged value equals what `lapidary eval` gives for the same adapter.
//!
//! - `loss`: the rows read as training rows (same format, `max_seq_len`, `completion_only`), mean NLL per target.
//! - `exact_match`: `{"prompt" | "messages", "answer"}` rows; greedy generation of at most
//!   `eval_max_new_tokens` tokens (ending at the first newline with `eval_stop_at_newline`), equal after
//!   normalisation, as `lapidary eval --metric exact_match` with the same options.
//! - `choice`: `{"prompt", "choices", "answer": index}` rows, as `lapidary eval --metric choice` with
//!   `--max-seq-len data.max_seq_len`.
//!
//! One row may serve both `loss` and `exact_match`: `{"prompt", "completion", "answer"}` (the trainer reads
//! `prompt` + `completion`, exact_match reads `prompt` + `answer`).
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use lapidary_data::{Batch, Batches, ChatTemplate};
use lapidary_model::Gemma;
use lapidary_model::GemmaBackend;

use super::loss::eval_loss;
use super::rows::{read_choice_rows, read_exact_rows, ChoiceRow, ExactRow};
use super::task_metrics::{choice, exact_match, ExactOptions, MatchRule};
use crate::train::config::{EvalMetric, Recipe};

/// The eval set, read and checked before the model is loaded.
pub struct EvalSet {
    path: PathBuf,
    loss: Option<Vec<Batch>>,
    exact: Option<Vec<ExactRow>>,
    choice: Option<Vec<ChoiceRow>>,
    options: ExactOptions,
    max_seq_len: usize,
    tokenizer: tokenizers::Tokenizer,
    chat_template: Option<ChatTemplate>,
    eos: Vec<u32>,
}

/// What one evaluation measured (a field per metric; `None` when not asked for).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scores {
    pub loss: Option<f64>,
    /// Targets the loss is averaged over.
    pub tokens: Option<usize>,
    /// Exact-match accuracy and (correct, rows).
    pub exact_match: Option<(f64, usize, usize)>,
    /// Choice (acc, acc_norm).
    pub choice: Option<(f64, f64)>,
}

impl EvalSet {
    /// `None` when the recipe has no `data.eval`. `eos` are the model config's EOS ids; `chat_template` renders
    /// `messages` rows (`None`: the built-in Gemma template).
    pub fn load(
        recipe: &Recipe,
        tokenizer: &tokenizers::Tokenizer,
        chat_template: Option<&ChatTemplate>,
        eos: &[u32],
    ) -> Result<Option<Self>> {
        if let Some(spec) = recipe.eval_split_spec() {
            return Self::held_out(recipe, spec, tokenizer, chat_template, eos).map(Some);
        }
        let Some(path) = &recipe.data.eval else { return Ok(None) };
        let t = &recipe.train;
        let has = |m| t.eval_metrics.contains(&m);
        let how = |m: EvalMetric| {
            format!("train.eval_metrics has `{}`, which reads data.eval {} as JSONL", m.name(), path.display())
        };
        let loss = if has(EvalMetric::Loss) {
            let batches = Batches::new(path, tokenizer.clone(), recipe.eval_data())
                .map(|b| b.with_chat_template(chat_template.cloned()))
                .and_then(|b| b.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("eval data {}", path.display()))?;
            Some(batches)
        } else {
            None
        };
        let exact = if has(EvalMetric::ExactMatch) {
            Some(read_exact_rows(path).with_context(|| how(EvalMetric::ExactMatch))?)
        } else {
            None
        };
        let choice = if has(EvalMetric::Choice) {
            Some(read_choice_rows(path).with_context(|| how(EvalMetric::Choice))?)
        } else {
            None
        };
        Ok(Some(Self {
            path: path.clone(),
            loss,
            exact,
            choice,
            options: ExactOptions {
                max_new_tokens: t.eval_max_new_tokens,
                chat: false,
                stop_at_newline: t.eval_stop_at_newline,
                rule: MatchRule::Equal,
            },
            max_seq_len: recipe.data.max_seq_len,
            tokenizer: tokenizer.clone(),
            chat_template: chat_template.cloned(),
            eos: eos.to_vec(),
        }))
    }

    /// `data.eval_split`'s held-out training rows, for `loss` (the only metric validation lets through).
    fn held_out(
        recipe: &Recipe,
        spec: lapidary_data::DataSpec,
        tokenizer: &tokenizers::Tokenizer,
        chat_template: Option<&ChatTemplate>,
        eos: &[u32],
    ) -> Result<Self> {
        let label = format!("the rows data.eval_split holds out of {}", spec.label());
        let special = lapidary_data::SpecialTokens::from_tokenizer(tokenizer)?;
        let batches = Batches::from_spec(spec, tokenizer.clone(), special, recipe.eval_data())
            .map(|b| b.with_chat_template(chat_template.cloned()))
            .and_then(|b| b.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("eval data: {label}"))?;
        Ok(Self {
            path: PathBuf::from(label),
            loss: Some(batches),
            exact: None,
            choice: None,
            options: ExactOptions {
                max_new_tokens: recipe.train.eval_max_new_tokens,
                chat: false,
                stop_at_newline: false,
                rule: MatchRule::Equal,
            },
            max_seq_len: recipe.data.max_seq_len,
            tokenizer: tokenizer.clone(),
            chat_template: chat_template.cloned(),
            eos: eos.to_vec(),
        })
    }

    /// Every asked-for metric on `model` (dropout off); a non-finite loss is an error naming the step.
    pub fn run<B: GemmaBackend>(&self, model: &Gemma<B>, step: u64) -> Result<Scores> {
        let mut s = Scores::default();
        if let Some(batches) = &self.loss {
            let (loss, n) = eval_loss(model, batches);
            if !loss.is_finite() {
                bail!("step {step}: the eval loss is {loss}");
            }
            s.loss = Some(loss);
            s.tokens = Some(n);
        }
        if let Some(rows) = &self.exact {
            let r = exact_match(
                model,
                &self.tokenizer,
                self.chat_template.as_ref(),
                &self.eos,
                rows,
                &self.options,
                &self.path,
            )?;
            let acc = r.summary["accuracy"].as_f64().unwrap_or(0.0);
            let correct = r.summary["correct"].as_u64().unwrap_or(0) as usize;
            s.exact_match = Some((acc, correct, rows.len()));
        }
        if let Some(rows) = &self.choice {
            let r = choice(model, &self.tokenizer, rows, " ", Some(self.max_seq_len), &self.path)?;
            s.choice = Some((r.summary["acc"].as_f64().unwrap_or(0.0), r.summary["acc_norm"].as_f64().unwrap_or(0.0)));
        }
        Ok(s)
    }
}

impl Scores {
    /// `eval loss 0.1234  exact_match 0.8750 (21/24)  acc 0.5000  acc_norm 0.6250`.
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        if let Some(l) = self.loss {
            parts.push(format!("eval loss {l:.4}"));
        }
        if let Some((acc, c, n)) = self.exact_match {
            parts.push(format!("exact_match {acc:.4} ({c}/{n})"));
        }
        if let Some((acc, norm)) = self.choice {
            parts.push(format!("acc {acc:.4}  acc_norm {norm:.4}"));
        }
        parts.join("  ")
    }
}
