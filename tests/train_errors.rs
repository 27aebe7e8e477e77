//! Bad recipes, bad data and unsafe output directories: a clear `error:` message naming the key, file or
//! line, a non-zero exit, no panic, and an earlier run's adapter never touched.
mod common;

use common::*;
use std::path::Path;

/// Writes configs/tiny-test.toml with `edit` applied into `dir/r.toml`, output under `dir/out`.
fn recipe(dir: &Path, edit: impl Fn(String) -> String) -> String {
    let text = std::fs::read_to_string(repo_root().join("configs/tiny-test.toml")).unwrap();
    let text = text.replace("dir = \"runs/tiny-test\"", &format!("dir = \"{}\"", dir.join("out").display()));
    let p = dir.join("r.toml");
    std::fs::write(&p, edit(text)).unwrap();
    p.display().to_string()
}

/// Runs `lapidary train` from the repository root expecting failure; returns stderr.
fn fails(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lapidary"))
        .current_dir(repo_root())
        .arg("train")
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "train {args:?} should fail");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.contains("error:"), "no error message: {err}");
    err
}

#[test]
fn unknown_key_and_wrong_type_name_key_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), |t| t.replace("batch_size = 4", "batch_size = 4\nbatch_szie = 8"));
    let err = fails(&[&r]);
    assert!(err.contains("r.toml:27") && err.contains("unknown key `train.batch_szie`"), "{err}");
    let r = recipe(tmp.path(), |t| t.replace("max_seq_len = 64", "max_seq_len = \"long\""));
    let err = fails(&[&r]);
    assert!(err.contains("r.toml:20") && err.contains("data.max_seq_len") && err.contains("invalid type"), "{err}");
    let r = recipe(tmp.path(), |t| t.replace("quant = \"nf4\"", "quant = \"fp3\""));
    let err = fails(&[&r]);
    assert!(err.contains("model.quant") && err.contains("fp3"), "{err}");
    let r = recipe(tmp.path(), |t| t);
    let err = fails(&[&r, "--set", "train.warmup=3"]);
    assert!(err.contains("--set train.warmup=3") && err.contains("unknown key `train.warmup`"), "{err}");
    let err = fails(&[&r, "--set", "lora.dropout=1.5"]);
    assert!(err.contains("lora.dropout"), "{err}");
    assert!(!tmp.path().join("out").exists(), "nothing written for a bad recipe");
}

#[test]
fn data_problems_name_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d.jsonl");
    let with_data = |content: &str| {
        std::fs::write(&data, content).unwrap();
        recipe(tmp.path(), |t| t.replace("tests/fixtures/train/train.jsonl", data.to_str().unwrap()))
    };
    let r = recipe(tmp.path(), |t| t.replace("tests/fixtures/train/train.jsonl", "/nonexistent/train.jsonl"));
    assert!(fails(&[&r]).contains("/nonexistent/train.jsonl"));
    let r = with_data("");
    let err = fails(&[&r]);
    assert!(err.contains("d.jsonl") && err.contains("no usable examples"), "{err}");
    let r = with_data("{\"text\": \"fine\"}\n{\"text\": broken\n");
    let err = fails(&[&r]);
    assert!(err.contains("d.jsonl:2") && err.contains("invalid json"), "{err}");
    let r = with_data("{\"text\": \"fine\"}\n{\"prompt\": \"no completion\"}\n");
    let err = fails(&[&r, "--set", "data.format=\"prompt_completion\""]);
    assert!(err.contains("d.jsonl:1") && err.contains("missing field"), "{err}");
    let r = with_data("{\"text\": \"fine\"}\n{\"prompt\": \"no completion\"}\n");
    let err = fails(&[&r]);
    assert!(err.contains("d.jsonl:2"), "{err}");
    assert!(!tmp.path().join("out").exists(), "nothing written when the data is bad");
}

