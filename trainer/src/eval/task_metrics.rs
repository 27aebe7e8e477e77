//! Task metrics of `lapidary eval`: `exact_match` (greedy generation against a reference answer) and `choice`
//! (multiple choice by continuation log-likelihood, `acc` / `acc_norm` as lm-evaluation-harness computes them).
//!
//! **exact_match normalisation** ([`normalize`]), applied to both the generation and the answer: lowercase;
//! every run of whitespace becomes one space; leading/trailing whitespace is trimmed; then trailing
//! punctuation (`. , ; : ! ?`) and whitespace are stripped repeatedly. The match ([`MatchRule`]) is `equal`
//! (default: the normalised strings are equal) or `prefix` (the normalised generation starts with the
//! normalised answer and the next character, if any, is not a letter or digit).
//!
//! **choice split** ([`encode_pair`], lm-eval's `_encode_pair` for a causal model with `add_bos_token`, which
//! lm-eval turns on for Gemma): the request is (context = prompt, continuation = delimiter + choice); trailing
//! whitespace of the context (Python `str.rstrip`) moves to the front of the continuation; then
//! `context + continuation` and `context` are each tokenized with BOS, and the continuation tokens are the
//! whole encoding after the first `len(context tokens)`. The log-likelihood is the sum of the log-softmax of
//! those tokens given everything before them. `acc` picks `argmax ll`, `acc_norm` picks
//! `argmax ll / len(choice)` with `len` in characters (Unicode scalar values, Python's `len`) of the choice as
//! written (without the delimiter); ties go to the first index (`np.argmax`).
use anyhow::{bail, Result};
use lapidary_model::gemma::generate::SamplingConfig;
use lapidary_model::GemmaBackend;
use lapidary_model::{Gemma, TokenBatch};
use serde_json::{json, Value};

use super::rows::{ChoiceRow, ExactRow, Prompt};
use crate::common::{encode, stop_ids_for};

/// How a normalised generation is compared with a normalised answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MatchRule {
    /// The two are equal.
    Equal,
    /// The generation starts with the answer, ending at a non-alphanumeric character or the end.
    Prefix,
}

impl MatchRule {
    pub fn name(self) -> &'static str {
        match self {
            MatchRule::Equal => "equal",
            MatchRule::Prefix => "prefix",
        }
    }
}

/// See the module docs: lowercase, collapse whitespace, trim, strip trailing `.,;:!?`.
pub fn normalize(s: &str) -> String {
    let lower = s.to_lowercase();
    let collapsed = lower.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.trim_end_matches(|c: char| c.is_whitespace() || ".,;:!?".contains(c)).to_string()
}

/// Whether `prediction` matches `answer` (both raw; both are normalised here).
pub fn matches(prediction: &str, answer: &str, rule: MatchRule) -> bool {
    let (p, a) = (normalize(prediction), normalize(answer));
    match rule {
        MatchRule::Equal => p == a,
        MatchRule::Prefix => {
            !a.is_empty() && p.starts_with(&a) && p[a.len()..].chars().next().is_none_or(|c| !c.is_alphanumeric())
        }
    }
}

pub struct ExactOptions {
    pub max_new_tokens: usize,
    pub chat: bool,
    pub stop_at_newline: bool,
    pub rule: MatchRule,
}

pub struct MetricResult {
    /// The summary object (`{"metric", ...}`).
    pub summary: Value,
    /// One object per row, for `--predictions`.
    pub rows: Vec<Value>,
}

/// Ids that end a generation: the config's EOS ids (`eos`), `<end_of_turn>` and, with `newline`, every token
/// whose text has a newline.
pub fn exact_stop_ids(tok: &tokenizers::Tokenizer, eos: &[u32], newline: bool) -> Vec<u32> {
    let mut ids = stop_ids_for(eos, tok);
    if newline {
        for id in 0..tok.get_vocab_size(true) as u32 {
            if tok.id_to_token(id).is_some_and(|t| t.contains('\n') || t == "<0x0A>" || t == "<0x0D>") {
                ids.push(id);
            }
        }
    }
    ids
}

/// Prompts generated together per step: as many rows as multiply the packed weights directly (the CPU's
/// matrix-vector kernels read each weight once for all of them); more rows go through decoded weight tiles,
/// slower per step than the tokens they add.
const GENERATION_BATCH: usize = lapidary_model::cpu::qmatmul::SMALL_N;

