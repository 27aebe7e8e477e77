//! Pre-quantized bitsandbytes checkpoints (`tests/fixtures/bnb/`, written by transformers' `save_pretrained` from
//! `load_in_4bit` / `load_in_8bit` models; `scripts/make_bnb_fixtures.py`): the state we load is the file's,
//! byte for byte; the eval loss is the reference's (every quantized weight dequantized from the file in plain
//! torch, f32); `inspect` and a short QLoRA run work on them; what we cannot read is refused naming the file and
//! the key or tensor.
mod common;

use std::path::{Path, PathBuf};

use common::*;
use lapidary_model::quant::{Nf4Weight, PackedWeight};
use lapidary_model::ModelFiles;

fn dir(name: &str) -> PathBuf {
    fixture(&format!("bnb/{name}"))
}

fn strs(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn nf4_state_is_the_files_bytes() {
    for name in ["gemma3_nf4", "gemma3_nf4_single", "gemma4_moe_nf4"] {
        let d = dir(name);
        let st = d.join("model.safetensors");
        let reference = read_json(&d.join("reference.json"));
        let files = ModelFiles::open(&d).unwrap();
        let quantized = strs(&reference["quantized"]);
        assert!(!quantized.is_empty(), "{name}");
        for w in &quantized {
            let Some(PackedWeight::Nf4(q)) = files.weights.packed(w).unwrap() else { panic!("{name}: {w} not NF4") };
            // Same bytes as the file holds (the bf16 quant_storage of the single-level fixture relabels them only).
            assert_eq!(q.packed, read_bytes(&st, w), "{name}: {w} packed codes");
            let (_, absmax) = read_tensor(&st, &format!("{w}.absmax"));
            match reference["nested_offsets"].get(w) {
                Some(off) => {
                    assert_eq!(q.absmax_q, read_bytes(&st, &format!("{w}.absmax")), "{name}: {w} quantized absmax");
                    let (_, a2) = read_tensor(&st, &format!("{w}.nested_absmax"));
                    assert_eq!(bits(&q.absmax2), bits(&f32s(&a2)), "{name}: {w} nested absmax");
                    assert_eq!(q.offset, off.as_f64().unwrap() as f32, "{name}: {w} offset");
                }
                None => assert_eq!(bits(&q.absmax()), bits(&f32s(&absmax)), "{name}: {w} f32 absmax"),
            }
            // The model's shape, not the packed [n/2, 1].
            assert_eq!(files.weights.shape(w).unwrap(), q.shape.to_vec());
        }
        for w in strs(&reference["dense_linears"]) {
            assert!(files.weights.packed(&w).unwrap().is_none(), "{name}: {w} is stored in 16-bit");
        }
        // Dequantized values: bit for bit what plain torch computes from the file.
        let state = d.join("reference_state.safetensors");
        for w in strs(&reference["probe"]) {
            let (_, want) = read_tensor(&state, &format!("{w}.dequantized"));
            let got = files.weights.get(&w).unwrap();
            assert_eq!(bits(&got.data), bits(&f32s(&want)), "{name}: {w} dequantized");
        }
        // No quant-state tensor is a parameter.
        let names = files.weights.names();
        assert!(names.iter().all(|n| !n.contains(".quant_state.") && !n.ends_with("absmax")), "{name}: {names:?}");
    }
}

/// What bitsandbytes stored is what our quantizer makes of the same bf16 weights: loading as stored and
/// quantizing here agree.
#[test]
fn nf4_state_equals_quantizing_the_source_here() {
    let files = ModelFiles::open(&dir("gemma3_nf4")).unwrap();
    let src = fixture("tiny/gemma3/model.safetensors");
    for w in ["model.layers.0.self_attn.q_proj.weight", "model.layers.3.mlp.up_proj.weight"] {
        let (s, v) = read_tensor(&src, w);
        let bf16: Vec<f32> = v.iter().map(|&x| half::bf16::from_f64(x).to_f32()).collect();
        let ours = Nf4Weight::quantize(&bf16, [s[0], s[1]]);
        let Some(PackedWeight::Nf4(stored)) = files.weights.packed(w).unwrap() else { panic!("{w}") };
        assert_eq!(ours, stored, "{w}");
    }
}

#[test]
fn int8_state_is_the_files_bytes() {
    let d = dir("gemma3_int8");
    let st = d.join("model.safetensors");
    let reference = read_json(&d.join("reference.json"));
    let files = ModelFiles::open(&d).unwrap();
    for w in strs(&reference["quantized"]) {
        let Some(PackedWeight::Int8(q)) = files.weights.packed(&w).unwrap() else { panic!("{w} not int8") };
        assert_eq!(q.cb.iter().map(|&b| b as u8).collect::<Vec<_>>(), read_bytes(&st, &w), "{w} CB");
        let (_, scb) = read_tensor(&st, &w.replace(".weight", ".SCB"));
        assert_eq!(bits(&q.scb), bits(&f32s(&scb)), "{w} SCB");
    }
    let state = d.join("reference_state.safetensors");
    for w in strs(&reference["probe"]) {
        let (_, want) = read_tensor(&state, &format!("{w}.dequantized"));
        assert_eq!(bits(&files.weights.get(&w).unwrap().data), bits(&f32s(&want)), "{w} dequantized");
    }
}

fn eval(d: &Path, extra: &[&str]) -> serde_json::Value {
    let data = d.join("eval.jsonl");
    let mut args = vec!["eval", "--model", d.to_str().unwrap(), "--data", data.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    lapidary_json(&args)
}

#[test]
fn eval_loss_equals_the_dequantized_reference() {
    for name in ["gemma3_nf4", "gemma3_nf4_single", "gemma3_int8", "gemma4_moe_nf4"] {
        let d = dir(name);
        let reference = read_json(&d.join("reference.json"));
        let want = reference["eval_loss_dequantized_f32"].as_f64().unwrap();
        // Default: the kind the checkpoint stores, as stored; `none`: dequantized to f32 at load.
        for extra in [&[][..], &["--quant", "none"][..]] {
            let got = eval(&d, extra);
            let loss = got["loss"].as_f64().unwrap();
            assert!((loss - want).abs() < 1e-4, "{name} {extra:?}: loss {loss} vs reference {want}");
            assert_eq!(got["tokens"], reference["eval_tokens"]);
        }
        if let Some(t) = reference["eval_loss_transformers_int8"].as_f64() {
            // transformers' LLM.int8 also rounds activations to int8 (README: known differences).
            let loss = eval(&d, &[])["loss"].as_f64().unwrap();
            assert!(rel(loss, t) < 2e-3, "{name}: loss {loss} vs transformers' int8 {t}");
        }
    }
}

#[test]
fn inspect_counts_the_stored_bytes() {
    let d = dir("gemma3_nf4");
    let st = d.join("model.safetensors");
    let reference = read_json(&d.join("reference.json"));
    let got = lapidary_json(&["inspect", "--model", d.to_str().unwrap(), "--json"]);
    assert_eq!(got["quant"], "nf4");
    // Packed codes, quantized absmax, nested absmax and the offset of each stored weight; the 16-bit linears
    // the checkpoint keeps (llm_int8_skip_modules) dense in f32.
    let mut want = 0usize;
    let mut params = 0usize;
    for w in strs(&reference["quantized"]) {
        let (_, a2) = read_tensor(&st, &format!("{w}.nested_absmax"));
        want += read_bytes(&st, &w).len() + read_bytes(&st, &format!("{w}.absmax")).len() + 4 * a2.len() + 4;
        let bytes = read_bytes(&st, &format!("{w}.quant_state.bitsandbytes__nf4"));
        let qs: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        params += qs["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).product::<usize>();
    }
    for w in strs(&reference["dense_linears"]) {
        let (s, _) = read_tensor(&st, &w);
        want += 4 * s[0] * s[1];
        params += s[0] * s[1];
    }
    assert_eq!(got["resident_bytes"]["linear"].as_u64().unwrap() as usize, want);
    assert_eq!(got["parameters"]["linear"].as_u64().unwrap() as usize, params);
}

#[test]
fn qlora_trains_on_a_bnb_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let d = dir("gemma3_nf4");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_lapidary"))
        .current_dir(repo_root())
        .args(["train", "configs/tiny-test.toml"])
        .args(["--set", &format!("model.path={:?}", d.display().to_string())])
        .args(["--set", &format!("output.dir={:?}", out.display().to_string())])
        .args(["--set", "train.max_steps=4", "--set", "train.eval_every=4", "--set", "train.save_every=4"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let logged: Vec<f64> = rows.iter().filter_map(|r| r.get("eval_loss")?.as_f64()).collect();
    assert!(logged[logged.len() - 1] < logged[0], "eval loss {logged:?}");
    // The recipe's eval rows (input_ids, BOS … EOS) scored by `lapidary eval` on the base as stored (step 0),
    // and with the trained adapter (the last step).
    let data = repo_root().join("tests/fixtures/train/eval.jsonl");
    let score = |extra: &[&str]| {
        let mut args = vec!["eval", "--model", d.to_str().unwrap(), "--data", data.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        lapidary_json(&args)["loss"].as_f64().unwrap()
    };
    let base = score(&[]);
    assert!((base - logged[0]).abs() < 1e-4, "base {base} vs step 0 {logged:?}");
    let adapter = out.join("adapter");
    let tuned = score(&["--adapter", adapter.to_str().unwrap()]);
    assert!((tuned - logged[logged.len() - 1]).abs() < 1e-4, "adapter {tuned} vs {logged:?}");
    // Merged into the stored weights, dequantized (with either --base: they are what QLoRA trained against,
    // nothing is rounded to NF4 again): a dense f32 directory (no quantization_config) scoring the same.
    for base in ["original", "dequantized"] {
        let merged = tmp.path().join(format!("merged-{base}"));
        let m = merged.to_str().unwrap();
        let a = adapter.to_str().unwrap();
        let args =
            ["merge", "--model", d.to_str().unwrap(), "--adapter", a, "--out", m, "--dtype", "f32", "--base", base];
        lapidary_json(&[&args[..], &["--json"]].concat());
        assert!(read_json(&merged.join("config.json")).get("quantization_config").is_none());
        let args = ["eval", "--model", m, "--data", data.to_str().unwrap(), "--json"];
        let loss = lapidary_json(&args)["loss"].as_f64().unwrap();
        assert!((loss - tuned).abs() < 1e-4, "merged onto {base}: {loss} vs adapter {tuned}");
    }
}

/// A copy of the nf4 fixture in a temporary directory, with `edit` applied to its tensors (name, dtype, shape,
/// bytes) and `config` to its config.json.
fn broken_copy(
    edit: impl Fn(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
    config: impl Fn(&mut serde_json::Value),
) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let src = dir("gemma3_nf4");
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "eval.jsonl"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let mut cfg = read_json(&src.join("config.json"));
    config(&mut cfg);
    std::fs::write(tmp.path().join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n.to_string(), t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(tmp.path().join("model.safetensors"), safetensors::tensor::serialize(views, None).unwrap()).unwrap();
    tmp
}

fn eval_fails(d: &Path, extra: &[&str]) -> String {
    let data = d.join("eval.jsonl");
    let mut args = vec!["eval", "--model", d.to_str().unwrap(), "--data", data.to_str().unwrap()];
    args.extend_from_slice(extra);
    lapidary_fails(&args)
}

const Q: &str = "model.layers.2.self_attn.k_proj.weight";

#[test]
fn unreadable_checkpoints_are_refused_naming_file_and_key() {
    // fp4, as transformers saves it.
    let err = eval_fails(&dir("gemma3_fp4"), &[]);
    assert!(err.contains("config.json") && err.contains("bnb_4bit_quant_type") && err.contains("fp4"), "{err}");

    // A quantized weight without its absmax.
    let t = broken_copy(|ts| ts.retain(|x| x.0 != format!("{Q}.absmax")), |_| {});
    let err = eval_fails(t.path(), &[]);
    assert!(err.contains("model.safetensors") && err.contains(&format!("{Q}.absmax")), "{err}");

    // A double quantization with other block sizes.
    let t = broken_copy(
        |ts| {
            let qs = ts.iter_mut().find(|x| x.0 == format!("{Q}.quant_state.bitsandbytes__nf4")).unwrap();
            let text = String::from_utf8(qs.3.clone())
                .unwrap()
                .replace("\"nested_blocksize\": 256", "\"nested_blocksize\": 128");
            qs.3 = text.into_bytes();
            qs.2 = vec![qs.3.len()];
        },
        |_| {},
    );
    let err = eval_fails(t.path(), &[]);
    assert!(err.contains("model.safetensors") && err.contains(Q) && err.contains("nested_blocksize 128"), "{err}");

    // A tensor quantized as fp4 in an nf4 checkpoint.
    let t = broken_copy(
        |ts| {
            let qs = ts.iter_mut().find(|x| x.0 == format!("{Q}.quant_state.bitsandbytes__nf4")).unwrap();
            qs.0 = format!("{Q}.quant_state.bitsandbytes__fp4");
        },
        |_| {},
    );
    let err = eval_fails(t.path(), &[]);
    assert!(err.contains("model.safetensors") && err.contains(Q) && err.contains("fp4"), "{err}");

    // Storage types and methods we do not read.
    for (key, value, expect) in [
        ("bnb_4bit_quant_storage", serde_json::json!("int8"), "bnb_4bit_quant_storage"),
        ("quant_method", serde_json::json!("gptq"), "gptq"),
    ] {
        let t = broken_copy(|_| {}, |c| c["quantization_config"][key] = value.clone());
        let err = eval_fails(t.path(), &[]);
        assert!(err.contains("config.json") && err.contains(expect), "{key}: {err}");
    }

    // Another kind than the checkpoint's would quantize a second time.
    let err = eval_fails(&dir("gemma3_nf4"), &["--quant", "int8"]);
    assert!(err.contains("config.json") && err.contains("quant nf4") && err.contains("none"), "{err}");
    let err = eval_fails(&dir("gemma3_int8"), &["--quant", "nf4"]);
    assert!(err.contains("config.json") && err.contains("quant int8"), "{err}");
}
