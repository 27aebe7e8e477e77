//! Data-parallel training (`--devices N`, `--nodes M`) on the tiny Gemma 3 fixture (configs/tiny-test.toml:
//! LoRA dropout on, completion-only rows; packing on here), against the independent path: one device with
//! `grad_accum × replicas`. Losses in metrics.jsonl and the adapter agree to 1e-6 relative; replicas in two
//! processes on 127.0.0.1 too, over 100 back-to-back steps; a killed node stops the other, naming it; Ctrl-C
//! on node 0 stops both after the same step, and resuming equals the uninterrupted run; a changed replica
//! count on resume is refused; bad arguments and an unreachable coordinator are clear errors that write
//! nothing; replicas that start from different parameters are caught.
//!
//! Every run is a child process (burn-collective's state is process-wide), so the tests may run in parallel.
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn recipe() -> PathBuf {
    repo_root().join("configs/tiny-test.toml")
}

/// `lapidary train configs/tiny-test.toml` into `out`: `steps` steps, packing on, no eval between, and `extra`.
fn cmd(out: &Path, steps: u64, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lapidary"));
    c.current_dir(repo_root())
        .args(["train", recipe().to_str().unwrap(), "--set", &format!("output.dir={}", out.display())])
        .args(["--set", &format!("train.max_steps={steps}"), "--set", "data.packing=true"])
        .args(["--set", "train.eval_every=0", "--set", "output.tensorboard=false"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn train(out: &Path, steps: u64, extra: &[&str]) -> Output {
    cmd(out, steps, extra).output().expect("run lapidary")
}

fn train_ok(out: &Path, steps: u64, extra: &[&str]) -> String {
    let o = train(out, steps, extra);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "train {extra:?} failed: {err}");
    err
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The two nodes of a `--nodes 2` run on 127.0.0.1, node 0 writing into `out0`, node 1 given `out1`.
fn two_nodes(out0: &Path, out1: &Path, steps: u64, extra: &[&str]) -> (Child, Child) {
    let coordinator = format!("127.0.0.1:{}", free_port());
    let node = |out: &Path, rank: &str| {
        let mut args = vec!["--nodes", "2", "--node-rank", rank, "--coordinator", &coordinator];
        args.extend(extra);
        cmd(out, steps, &args).spawn().expect("run lapidary")
    };
    (node(out0, "0"), node(out1, "1"))
}

/// Waits for a child, killing it (and failing) after `limit`.
fn wait(mut child: Child, limit: Duration, what: &str) -> Output {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("{what} still running after {limit:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what} failed ({:?}): {}", o.status, String::from_utf8_lossy(&o.stderr));
}

/// (step, loss, grad_norm, tokens, replicas) of every train row.
fn train_rows(out: &Path) -> Vec<(u64, f64, f64, u64, Option<u64>)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("loss").is_some())
        .map(|r| {
            let f = |k: &str| r[k].as_f64().unwrap();
            (
                r["step"].as_u64().unwrap(),
                f("loss"),
                f("grad_norm"),
                r["tokens"].as_u64().unwrap(),
                r["replicas"].as_u64(),
            )
        })
        .collect()
}

fn eval_losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|r| r.get("eval_loss").and_then(|v| v.as_f64()))
        .collect()
}

fn adapter(dir: &Path) -> Vec<(String, Vec<f64>)> {
    let path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(|n| n.to_string()).collect();
    names.sort();
    names.into_iter().map(|n| (n.clone(), read_tensor(&path, &n).1)).collect()
}

/// Relative tolerances: (losses, gradient norms, adapter entries against each tensor's largest magnitude).
type Tol = (f64, f64, f64);

