//! `train.eval_metrics`: the trainer measures exact_match / choice on its eval set at every evaluation, logs
//! them in metrics.jsonl, and each logged value equals what `lapidary eval --metric ...` (an independent
//! path: a fresh process loading the saved adapter) gives for the adapter of that step.
mod common;

use common::*;
use std::path::Path;

/// The prompt/completion rows of the training fixture, each with its `answer` (the completion, unspaced):
/// rows both the trainer (loss) and exact_match read.
fn qa_rows() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixture("train/train.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("prompt").is_some())
        .map(|mut r| {
            r["answer"] = serde_json::json!(r["completion"].as_str().unwrap().trim());
            r
        })
        .collect()
}

fn write_jsonl(path: &Path, rows: &[serde_json::Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// `lapidary train configs/tiny-test.toml` with `sets` (each `section.key=value`); returns the summary line.
fn train(sets: &[String]) -> serde_json::Value {
    let mut args = vec!["train".to_string(), repo_root().join("configs/tiny-test.toml").display().to_string()];
    for s in sets {
        args.extend(["--set".to_string(), s.clone()]);
    }
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_lapidary"))
        .current_dir(repo_root())
        .args(&args)
        .output()
        .expect("run lapidary");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "train {sets:?} failed: {stderr}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

fn eval_rows(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("loss").is_none())
        .collect()
}

/// `lapidary eval --model tiny/gemma3 --quant nf4 [--adapter A] EXTRA --json`.
fn eval(adapter: Option<&Path>, extra: &[&str]) -> serde_json::Value {
    let model = fixture("tiny/gemma3");
    let mut args = vec!["eval", "--model", model.to_str().unwrap(), "--quant", "nf4", "--json"];
    if let Some(a) = adapter {
        args.extend(["--adapter", a.to_str().unwrap()]);
    }
    args.extend(extra);
    lapidary_json(&args)
}

#[test]
fn exact_match_is_logged_at_every_eval_and_equals_lapidary_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let (train_path, eval_path, out) =
        (tmp.path().join("train.jsonl"), tmp.path().join("eval.jsonl"), tmp.path().join("run"));
    let rows = qa_rows();
    assert_eq!(rows.len(), 8);
    write_jsonl(&train_path, &rows);
    write_jsonl(&eval_path, &rows);
    let summary = train(&[
        format!("data.train={}", train_path.display()),
        format!("data.eval={}", eval_path.display()),
        "train.eval_metrics=[\"loss\", \"exact_match\"]".into(),
        "train.eval_max_new_tokens=40".into(),
        "train.max_steps=60".into(),
        "train.lr=2e-2".into(),
        "train.eval_every=20".into(),
        "train.save_every=20".into(),
        "train.keep_checkpoints=10".into(),
        "lora.dropout=0.0".into(),
        format!("output.dir={}", out.display()),
    ]);

    let evals = eval_rows(&out);
    let steps: Vec<u64> = evals.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![0, 20, 40, 60]);
    let data = eval_path.to_str().unwrap();
    let mut accs = Vec::new();
    for r in &evals {
        let step = r["step"].as_u64().unwrap();
        assert!(r["eval_loss"].as_f64().unwrap().is_finite() && r["eval_tokens"].as_u64().unwrap() > 0, "{r}");
        let logged = r["eval_exact_match"].as_f64().unwrap_or_else(|| panic!("step {step}: no eval_exact_match: {r}"));
        // Step 0 is the base (the LoRA B matrices start at zero); step N is checkpoint N's adapter.
        let ckpt = out.join(format!("checkpoints/step-{step}/adapter"));
        let adapter = (step > 0).then_some(ckpt.as_path());
        let want = eval(adapter, &["--data", data, "--metric", "exact_match", "--max-new-tokens", "40"]);
        assert_eq!(logged, want["accuracy"].as_f64().unwrap(), "step {step}: trainer {logged} vs lapidary eval {want}");
        accs.push(logged);
    }
    // The final adapter (OUT/adapter) gives the last logged value too, and the run's summary reports it.
    let fin = eval(Some(&out.join("adapter")), &["--data", data, "--metric", "exact_match", "--max-new-tokens", "40"]);
    assert_eq!(fin["accuracy"].as_f64().unwrap(), accs[3]);
    assert_eq!(summary["eval_exact_match"].as_f64().unwrap(), accs[3]);
    // The metric measures something: the base gets none of these answers, the tuned adapter most of them.
    assert_eq!(accs[0], 0.0, "{accs:?}");
    assert!(accs[3] >= 0.5, "exact match by step: {accs:?}");
}

#[test]
fn choice_alone_skips_the_loss_and_equals_lapidary_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // Choice rows cannot be read as training rows (no completion), so only `choice` is asked for.
    let choice = fixture("eval/choice.jsonl");
    let summary = train(&[
        format!("data.eval={}", choice.display()),
        "train.eval_metrics=\"choice\"".into(),
        "train.max_steps=4".into(),
        "train.eval_every=2".into(),
        "train.save_every=2".into(),
        format!("output.dir={}", out.display()),
    ]);
    let evals = eval_rows(&out);
    assert_eq!(evals.iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![0, 2, 4]);
    for r in &evals {
        assert!(r.get("eval_loss").is_none() && r.get("eval_exact_match").is_none(), "{r}");
    }
    let data = choice.to_str().unwrap();
    let last = &evals[2];
    let want = eval(Some(&out.join("adapter")), &["--data", data, "--metric", "choice", "--max-seq-len", "64"]);
    for k in ["acc", "acc_norm"] {
        assert_eq!(last[format!("eval_{k}")].as_f64().unwrap(), want[k].as_f64().unwrap(), "{k}: {last} vs {want}");
        assert_eq!(summary[format!("eval_{k}")], want[k]);
    }
    let base = eval(None, &["--data", data, "--metric", "choice", "--max-seq-len", "64"]);
    assert_eq!(evals[0]["eval_acc"].as_f64().unwrap(), base["acc"].as_f64().unwrap());
    assert!(summary["eval_loss"].is_null());
}
