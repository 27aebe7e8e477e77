//! DoRA (PEFT's `use_dora`) against PEFT 0.21 itself (scripts/make_dora_fixtures.py, tests/fixtures/dora/): on
//! the tiny Gemma 3, with a dense and an NF4 base, α/r and rsLoRA scaling, and dropout (lapidary's masks replayed
//! in PEFT's training-mode forward), the loss and every gradient of one step (`lora_A`, `lora_B`,
//! `lora_magnitude_vector`) equal PEFT's; PEFT's adapters load, ours save in its format and round-trip; `merge`
//! writes PEFT's merged weights; `train` with `lora.use_dora` trains, checkpoints and resumes; bad input fails
//! naming the file and tensor or key.
mod common;

use std::path::Path;

use burn::tensor::Tensor;
use common::*;
use lapidary_model::backends::{Cpu, CpuAutodiff};
use lapidary_model::gemma::linears_mut;
use lapidary_model::gemma::load::load_gemma;
use lapidary_model::nn::lora::LoraRuntime;
use lapidary_model::peft::adapter::{load_adapter, peft_key, save_adapter};
use lapidary_model::quant::QuantKind;
use lapidary_model::{Gemma, ModelFiles, TokenBatch};

fn reference() -> serde_json::Value {
    read_json(&fixture("dora/reference.json"))
}

/// A fixture model (`tiny/gemma3`, or `dora/gemma3_nf4`: bitsandbytes' NF4 of it, pre-quantized).
fn model(dir: &str, quant: QuantKind) -> Gemma<CpuAutodiff> {
    let files = ModelFiles::open(&fixture(dir)).unwrap();
    load_gemma::<CpuAutodiff>(&files.config, files.weights.as_ref(), quant, &Default::default()).unwrap()
}

/// The fixture's batch and its next-token targets.
fn batch(r: &serde_json::Value) -> (TokenBatch, Vec<(usize, u32)>) {
    let rows: Vec<Vec<u32>> = r["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect())
        .collect();
    let seq = rows[0].len();
    let targets =
        (0..rows.len()).flat_map(|b| (0..seq - 1).map(move |t| (b, t))).map(|(b, t)| (b * seq + t, rows[b][t + 1]));
    let targets: Vec<(usize, u32)> = targets.collect();
    (TokenBatch::from_rows(&rows), targets)
}

fn host(t: Tensor<Cpu, 2>) -> Vec<f64> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap().into_iter().map(f64::from).collect()
}

/// Largest |a − b| over the largest |b|: gradients within 1e-4 of their scale.
fn err_to_scale(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / scale
}