/// `par` (a data-parallel run of `replicas`) equals `one` (one device): the same steps with the same token
/// counts, losses (train and eval), gradient norms and adapter within `tol`.
fn assert_equal_runs(par: &Path, one: &Path, replicas: u64, tol: Tol) {
    let (p, o) = (train_rows(par), train_rows(one));
    assert!(!o.is_empty() && p.len() == o.len(), "{} vs {} steps", p.len(), o.len());
    for (a, b) in p.iter().zip(&o) {
        assert_eq!((a.0, a.3), (b.0, b.3), "step and tokens");
        assert_eq!(a.4, Some(replicas), "step {}: the replicas column", a.0);
        assert_eq!(b.4, None, "a one-device run has no replicas column");
        assert!(rel(a.1, b.1) <= tol.0, "step {}: loss {} vs {} on one device", a.0, a.1, b.1);
        assert!(rel(a.2, b.2) <= tol.1, "step {}: grad norm {} vs {} on one device", a.0, a.2, b.2);
    }
    let (ep, eo) = (eval_losses(par), eval_losses(one));
    assert!(!eo.is_empty() && ep.len() == eo.len());
    for (a, b) in ep.iter().zip(&eo) {
        assert!(rel(*a, *b) <= tol.0, "eval loss {a} vs {b}");
    }
    let (ap, ao) = (adapter(&par.join("adapter")), adapter(&one.join("adapter")));
    assert_eq!(ap.len(), ao.len());
    let mut moved = false;
    for ((n, x), (m, y)) in ap.iter().zip(&ao) {
        assert_eq!(n, m);
        let scale = y.iter().fold(0f64, |s, v| s.max(v.abs()));
        moved |= scale > 0.0 && n.contains("lora_B");
        let worst = x.iter().zip(y).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
        assert!(worst <= tol.2 * scale.max(1e-12), "{n}: max diff {worst:e}, scale {scale:e}");
    }
    assert!(moved, "training moved no lora_B (it starts at zero): the comparison compares nothing");
}

/// `--devices 2` equals one device with `grad_accum` doubled over 20 steps. With `grad_accum = 1` each
/// replica takes one micro-batch and the sum of two is one device's: 1e-6, and in fact bit for bit. With
/// `grad_accum = 2` replica r takes micro-batches r and r + 2, so the four gradients are added in another
/// grouping than one device's: the losses still agree to 1e-6 (measured 1.2e-7), gradient norms to 8e-6, but
/// AdamW moves an entry whose gradient is near zero by about ±lr whatever its size, so f32 noise there shows
/// in the adapter (measured 7e-4 of a tensor's scale after 20 steps at lr 1e-2; tests/train_e2e.rs allows
/// 1e-3 for accumulation against a bigger batch, the same regrouping).
#[test]
fn two_devices_equal_one_device_with_grad_accum_doubled() {
    let tmp = tempfile::tempdir().unwrap();
    for accum in [1, 2] {
        let (par, one) = (tmp.path().join(format!("par{accum}")), tmp.path().join(format!("one{accum}")));
        let err = train_ok(&par, 20, &["--devices", "2", "--set", &format!("train.grad_accum={accum}")]);
        assert!(err.contains("on 2 replicas"), "{err}");
        train_ok(&one, 20, &["--set", &format!("train.grad_accum={}", 2 * accum)]);
        let tol = if accum == 1 { (1e-6, 1e-6, 1e-6) } else { (1e-6, 1e-4, 2e-3) };
        assert_equal_runs(&par, &one, 2, tol);
        if accum == 1 {
            let bytes = |d: &Path| std::fs::read(d.join("adapter/adapter_model.safetensors")).unwrap();
            assert!(bytes(&par) == bytes(&one), "grad_accum 1: the adapter differs from one device's in some bit");
        }
    }
}

/// The same with two processes on 127.0.0.1 (`--nodes 2`); node 1 writes nothing.
#[test]
fn two_nodes_equal_one_device_with_grad_accum_doubled() {
    let tmp = tempfile::tempdir().unwrap();
    let (out0, out1, one) = (tmp.path().join("node0"), tmp.path().join("node1"), tmp.path().join("one"));
    let (a, b) = two_nodes(&out0, &out1, 20, &[]);
    let (a, b) = (wait(a, Duration::from_secs(300), "node 0"), wait(b, Duration::from_secs(300), "node 1"));
    ok(&a, "node 0");
    ok(&b, "node 1");
    assert!(!out1.exists(), "node 1 wrote into its output.dir");
    assert!(b.stdout.is_empty(), "node 1 printed a summary: {}", String::from_utf8_lossy(&b.stdout));
    train_ok(&one, 20, &["--set", "train.grad_accum=2"]);
    assert_equal_runs(&out0, &one, 2, (1e-6, 1e-6, 1e-6));
}

