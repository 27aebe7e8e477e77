//! Two QLoRA steps on the real Gemma 3 270M (skips visibly when scripts/fetch_model.sh has not run): the
//! whole path — GGUF, NF4 base, 262k-vocabulary head, backward, AdamW, PEFT adapter — on a real checkpoint.
//! The measured run is in docs/benchmarks.md.
mod common;

use common::*;

/// `lapidary train` with the quickstart recipe on `model` into `out`, evaluating only the loss at the start and
/// the end (the recipe's exact_match eval generates for every held-out row; the quickstart exercises it), plus
/// `sets`.
fn train(model: &std::path::Path, out: &std::path::Path, sets: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lapidary"));
    cmd.current_dir(repo_root()).args(["train", "configs/gemma-3-270m-qlora.toml"]);
    let path = format!("model.path={}", model.display());
    let dir = format!("output.dir={}", out.display());
    for set in [path.as_str(), dir.as_str(), "train.eval_every=0", "train.eval_metrics=\"loss\""].iter().chain(sets) {
        cmd.args(["--set", set]);
    }
    cmd.output().unwrap()
}

#[test]
fn two_steps_on_gemma_3_270m() {
    let Some(model) = real_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = train(&model, &out, &["train.max_steps=2", "data.max_seq_len=32"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(summary["steps"], 2);
    assert!(summary["train_loss"].as_f64().unwrap().is_finite());
    assert!(out.join("adapter/adapter_model.safetensors").is_file());
}

/// `quant = "gguf"`: the projections and the token table stay in the file's own blocks (Q5_0, Q4_K, Q6_K,
/// Q8_0 as the file mixes them), products dequantize on the fly forward and backward, and training learns:
/// the quickstart task's loss falls over a few steps (it starts near 1.4: the base does not know the format).
#[test]
fn training_on_the_files_own_blocks_learns() {
    let Some(model) = real_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = train(&model, &out, &["model.quant=\"gguf\"", "train.max_steps=8", "output.tensorboard=false"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("quant Gguf"), "{}", String::from_utf8_lossy(&o.stderr));
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let losses: Vec<f64> = rows.iter().filter_map(|r| r["loss"].as_f64()).collect();
    let evals: Vec<f64> = rows.iter().filter_map(|r| r["eval_loss"].as_f64()).collect();
    assert_eq!(losses.len(), 8);
    let (head, tail) = ((losses[0] + losses[1]) / 2.0, (losses[6] + losses[7]) / 2.0);
    assert!(tail < 0.5 * head, "training loss {losses:?}");
    assert!(evals.len() == 2 && evals[1] < 0.5 * evals[0], "held-out loss before and after: {evals:?}");
}
