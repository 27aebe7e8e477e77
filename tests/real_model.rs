//! The real Gemma 3 270M (Q4_K_M GGUF) against transformers loading the same file
//! (`tests/fixtures/gemma3_270m/reference.json`, made by `scripts/make_gguf_fixtures.py`).
//! Skipped, visibly, when `scripts/fetch_model.sh` has not fetched the model.
mod common;

use common::*;

fn reference() -> serde_json::Value {
    read_json(&fixture("gemma3_270m/reference.json"))
}

#[test]
fn eval_loss_within_half_a_percent_of_transformers() {
    let Some(model) = real_model() else { return };
    let data = fixture("gemma3_270m/eval.jsonl");
    let got = lapidary_json(&["eval", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--json"]);
    let r = reference();
    let want = r["eval"]["mean_nll"].as_f64().unwrap();
    let loss = got["loss"].as_f64().unwrap();
    assert_eq!(got["tokens"], r["eval"]["n_predicted"]);
    assert!(rel(loss, want) < 5e-3, "loss {loss} vs transformers {want}");
}

/// Greedy tokens equal transformers' with the default for a GGUF model (its own blocks, multiplied as stored
/// by `cpu::qdot`'s kernels) and with `--quant none` (the blocks dequantized to f32 at load).
#[test]
fn greedy_generation_matches_transformers() {
    let Some(model) = real_model() else { return };
    for quant in [None, Some("none")] {
        for case in reference()["greedy"].as_array().unwrap() {
            let prompt = case["prompt"].as_str().unwrap();
            let want_new = case["new_ids"].as_array().unwrap();
            let n = want_new.len().to_string();
            let mut args = vec![
                "generate",
                "--model",
                model.to_str().unwrap(),
                "--prompt",
                prompt,
                "--max-new-tokens",
                &n,
                "--json",
            ];
            if let Some(q) = quant {
                args.extend(["--quant", q]);
            }
            let got = lapidary_json(&args);
            let want: Vec<serde_json::Value> =
                case["prompt_ids"].as_array().unwrap().iter().chain(want_new.iter()).cloned().collect();
            assert_eq!(got["ids"].as_array().unwrap(), &want, "--quant {quant:?}, prompt {prompt:?}");
            assert_eq!(got["text"].as_str().unwrap(), case["new_text"].as_str().unwrap());
        }
    }
}

#[test]
fn cli_tokenize_matches_transformers() {
    let Some(model) = real_model() else { return };
    // The library test in model/src covers every tricky string; this checks the CLI contract on a few.
    for case in reference()["tokenizer"].as_array().unwrap().iter().take(6) {
        let text = case["text"].as_str().unwrap();
        let got = lapidary_json(&["tokenize", "--model", model.to_str().unwrap(), "--text", text, "--json"]);
        assert_eq!(got["ids"], case["ids"], "{text:?}");
    }
}

/// `--quant gguf` keeps the file's own blocks (Q5_0, Q4_K, Q6_K, Q8_0 ... as the file mixes them) and
/// multiplies by them as stored: the same values `--quant none` holds in f32, so the loss agrees to summation
/// order (greedy tokens: `greedy_generation_matches_transformers`).
#[test]
fn gguf_blocks_give_the_dequantized_models_loss_and_tokens() {
    let Some(model) = real_model() else { return };
    let (m, data) = (model.to_str().unwrap(), fixture("gemma3_270m/eval.jsonl"));
    let eval = |quant: &str| {
        lapidary_json(&["eval", "--model", m, "--data", data.to_str().unwrap(), "--quant", quant, "--json"])["loss"]
            .as_f64()
            .unwrap()
    };
    let (blocks, dense) = (eval("gguf"), eval("none"));
    assert!(rel(blocks, dense) < 1e-5, "--quant gguf loss {blocks} vs --quant none {dense}");
}

/// With `--quant gguf` the projections take exactly the bytes their tensors take in the file (the tensor
/// table llama.cpp wrote), not f32 copies.
#[test]
fn gguf_blocks_are_resident_as_the_files_bytes() {
    let Some(model) = real_model() else { return };
    let file = lapidary_model::io::gguf::GgufFile::open(&model).unwrap();
    let projections = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];
    let file_bytes: usize = file
        .tensors()
        .iter()
        .filter(|t| t.name.starts_with("blk.") && projections.iter().any(|p| t.name.ends_with(&format!(".{p}.weight"))))
        .map(|t| file.tensor_bytes(&t.name).unwrap().len())
        .sum();
    let got = lapidary_json(&["inspect", "--model", model.to_str().unwrap(), "--quant", "gguf", "--json"]);
    assert_eq!(got["resident_bytes"]["linear"].as_u64().unwrap() as usize, file_bytes);
    let dense = got["parameters"]["linear"].as_u64().unwrap() as usize * 4;
    assert!(file_bytes * 5 < dense, "{file_bytes} bytes of blocks for {dense} bytes of f32: not quantized?");
    // The token table (Q8_0 in this file) too; the whole model within 10% of the file's tensor data (the
    // norms, f32 in the file as here, are the rest).
    let embed = file.tensor_bytes("token_embd.weight").unwrap().len();
    assert_eq!(got["resident_bytes"]["embedding"].as_u64().unwrap() as usize, embed);
    let all: usize = file.tensors().iter().map(|t| file.tensor_bytes(&t.name).unwrap().len()).sum();
    let total = got["resident_bytes"]["total"].as_u64().unwrap() as usize;
    assert!(total.abs_diff(all) * 10 <= all, "resident {total} bytes for {all} bytes of tensors in the file");
}
