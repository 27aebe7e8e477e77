//! `lapidary merge`: the merged directory is what transformers loads and scores as `lapidary eval --adapter`
//! does (tests/fixtures/merge/single.json), several adapters combine as PEFT's add_weighted_adapter +
//! merge_and_unload (peft.json), and bad input fails with a message. References: scripts/make_merge_fixtures.py.
mod common;

use std::path::{Path, PathBuf};

use common::*;

fn base() -> PathBuf {
    fixture("tiny/gemma3")
}

fn eval_loss(model: &Path, adapter: Option<&Path>, extra: &[&str]) -> (f64, serde_json::Value) {
    let data = base().join("eval.jsonl");
    let mut args = vec!["eval", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--json"];
    if let Some(a) = adapter {
        args.extend(["--adapter", a.to_str().unwrap()]);
    }
    args.extend(extra);
    let v = lapidary_json(&args);
    (v["loss"].as_f64().unwrap(), v["tokens"].clone())
}

fn merge(adapters: &[PathBuf], extra: &[&str], out: &Path) -> serde_json::Value {
    let b = base();
    let mut args = vec!["merge", "--model", b.to_str().unwrap(), "--out", out.to_str().unwrap(), "--json"];
    for a in adapters {
        args.extend(["--adapter", a.to_str().unwrap()]);
    }
    args.extend(extra);
    lapidary_json(&args)
}

#[test]
fn single_adapter_merge_matches_transformers_and_eval_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let check = read_json(&fixture("merge/single.json"));
    let adapter = base().join("adapter");
    for dtype in ["f32", "bf16"] {
        let out = tmp.path().join(dtype);
        let r = merge(std::slice::from_ref(&adapter), &["--dtype", dtype], &out);
        for f in
            ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]
        {
            assert!(out.join(f).exists(), "{f} missing");
        }
        assert_eq!(r["base"], "original");
        assert!(r["diff"].as_f64().unwrap() <= r["tolerance"].as_f64().unwrap());
        let want = check[dtype]["eval_loss"].as_f64().unwrap();
        let (got, tokens) = eval_loss(&out, None, &[]);
        assert_eq!(tokens, check[dtype]["eval_tokens"]);
        assert!((got - want).abs() < 1e-4, "{dtype}: lapidary eval {got} vs transformers {want} on the merged dir");
    }
    // f32: the merged model scores as base + adapter does, in lapidary and in PEFT.
    let want = check["f32"]["eval_loss"].as_f64().unwrap();
    let (with_adapter, _) = eval_loss(&base(), Some(&adapter), &[]);
    assert!((with_adapter - want).abs() < 1e-4, "eval --adapter {with_adapter} vs merged in transformers {want}");
    assert!((check["peft_adapter_eval_loss"].as_f64().unwrap() - want).abs() < 1e-4);
    let config = read_json(&tmp.path().join("bf16/config.json"));
    assert_eq!(config["dtype"], "bfloat16");
}

#[test]
fn dequantized_base_matches_nf4_eval_with_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dq");
    let adapter = base().join("adapter");
    let r = merge(std::slice::from_ref(&adapter), &["--base", "dequantized"], &out);
    assert_eq!(r["base"], "dequantized");
    let (merged, _) = eval_loss(&out, None, &[]);
    let (nf4, _) = eval_loss(&base(), Some(&adapter), &["--quant", "nf4"]);
    assert!((merged - nf4).abs() < 1e-4, "merged onto dequantized NF4 {merged} vs NF4 + adapter {nf4}");
    // The plain-text report says which base was used.
    let b = base();
    let out2 = tmp.path().join("dq2");
    let o = lapidary(&[
        "merge",
        "--model",
        b.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--base",
        "dequantized",
        "--out",
        out2.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && stdout.contains("NF4-dequantized") && stdout.contains("probe loss"), "{stdout}");
}