/// Greedy (or sampled) continuations of `prompts`, in their order: prompts of equal length are generated
/// [`GENERATION_BATCH`] at a time with one KV cache (`Gemma::generate_batch`), each row as `generate` would.
fn generate_grouped<B: GemmaBackend>(model: &Gemma<B>, prompts: &[Vec<u32>], cfg: &SamplingConfig) -> Vec<Vec<u32>> {
    let mut by_len: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, p) in prompts.iter().enumerate() {
        by_len.entry(p.len()).or_default().push(i);
    }
    let mut out = vec![Vec::new(); prompts.len()];
    for group in by_len.values() {
        for chunk in group.chunks(GENERATION_BATCH) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
            for (&i, new) in chunk.iter().zip(model.generate_batch(&batch, cfg)) {
                out[i] = new;
            }
        }
    }
    out
}

/// Greedy generation for every row, compared with its answers. Chat prompts are rendered with `chat_template`
/// (the checkpoint's; `None`: the built-in Gemma template). `eos` are the model config's EOS ids; `data` names the
/// file in messages.
pub fn exact_match<B: GemmaBackend>(
    model: &Gemma<B>,
    tok: &tokenizers::Tokenizer,
    chat_template: Option<&lapidary_data::ChatTemplate>,
    eos: &[u32],
    rows: &[ExactRow],
    opt: &ExactOptions,
    data: &std::path::Path,
) -> Result<MetricResult> {
    let stop_ids = exact_stop_ids(tok, eos, opt.stop_at_newline);
    let cfg = SamplingConfig { max_new_tokens: opt.max_new_tokens, stop_ids: stop_ids.clone(), ..Default::default() };
    let needs_chat = opt.chat || rows.iter().any(|r| matches!(r.prompt, Prompt::Chat(_)));
    let encoder = if needs_chat {
        let special = lapidary_data::SpecialTokens::from_tokenizer(tok)?;
        let config = lapidary_data::EncodeConfig { max_seq_len: usize::MAX, completion_only: false };
        Some(lapidary_data::Encoder::new(tok.clone(), special, config)?.with_chat_template(chat_template.cloned()))
    } else {
        None
    };
    let prompts = rows
        .iter()
        .map(|row| {
            let at = || format!("{}:{}", data.display(), row.line);
            Ok(match (&row.prompt, &encoder) {
                (Prompt::Chat(m), Some(e)) => {
                    e.encode_chat_prompt(m).map_err(|err| anyhow::anyhow!("{}: {err}", at()))?
                }
                (Prompt::Text(p), Some(e)) if opt.chat => e
                    .encode_chat_prompt(&[lapidary_data::Message::new("user", p)])
                    .map_err(|err| anyhow::anyhow!("{}: {err}", at()))?,
                (Prompt::Text(p), _) => encode(tok, p)?,
                (Prompt::Chat(_), None) => unreachable!("an encoder exists when a row has messages"),
            })
        })
        .collect::<Result<Vec<Vec<u32>>>>()?;
    let generated = generate_grouped(model, &prompts, &cfg);
    let (mut correct, mut out) = (0usize, Vec::with_capacity(rows.len()));
    for (i, (row, new)) in rows.iter().zip(generated).enumerate() {
        let at = || format!("{}:{}", data.display(), row.line);
        let kept: Vec<u32> = new.iter().copied().take_while(|t| !stop_ids.contains(t)).collect();
        let mut text = tok.decode(&kept, true).map_err(|e| anyhow::anyhow!("{}: decoding: {e}", at()))?;
        if opt.stop_at_newline {
            if let Some(p) = text.find('\n') {
                text.truncate(p);
            }
        }
        let ok = row.answers.iter().any(|a| matches(&text, a, opt.rule));
        correct += ok as usize;
        out.push(json!({
            "index": i, "line": row.line, "prediction": text, "normalized": normalize(&text),
            "answers": row.answers, "correct": ok, "new_tokens": new.len(),
        }));
    }
    let n = rows.len();
    Ok(MetricResult {
        summary: json!({
            "metric": "exact_match", "accuracy": correct as f64 / n as f64, "correct": correct, "examples": n,
            "match": opt.rule.name(),
            "normalization": "lowercase, collapse whitespace, trim, strip trailing .,;:!?",
            "max_new_tokens": opt.max_new_tokens, "chat": opt.chat, "stop_at_newline": opt.stop_at_newline,
        }),
        rows: out,
    })
}

/// Python's `str.rstrip()` whitespace (Unicode whitespace plus U+001C..U+001F).
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// lm-eval's context/continuation split (see the module docs): (context ids with BOS, continuation ids).
pub fn encode_pair(tok: &tokenizers::Tokenizer, context: &str, continuation: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = context.trim_end_matches(py_space);
    let continuation = format!("{}{continuation}", &context[trimmed.len()..]);
    let whole = encode(tok, &format!("{trimmed}{continuation}"))?;
    let ctx = encode(tok, trimmed)?;
    let cont = whole.get(ctx.len()..).unwrap_or_default().to_vec();
    Ok((ctx, cont))
}

