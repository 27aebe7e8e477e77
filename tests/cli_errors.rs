//! Bad input gives a clear message naming the file (and line, key or tensor) and a non-zero exit — never a panic.
mod common;

use common::*;
use std::path::Path;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn eval_args<'a>(model: &'a str, data: &'a str) -> Vec<&'a str> {
    vec!["eval", "--model", model, "--data", data, "--json"]
}

#[test]
fn missing_model_path() {
    let data = fixture("tiny/gemma1/eval.jsonl");
    let err = lapidary_fails(&eval_args("/nonexistent/model", data.to_str().unwrap()));
    assert!(err.contains("/nonexistent/model"), "{err}");
}

#[test]
fn model_dir_without_config_or_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture("tiny/gemma1/eval.jsonl");
    let dir = tmp.path().join("m");
    std::fs::create_dir_all(&dir).unwrap();
    let err = lapidary_fails(&eval_args(dir.to_str().unwrap(), data.to_str().unwrap()));
    assert!(err.contains("config.json"), "{err}");
    copy_dir(&fixture("tiny/gemma1"), &dir);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err = lapidary_fails(&eval_args(dir.to_str().unwrap(), data.to_str().unwrap()));
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn unknown_model_type() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&fixture("tiny/gemma1"), &dir);
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap().replace("\"gemma\"", "\"llama\"");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let data = fixture("tiny/gemma1/eval.jsonl");
    let err = lapidary_fails(&eval_args(dir.to_str().unwrap(), data.to_str().unwrap()));
    assert!(err.contains("model_type") && err.contains("llama") && err.contains("config.json"), "{err}");
}

/// A Gemma 4 config with a setting we do not implement (a future key, an unknown per-layer override, an
/// incomplete MoE) is an error naming the key and the file, not a silently different model; the same key set
/// to null / false is accepted.
#[test]
fn gemma4_settings_we_do_not_implement() {
    let data = fixture("tiny/gemma4/eval.jsonl");
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        copy_dir(&fixture("tiny/gemma4"), &dir);
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        f(&mut cfg);
        std::fs::write(dir.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
        (tmp, dir)
    };
    for (what, change, key) in [
        (
            "a future setting",
            &(|c: &mut serde_json::Value| c["use_future_routing"] = true.into()) as &dyn Fn(&mut _),
            "use_future_routing",
        ),
        (
            "an unknown per-layer override",
            &|c: &mut serde_json::Value| c["per_layer_config"]["2"]["window"] = 8.into(),
            "per_layer_config.2.window",
        ),
        ("MoE without its sizes", &|c: &mut serde_json::Value| c["enable_moe_block"] = true.into(), "num_experts"),
        (
            "bidirectional text",
            &|c: &mut serde_json::Value| c["use_bidirectional_attention"] = "all".into(),
            "use_bidirectional_attention",
        ),
    ] {
        let (_tmp, dir) = edit(change);
        let err = lapidary_fails(&eval_args(dir.to_str().unwrap(), data.to_str().unwrap()));
        assert!(err.contains(key) && err.contains("config.json"), "{what}: {err}");
    }
    let (_tmp, dir) = edit(&|c| c["use_future_routing"] = serde_json::Value::Null);
    let ok = lapidary(&eval_args(dir.to_str().unwrap(), data.to_str().unwrap()));
    assert!(ok.status.success(), "a null unknown key: {}", String::from_utf8_lossy(&ok.stderr));
}

#[test]
fn truncated_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&fixture("tiny/gemma1"), &dir);
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let data = fixture("tiny/gemma1/eval.jsonl");
    let err = lapidary_fails(&eval_args(dir.to_str().unwrap(), data.to_str().unwrap()));
    assert!(err.contains("model.safetensors") && err.contains("truncated"), "{err}");
}

#[test]
fn tensor_of_wrong_shape() {
    // gemma2's weights under gemma3's config: the first projection found has the wrong shape.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&fixture("tiny/gemma1"), &dir);
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 160", "\"intermediate_size\": 96");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let data = fixture("tiny/gemma1/eval.jsonl");
    let err = lapidary_fails(&eval_args(dir.to_str().unwrap(), data.to_str().unwrap()));
    assert!(err.contains("gate_proj") && err.contains("[96, 64]") && err.contains("[160, 64]"), "{err}");
}