/// Loss and gradients of the mean loss over the batch, plain backward and checkpointed, against PEFT's.
fn check_variant(variant: &str, quant: QuantKind) {
    let r = reference();
    let v = &r["variants"][variant];
    let dir = fixture(v["adapter"].as_str().unwrap());
    let mut m = model(v["model"].as_str().unwrap(), quant);
    let cfg = load_adapter(&mut m, &dir).unwrap();
    assert!(cfg.use_dora);
    let (tokens, targets) = batch(&r);
    let rt = LoraRuntime { dropout_seed: v["dropout_seed"].as_u64() };
    let n = targets.len() as f32;
    for (_, l) in linears_mut(&mut m) {
        for t in l.adapter.as_mut().unwrap().trainables_mut() {
            *t = t.clone().require_grad();
        }
    }
    let nll = m.nll_sum(m.forward_hidden(&tokens, None, &rt), &targets);
    let loss = nll.clone().into_scalar() as f64 / n as f64;
    let want = v["loss"].as_f64().unwrap();
    assert!(rel(loss, want) < 1e-4, "{variant}: loss {loss} vs PEFT {want}");
    assert!(rel(loss, v["loss_base"].as_f64().unwrap()) > 1e-4, "{variant}: DoRA changed nothing");
    let grads = (nll / n).backward();
    let path = fixture(&format!("dora/{variant}/grads.safetensors"));
    let mut plain = Vec::new();
    let mut worst = (0f64, String::new());
    for (module, l) in linears_mut(&mut m) {
        let ad = l.adapter.as_ref().unwrap();
        let mut per = Vec::new();
        for (name, t) in ad.trainables() {
            let key = peft_key(&module, name);
            let got = host(t.grad(&grads).unwrap_or_else(|| panic!("{key}: no gradient")));
            let (_, want) = read_tensor(&path, &key);
            let e = err_to_scale(&got, &want);
            if e > worst.0 {
                worst = (e, key.clone());
            }
            per.push(got);
        }
        assert_eq!(per.len(), 3, "{module}: A, B and the magnitude are trained");
        plain.push((module, per));
    }
    assert!(worst.0 < 1e-4, "{variant}: gradient {} off by {:.2e} of its scale", worst.1, worst.0);

    // Activation checkpointing gives the same gradients (the magnitude's included).
    let mut seen = 0;
    let ck = m.nll_backward_checkpointed(&tokens, &targets, &rt, 1.0 / n, |module, g| {
        let (_, want) = plain.iter().find(|(m, _)| m == module).unwrap();
        assert_eq!(g.len(), 3);
        for (got, want) in g.into_iter().zip(want) {
            let e = err_to_scale(&host(got), want);
            assert!(e < 1e-5, "{variant} {module}: checkpointed gradient off by {e:.2e}");
        }
        seen += 1;
    });
    assert_eq!(seen, 6 * 7);
    assert!(rel(ck / n as f64, loss) < 1e-6);
}

#[test]
fn loss_and_gradients_equal_peft_on_a_dense_base() {
    check_variant("dense", QuantKind::None);
}

#[test]
fn loss_and_gradients_equal_peft_with_rslora() {
    check_variant("dense_rslora", QuantKind::None);
}

/// PEFT applies DoRA to the dropped-out input with a second product by the base weight; lapidary's dropout
/// masks are replayed in PEFT's forward (scripts/make_dora_fixtures.py).
#[test]
fn loss_and_gradients_equal_peft_with_dropout() {
    check_variant("dense_dropout", QuantKind::None);
}

/// The NF4 base (bitsandbytes' own quantization, loaded as stored): the weight norm is over the dequantized
/// weight, as PEFT takes it on a bitsandbytes base.
#[test]
fn loss_and_gradients_equal_peft_on_an_nf4_base() {
    check_variant("nf4", QuantKind::Nf4);
}