#[test]
fn output_dir_that_is_a_file_and_resume_without_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), |t| t);
    std::fs::write(tmp.path().join("out"), "not a dir").unwrap();
    let err = fails(&[&r]);
    assert!(err.contains("not a directory") && err.contains("out"), "{err}");
    std::fs::remove_file(tmp.path().join("out")).unwrap();
    let err = fails(&[&r, "--resume"]);
    assert!(err.contains("no complete checkpoint"), "{err}");
    let err = fails(&[&r, "--resume", "--overwrite"]);
    assert!(err.contains("--overwrite"), "{err}");
}

#[test]
fn nan_loss_stops_naming_the_step_and_keeps_the_earlier_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), |t| t);
    // An earlier run's adapter, which must survive everything below.
    let out = tmp.path().join("out");
    std::fs::create_dir_all(out.join("adapter")).unwrap();
    std::fs::write(out.join("adapter/adapter_model.safetensors"), b"earlier run").unwrap();
    let err = fails(&[&r]);
    assert!(err.contains("--overwrite"), "{err}");
    let err = fails(&[&r, "--resume"]);
    assert!(err.contains("no complete checkpoint"), "{err}");
    assert_eq!(std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap(), b"earlier run");

    // An absurd learning rate blows the weights up; the next step's loss is not finite.
    let out2 = tmp.path().join("nan");
    let err = fails(&[
        &r,
        "--set",
        &format!("output.dir={}", out2.display()),
        "--set",
        "train.lr=1e30",
        "--set",
        "train.warmup_steps=0",
        "--set",
        "train.save_every=1",
    ]);
    assert!(err.contains("step 2") && err.contains("loss is NaN") || err.contains("is inf"), "{err}");
    assert!(err.contains("checkpoints/step-1"), "{err}");
    assert!(out2.join("checkpoints/step-1/state.json").is_file());
    assert!(!out2.join("adapter").exists());
}

#[test]
fn bad_eval_metrics_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    // An unknown metric, in the file (named with its line) and as an override.
    let r =
        recipe(tmp.path(), |t| t.replace("eval_every = 10", "eval_every = 10\neval_metrics = [\"loss\", \"bleu\"]"));
    let err = fails(&[&r]);
    assert!(
        err.contains("r.toml:35") && err.contains("train.eval_metrics") && err.contains("unknown variant `bleu`"),
        "{err}"
    );
    assert!(err.contains("exact_match") && err.contains("choice"), "the message lists the metrics: {err}");
    let r = recipe(tmp.path(), |t| t);
    let err = fails(&[&r, "--set", "train.eval_metrics=\"accuracy\""]);
    assert!(err.contains("--set train.eval_metrics") && err.contains("unknown variant `accuracy`"), "{err}");
    let err = fails(&[&r, "--set", "train.eval_metrics=[]"]);
    assert!(err.contains("train.eval_metrics is empty"), "{err}");
    let err = fails(&[&r, "--set", "train.eval_metrics=[\"exact_match\", \"choice\"]"]);
    assert!(err.contains("train.eval_metrics") && err.contains("cannot share"), "{err}");
    let err = fails(&[&r, "--set", "train.eval_max_new_tokens=0"]);
    assert!(err.contains("train.eval_max_new_tokens"), "{err}");
    // The shipped eval set has `input_ids` rows: no `prompt` / `answer` for exact_match, named with its line.
    let err = fails(&[&r, "--set", "train.eval_metrics=[\"loss\", \"exact_match\"]"]);
    assert!(
        err.contains("train.eval_metrics has `exact_match`") && err.contains("eval.jsonl:1") && err.contains("prompt"),
        "{err}"
    );
    // A generation metric needs an eval set.
    let no_eval = recipe(tmp.path(), |t| t.replace("eval = \"tests/fixtures/train/eval.jsonl\"", ""));
    let err = fails(&[&no_eval, "--set", "train.eval_metrics=\"exact_match\""]);
    assert!(err.contains("train.eval_metrics") && err.contains("data.eval is not set"), "{err}");
    assert!(!tmp.path().join("out").exists(), "nothing written for a bad recipe");
}

