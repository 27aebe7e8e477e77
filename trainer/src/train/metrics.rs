//! `OUT/metrics.jsonl` (one JSON object per line: a train row per step, an eval row per evaluation) and
//! `OUT/loss.png`, the train/eval loss curve.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Row {
    Train {
        step: u64,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        /// Non-padding tokens in this step.
        tokens: usize,
        tokens_per_s: f64,
        /// Data-parallel replicas (absent: one); `tokens` and `tokens_per_s` are all of theirs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replicas: Option<usize>,
    },
    /// One evaluation; a key per metric of `train.eval_metrics` (absent when not measured).
    Eval {
        step: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eval_loss: Option<f64>,
        /// Targets the eval loss is averaged over.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eval_tokens: Option<usize>,
        /// Exact-match accuracy on the eval rows.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eval_exact_match: Option<f64>,
        /// Multiple-choice accuracy and its length-normalised form.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eval_acc: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eval_acc_norm: Option<f64>,
    },
}

impl Row {
    /// The eval row of `scores` at `step`.
    pub fn eval(step: u64, s: &crate::eval::during_training::Scores) -> Self {
        Row::Eval {
            step,
            eval_loss: s.loss,
            eval_tokens: s.tokens,
            eval_exact_match: s.exact_match.map(|e| e.0),
            eval_acc: s.choice.map(|c| c.0),
            eval_acc_norm: s.choice.map(|c| c.1),
        }
    }
}

impl Row {
    fn keep_on_resume(&self, resumed_at: u64) -> bool {
        match self {
            // Step N's train row was logged before checkpoint N; eval at N runs again after the resume.
            Row::Train { step, .. } => *step <= resumed_at,
            Row::Eval { step, .. } => *step < resumed_at,
        }
    }
}

pub struct Metrics {
    path: PathBuf,
    file: std::fs::File,
    pub rows: Vec<Row>,
}

impl Metrics {
    /// A fresh `metrics.jsonl`, or, resuming at step `n`, the old one cut back to what happened before `n`
    /// (a run stopped after its last checkpoint logged steps that will now be redone).
    pub fn open(out: &Path, resumed_at: Option<u64>) -> Result<Self> {
        let path = out.join("metrics.jsonl");
        let (mut rows, mut text) = (Vec::new(), String::new());
        if let Some(n) = resumed_at {
            if let Ok(old) = std::fs::read_to_string(&path) {
                for line in old.lines() {
                    let Ok(row) = serde_json::from_str::<Row>(line) else { continue };
                    if row.keep_on_resume(n) {
                        // The line itself, not a re-serialisation: parsing and printing a float can move its
                        // last digit, and a resumed run's file must equal an uninterrupted run's.
                        text.push_str(line);
                        text.push('\n');
                        rows.push(row);
                    }
                }
            }
        }
        lapidary_model::io::atomic::write_atomic(&path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        Ok(Self { path, file, rows })
    }

    pub fn log(&mut self, row: Row) -> Result<()> {
        let line = serde_json::to_string(&row)?;
        writeln!(self.file, "{line}").with_context(|| format!("{}: cannot write", self.path.display()))?;
        self.file.flush()?;
        self.rows.push(row);
        Ok(())
    }

    /// Draws `loss.png`; a drawing failure (e.g. no fonts) is returned for the caller to report, not fatal.
    pub fn plot(&self, out: &Path) -> Result<(), String> {
        let train: Vec<(f64, f64)> = self
            .rows
            .iter()
            .filter_map(|r| match r {
                Row::Train { step, loss, .. } => Some((*step as f64, *loss)),
                _ => None,
            })
            .collect();
        let eval: Vec<(f64, f64)> = self
            .rows
            .iter()
            .filter_map(|r| match r {
                Row::Eval { step, eval_loss: Some(l), .. } => Some((*step as f64, *l)),
                _ => None,
            })
            .collect();
        let tmp = out.join("loss.tmp.png");
        draw(&tmp, &train, &eval).map_err(|e| format!("drawing {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, out.join("loss.png")).map_err(|e| format!("{}: {e}", out.display()))
    }
}

fn draw(path: &Path, train: &[(f64, f64)], eval: &[(f64, f64)]) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let all = || train.iter().chain(eval);
    let xmax = all().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) =
        all().map(|p| p.1).filter(|v| v.is_finite()).fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo > hi { (0.0, 1.0) } else { (lo, hi) };
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("loss", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..xmax, (lo - pad)..(hi + pad))?;
    chart.configure_mesh().x_desc("step").y_desc("loss (nats/token)").draw()?;
    chart
        .draw_series(LineSeries::new(train.iter().copied(), &BLUE))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    if !eval.is_empty() {
        chart
            .draw_series(LineSeries::new(eval.iter().copied(), RED.stroke_width(2)))?
            .label("eval")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart.draw_series(eval.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