#[test]
fn multi_adapter_methods_match_peft() {
    let tmp = tempfile::tempdir().unwrap();
    let check = read_json(&fixture("merge/peft.json"));
    for (i, case) in check["cases"].as_array().unwrap().iter().enumerate() {
        let adapters: Vec<PathBuf> =
            case["adapters"].as_array().unwrap().iter().map(|a| fixture(a.as_str().unwrap())).collect();
        let weights: Vec<String> = case["weights"].as_array().unwrap().iter().map(|w| w.to_string()).collect();
        let weights = weights.join(",");
        let method = case["method"].as_str().unwrap();
        let density = case["density"].as_f64().map(|d| d.to_string());
        let mut extra = vec!["--method", method, "--weights", weights.as_str(), "--dtype", "f32"];
        if let Some(d) = &density {
            extra.extend(["--density", d.as_str()]);
        }
        let out = tmp.path().join(format!("case{i}"));
        merge(&adapters, &extra, &out);
        let want = case["eval_loss"].as_f64().unwrap();
        let (got, _) = eval_loss(&out, None, &[]);
        assert!((got - want).abs() < 1e-4, "{method} {weights} density {density:?}: loss {got} vs PEFT {want}");
        for s in case["samples"].as_array().unwrap() {
            let (_, v) = read_tensor(&out.join("model.safetensors"), s["name"].as_str().unwrap());
            let (got, want) = (v[s["index"].as_u64().unwrap() as usize], s["value"].as_f64().unwrap());
            assert!((got - want).abs() < 1e-5, "{method}: {}[{}] = {got} vs PEFT {want}", s["name"], s["index"]);
        }
    }
}

