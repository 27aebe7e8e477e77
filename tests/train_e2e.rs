//! `lapidary train` end to end on the tiny Gemma 3 fixture (configs/tiny-test.toml): the loss falls, the
//! adapter loads back with the logged eval loss, resume is bit-exact, accumulation equals a bigger batch,
//! gradient checkpointing trains the same adapter, Ctrl-C checkpoints and exits cleanly; a recipe mixing
//! sources (ShareGPT among them) with a held-out split resumes exactly and logs to TensorBoard.
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Output;

fn recipe() -> PathBuf {
    repo_root().join("configs/tiny-test.toml")
}

/// Runs `lapidary train configs/tiny-test.toml --set output.dir=OUT [extra]` from the repository root.
fn train(out: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<String> =
        vec!["train".into(), recipe().display().to_string(), "--set".into(), format!("output.dir={}", out.display())];
    args.extend(extra.iter().map(|s| s.to_string()));
    std::process::Command::new(env!("CARGO_BIN_EXE_lapidary"))
        .current_dir(repo_root())
        .args(&args)
        .output()
        .expect("run lapidary")
}

fn train_ok(out: &Path, extra: &[&str]) -> serde_json::Value {
    let o = train(out, extra);
    assert!(o.status.success(), "train {extra:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    stdout.lines().last().and_then(|l| serde_json::from_str(l).ok()).unwrap_or(serde_json::Value::Null)
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// metrics.jsonl without the wall-clock field, line by line as written.
fn metrics_text(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| match l.find(",\"tokens_per_s\"") {
            Some(i) => format!("{}}}", &l[..i]),
            None => l.to_string(),
        })
        .collect()
}

fn adapter_tensors(dir: &Path) -> Vec<(String, Vec<f64>)> {
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(|n| n.to_string()).collect();
    names.sort();
    names.into_iter().map(|n| (n.clone(), read_tensor(&dir.join("adapter_model.safetensors"), &n).1)).collect()
}

#[test]
fn loss_falls_and_adapter_reloads_with_the_logged_eval_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let summary = train_ok(&out, &[]);
    assert_eq!(summary["steps"], 30);

    let rows = metrics(&out);
    let losses: Vec<f64> = rows.iter().filter_map(|r| r.get("loss").and_then(|v| v.as_f64())).collect();
    let eval: Vec<(u64, f64)> =
        rows.iter().filter_map(|r| Some((r.get("step")?.as_u64()?, r.get("eval_loss")?.as_f64()?))).collect();
    assert_eq!(losses.len(), 30);
    assert_eq!(eval.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 10, 20, 30]);
    let head: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let tail: f64 = losses[25..].iter().sum::<f64>() / 5.0;
    assert!(tail < head - 0.7, "train loss {head:.3} → {tail:.3}");
    assert!(eval[3].1 < eval[0].1 - 0.7, "eval loss {:?}", eval);
    for r in rows.iter().filter(|r| r.get("loss").is_some()) {
        for k in ["step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s"] {
            assert!(r.get(k).is_some(), "metrics row lacks {k}: {r}");
        }
    }

    // The adapter is PEFT-shaped and `lapidary eval` on it gives the eval loss logged at the last step.
    let cfg = read_json(&out.join("adapter/adapter_config.json"));
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 8);
    assert_eq!(cfg["lora_alpha"], 16.0);
    assert_eq!(cfg["target_modules"].as_array().unwrap().len(), 7);
    let t = adapter_tensors(&out.join("adapter"));
    assert_eq!(t.len(), 6 * 7 * 2);
    assert!(t.iter().all(|(n, _)| n.starts_with("base_model.model.model.layers.")));
    let model = fixture("tiny/gemma3");
    let data = fixture("train/eval.jsonl");
    let adapter = out.join("adapter");
    let ev = lapidary_json(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--quant",
        "nf4",
        "--adapter",
        adapter.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    let got = ev["loss"].as_f64().unwrap();
    assert!(rel(got, eval[3].1) < 1e-5, "lapidary eval {got} vs logged {}", eval[3].1);

    // The rest of the run directory.
    let png = std::fs::read(out.join("loss.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let resolved = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(resolved.contains(&format!("dir = \"{}\"", out.display())), "{resolved}");
    let ckpts: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    let mut ckpts = ckpts;
    ckpts.sort();
    assert_eq!(ckpts, vec!["step-10", "step-20", "step-30"]);
    for f in ["adapter/adapter_model.safetensors", "optimizer.safetensors", "state.json", "config.toml"] {
        assert!(out.join("checkpoints/step-30").join(f).is_file(), "{f}");
    }

    // A second run into the same directory refuses and leaves the adapter alone; --overwrite replaces it.
    let before = std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap();
    let o = train(&out, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--overwrite") && err.contains("adapter"), "{err}");
    assert_eq!(std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap(), before);
    train_ok(&out, &["--overwrite", "--set", "train.max_steps=2"]);
    assert_eq!(metrics(&out).iter().filter(|r| r.get("loss").is_some()).count(), 2);
}

