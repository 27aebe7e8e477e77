//! The GGUF round trip on the real Gemma 3 270M Q4_K_M, against what llama.cpp itself did with the same files
//! (recorded by scripts/make_llama_cpp_roundtrip_fixtures.py in tests/fixtures/llama_cpp/; skips visibly when
//! scripts/fetch_model.sh has not run). Each test first rebuilds the file llama.cpp was given and checks its
//! sha256, so the recorded figures are about exactly these bytes.
//!
//! The yardstick for perplexities: llama.cpp rounds activations to 8 bits for its quantized products, so it
//! never gives exactly our perplexity; the gap on the base model alone is what that costs, and a file we write
//! (an adapter, a merged model) must not widen it by more than 0.2 percentage points.
mod common;

use std::path::{Path, PathBuf};

use common::*;
use lapidary_model::io::gguf::GgufFile;
use sha2::{Digest, Sha256};

fn reference() -> serde_json::Value {
    read_json(&fixture("llama_cpp/reference.json"))
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Our perplexity on llama-perplexity's chunks (the rows score exactly the tokens it scores).
fn our_ppl(model: &Path, adapter: Option<&Path>) -> f64 {
    let rows = fixture("llama_cpp/ppl_rows.jsonl");
    let mut args = vec!["eval", "--model", s(model), "--data", s(&rows), "--quant", "gguf", "--json"];
    if let Some(a) = adapter {
        args.extend(["--adapter", s(a)]);
    }
    let v = lapidary_json(&args);
    let scored = reference()["chunks"].as_u64().unwrap() * (reference()["n_ctx"].as_u64().unwrap() / 2 - 1);
    assert_eq!(v["tokens"].as_u64().unwrap(), scored, "the rows score llama-perplexity's tokens");
    v["perplexity"].as_f64().unwrap()
}

fn gap(llama: f64, ours: f64) -> f64 {
    (llama - ours).abs() / ours
}

fn adapter_gguf(dir: &Path) -> PathBuf {
    let out = dir.join("adapter.gguf");
    let model = real_model().unwrap();
    let adapter = fixture("llama_cpp/adapter");
    let o = lapidary(&["convert", "--model", s(&model), "--adapter", s(&adapter), "--out", s(&out), "--dtype", "f32"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// `convert --adapter X.gguf --dtype f32` on the stored adapter is the file llama.cpp ran with `--lora`, and
/// its tensors are byte for byte what llama.cpp's convert_lora_to_gguf.py writes from the same PEFT adapter.
#[test]
fn adapter_gguf_equals_llama_cpps_converter() {
    if real_model().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = adapter_gguf(dir.path());
    let r = reference();
    assert_eq!(sha256(&std::fs::read(&path).unwrap()), r["adapter_gguf_sha256"].as_str().unwrap());
    let file = GgufFile::open(&path).unwrap();
    let want = r["converter_adapter_tensors"].as_object().unwrap();
    assert_eq!(file.tensors().len(), want.len(), "tensor count");
    for t in file.tensors() {
        let w = &want[&t.name];
        assert_eq!(t.dtype.to_string(), w["type"].as_str().unwrap(), "{}", t.name);
        let shape: Vec<usize> = w["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        assert_eq!(t.shape(), shape, "{}", t.name);
        assert_eq!(sha256(file.tensor_bytes(&t.name).unwrap()), w["sha256"].as_str().unwrap(), "{}", t.name);
    }
}

/// llama-perplexity with `--lora` (our adapter GGUF) against `lapidary eval --quant gguf --adapter` on the same
/// chunks: the gap is no wider than on the base alone (+0.2 points); and the adapter moved the perplexity,
/// so the comparison says something.
#[test]
fn perplexity_with_the_adapter_matches_llama_cpp() {
    let Some(model) = real_model() else { return };
    let r = reference();
    let ppl = &r["ppl"];
    let llama = |k: &str| ppl[k]["ppl"].as_f64().unwrap();
    assert_eq!(ppl["base"]["file_sha256"].as_str().unwrap(), sha256(&std::fs::read(&model).unwrap()));
    let base = our_ppl(&model, None);
    let lora = our_ppl(&model, Some(&fixture("llama_cpp/adapter")));
    let (gb, gl) = (gap(llama("base"), base), gap(llama("lora"), lora));
    eprintln!(
        "base: llama.cpp {} ours {base:.4} (gap {gb:.5}); lora: {} vs {lora:.4} (gap {gl:.5})",
        llama("base"),
        llama("lora")
    );
    assert!(gb < 0.05, "llama.cpp's base perplexity {} is far from ours {base}", llama("base"));
    assert!(gl <= gb + 0.002, "with the adapter the gap {gl} is wider than the base's {gb} + 0.2 points");
    assert!((lora - base).abs() / base > 0.05, "the adapter barely moves the perplexity ({base} -> {lora})");
}

/// Our tokens of the perplexity text are llama.cpp's (the rows were cut from llama.cpp's tokens).
#[test]
fn tokens_of_the_perplexity_text_are_llama_cpps() {
    let Some(model) = real_model() else { return };
    let text = std::fs::read_to_string(fixture("llama_cpp/ppl.txt")).unwrap();
    let v = lapidary_json(&["tokenize", "--model", s(&model), "--text", &text, "--json"]);
    let want = &reference()["tokens"];
    assert_eq!(&v["ids"], want);
}

/// `lapidary merge --out X.gguf` on the real base with the stored adapter; returns the file (which must be
/// the one llama.cpp ran: same sha256).
fn merged(dir: &Path, dtype: &str) -> PathBuf {
    let model = real_model().unwrap();
    let out = dir.join(format!("merged_{dtype}.gguf"));
    let adapter = fixture("llama_cpp/adapter");
    let o = lapidary(&["merge", "--model", s(&model), "--adapter", s(&adapter), "--out", s(&out), "--dtype", dtype]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = reference()["ppl"][format!("merged_{dtype}")]["file_sha256"].as_str().unwrap().to_string();
    assert_eq!(
        sha256(&std::fs::read(&out).unwrap()),
        want,
        "merge --dtype {dtype} wrote another file than llama.cpp ran"
    );
    out
}

/// The merged GGUFs run in llama.cpp: llama-perplexity on each agrees with `lapidary eval` on the same file
/// within the base's yardstick. In f16 the merged model is base + adapter: llama.cpp's perplexity on it equals
/// its own base + `--lora` within the yardstick too. `same` re-quantizes the merged projections to their
/// original types (Q5_0, Q4_K, ... : the sums are off those grids), which moves the model itself (3% in
/// perplexity here); the check there is that both programs see the same model.
#[test]
fn merged_ggufs_run_in_llama_cpp() {
    let Some(model) = real_model() else { return };
    let r = reference();
    let llama = |k: &str| r["ppl"][k]["ppl"].as_f64().unwrap();
    let yardstick = gap(llama("base"), our_ppl(&model, None)) + 0.002;
    let dir = tempfile::tempdir().unwrap();
    for dtype in ["same", "f16"] {
        let file = merged(dir.path(), dtype);
        let ours = our_ppl(&file, None);
        let g = gap(llama(&format!("merged_{dtype}")), ours);
        eprintln!(
            "merged {dtype}: llama.cpp {} ours {ours:.4} (gap {g:.5}, yardstick {yardstick:.5})",
            llama(&format!("merged_{dtype}"))
        );
        assert!(g <= yardstick, "{dtype}: llama.cpp {} vs ours {ours}", llama(&format!("merged_{dtype}")));
    }
    let g = gap(llama("merged_f16"), llama("lora"));
    assert!(g <= yardstick, "llama.cpp: merged f16 {} vs base + --lora {}", llama("merged_f16"), llama("lora"));
}

/// llama.cpp's own merge (`llama-export-lora`, which writes the merged tensors in f16) against `lapidary merge
/// --out x.gguf --dtype f16`, tensor by tensor: at the recorded positions within one f16 step (the f32 sums
/// are formed in another order, so a value may round to the neighbouring f16), and over the whole tensor the
/// sum of values within what one step per value allows.
#[test]
fn merge_f16_equals_llama_export_lora() {
    if real_model().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = GgufFile::open(merged(dir.path(), "f16")).unwrap();
    let r = reference();
    let export = r["export_lora"].as_object().unwrap();
    assert!(export.len() >= 36, "every adapted projection (18 layers x q, v) is compared");
    let f16 = |bits: u16| half::f16::from_bits(bits).to_f64();
    for (name, want) in export {
        let t = file.tensor_info(name).unwrap_or_else(|| panic!("{name} missing from our merge"));
        assert_eq!(t.dtype.to_string(), "F16", "{name}");
        let bytes = file.tensor_bytes(name).unwrap();
        let ours: Vec<u16> = bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        assert_eq!(ours.len() as u64, want["numel"].as_u64().unwrap(), "{name}");
        for (p, w) in want["positions"].as_array().unwrap().iter().zip(want["f16_bits"].as_array().unwrap()) {
            let (o, w) = (f16(ours[p.as_u64().unwrap() as usize]), f16(w.as_u64().unwrap() as u16));
            let step = (w.abs() * 2f64.powi(-10)).max(2f64.powi(-24));
            assert!((o - w).abs() <= step, "{name}[{p}]: ours {o} export-lora {w}");
        }
        let (sum, abs): (f64, f64) = ours.iter().map(|&b| f16(b)).fold((0.0, 0.0), |(s, a), v| (s + v, a + v.abs()));
        let allowed = abs * 2f64.powi(-10) + ours.len() as f64 * 2f64.powi(-24);
        let d = (sum - want["sum"].as_f64().unwrap()).abs();
        assert!(d <= allowed, "{name}: sum {sum} vs export-lora {} (allowed {allowed})", want["sum"]);
    }
}

/// `lapidary convert` from the real model to an f32 GGUF (llama-quantize's `F32` output of the same file, tensor
/// for tensor), then from that f32 GGUF to each type: every tensor's name, type, shape and bytes equal what
/// `llama-quantize` writes from the same f32 file (single types as its `--pure`; the presets with its per-tensor
/// choice). Recorded by scripts/make_ggml_quant_fixtures.py.
#[test]
fn convert_from_an_f32_gguf_equals_llama_quantize() {
    let Some(model) = real_model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let convert = |from: &Path, dtype: &str| {
        let out = dir.path().join(format!("{dtype}.gguf"));
        let o = lapidary(&["convert", "--model", s(from), "--out", s(&out), "--dtype", dtype]);
        assert!(o.status.success(), "{dtype}: {}", String::from_utf8_lossy(&o.stderr));
        out
    };
    let check = |file: &Path, fixture_name: &str| {
        let want = read_json(&fixture(&format!("ggml_quant/{fixture_name}.json")));
        let want = want["tensors"].as_array().unwrap();
        let f = GgufFile::open(file).unwrap();
        assert_eq!(f.tensors().len(), want.len(), "{fixture_name}: tensor count");
        for w in want {
            let name = w["name"].as_str().unwrap();
            let t = f.tensor_info(name).unwrap_or_else(|| panic!("{fixture_name}: {name} missing"));
            assert_eq!(t.dtype.to_string(), w["type"].as_str().unwrap(), "{fixture_name}: {name}");
            let shape: Vec<usize> =
                w["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            assert_eq!(t.shape(), shape, "{fixture_name}: {name}");
            assert_eq!(sha256(f.tensor_bytes(name).unwrap()), w["sha256"].as_str().unwrap(), "{fixture_name}: {name}");
        }
    };
    let f32 = convert(&model, "f32");
    check(&f32, "f32");
    for (dtype, fx) in [
        ("q8_0", "pure_Q8_0"),
        ("q4_0", "pure_Q4_0"),
        ("q4_k", "pure_Q4_K"),
        ("q5_k", "pure_Q5_K"),
        ("q6_k", "pure_Q6_K"),
        ("q4_k_m", "Q4_K_M"),
        ("q5_k_m", "Q5_K_M"),
    ] {
        let out = convert(&f32, dtype);
        check(&out, fx);
        std::fs::remove_file(out).unwrap();
    }
}