#[test]
fn adapter_for_other_shapes() {
    let model = fixture("tiny/gemma3");
    let adapter = fixture("tiny/gemma1/adapter");
    let data = fixture("tiny/gemma3/eval.jsonl");
    let mut args = eval_args(model.to_str().unwrap(), data.to_str().unwrap());
    args.extend(["--adapter", adapter.to_str().unwrap()]);
    let err = lapidary_fails(&args);
    assert!(err.contains("adapter_model.safetensors") && err.contains("lora_"), "{err}");
}

#[test]
fn bad_jsonl_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny/gemma1");
    for (content, want) in [
        ("{\"text\": \"fine\"}\n{\"prompt\": \"no text here\"}\n", ":2: the row has neither `text`"),
        ("{\"text\": \"fine\"}\n{not json\n", ":2: not valid JSON"),
        ("{\"input_ids\": [2, -5]}\n", ":1: `input_ids` must be"),
        ("", "no rows"),
    ] {
        let data = tmp.path().join("d.jsonl");
        std::fs::write(&data, content).unwrap();
        let err = lapidary_fails(&eval_args(model.to_str().unwrap(), data.to_str().unwrap()));
        assert!(err.contains("d.jsonl") && err.contains(want), "{content:?}: {err}");
    }
    let err = lapidary_fails(&eval_args(model.to_str().unwrap(), "/nonexistent/data.jsonl"));
    assert!(err.contains("/nonexistent/data.jsonl"), "{err}");
}

/// `--quant gguf` keeps a GGUF file's blocks; a safetensors directory has none: a clear error naming the
/// model and the tensor, with the option that works.
#[test]
fn quant_gguf_on_a_safetensors_model() {
    let (dir, data) = (fixture("tiny/gemma3"), fixture("tiny/gemma3/eval.jsonl"));
    let mut args = eval_args(dir.to_str().unwrap(), data.to_str().unwrap());
    args.extend(["--quant", "gguf"]);
    let err = lapidary_fails(&args);
    assert!(
        err.contains("tiny/gemma3") && err.contains("embed_tokens") && err.contains("--quant gguf needs a .gguf"),
        "{err}"
    );
    assert!(err.contains("--quant nf4"), "{err}");
}

/// A tensor in a type lapidary cannot multiply or dequantize (IQ4_NL here; the IQ and TQ families) is an error
/// naming the file, the tensor and its type, with the types that are readable: for `--quant gguf` (the
/// default for a .gguf) and for `--quant nf4` (which has to read the values first, so it is no way around).
#[test]
fn gguf_tensor_of_a_type_we_cannot_read() {
    use lapidary_model::io::gguf::{GgufFile, GgufWriter};
    use lapidary_model::quant::ggml::GgmlType;
    let src = GgufFile::open(fixture("gguf/tiny_gemma3.gguf.bin")).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        w.set(k, v.clone());
    }
    let mut replaced = None;
    for t in src.tensors() {
        let shape = t.shape();
        if replaced.is_none() && t.name.ends_with("attn_q.weight") {
            // IQ4_NL: blocks of 32 values in 18 bytes (an f16 scale, 16 bytes of 4-bit codes).
            let bytes = vec![0x11; t.numel() / 32 * 18];
            w.add_tensor(&t.name, GgmlType::IQ4_NL, &shape, bytes);
            replaced = Some(t.name.clone());
        } else {
            w.add_tensor(&t.name, t.dtype, &shape, src.tensor_bytes(&t.name).unwrap().to_vec());
        }
    }
    let name = replaced.expect("the fixture has an attn_q");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("iq.gguf");
    w.write(&path).unwrap();
    let data = fixture("tiny/gemma3/eval.jsonl");
    for quant in [None, Some("gguf"), Some("nf4")] {
        let mut args = eval_args(path.to_str().unwrap(), data.to_str().unwrap());
        if let Some(q) = quant {
            args.extend(["--quant", q]);
        }
        let err = lapidary_fails(&args);
        assert!(err.contains("iq.gguf") && err.contains(&name) && err.contains("IQ4_NL"), "{quant:?}: {err}");
        assert!(err.contains("Q4_K") && err.contains("Q8_0"), "the readable types are listed: {err}");
    }
}