/// Sum of log p(continuation | context). Like lm-eval, an input longer than `max_len` keeps its last
/// `max_len` tokens. Returns (log-likelihood, whether the input was cut).
pub fn loglikelihood<B: GemmaBackend>(
    model: &Gemma<B>,
    ctx: &[u32],
    cont: &[u32],
    max_len: Option<usize>,
) -> (f64, bool) {
    let all: Vec<u32> = ctx.iter().chain(cont).copied().collect();
    let mut input = all[..all.len() - 1].to_vec();
    let mut cut = false;
    if let Some(m) = max_len {
        if input.len() > m {
            input.drain(..input.len() - m);
            cut = true;
        }
    }
    // The continuation's tokens are the last `cont.len()` targets of `input`'s positions.
    let first = input.len() - cont.len();
    let targets: Vec<(usize, u32)> = cont.iter().enumerate().map(|(i, &t)| (first + i, t)).collect();
    (-model.eval_nll(&TokenBatch::from_rows(&[input]), &targets), cut)
}

/// First index of the largest value (`np.argmax`).
pub fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

pub fn choice<B: GemmaBackend>(
    model: &Gemma<B>,
    tok: &tokenizers::Tokenizer,
    rows: &[ChoiceRow],
    delimiter: &str,
    max_len: Option<usize>,
    data: &std::path::Path,
) -> Result<MetricResult> {
    let (mut acc, mut acc_norm, mut truncated) = (0usize, 0usize, 0usize);
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let (mut lls, mut ntok, mut row_cut) = (Vec::new(), Vec::new(), false);
        for (j, c) in row.choices.iter().enumerate() {
            let (ctx, cont) = encode_pair(tok, &row.prompt, &format!("{delimiter}{c}"))?;
            if cont.is_empty() {
                bail!("{}:{}: choice {j} ({c:?}) gives no continuation tokens", data.display(), row.line);
            }
            let (ll, cut) = loglikelihood(model, &ctx, &cont, max_len);
            if !ll.is_finite() {
                bail!(
                    "{}:{}: choice {j} has log-likelihood {ll}: the weights or the adapter are broken",
                    data.display(),
                    row.line
                );
            }
            row_cut |= cut;
            lls.push(ll);
            ntok.push(cont.len());
        }
        let lens: Vec<usize> = row.choices.iter().map(|c| c.chars().count()).collect();
        let normed: Vec<f64> = lls.iter().zip(&lens).map(|(l, &n)| l / n as f64).collect();
        let (pred, pred_norm) = (argmax(&lls), argmax(&normed));
        acc += (pred == row.answer) as usize;
        acc_norm += (pred_norm == row.answer) as usize;
        truncated += row_cut as usize;
        out.push(json!({
            "index": i, "line": row.line, "loglikelihoods": lls, "lengths": lens, "continuation_tokens": ntok,
            "pred": pred, "pred_norm": pred_norm, "answer": row.answer,
            "correct": pred == row.answer, "correct_norm": pred_norm == row.answer, "truncated": row_cut,
        }));
    }
    let n = rows.len() as f64;
    Ok(MetricResult {
        summary: json!({
            "metric": "choice", "acc": acc as f64 / n, "acc_norm": acc_norm as f64 / n, "examples": rows.len(),
            "correct": acc, "correct_norm": acc_norm, "target_delimiter": delimiter, "truncated": truncated,
        }),
        rows: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_rules() {
        assert_eq!(normalize("  Paris.  "), "paris");
        assert_eq!(normalize("New\t\tYORK  city!?"), "new york city");
        assert_eq!(normalize("a , b ;: . "), "a , b");
        assert_eq!(normalize("3.14"), "3.14");
        assert_eq!(normalize("...!"), "");
        assert_eq!(normalize("Ünïcode\u{00a0}Straße"), "ünïcode straße");
        assert_eq!(normalize("\"quoted\""), "\"quoted\"");
    }

    #[test]
    fn match_rules() {
        assert!(matches("Paris.", "paris", MatchRule::Equal));
        assert!(!matches("Paris, France", "paris", MatchRule::Equal));
        assert!(matches("Paris, France", "paris", MatchRule::Prefix));
        assert!(matches("paris", "Paris!", MatchRule::Prefix));
        assert!(!matches("42", "4", MatchRule::Prefix));
        assert!(!matches("Parisian", "paris", MatchRule::Prefix));
        assert!(!matches("anything", "", MatchRule::Prefix));
    }

    #[test]
    fn argmax_first_wins_ties() {
        assert_eq!(argmax(&[-1.0, -0.5, -0.5]), 1);
        assert_eq!(argmax(&[-3.0]), 0);
    }
}