#[test]
fn bad_input_fails_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let b = base();
    let a = base().join("adapter");
    let r8 = fixture("merge/adapter_r8");
    let out = tmp.path().join("out");
    let (b, a, r8, o) = (b.to_str().unwrap(), a.to_str().unwrap(), r8.to_str().unwrap(), out.to_str().unwrap());
    let err = lapidary_fails(&[
        "merge",
        "--model",
        b,
        "--adapter",
        a,
        "--adapter",
        r8,
        "--method",
        "ties",
        "--density",
        "0.5",
        "--out",
        o,
    ]);
    assert!(err.contains("equal rank") && err.contains("r=8"), "{err}");
    let err = lapidary_fails(&["merge", "--model", b, "--adapter", a, "--adapter", r8, "--weights", "1", "--out", o]);
    assert!(err.contains("1 weights for 2 adapters"), "{err}");
    let err = lapidary_fails(&["merge", "--model", b, "--adapter", a, "--adapter", a, "--method", "ties", "--out", o]);
    assert!(err.contains("--density is required"), "{err}");
    // An adapter for another model: gemma3's adapter on the gemma2 fixture.
    let g2 = fixture("tiny/gemma2");
    let err = lapidary_fails(&["merge", "--model", g2.to_str().unwrap(), "--adapter", a, "--out", o]);
    assert!(err.contains("adapter") && err.contains("shape"), "{err}");
    assert!(!out.exists() && !out.with_extension("partial").exists());
    // An existing output directory needs --overwrite.
    std::fs::create_dir_all(&out).unwrap();
    let err = lapidary_fails(&["merge", "--model", b, "--adapter", a, "--out", o]);
    assert!(err.contains("already exists") && err.contains("--overwrite"), "{err}");
    let ok = lapidary(&["merge", "--model", b, "--adapter", a, "--out", o, "--overwrite"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(out.join("model.safetensors").exists());
}

/// A `.gguf` base (the tiny Gemma 3 GGUF fixture) with an adapter trained on it by `lapidary train`: the
/// merged directory scores as `lapidary eval --model GGUF --adapter` does, onto the original (GGUF) weights
/// and onto the NF4-dequantized ones the adapter was trained against.
#[test]
fn gguf_base_merge_scores_as_eval_with_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("tiny.gguf");
    std::fs::copy(fixture("gguf/tiny_gemma3.gguf.bin"), &gguf).unwrap();
    let words = ["hello", "world", "the", "user", "is", "it"];
    let rows: String = (0..24)
        .map(|i| {
            let text: Vec<&str> = (0..6 + i % 5).map(|j| words[(i * 7 + j * j + j) % words.len()]).collect();
            format!("{}\n", serde_json::json!({ "text": text.join(" ") }))
        })
        .collect();
    let data = tmp.path().join("rows.jsonl");
    std::fs::write(&data, rows).unwrap();
    let (g, d) = (gguf.to_str().unwrap(), data.to_str().unwrap());

    // QLoRA on the GGUF: an NF4 base, a few steps at a high rate so the adapter is far from zero.
    let run = tmp.path().join("run");
    let sets = [
        format!("model.path={g}"),
        format!("data.train={d}"),
        format!("data.eval={d}"),
        "train.max_steps=8".to_string(),
        format!("output.dir={}", run.display()),
    ];
    let mut args = vec!["train".to_string(), repo_root().join("configs/tiny-test.toml").display().to_string()];
    sets.iter().for_each(|s| args.extend(["--set".to_string(), s.clone()]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lapidary_json(&args);
    let adapter = run.join("adapter");
    let a = adapter.to_str().unwrap();

    let eval = |model: &str, extra: &[&str]| {
        let mut args = vec!["eval", "--model", model, "--data", d, "--json"];
        args.extend(extra);
        lapidary_json(&args)["loss"].as_f64().unwrap()
    };
    let base = eval(g, &[]);
    let with_adapter = eval(g, &["--adapter", a]);
    let nf4_with_adapter = eval(g, &["--adapter", a, "--quant", "nf4"]);
    assert!((with_adapter - base).abs() > 1e-2, "the adapter should change the loss: {base} vs {with_adapter}");

    for (how, want) in [("original", with_adapter), ("dequantized", nf4_with_adapter)] {
        let out = tmp.path().join(how);
        let o = out.to_str().unwrap();
        // The plain-text report: saving this GGUF's tokenizer (it has a duplicated token) makes the tokenizers
        // crate print a warning on stdout, which `--json` output would then contain. A merge beyond its
        // tolerance fails by itself.
        let r = lapidary(&["merge", "--model", g, "--adapter", a, "--base", how, "--dtype", "f32", "--out", o]);
        let stdout = String::from_utf8_lossy(&r.stdout);
        assert!(r.status.success(), "merge --base {how}: {}", String::from_utf8_lossy(&r.stderr));
        let said = if how == "original" { "original weights" } else { "NF4-dequantized" };
        assert!(stdout.contains(said) && stdout.contains("probe loss"), "{stdout}");
        // A fresh process reads the merged directory (its config, weights and tokenizer.json from the GGUF).
        let merged = eval(o, &[]);
        assert!((merged - want).abs() < 1e-4, "--base {how}: merged {merged} vs eval --model GGUF --adapter {want}");
    }
}

/// Gemma 4: merging the PEFT adapters of the tiny dense model (no k/v on KV-shared layers, no v on global ones)
/// and of the MoE model (LoRA on the experts, PEFT's target_parameters: each expert's `[out, in]` slice of
/// the 3-D parameter gets its own `B_e·A_e`) gives a directory that scores PEFT's loss with the adapter.
#[test]
fn gemma4_merges_score_as_peft_with_the_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    for (model, adapter, want) in [
        (fixture("tiny/gemma4"), fixture("tiny/gemma4/adapter"), {
            read_json(&fixture("tiny/gemma4/reference.json"))["eval_loss_adapter"].as_f64().unwrap()
        }),
        (fixture("tiny/gemma4_moe"), fixture("train/adapter_gemma4_moe"), {
            read_json(&fixture("train/peft_check_gemma4_moe.json"))["eval_loss_peft"].as_f64().unwrap()
        }),
    ] {
        let out = tmp.path().join(model.file_name().unwrap());
        let args = ["merge", "--model", model.to_str().unwrap(), "--adapter", adapter.to_str().unwrap()];
        let r = lapidary_json(&[&args[..], &["--out", out.to_str().unwrap(), "--dtype", "f32", "--json"]].concat());
        assert!(r["diff"].as_f64().unwrap() <= r["tolerance"].as_f64().unwrap(), "{r}");
        let data = model.join("eval.jsonl");
        let v = lapidary_json(&["eval", "--model", out.to_str().unwrap(), "--data", data.to_str().unwrap(), "--json"]);
        let got = v["loss"].as_f64().unwrap();
        assert!(rel(got, want) < 1e-4, "{}: merged {got} vs PEFT with the adapter {want}", model.display());
    }
}