/// `lapidary eval --adapter` on PEFT's DoRA adapters gives PEFT's eval loss (dense and NF4 bases).
#[test]
fn eval_of_peft_adapters_gives_peft_loss() {
    let r = reference();
    for (variant, quant) in [("dense", "none"), ("dense_rslora", "none"), ("nf4", "nf4")] {
        let v = &r["variants"][variant];
        let model = fixture(v["model"].as_str().unwrap());
        let data = model.join("eval.jsonl");
        let adapter = fixture(v["adapter"].as_str().unwrap());
        let got = lapidary_json(&[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--quant",
            quant,
            "--adapter",
            adapter.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(got["tokens"], v["eval_tokens"]);
        let (loss, want) = (got["loss"].as_f64().unwrap(), v["eval_loss"].as_f64().unwrap());
        assert!(rel(loss, want) < 1e-4, "{variant}: lapidary eval {loss} vs PEFT {want}");
    }
}

/// PEFT's adapter, loaded and saved again, is the same file content: names (the magnitude without `.weight`),
/// shapes (`[out]`), values and `use_dora`.
#[test]
fn a_saved_adapter_round_trips_in_peft_format() {
    let src = fixture("dora/dense/adapter");
    let mut m = model("tiny/gemma3", QuantKind::None);
    let cfg = load_adapter(&mut m, &src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    save_adapter(&m, &cfg, tmp.path()).unwrap();
    let names = |d: &Path| {
        let bytes = std::fs::read(d.join("adapter_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut n: Vec<String> = st.names().into_iter().map(String::from).collect();
        n.sort();
        n
    };
    let (a, b) = (names(&src), names(tmp.path()));
    assert_eq!(a, b);
    assert!(a.iter().any(|n| n == "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"));
    for n in &a {
        let (sa, va) = read_tensor(&src.join("adapter_model.safetensors"), n);
        let (sb, vb) = read_tensor(&tmp.path().join("adapter_model.safetensors"), n);
        assert_eq!((sa, va), (sb, vb), "{n}");
    }
    let saved = read_json(&tmp.path().join("adapter_config.json"));
    assert_eq!(saved["use_dora"], true);
}

/// `lapidary merge` of a DoRA adapter writes the weights PEFT's `merge_and_unload` gives:
/// `m ⊙ (W + s·B·A) / ‖W + s·B·A‖` (dense base, rsLoRA, and the NF4-dequantized base QLoRA trained against).
#[test]
fn merge_equals_peft_merged_weights() {
    let r = reference();
    for (variant, base) in [("dense", "original"), ("dense_rslora", "original"), ("nf4", "dequantized")] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("merged");
        let adapter = fixture(&format!("dora/{variant}/adapter"));
        lapidary_json(&[
            "merge",
            "--model",
            fixture(r["variants"][variant]["model"].as_str().unwrap()).to_str().unwrap(),
            "--adapter",
            adapter.to_str().unwrap(),
            "--dtype",
            "f32",
            "--base",
            base,
            "--out",
            out.to_str().unwrap(),
            "--json",
        ]);
        let want = fixture(&format!("dora/{variant}/merged.safetensors"));
        let bytes = std::fs::read(&want).unwrap();
        let names: Vec<String> =
            safetensors::SafeTensors::deserialize(&bytes).unwrap().names().into_iter().map(String::from).collect();
        assert_eq!(names.len(), 14);
        for n in &names {
            let (sw, w) = read_tensor(&want, n);
            let (sg, g) = read_tensor(&out.join("model.safetensors"), n);
            assert_eq!(sw, sg, "{n}");
            let e = err_to_scale(&g, &w);
            assert!(e < 1e-5, "{variant} {n}: merged weight off by {e:.2e} of its scale");
        }
    }
}

/// A DoRA adapter made for another model, or with a magnitude of the wrong length, or a magnitude without
/// `use_dora`: errors naming the file and the tensor; nothing evaluated.
#[test]
fn mismatched_dora_adapters_are_errors_naming_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("dora/dense/adapter");
    let copy = |name: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(src.join(f), d.join(f)).unwrap();
        }
        d
    };
    let eval = |adapter: &Path, model: &str| {
        let model = fixture(model);
        lapidary_fails(&[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--adapter",
            adapter.to_str().unwrap(),
            "--data",
            model.join("eval.jsonl").to_str().unwrap(),
        ])
    };
    // Another base (tiny Gemma 2: other shapes).
    let e = eval(&src, "tiny/gemma2");
    assert!(e.contains("adapter_model.safetensors") && e.contains("layers.0."), "{e}");

    // The magnitude one short.
    let short = copy("short");
    let st_path = short.join("adapter_model.safetensors");
    let bytes = std::fs::read(&st_path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let bad = "base_model.model.model.layers.2.mlp.up_proj.lora_magnitude_vector";
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (n, t) in st.tensors() {
        let (mut shape, mut data) = (t.shape().to_vec(), t.data().to_vec());
        if n == bad {
            shape[0] -= 1;
            data.truncate(data.len() - 4);
        }
        owned.push((n, shape, data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, s, d)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())
        })
        .collect();
    std::fs::write(&st_path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
    let e = eval(&short, "tiny/gemma3");
    assert!(e.contains("adapter_model.safetensors") && e.contains(bad) && e.contains("127"), "{e}");

    // A magnitude in the file, but the config says plain LoRA.
    let plain = copy("plain");
    let cfg = std::fs::read_to_string(plain.join("adapter_config.json")).unwrap();
    std::fs::write(plain.join("adapter_config.json"), cfg.replace("\"use_dora\": true", "\"use_dora\": false"))
        .unwrap();
    let e = eval(&plain, "tiny/gemma3");
    assert!(
        e.contains("adapter_model.safetensors") && e.contains("lora_magnitude_vector") && e.contains("use_dora"),
        "{e}"
    );

    // Combining DoRA adapters, or weighting one, has no PEFT meaning; a GGUF adapter has no magnitude.
    let out = tmp.path().join("merged");
    let model = fixture("tiny/gemma3");
    let (m, s, o) = (model.to_str().unwrap(), src.to_str().unwrap(), out.to_str().unwrap());
    let e = lapidary_fails(&["merge", "--model", m, "--adapter", s, "--adapter", s, "--method", "cat", "--out", o]);
    assert!(e.contains("DoRA") && e.contains("alone"), "{e}");
    let e = lapidary_fails(&["merge", "--model", m, "--adapter", s, "--weights", "0.5", "--out", o]);
    assert!(e.contains("DoRA") && e.contains("weight 1"), "{e}");
    assert!(!out.exists(), "nothing written");
    let gguf = tmp.path().join("a.gguf");
    let e = lapidary_fails(&["convert", "--adapter", s, "--model", m, "--out", gguf.to_str().unwrap()]);
    assert!(e.contains("adapter_config.json") && e.contains("use_dora"), "{e}");
    assert!(!gguf.exists());
}

/// `lapidary train` with `lora.use_dora = true`: trains the magnitudes with A and B (checkpointed or not, the
/// same adapter), writes them in PEFT's format, resumes bit for bit; `use_dora` with expert
/// `target_parameters` is refused naming both keys.
#[test]
fn train_with_dora_saves_resumes_and_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = repo_root().join("configs/tiny-test.toml");
    let train = |out: &Path, extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "train".into(),
            recipe.display().to_string(),
            "--set".into(),
            format!("output.dir={}", out.display()),
            "--set".into(),
            "lora.use_dora=true".into(),
            "--set".into(),
            "train.max_steps=6".into(),
            "--set".into(),
            "train.save_every=3".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        std::process::Command::new(env!("CARGO_BIN_EXE_lapidary"))
            .current_dir(repo_root())
            .args(&args)
            .output()
            .unwrap()
    };
    let ok = |o: std::process::Output| assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    ok(train(&a, &[]));
    let st = a.join("adapter/adapter_model.safetensors");
    let key = "base_model.model.model.layers.3.mlp.down_proj.lora_magnitude_vector";
    let (shape, mag) = read_tensor(&st, key);
    assert_eq!(shape, vec![64]);
    assert_eq!(read_json(&a.join("adapter/adapter_config.json"))["use_dora"], true);
    // The magnitude moved from its start, ‖W‖ per row of the NF4 base (eval of step 0 has B = 0).
    let mut m = model("tiny/gemma3", QuantKind::Nf4);
    let cfg = load_adapter(&mut m, &a.join("adapter")).unwrap();
    assert!(cfg.use_dora);
    let base =
        linears_mut(&mut m).into_iter().find(|(n, _)| n == "layers.3.mlp.down_proj").unwrap().1.base.dense_weight();
    let start: Vec<f64> = base.chunks(128).map(|r| r.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()).collect();
    assert!(err_to_scale(&mag, &start) > 1e-4, "the magnitude did not train");

    // Stopped after a checkpoint and resumed: the same adapter.
    ok(train(&b, &["--stop-after", "4"]));
    ok(train(&b, &["--resume"]));
    assert_eq!(std::fs::read(&st).unwrap(), std::fs::read(b.join("adapter/adapter_model.safetensors")).unwrap());
    // Gradient checkpointing: the same training to float rounding.
    ok(train(&c, &["--set", "train.gradient_checkpointing=true"]));
    let (_, mc) = read_tensor(&c.join("adapter/adapter_model.safetensors"), key);
    assert!(err_to_scale(&mc, &mag) < 1e-4);

    let o = train(
        &tmp.path().join("d"),
        &["--set", "lora.target_parameters=[\"experts.down_proj\"]", "--set", "lora.dropout=0"],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("lora.use_dora") && e.contains("lora.target_parameters"), "{e}");
}
