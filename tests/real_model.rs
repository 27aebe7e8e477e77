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

#[test]
fn greedy_generation_matches_transformers() {
    let Some(model) = real_model() else { return };
    for case in reference()["greedy"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let want_new = case["new_ids"].as_array().unwrap();
        let n = want_new.len().to_string();
        let got = lapidary_json(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            prompt,
            "--max-new-tokens",
            &n,
            "--json",
        ]);
        let want: Vec<serde_json::Value> =
            case["prompt_ids"].as_array().unwrap().iter().chain(want_new.iter()).cloned().collect();
        assert_eq!(got["ids"].as_array().unwrap(), &want, "prompt {prompt:?}");
        assert_eq!(got["text"].as_str().unwrap(), case["new_text"].as_str().unwrap());
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
