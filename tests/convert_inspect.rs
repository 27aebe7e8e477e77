//! `lapidary convert` writes a directory transformers loads (checked by scripts/check_convert.py, whose result
//! is tests/fixtures/gguf/convert_check.json), and `lapidary inspect` reports hand-derivable numbers.
mod common;

use common::*;

/// The toy Gemma 3 GGUF under a `.gguf` name, and eval rows of the texts transformers scored.
fn setup(tmp: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, serde_json::Value) {
    let gguf = tmp.join("toy.gguf");
    std::fs::copy(fixture("gguf/tiny_gemma3.gguf.bin"), &gguf).unwrap();
    let check = read_json(&fixture("gguf/convert_check.json"));
    let rows: Vec<String> =
        check["texts"].as_array().unwrap().iter().map(|t| serde_json::json!({ "text": t }).to_string()).collect();
    let data = tmp.join("rows.jsonl");
    std::fs::write(&data, rows.join("\n")).unwrap();
    (gguf, data, check)
}

#[test]
fn converted_directory_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let (gguf, data, check) = setup(tmp.path());
    let out = tmp.path().join("converted");
    let status = lapidary(&["convert", "--model", gguf.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let want = check["eval_loss"].as_f64().unwrap();
    for model in [&gguf, &out] {
        let got =
            lapidary_json(&["eval", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--json"]);
        assert_eq!(got["tokens"], check["eval_tokens"]);
        let loss = got["loss"].as_f64().unwrap();
        assert!(rel(loss, want) < 1e-4, "{}: loss {loss} vs transformers on the converted dir {want}", model.display());
        for (text, ids) in check["texts"].as_array().unwrap().iter().zip(check["ids"].as_array().unwrap()) {
            let got = lapidary_json(&[
                "tokenize",
                "--model",
                model.to_str().unwrap(),
                "--text",
                text.as_str().unwrap(),
                "--json",
            ]);
            assert_eq!(&got["ids"], ids, "{}: {text}", model.display());
        }
    }
    // Never over an existing directory without --overwrite; with it, replaced.
    let err = lapidary_fails(&["convert", "--model", gguf.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(err.contains("already exists") && err.contains("--overwrite"), "{err}");
    let again =
        lapidary(&["convert", "--model", gguf.to_str().unwrap(), "--out", out.to_str().unwrap(), "--overwrite"]);
    assert!(again.status.success());
}

#[test]
fn inspect_counts_parameters_and_bytes() {
    let dir = fixture("tiny/gemma1");
    let v = lapidary_json(&["inspect", "--model", dir.to_str().unwrap(), "--quant", "nf4", "--json"]);
    // gemma1 fixture: vocab 512, hidden 64, intermediate 160, 3 layers, 4 heads x 32, 1 kv head.
    let (h, i, q, kv, layers) = (64usize, 160usize, 128usize, 32usize, 3usize);
    let shapes = [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)];
    let linear: usize = shapes.iter().map(|(o, n)| o * n).sum::<usize>() * layers;
    // NF4: half a byte per weight, one byte of absmax per 64 weights, one f32 per 256 absmax blocks, the offset.
    let nf4: usize = shapes
        .iter()
        .map(|(o, n)| o * n / 2 + (o * n).div_ceil(64) + (o * n).div_ceil(64 * 256) * 4 + 4)
        .sum::<usize>()
        * layers;
    assert_eq!(v["parameters"]["embedding"], 512 * 64);
    assert_eq!(v["parameters"]["linear"], linear);
    assert_eq!(v["parameters"]["norms"], (2 * layers + 1) * h);
    assert_eq!(v["resident_bytes"]["linear"], nf4);
    assert_eq!(v["model_type"], "gemma");
    assert_eq!(v["kv_heads"], 1);
}

/// `convert --adapter DIR --out X.gguf` writes what llama.cpp's `convert_lora_to_gguf.py` writes from the same
/// PEFT adapter (tests/fixtures/gguf_adapter/, scripts/make_gguf_adapter_fixtures.py): the same tensors in the
/// same order, names, types and shapes, byte for byte in every --dtype (q8_0 with llama.cpp's f16 fallback for
/// rows of r), and the same adapter metadata; for rsLoRA, alpha·√r, so llama.cpp's alpha/r is PEFT's
/// alpha/√r (the converter copies lora_alpha, which it should not).
#[test]
fn adapter_to_gguf_equals_llama_cpps_converter() {
    use lapidary_model::io::gguf::{GgufFile, GgufValue};
    let tmp = tempfile::tempdir().unwrap();
    let base = fixture("tiny/gemma3");
    for (adapter, dtype, reference, alpha_factor) in [
        ("adapter", "f32", "gemma3_adapter_f32", 1.0f32),
        ("adapter", "f16", "gemma3_adapter_f16", 1.0),
        ("adapter", "bf16", "gemma3_adapter_bf16", 1.0),
        ("adapter", "q8_0", "gemma3_adapter_q8_0", 1.0),
        ("adapter_rslora", "f32", "gemma3_adapter_rslora_f32", 2.0),
    ] {
        let out = tmp.path().join(format!("{reference}.gguf"));
        let adapter_dir = base.join(adapter);
        let args = ["convert", "--model", base.to_str().unwrap(), "--adapter", adapter_dir.to_str().unwrap()];
        let out_s = out.to_str().unwrap();
        let o = lapidary(&[&args[..], &["--out", out_s, "--dtype", dtype]].concat());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let (ours, theirs) = (
            GgufFile::open(&out).unwrap(),
            GgufFile::open(fixture(&format!("gguf_adapter/{reference}.gguf.bin"))).unwrap(),
        );
        let names = |f: &GgufFile| f.tensors().iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&ours), names(&theirs), "{reference}: tensor order");
        for t in theirs.tensors() {
            let o = ours.tensor_info(&t.name).unwrap();
            assert_eq!((o.dtype, o.shape()), (t.dtype, t.shape()), "{reference}: {}", t.name);
            assert_eq!(
                ours.tensor_bytes(&t.name).unwrap(),
                theirs.tensor_bytes(&t.name).unwrap(),
                "{reference}: {}",
                t.name
            );
        }
        for key in
            ["general.architecture", "general.type", "adapter.type", "general.name", "general.quantization_version"]
        {
            assert_eq!(ours.get(key), theirs.get(key), "{reference}: {key}");
        }
        let alpha = |f: &GgufFile| match f.get("adapter.lora.alpha") {
            Some(GgufValue::F32(a)) => *a,
            other => panic!("adapter.lora.alpha: {other:?}"),
        };
        assert_eq!(alpha(&ours), alpha(&theirs) * alpha_factor, "{reference}: alpha");
    }
    // An existing output is not replaced without --overwrite; a non-.gguf output is refused.
    let out = tmp.path().join("gemma3_adapter_f32.gguf");
    let adapter = base.join("adapter");
    let args = ["convert", "--model", base.to_str().unwrap(), "--adapter", adapter.to_str().unwrap(), "--out"];
    let err = lapidary_fails(&[&args[..], &[out.to_str().unwrap()]].concat());
    assert!(err.contains("already exists") && err.contains("--overwrite"), "{err}");
    let err = lapidary_fails(&[&args[..], &[tmp.path().join("x.safetensors").to_str().unwrap()]].concat());
    assert!(err.contains("must end in .gguf"), "{err}");
}

/// Gemma 4 (per-layer inputs, KV-shared layers without k/v, global layers without v; and the MoE with its
/// router and expert stacks): the total is transformers' `sum(p.numel() for p in model.parameters())`
/// (scripts/make_gemma4_fixtures.py records it).
#[test]
fn inspect_counts_gemma4_parameters_as_transformers() {
    for gen in ["gemma4", "gemma4_moe"] {
        let dir = fixture(&format!("tiny/{gen}"));
        let want = read_json(&dir.join("reference.json"))["num_parameters"].as_u64().unwrap();
        let v = lapidary_json(&["inspect", "--model", dir.to_str().unwrap(), "--quant", "none", "--json"]);
        assert_eq!(v["parameters"]["total"].as_u64().unwrap(), want, "{gen}: {v}");
        assert_eq!(v["model_type"], "gemma4_text");
    }
}

/// A Gemma 4 GGUF (llama.cpp's converter) converts to a directory that scores as the file does, and whose
/// tokenizer_config.json says what its tokenizer.json does: no BOS (transformers builds Gemma 4's GGUF
/// tokenizer without one), where Gemma 1-3's say true.
#[test]
fn gemma4_gguf_converts_to_a_directory_that_scores_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("g4.gguf");
    std::fs::copy(fixture("gguf/tiny_gemma4_q8_0.gguf.bin"), &gguf).unwrap();
    let out = tmp.path().join("dir");
    let o = lapidary(&["convert", "--model", gguf.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read_json(&out.join("tokenizer_config.json"))["add_bos_token"], false);
    let data = fixture("tiny/gemma4/eval.jsonl");
    let eval = |m: &std::path::Path| {
        lapidary_json(&["eval", "--model", m.to_str().unwrap(), "--data", data.to_str().unwrap(), "--json"])
    };
    let (a, b) = (eval(&gguf), eval(&out));
    assert_eq!(a["tokens"], b["tokens"]);
    assert!(rel(a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap()) < 1e-6, "{a} vs {b}");
}