/// 100 back-to-back steps between two processes of two replicas each (the all-reduce in a process, then
/// between them: tracel-ai/burn #4549's pattern) end, and equal one device with `grad_accum = 4` in losses.
#[test]
fn a_hundred_back_to_back_steps_across_two_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let (out0, out1, one) = (tmp.path().join("node0"), tmp.path().join("node1"), tmp.path().join("one"));
    let small = ["--devices", "2", "--set", "train.batch_size=1", "--set", "data.max_seq_len=32"];
    let small = [&small[..], &["--set", "train.save_every=0", "--set", "train.lr=1e-3"]].concat();
    let (a, b) = two_nodes(&out0, &out1, 100, &small);
    let (a, b) = (wait(a, Duration::from_secs(300), "node 0"), wait(b, Duration::from_secs(300), "node 1"));
    ok(&a, "node 0");
    ok(&b, "node 1");
    let rows = train_rows(&out0);
    assert_eq!(rows.len(), 100);
    assert!(rows.iter().all(|r| r.4 == Some(4)));
    let mut single = small[2..].to_vec();
    single.extend(["--set", "train.grad_accum=4"]);
    train_ok(&one, 100, &single);
    for (a, b) in rows.iter().zip(&train_rows(&one)) {
        assert_eq!((a.0, a.3), (b.0, b.3));
        assert!(rel(a.1, b.1) <= 1e-5, "step {}: loss {} vs {}", a.0, a.1, b.1);
    }
}

/// Killing either process makes the other exit non-zero within 30 s, naming the killed one's rank.
#[cfg(unix)]
#[test]
fn killing_a_node_stops_the_other_naming_it() {
    for victim in [1usize, 0] {
        let tmp = tempfile::tempdir().unwrap();
        let (out0, out1) = (tmp.path().join("node0"), tmp.path().join("node1"));
        let (a, b) = two_nodes(&out0, &out1, 100_000, &["--set", "train.save_every=0"]);
        let t0 = Instant::now();
        while std::fs::read_to_string(out0.join("metrics.jsonl")).map_or(0, |s| s.lines().count()) < 4 {
            assert!(t0.elapsed().as_secs() < 120, "training never started");
            std::thread::sleep(Duration::from_millis(50));
        }
        let (mut dead, other) = if victim == 0 { (a, b) } else { (b, a) };
        dead.kill().unwrap();
        dead.wait().unwrap();
        let t = Instant::now();
        let o = wait(other, Duration::from_secs(60), "the surviving node");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(t.elapsed() < Duration::from_secs(30), "took {:?}", t.elapsed());
        assert!(!o.status.success(), "the surviving node exited 0: {err}");
        assert!(err.contains(&format!("rank {victim} (")) && err.contains("stopped responding"), "{err}");
    }
}