#[test]
fn resume_gives_the_same_run_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = [
        "--set",
        "train.max_steps=12",
        "--set",
        "train.save_every=5",
        "--set",
        "train.eval_every=4",
        "--set",
        "train.keep_checkpoints=2",
    ];
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    train_ok(&a, &sets);

    let mut first = sets.to_vec();
    first.extend(["--stop-after", "7"]);
    let o = train(&b, &first);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));
    assert!(!b.join("adapter").exists(), "a stopped run has no final adapter yet");
    // A checkpoint that was being written when the process died is ignored.
    std::fs::create_dir_all(b.join("checkpoints/step-9.tmp")).unwrap();
    let mut again = sets.to_vec();
    again.push("--resume");
    train_ok(&b, &again);

    assert_eq!(metrics_text(&a), metrics_text(&b));
    assert_eq!(
        std::fs::read(a.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(b.join("adapter/adapter_model.safetensors")).unwrap()
    );
    // keep_checkpoints = 2: only the newest two remain (the stale .tmp was replaced by nothing newer).
    let mut names: Vec<String> = std::fs::read_dir(b.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| !n.ends_with(".tmp"))
        .collect();
    names.sort();
    assert_eq!(names, vec!["step-10", "step-12"]);

    // Resuming with a different recipe is refused, naming the key.
    let mut changed = again.clone();
    changed.extend(["--set", "lora.r=4"]);
    let o = train(&b, &changed);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("`lora`"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn accumulating_four_batches_of_one_equals_one_batch_of_four() {
    let tmp = tempfile::tempdir().unwrap();
    // No dropout: masks are drawn per micro-batch shape, which differs between the two layouts.
    let common = ["--set", "lora.dropout=0.0", "--set", "train.max_steps=4", "--set", "train.eval_every=0"];
    let (a, b) = (tmp.path().join("b4"), tmp.path().join("b1x4"));
    let mut ea = common.to_vec();
    ea.extend(["--set", "train.batch_size=4", "--set", "train.grad_accum=1"]);
    let mut eb = common.to_vec();
    eb.extend(["--set", "train.batch_size=1", "--set", "train.grad_accum=4"]);
    train_ok(&a, &ea);
    train_ok(&b, &eb);
    let tokens = |out: &Path| -> Vec<u64> {
        metrics(out).iter().filter_map(|r| r.get("loss").and(r["tokens"].as_u64())).collect()
    };
    assert_eq!(tokens(&a).len(), 4);
    assert_eq!(tokens(&a), tokens(&b), "same tokens per step");
    assert_same_run(&a, &b, 1e-3);
}

/// Two runs' step losses (1e-5) and gradient norms (1e-4) agree, and their adapters within `adapter_tol` of
/// each tensor's scale.
fn assert_same_run(a: &Path, b: &Path, adapter_tol: f64) {
    let steps = |out: &Path| -> Vec<(f64, f64)> {
        metrics(out)
            .iter()
            .filter(|r| r.get("loss").is_some())
            .map(|r| (r["loss"].as_f64().unwrap(), r["grad_norm"].as_f64().unwrap()))
            .collect()
    };
    let (sa, sb) = (steps(a), steps(b));
    assert!(!sa.is_empty() && sa.len() == sb.len(), "{} vs {} steps", sa.len(), sb.len());
    for (x, y) in sa.iter().zip(&sb) {
        assert!(rel(y.0, x.0) < 1e-5, "loss {} vs {}", y.0, x.0);
        assert!(rel(y.1, x.1) < 1e-4, "grad norm {} vs {}", y.1, x.1);
    }
    let (pa, pb) = (adapter_tensors(&a.join("adapter")), adapter_tensors(&b.join("adapter")));
    for ((n, x), (_, y)) in pa.iter().zip(&pb) {
        let scale = x.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-3);
        let worst = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0f64, f64::max);
        assert!(worst / scale < adapter_tol, "{n}: max diff {worst} (scale {scale})");
    }
}