/// Data recipes: mixing weights, the held-out split, column renames, ShareGPT roles; each names the key (and
/// the line, for what TOML parsing sees, or the row, for the data) and writes nothing.
#[test]
fn bad_data_recipes_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let mixed = |sources: &str| {
        recipe(tmp.path(), |t| {
            t.replace("train = \"tests/fixtures/train/train.jsonl\"", "")
                .replace("[train]", &format!("{sources}\n[train]"))
        })
    };
    let two = |w: &str| {
        mixed(&format!(
            "[[data.sources]]\npath = \"tests/fixtures/train/train.jsonl\"\n[[data.sources]]\npath = \
             \"tests/fixtures/train/train.jsonl\"\nweight = {w}\n"
        ))
    };
    for w in ["-1.0", "0.0"] {
        let err = fails(&[&two(w)]);
        assert!(
            err.contains("data.sources[1].weight") && err.contains(&format!("got {}", w.trim_end_matches(".0"))),
            "{err}"
        );
    }
    let r = mixed("[[data.sources]]\npath = \"tests/fixtures/train/train.jsonl\"\nwieght = 2.0\n");
    let err = fails(&[&r]);
    assert!(err.contains("r.toml:26") && err.contains("unknown key `data.sources.wieght`"), "{err}");
    let r = mixed("[[data.sources]]\npath = \"tests/fixtures/train/train.jsonl\"\nformat = \"chatml\"\n");
    let err = fails(&[&r]);
    assert!(err.contains("r.toml:26") && err.contains("chatml") && err.contains("sharegpt"), "{err}");
    let r = recipe(tmp.path(), |t| {
        t.replace("[train]", "[[data.sources]]\npath = \"tests/fixtures/train/train.jsonl\"\n[train]")
    });
    assert!(fails(&[&r]).contains("set data.train (one dataset) or [[data.sources]]"));

    let r = recipe(tmp.path(), |t| t.replace("eval = \"tests/fixtures/train/eval.jsonl\"", ""));
    for f in ["0", "1.0", "-0.1", "1.5"] {
        let err = fails(&[&r, "--set", &format!("data.eval_split={f}")]);
        assert!(err.contains("data.eval_split must be between 0 and 1"), "{err}");
    }
    let err = fails(&[&recipe(tmp.path(), |t| t), "--set", "data.eval_split=0.1"]);
    assert!(err.contains("data.eval_split") && err.contains("data.eval"), "{err}");

    let err = fails(&[&r, "--set", "data.columns={instrution = \"question\"}"]);
    assert!(err.contains("data.columns.instrution") && err.contains("not a field"), "{err}");
    let err = fails(&[&r, "--set", "data.roles={user = [\"human\"], robot = [\"gpt\"]}"]);
    assert!(err.contains("unknown key `data.roles.robot`"), "{err}");
    let err = fails(&[&r, "--set", "data.roles={user = [\"gpt\"]}"]);
    assert!(err.contains("`gpt` is listed under both user and assistant"), "{err}");
    let err = fails(&[&r, "--set", "data.train_on=\"last_turn\"", "--set", "data.completion_only=false"]);
    assert!(err.contains("data.train_on") && err.contains("completion_only"), "{err}");

    // A ShareGPT row with a role data.roles does not map: the file, the line and the key.
    let data = tmp.path().join("chat.jsonl");
    std::fs::write(
        &data,
        "{\"conversations\": [{\"from\": \"human\", \"value\": \"hi\"}, {\"from\": \"gpt\", \"value\": \"yo\"}]}\n\
         {\"conversations\": [{\"from\": \"human\", \"value\": \"hi\"}, {\"from\": \"bot\", \"value\": \"yo\"}]}\n",
    )
    .unwrap();
    let r = recipe(tmp.path(), |t| t.replace("tests/fixtures/train/train.jsonl", data.to_str().unwrap()));
    let err = fails(&[&r]);
    assert!(err.contains("chat.jsonl:2") && err.contains("unknown role `bot`") && err.contains("data.roles"), "{err}");
    // A renamed column a row lacks: the row, the column and the key.
    let err = fails(&[&r, "--set", "data.columns={conversations = \"dialog\"}"]);
    assert!(
        err.contains("chat.jsonl:1") && err.contains("`dialog`") && err.contains("data.columns.conversations"),
        "{err}"
    );
    assert!(!tmp.path().join("out").exists(), "nothing written for a bad data recipe");
}
