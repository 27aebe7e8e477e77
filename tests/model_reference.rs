//! The model against transformers, bitsandbytes and PEFT, on the tiny random checkpoints of
//! `tests/fixtures/tiny/` (made by `scripts/make_fixtures.py`; see tests/fixtures/README.md).
mod common;

use common::*;
use lapidary_model::backends::Cpu;
use lapidary_model::gemma::load::load_gemma;
use lapidary_model::nn::lora::LoraRuntime;
use lapidary_model::quant::{Int8Weight, Nf4Weight, QuantKind};
use lapidary_model::{GemmaConfig, ModelFiles, TokenBatch};

const GENS: [&str; 5] = ["gemma1", "gemma2", "gemma3", "gemma4", "gemma4_moe"];

fn model_dir(gen: &str) -> std::path::PathBuf {
    fixture(&format!("tiny/{gen}"))
}

fn load(gen: &str, quant: QuantKind) -> (ModelFiles, lapidary_model::Gemma<Cpu>) {
    let files = ModelFiles::open(&model_dir(gen)).expect("open fixture model");
    let model = load_gemma::<Cpu>(&files.config, files.weights.as_ref(), quant, &Default::default()).expect("load");
    (files, model)
}

fn reference_rows(gen: &str) -> Vec<Vec<u32>> {
    let (shape, ids) = read_tensor(&model_dir(gen).join("reference.safetensors"), "input_ids");
    ids.chunks(shape[1]).map(|r| r.iter().map(|&x| x as u32).collect()).collect()
}

/// (error relative to the logits' scale, elementwise error, the elementwise bound).
fn logits_vs_transformers<B: lapidary_model::GemmaBackend>(gen: &str) -> (f64, f64, f64) {
    let files = ModelFiles::open(&model_dir(gen)).expect("open fixture model");
    let model = load_gemma::<B>(&files.config, files.weights.as_ref(), QuantKind::None, &Default::default()).unwrap();
    let rows = reference_rows(gen);
    let logits = model.forward(&TokenBatch::from_rows(&rows), &LoraRuntime::default());
    let ours: Vec<f64> =
        logits.into_data().convert::<f32>().to_vec::<f32>().unwrap().iter().map(|&x| x as f64).collect();
    let reference = model_dir(gen).join("reference.safetensors");
    let (shape, theirs) = read_tensor(&reference, "logits");
    assert_eq!(shape, vec![rows.len(), rows[0].len(), model.config.vocab_size]);
    let scale = theirs.iter().fold(0f64, |m, x| m.max(x.abs()));
    let abs = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    let bytes = std::fs::read(&reference).unwrap();
    let names = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>();
    if names.iter().any(|n| n == "logits_f64") {
        // Elementwise against the same model in f64 (scripts/make_gemma4_fixtures.py): there f32 rounding alone
        // moves transformers' own logits by ~2e-4 of a small logit, so ours may differ by a few times that.
        let (_, exact) = read_tensor(&reference, "logits_f64");
        let noise = max_rel_err(&theirs, &exact, 0.1 * scale);
        let err = max_rel_err(&ours, &exact, 0.1 * scale);
        eprintln!("{gen}: elementwise from f64: ours {err:e}, transformers' f32 {noise:e}");
        return (abs / scale, err, 1e-4f64.max(8.0 * noise));
    }
    (abs / scale, max_rel_err(&ours, &theirs, 0.1 * scale), 1e-4)
}

/// Relative to the logits' scale (max |logit|) within 1e-4, and elementwise with a floor of 10% of that scale
/// (within 1e-4, or a few times f32's own noise where the fixture records it).
#[test]
fn logits_match_transformers() {
    for gen in GENS {
        for (backend, (scaled, elementwise, bound)) in [
            ("ndarray", logits_vs_transformers::<lapidary_model::backends::NdArrayCpu>(gen)),
            ("flex", logits_vs_transformers::<lapidary_model::backends::FlexCpu>(gen)),
        ] {
            eprintln!("{gen}/{backend}: max error {scaled:e} of the logit scale, {elementwise:e} elementwise");
            assert!(
                scaled < 1e-4 && elementwise < bound,
                "{gen}/{backend}: logits differ from transformers by {scaled:e} of scale, {elementwise:e} elementwise"
            );
        }
    }
}