/// `train.gradient_checkpointing` recomputes each layer in the backward: the same losses, gradient norms and
/// adapter as the plain run (dropout on: the recomputed layers draw the same masks).
#[test]
fn gradient_checkpointing_trains_the_same_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let common = ["--set", "train.max_steps=4", "--set", "train.eval_every=0"];
    let (a, b) = (tmp.path().join("plain"), tmp.path().join("gc"));
    train_ok(&a, &common);
    let mut eb = common.to_vec();
    eb.extend(["--set", "train.gradient_checkpointing=true"]);
    train_ok(&b, &eb);
    assert_eq!(metrics(&a).iter().filter(|r| r.get("loss").is_some()).count(), 4);
    assert_same_run(&a, &b, 1e-4);
}

#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_lapidary"))
        .current_dir(repo_root())
        .args(["train", recipe().to_str().unwrap(), "--set", &format!("output.dir={}", out.display())])
        .args(["--set", "train.max_steps=100000", "--set", "train.eval_every=0", "--set", "train.save_every=0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(out.join("metrics.jsonl")).map_or(0, |s| s.lines().count()) < 4 {
        assert!(t0.elapsed().as_secs() < 120, "training never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "exit {:?}: {err}", o.status);
    assert!(err.contains("--resume") && !err.contains("panicked"), "{err}");
    let steps = metrics(&out).iter().filter(|r| r.get("loss").is_some()).count();
    let state = read_json(&out.join(format!("checkpoints/step-{steps}/state.json")));
    assert_eq!(state["step"].as_u64().unwrap() as usize, steps);
}

/// The scalars of a TensorBoard events file: (step, tag, value) per summary event, and the step of each
/// session start, in file order. A minimal reader of the Event protobuf (the writer is tested byte for byte
/// against tensorboard's in trainer/src/train/tensorboard.rs); records' checksums are not checked here.
#[derive(Debug, PartialEq)]
enum TbEvent {
    Scalar(i64, String, f32),
    Start(i64),
}

fn tb_events(path: &Path) -> Vec<TbEvent> {
    fn varint(b: &[u8], at: &mut usize) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let byte = b[*at];
            *at += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte < 0x80 {
                return v;
            }
            shift += 7;
        }
    }
    /// (field, wire type, value bytes or the varint) of a message's fields.
    fn fields(b: &[u8]) -> Vec<(u64, Vec<u8>, u64)> {
        let (mut at, mut out) = (0, Vec::new());
        while at < b.len() {
            let key = varint(b, &mut at);
            let (field, wire) = (key >> 3, key & 7);
            match wire {
                0 => {
                    let v = varint(b, &mut at);
                    out.push((field, Vec::new(), v));
                }
                1 => {
                    out.push((field, b[at..at + 8].to_vec(), 0));
                    at += 8;
                }
                2 => {
                    let n = varint(b, &mut at) as usize;
                    out.push((field, b[at..at + n].to_vec(), 0));
                    at += n;
                }
                5 => {
                    out.push((field, b[at..at + 4].to_vec(), 0));
                    at += 4;
                }
                w => panic!("wire type {w}"),
            }
        }
        out
    }
    let bytes = std::fs::read(path).unwrap();
    let (mut at, mut out) = (0, Vec::new());
    while at < bytes.len() {
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        let event = fields(&bytes[at + 12..at + 12 + len]);
        at += 16 + len;
        let step = event.iter().find(|f| f.0 == 2).map_or(0, |f| f.2 as i64);
        for (field, body, _) in &event {
            match field {
                5 => {
                    for (_, value, _) in fields(body).iter().filter(|f| f.0 == 1) {
                        let v = fields(value);
                        let tag = String::from_utf8(v.iter().find(|f| f.0 == 1).unwrap().1.clone()).unwrap();
                        let x = f32::from_le_bytes(v.iter().find(|f| f.0 == 2).unwrap().1[..].try_into().unwrap());
                        out.push(TbEvent::Scalar(step, tag, x));
                    }
                }
                7 => out.push(TbEvent::Start(step)),
                _ => {}
            }
        }
    }
    out
}

/// The run's TensorBoard scalars as TensorBoard's reader shows them: files in name order, a session start
/// dropping what earlier files logged at its step and later.
fn tb_scalars(out: &Path) -> Vec<(i64, String, f32)> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(out.join("tensorboard")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut seen: Vec<(i64, String, f32)> = Vec::new();
    for f in &files {
        assert!(f.file_name().unwrap().to_str().unwrap().starts_with("events.out.tfevents."), "{}", f.display());
        for e in tb_events(f) {
            match e {
                TbEvent::Start(s) => seen.retain(|x| x.0 < s),
                TbEvent::Scalar(s, tag, v) => seen.push((s, tag, v)),
            }
        }
    }
    seen.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    seen
}