/// Ctrl-C on node 0 checkpoints and stops both nodes after the same step; `--resume` on both then gives the
/// uninterrupted two-node run: metrics (less the wall clock) and adapter, bit for bit.
#[cfg(unix)]
#[test]
fn ctrl_c_on_node_0_stops_all_and_resume_equals_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (out0, out1) = (tmp.path().join("node0"), tmp.path().join("node1"));
    let steps = 400;
    let (a, b) = two_nodes(&out0, &out1, steps, &["--set", "train.save_every=0"]);
    let t0 = Instant::now();
    while std::fs::read_to_string(out0.join("metrics.jsonl")).map_or(0, |s| s.lines().count()) < 4 {
        assert!(t0.elapsed().as_secs() < 120, "training never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(Command::new("kill").args(["-INT", &a.id().to_string()]).status().unwrap().success());
    let (a, b) = (wait(a, Duration::from_secs(60), "node 0"), wait(b, Duration::from_secs(60), "node 1"));
    ok(&a, "node 0");
    ok(&b, "node 1");
    let done = train_rows(&out0).len() as u64;
    assert!(done < steps, "Ctrl-C did not stop the run ({done} steps)");
    assert!(out0.join(format!("checkpoints/step-{done}/state.json")).is_file());
    assert_eq!(read_json(&out0.join(format!("checkpoints/step-{done}/state.json")))["world"], 2);
    assert!(!out1.exists(), "node 1 wrote into its output.dir");
    // Node 1 resumes from node 0's checkpoint (as on a shared file system).
    let (a, b) = two_nodes(&out0, &out0, steps, &["--set", "train.save_every=0", "--resume"]);
    let (a, b) = (wait(a, Duration::from_secs(300), "node 0"), wait(b, Duration::from_secs(300), "node 1"));
    ok(&a, "node 0 resumed");
    ok(&b, "node 1 resumed");
    let whole = (tmp.path().join("whole0"), tmp.path().join("whole1"));
    let (a, b) = two_nodes(&whole.0, &whole.1, steps, &["--set", "train.save_every=0"]);
    ok(&wait(a, Duration::from_secs(300), "node 0"), "node 0, uninterrupted");
    ok(&wait(b, Duration::from_secs(300), "node 1"), "node 1, uninterrupted");
    let text = |out: &Path| -> Vec<String> {
        let s = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        s.lines().map(|l| l.split(",\"tokens_per_s\"").next().unwrap().to_string()).collect()
    };
    assert_eq!(text(&out0), text(&whole.0));
    let bytes = |d: &Path| std::fs::read(d.join("adapter/adapter_model.safetensors")).unwrap();
    assert!(bytes(&out0) == bytes(&whole.0), "the resumed adapter differs from the uninterrupted one");
}

/// `--stop-after` then `--resume` with `--devices 2` equals the uninterrupted run; resuming with another
/// replica count is refused, saying why, and changes nothing.
#[test]
fn resume_continues_exactly_and_refuses_another_replica_count() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, whole) = (tmp.path().join("run"), tmp.path().join("whole"));
    let extra = ["--devices", "2", "--set", "train.save_every=0"];
    train_ok(&run, 12, &[&extra[..], &["--stop-after", "5"]].concat());
    let before = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let o = train(&run, 12, &["--set", "train.save_every=0", "--resume"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("2 replica(s)") && err.contains("this one has 1"), "{err}");
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), before, "a refused resume wrote");
    train_ok(&run, 12, &[&extra[..], &["--resume"]].concat());
    train_ok(&whole, 12, &extra);
    let rows = |out: &Path| -> Vec<(u64, u64, u64, u64)> {
        train_rows(out).iter().map(|r| (r.0, r.1.to_bits(), r.2.to_bits(), r.3)).collect()
    };
    assert_eq!(rows(&run), rows(&whole));
    let bytes = |d: &Path| std::fs::read(d.join("adapter/adapter_model.safetensors")).unwrap();
    assert!(bytes(&run) == bytes(&whole), "the resumed adapter differs from the uninterrupted one");
}

/// Replicas that would start from different parameters (here node 1 resumes from a checkpoint whose adapter
/// differs from node 0's) stop before the first step, naming what differs.
#[test]
fn replicas_with_different_parameters_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (out0, out1) = (tmp.path().join("node0"), tmp.path().join("node1"));
    train_ok(&out0, 6, &["--devices", "2", "--set", "train.save_every=0", "--stop-after", "3"]);
    // Node 1's copy of the run, its checkpoint's adapter nudged in one value.
    let copy = Command::new("cp").args(["-r", out0.to_str().unwrap(), out1.to_str().unwrap()]).status().unwrap();
    assert!(copy.success());
    let path = out1.join("checkpoints/step-3/adapter/adapter_model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let (a, b) = two_nodes(&out0, &out1, 6, &["--set", "train.save_every=0", "--resume"]);
    let (a, b) = (wait(a, Duration::from_secs(120), "node 0"), wait(b, Duration::from_secs(120), "node 1"));
    let (ea, eb) = (String::from_utf8_lossy(&a.stderr), String::from_utf8_lossy(&b.stderr));
    assert!(!a.status.success() && !b.status.success(), "{ea}\n{eb}");
    assert!(ea.contains("replicas diverged") && ea.contains("parameters at the start"), "{ea}");
    assert_eq!(train_rows(&out0).len(), 3, "a step was taken");
}

