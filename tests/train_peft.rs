//! An adapter written by `lapidary train` means the same to PEFT as to us: `PeftModel.from_pretrained` on the
//! transformers model (scripts/check_peft.py, result committed in tests/fixtures/train/peft_check*.json) gives
//! the loss `lapidary eval --adapter` gives (plain LoRA, LoRA on Gemma 4 experts, DoRA).
mod common;

use common::*;

/// `lapidary eval --adapter` on the check's model and data gives PEFT's loss, and the adapter matters.
fn assert_eval_equals_peft(check: &serde_json::Value, model: &str, adapter: &str) {
    let (model, adapter) = (fixture(model), fixture(adapter));
    let data = model.join("eval.jsonl");
    let got = lapidary_json(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(got["tokens"], check["eval_tokens"]);
    let loss = got["loss"].as_f64().unwrap();
    let want = check["eval_loss_peft"].as_f64().unwrap();
    assert!(rel(loss, want) < 1e-4, "lapidary eval {loss} vs PEFT {want}");
    // The base alone is far off.
    assert!((loss - check["eval_loss_base"].as_f64().unwrap()).abs() > 1e-3);
}

#[test]
fn peft_loads_our_adapter_with_the_same_loss() {
    let check = read_json(&fixture("train/peft_check.json"));
    assert_eq!(check["lora_parameters"], 6 * 7 * 2, "PEFT picked up every lapidary tensor");
    assert_eval_equals_peft(&check, "tiny/gemma3", "train/adapter");
}

/// The same for an adapter trained on the tiny Gemma 4 mixture-of-experts fixture with LoRA on its routed
/// experts (PEFT's `target_parameters`): PEFT finds every tensor (the expert ones under its nested
/// `ParamWrapper` names) and gives the loss `lapidary eval` gives.
#[test]
fn peft_loads_our_expert_lora_with_the_same_loss() {
    let check = read_json(&fixture("train/peft_check_gemma4_moe.json"));
    let adapter = fixture("train/adapter_gemma4_moe");
    let bytes = std::fs::read(adapter.join("adapter_model.safetensors")).unwrap();
    let names: Vec<String> =
        safetensors::SafeTensors::deserialize(&bytes).unwrap().names().into_iter().map(String::from).collect();
    assert_eq!(check["lora_parameters"], names.len(), "PEFT picked up every lapidary tensor");
    for key in ["experts.base_layer.lora_A", "experts.base_layer.lora_B", "experts.lora_A", "experts.lora_B"] {
        assert!(names.iter().any(|n| n.contains(&format!(".{key}."))), "no {key} tensor in {names:?}");
    }
    assert_eval_equals_peft(&check, "tiny/gemma4_moe", "train/adapter_gemma4_moe");
}

/// A DoRA adapter trained here (`lora.use_dora = true`): PEFT finds its `lora_magnitude_vector` tensors (1-D,
/// keyed without `.weight`) with the A/B pairs and gives the loss `lapidary eval` gives.
#[test]
fn peft_loads_our_dora_adapter_with_the_same_loss() {
    let check = read_json(&fixture("train/peft_check_dora.json"));
    assert_eq!(check["use_dora"], true);
    assert_eq!(check["lora_parameters"], 6 * 7 * 3, "PEFT picked up every lapidary tensor, magnitudes included");
    let st = fixture("train/adapter_dora/adapter_model.safetensors");
    let (shape, _) = read_tensor(&st, "base_model.model.model.layers.0.mlp.gate_proj.lora_magnitude_vector");
    assert_eq!(shape, vec![128]);
    assert_eval_equals_peft(&check, "tiny/gemma3", "train/adapter_dora");
}
