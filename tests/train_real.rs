//! Two QLoRA steps on the real Gemma 3 270M (skips visibly when scripts/fetch_model.sh has not run): the
//! whole path — GGUF, NF4 base, 262k-vocabulary head, backward, AdamW, PEFT adapter — on a real checkpoint.
//! The measured run is in docs/benchmarks.md.
mod common;

use common::*;

#[test]
fn two_steps_on_gemma_3_270m() {
    let Some(model) = real_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_lapidary"))
        .current_dir(repo_root())
        .args(["train", "configs/gemma-3-270m-qlora.toml"])
        .args(["--set", &format!("model.path={}", model.display()), "--set", &format!("output.dir={}", out.display())])
        .args(["--set", "train.max_steps=2", "--set", "data.max_seq_len=32", "--set", "train.eval_every=0"])
        // The recipe's exact_match eval generates for every held-out row; the quickstart exercises it.
        .args(["--set", "train.eval_metrics=\"loss\""])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(summary["steps"], 2);
    assert!(summary["train_loss"].as_f64().unwrap().is_finite());
    assert!(out.join("adapter/adapter_model.safetensors").is_file());
}