/// Bad values are clear errors, exit 1 (2 for clap's), and write nothing.
#[test]
fn bad_parallel_arguments_are_refused_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let port = free_port().to_string();
    let unreachable = format!("127.0.0.1:{port}");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--devices", "0"], "--devices must be at least 1"),
        (vec!["--set", "train.devices=0"], "train.devices must be at least 1"),
        (vec!["--set", "train.devices=[0, 0]"], "lists GPU 0 twice"),
        (vec!["--nodes", "2", "--node-rank", "2", "--coordinator", "127.0.0.1:1"], "--node-rank 2 is not below"),
        (vec!["--nodes", "2", "--coordinator", "127.0.0.1:1"], "pass --node-rank"),
        (vec!["--nodes", "2", "--node-rank", "1"], "pass --coordinator"),
        (
            vec!["--nodes", "2", "--node-rank", "1", "--coordinator", &unreachable, "--connect-timeout", "2"],
            "cannot reach the coordinator",
        ),
        (
            vec!["--nodes", "2", "--node-rank", "0", "--coordinator", &unreachable, "--connect-timeout", "2"],
            "did not join",
        ),
    ];
    for (args, want) in cases {
        let o = train(&out, 3, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
}

/// `lapidary bench --devices 2` times data-parallel steps: all replicas' tokens in tokens/s, a finite loss.
#[test]
fn bench_times_data_parallel_steps() {
    let model = fixture("tiny/gemma3");
    let args = ["bench", "--model", model.to_str().unwrap(), "--seq", "32", "--batch", "2", "--steps", "2"];
    let v = lapidary_json(&[&args[..], &["--devices", "2", "--json"]].concat());
    assert_eq!(v["devices"], 2);
    assert_eq!(v["step_s"].as_array().map(Vec::len), Some(2));
    let per_step: f64 = v["step_s"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).sum();
    let tps = v["tokens_per_s"].as_f64().unwrap();
    // 2 steps × 2 replicas × 2 rows × 32 tokens over (about) the steps' time.
    assert!(tps > 0.5 * 256.0 / per_step.max(1e-3), "{v}");
    assert!(v["loss"].as_f64().is_some_and(f64::is_finite), "{v}");
    let o = lapidary(&[&args[..], &["--devices", "0"]].concat());
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--devices must be at least 1"));
}

/// `train.devices` as a list (GPU indices on CUDA) counts replicas on a CPU backend, which has one device.
#[test]
fn a_device_list_counts_replicas_on_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let err = train_ok(&out, 2, &["--set", "train.devices=[0, 1]"]);
    assert!(err.contains("on 2 replicas"), "{err}");
    assert!(train_rows(&out).iter().all(|r| r.4 == Some(2)));
    // The resolved recipe keeps the list.
    let resolved: toml::Value = toml::from_str(&std::fs::read_to_string(out.join("config.toml")).unwrap()).unwrap();
    assert_eq!(resolved["train"]["devices"], toml::Value::Array(vec![0.into(), 1.into()]));
}

/// A node that stops answering without closing its socket (here: SIGSTOP) is given up after 20 s of silence,
/// by name; a node that fails sends its error to the others, which exit naming it and quoting it.
#[cfg(unix)]
#[test]
fn a_silent_node_and_a_failing_node_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (out0, out1) = (tmp.path().join("node0"), tmp.path().join("node1"));
    let (a, mut b) = two_nodes(&out0, &out1, 100_000, &["--set", "train.save_every=0"]);
    let t0 = Instant::now();
    while std::fs::read_to_string(out0.join("metrics.jsonl")).map_or(0, |s| s.lines().count()) < 4 {
        assert!(t0.elapsed().as_secs() < 120, "training never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(Command::new("kill").args(["-STOP", &b.id().to_string()]).status().unwrap().success());
    let t = Instant::now();
    let o = wait(a, Duration::from_secs(60), "node 0");
    let err = String::from_utf8_lossy(&o.stderr);
    let _ = b.kill();
    let _ = b.wait();
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("rank 1 (") && err.contains("nothing heard for 20 s"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(30), "took {:?}", t.elapsed());

    // Node 1 resumes with no checkpoint in its output.dir: it fails, and node 0 (which has one) says why.
    let (run0, run1) = (tmp.path().join("run0"), tmp.path().join("run1"));
    train_ok(&run0, 6, &["--devices", "2", "--set", "train.save_every=0", "--stop-after", "2"]);
    let (a, b) = two_nodes(&run0, &run1, 6, &["--set", "train.save_every=0", "--resume"]);
    let (a, b) = (wait(a, Duration::from_secs(60), "node 0"), wait(b, Duration::from_secs(60), "node 1"));
    let (ea, eb) = (String::from_utf8_lossy(&a.stderr), String::from_utf8_lossy(&b.stderr));
    assert!(!a.status.success() && !b.status.success(), "{ea}\n{eb}");
    assert!(eb.contains("no complete checkpoint"), "{eb}");
    assert!(ea.contains("rank 1 (") && ea.contains("failed") && ea.contains("no complete checkpoint"), "{ea}");
    assert_eq!(train_rows(&run0).len(), 2, "node 0 took a step");
}