fn eval_loss(gen: &str, extra: &[&str]) -> serde_json::Value {
    let dir = model_dir(gen);
    let data = dir.join("eval.jsonl");
    let mut args = vec!["eval", "--model", dir.to_str().unwrap(), "--data", data.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    lapidary_json(&args)
}

#[test]
fn eval_loss_matches_transformers() {
    for gen in GENS {
        let reference = read_json(&model_dir(gen).join("reference.json"));
        let got = eval_loss(gen, &[]);
        let want = reference["eval_loss"].as_f64().unwrap();
        let loss = got["loss"].as_f64().unwrap();
        assert!(rel(loss, want) < 1e-4, "{gen}: loss {loss} vs transformers {want}");
        assert_eq!(got["tokens"], reference["eval_tokens"], "{gen}: predicted-token count");
        assert_eq!(got["examples"], reference["eval_examples"]);
        assert!((got["perplexity"].as_f64().unwrap() - loss.exp()).abs() < 1e-9);
    }
}

#[test]
fn tokenizer_matches_transformers() {
    for gen in GENS {
        let dir = model_dir(gen);
        let reference = read_json(&dir.join("reference.json"));
        let texts: Vec<String> = std::fs::read_to_string(dir.join("eval.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get("text")?.as_str().map(String::from))
            .collect();
        let want = reference["text_ids"].as_array().unwrap();
        assert_eq!(texts.len(), want.len());
        for (t, w) in texts.iter().zip(want) {
            let got = lapidary_json(&["tokenize", "--model", dir.to_str().unwrap(), "--text", t, "--json"]);
            assert_eq!(&got["ids"], w, "{gen}: ids of {t:?}");
        }
    }
}

#[test]
fn both_config_dialects_describe_the_same_model() {
    for gen in ["gemma2", "gemma3"] {
        let dir = model_dir(gen);
        let mut v5 = GemmaConfig::from_file(&dir.join("config.json")).unwrap();
        let mut v4 = GemmaConfig::from_file(&dir.join("config_v4.json")).unwrap();
        v5.raw = serde_json::Value::Null;
        v4.raw = serde_json::Value::Null;
        assert_eq!(v5, v4, "{gen}: 4.x and 5.x configs disagree");
    }
    // Hand-derived expectations for the Gemma 3 fixture: 5 sliding layers then a global one, local base 1e4,
    // global base 1e6 with linear factor 8.
    let c = GemmaConfig::from_file(&model_dir("gemma3").join("config_v4.json")).unwrap();
    use lapidary_model::LayerType::*;
    assert_eq!(c.layer_types, vec![Sliding, Sliding, Sliding, Sliding, Sliding, Full]);
    assert_eq!((c.rope_local.theta, c.rope_local.linear_factor), (10_000.0, 1.0));
    assert_eq!((c.rope_global.theta, c.rope_global.linear_factor), (1_000_000.0, 8.0));
    let c2 = GemmaConfig::from_file(&model_dir("gemma2").join("config_v4.json")).unwrap();
    assert_eq!(c2.layer_types, vec![Sliding, Full, Sliding, Full]);
}

/// Asserts equality, reporting the first difference rather than both whole vectors.
fn assert_same<T: PartialEq + std::fmt::Debug>(ours: &[T], theirs: &[T], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    if let Some(i) = ours.iter().zip(theirs).position(|(a, b)| a != b) {
        let n = ours.iter().zip(theirs).filter(|(a, b)| a != b).count();
        panic!("{what}: {n} entries differ; first at {i}: ours {:?}, reference {:?}", ours[i], theirs[i]);
    }
}

const PROJS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

#[test]
fn nf4_quant_state_is_byte_identical_to_bitsandbytes() {
    let path = model_dir("gemma1").join("nf4_state.safetensors");
    let mut cases: Vec<(String, [usize; 2])> = PROJS.iter().map(|p| (format!("model.layers.0.{p}"), [0, 0])).collect();
    cases.push(("awkward".into(), [37, 91]));
    for (name, mut shape) in cases {
        let src_name = if name == "awkward" { "awkward.input".to_string() } else { format!("{name}.source_f32") };
        let (s, src) = read_tensor(&path, &src_name);
        if shape == [0, 0] {
            shape = [s[0], s[1]];
        }
        let src: Vec<f32> = src.iter().map(|&x| x as f32).collect();
        let w = Nf4Weight::quantize(&src, shape);
        assert_same(&w.packed, &read_bytes(&path, &format!("{name}.weight")), &format!("{name}: packed codes"));
        assert_same(
            &w.absmax_q,
            &read_bytes(&path, &format!("{name}.weight.absmax")),
            &format!("{name}: quantized absmax"),
        );
        let (_, a2) = read_tensor(&path, &format!("{name}.weight.nested_absmax"));
        assert_same(&w.absmax2.iter().map(|&x| x as f64).collect::<Vec<_>>(), &a2, &format!("{name}: nested absmax"));
        let (_, off) = read_tensor(&path, &format!("{name}.weight.nested_offset"));
        assert_eq!(w.offset as f64, off[0], "{name}: offset");
        let deq_name =
            if name == "awkward" { "awkward.dequantized".to_string() } else { format!("{name}.dequantized_f32") };
        let (_, deq) = read_tensor(&path, &deq_name);
        let ours: Vec<f64> = w.dequantize().iter().map(|&x| x as f64).collect();
        assert_same(&ours, &deq, &format!("{name}: dequantized values"));
    }
}

#[test]
fn int8_state_is_byte_identical_to_bitsandbytes() {
    let path = model_dir("gemma1").join("int8_state.safetensors");
    for p in PROJS {
        let name = format!("model.layers.0.{p}");
        let (s, src) = read_tensor(&path, &format!("{name}.source_f32"));
        let src: Vec<f32> = src.iter().map(|&x| x as f32).collect();
        let w = Int8Weight::quantize(&src, [s[0], s[1]]);
        let cb: Vec<u8> = w.cb.iter().map(|&x| x as u8).collect();
        assert_same(&cb, &read_bytes(&path, &format!("{name}.CB")), &format!("{name}: CB"));
        let (_, scb) = read_tensor(&path, &format!("{name}.SCB"));
        assert_same(&w.scb.iter().map(|&x| x as f64).collect::<Vec<_>>(), &scb, &format!("{name}: SCB"));
    }
}

#[test]
fn quantized_eval_matches_bitsandbytes() {
    for gen in GENS {
        let reference = read_json(&model_dir(gen).join("reference.json"));
        if let Some(want) = reference["eval_loss_nf4"].as_f64() {
            let loss = eval_loss(gen, &["--quant", "nf4"])["loss"].as_f64().unwrap();
            assert!(rel(loss, want) < 1e-4, "{gen}: nf4 loss {loss} vs transformers+bitsandbytes {want}");
        }
        if let Some(want) = reference["eval_loss_int8"].as_f64() {
            // Documented difference: bitsandbytes also rounds activations to int8 (see quant/int8.rs).
            let loss = eval_loss(gen, &["--quant", "int8"])["loss"].as_f64().unwrap();
            assert!(rel(loss, want) < 2e-3, "{gen}: int8 loss {loss} vs transformers+bitsandbytes {want}");
        }
    }
}

#[test]
fn peft_adapter_gives_peft_loss() {
    for gen in GENS {
        let dir = model_dir(gen);
        let reference = read_json(&dir.join("reference.json"));
        for (sub, key, quant) in [
            ("adapter", "eval_loss_adapter", "none"),
            ("adapter_rslora", "eval_loss_adapter_rslora", "none"),
            ("adapter", "eval_loss_nf4_adapter", "nf4"),
        ] {
            let Some(want) = reference[key].as_f64() else { continue };
            let adapter = dir.join(sub);
            let got = eval_loss(gen, &["--adapter", adapter.to_str().unwrap(), "--quant", quant]);
            let loss = got["loss"].as_f64().unwrap();
            assert!(rel(loss, want) < 1e-4, "{gen}/{sub} ({quant}): loss {loss} vs PEFT {want}");
        }
    }
}

#[test]
fn greedy_generation_matches_transformers_and_cache_matches_recompute() {
    for gen in GENS {
        let (_, model) = load(gen, QuantKind::None);
        let reference = read_json(&model_dir(gen).join("reference.json"));
        let ids = |v: &serde_json::Value| -> Vec<u32> {
            v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
        };
        let prompt = ids(&reference["greedy"]["prompt_ids"]);
        let want = ids(&reference["greedy"]["new_ids"]);
        let cfg = lapidary_model::gemma::generate::SamplingConfig { max_new_tokens: want.len(), ..Default::default() };
        let cached = model.generate(&prompt, &cfg);
        assert_eq!(cached, want, "{gen}: cached greedy tokens differ from transformers");
        assert_eq!(model.generate_uncached(&prompt, want.len()), cached, "{gen}: cache changes the result");

        // Prompts of one length generated together (one cache; rows stopping at different steps): each row
        // gets its own generation's tokens.
        let other: Vec<u32> = prompt[..1].iter().chain(prompt[1..].iter().rev()).copied().collect();
        let rows = vec![prompt.clone(), other.clone(), prompt.clone()];
        let batched = model.generate_batch(&rows, &cfg);
        assert_eq!((&batched[0], &batched[2]), (&want, &want), "{gen}: batched rows differ from transformers");
        assert_eq!(batched[1], model.generate(&other, &cfg), "{gen}: a batched row differs from its own generation");
        let stop = lapidary_model::gemma::generate::SamplingConfig { stop_ids: vec![want[1]], ..cfg.clone() };
        let batched = model.generate_batch(&rows, &stop);
        assert_eq!(batched[0], model.generate(&prompt, &stop), "{gen}: stop ids per row");
        assert_eq!(batched[1], model.generate(&other, &stop), "{gen}: stop ids per row");
    }
}

#[test]
fn fresh_lora_leaves_outputs_unchanged() {
    // PEFT's init: B = 0, so at step 0 base + adapter equals the base exactly.
    let (_, mut model) = load("gemma3", QuantKind::Nf4);
    let rows = reference_rows("gemma3");
    let batch = TokenBatch::from_rows(&rows);
    let before = model.forward(&batch, &LoraRuntime::default());
    let targets: Vec<String> = lapidary_model::nn::lora::TARGETS.iter().map(|s| s.to_string()).collect();
    let cfg = lapidary_model::peft::adapter::AdapterConfig::new(8, 16.0, 0.0, &targets, false, None);
    lapidary_model::peft::adapter::init_lora(&mut model, &cfg, 7).unwrap();
    let after = model.forward(&batch, &LoraRuntime::default());
    let diff: f32 = (before - after).abs().max().into_scalar();
    assert_eq!(diff, 0.0, "a fresh adapter changed the output");
    // And A is kaiming-uniform: within ±1/sqrt(in_features), not all zero.
    let a = model.layers[0].self_attn.q_proj.adapter.as_ref().unwrap().a.clone();
    let bound = 1.0 / (model.config.hidden_size as f32).sqrt();
    let amax: f32 = a.clone().abs().max().into_scalar();
    assert!(amax > 0.5 * bound && amax <= bound, "A max {amax} vs bound {bound}");
}