/// A recipe mixing the shipped rows with ShareGPT rows (weights 2:1), holding 20% of the rows out for the eval
/// loss, training only the last assistant turn: it trains, the eval rows are logged, a run stopped and resumed
/// equals the uninterrupted one (metrics and adapter), and `OUT/tensorboard/` holds the metrics of
/// metrics.jsonl, with the resumed run's file superseding the steps it redid.
#[test]
fn mixed_sources_with_a_held_out_split_resume_exactly_and_log_to_tensorboard() {
    let tmp = tempfile::tempdir().unwrap();
    let sharegpt = tmp.path().join("chat.jsonl");
    let rows: String = (0..10)
        .map(|i| {
            format!(
                "{{\"conversations\": [{{\"from\": \"human\", \"value\": \"Count to {i}\"}}, {{\"from\": \"gpt\", \
                 \"value\": \"{i}\"}}, {{\"from\": \"human\", \"value\": \"And twice?\"}}, {{\"from\": \"gpt\", \
                 \"value\": \"{} twice\"}}]}}\n",
                i
            )
        })
        .collect();
    std::fs::write(&sharegpt, rows).unwrap();
    let text = std::fs::read_to_string(recipe()).unwrap();
    let text = text
        .replace("train = \"tests/fixtures/train/train.jsonl\"", "")
        .replace("eval = \"tests/fixtures/train/eval.jsonl\"", "")
        .replace(
            "completion_only = true",
            &format!(
                "completion_only = true\neval_split = 0.2\ntrain_on = \"last_turn\"\nstopping_strategy = \
                 \"all_exhausted\"\n[[data.sources]]\npath = \"tests/fixtures/train/train.jsonl\"\nweight = \
                 2.0\n[[data.sources]]\npath = \"{}\"\nweight = 1.0\nformat = \"sharegpt\"\n",
                sharegpt.display()
            ),
        );
    // `[[data.sources]]` ends the [data] table: the sections after it must still follow.
    assert!(text.find("[[data.sources]]").unwrap() < text.find("[train]").unwrap());
    let r = tmp.path().join("mix.toml");
    std::fs::write(&r, text).unwrap();
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec!["train", r.to_str().unwrap(), "--set"];
        let dir = format!("output.dir={}", out.display());
        args.push(&dir);
        args.extend(["--set", "train.max_steps=8", "--set", "train.save_every=3", "--set", "train.eval_every=4"]);
        args.extend(extra);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_lapidary"))
            .current_dir(repo_root())
            .args(&args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run(&a, &[]);
    run(&b, &["--stop-after", "5"]);
    run(&b, &["--resume"]);

    let m = metrics(&a);
    let evals: Vec<&serde_json::Value> = m.iter().filter(|r| r.get("eval_loss").is_some()).collect();
    assert_eq!(evals.iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![0, 4, 8]);
    assert!(evals[2]["eval_loss"].as_f64().unwrap() < evals[0]["eval_loss"].as_f64().unwrap());
    assert_eq!(metrics_text(&a), metrics_text(&b));
    assert_eq!(
        std::fs::read(a.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(b.join("adapter/adapter_model.safetensors")).unwrap()
    );

    // TensorBoard: one file for the run, two for the stopped and resumed one; the same losses and eval losses
    // as metrics.jsonl (as f32, TensorBoard's scalar type), the resumed run's superseding the redone steps.
    assert_eq!(std::fs::read_dir(a.join("tensorboard")).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(b.join("tensorboard")).unwrap().count(), 2);
    let from_metrics: Vec<(i64, String, f32)> = {
        let mut v: Vec<(i64, String, f32)> = m
            .iter()
            .flat_map(|r| {
                let step = r["step"].as_i64().unwrap();
                [("loss", "train/loss"), ("grad_norm", "train/grad_norm"), ("eval_loss", "eval/loss")]
                    .into_iter()
                    .filter_map(move |(k, tag)| r.get(k).map(|x| (step, tag.to_string(), x.as_f64().unwrap() as f32)))
            })
            .collect();
        v.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        v
    };
    let keep = |v: Vec<(i64, String, f32)>| -> Vec<(i64, String, f32)> {
        v.into_iter().filter(|x| ["train/loss", "train/grad_norm", "eval/loss"].contains(&x.1.as_str())).collect()
    };
    assert_eq!(keep(tb_scalars(&a)), from_metrics);
    assert_eq!(keep(tb_scalars(&b)), from_metrics);
}
