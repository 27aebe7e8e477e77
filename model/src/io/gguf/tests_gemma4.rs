//! Gemma 4 GGUFs as llama.cpp's converter writes them (`scripts/make_gguf_gemma4_fixtures.py`: the tiny Gemma 4
//! checkpoints of tests/fixtures/tiny converted by llama.cpp 0c1e570's `convert_hf_to_gguf.py`): names, the
//! rebuilt config, logits against transformers (and llama.cpp), the experts in the file's own blocks, the
//! tokenizer, and files that say too little.
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::file::{GgufFile, GgufValue};
use super::model::{gguf_to_hf_name, GemmaArch, GgufModel};
use super::writer::GgufWriter;
use super::GgmlType;
use crate::backends::Cpu;
use crate::config::GemmaConfig;
use crate::error::ModelError;
use crate::gemma::load::load_gemma;
use crate::gemma::model::TokenBatch;
use crate::io::safetensors::SafetensorsDir;
use crate::io::weights::WeightSource;
use crate::nn::lora::LoraRuntime;
use crate::quant::QuantKind;
use crate::testing::{read_safetensor as read, scaled_err};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}
fn gguf_path(stem: &str) -> PathBuf {
    fixtures().join(format!("gguf/{stem}.gguf.bin"))
}
fn open(stem: &str) -> GgufModel {
    GgufModel::open(gguf_path(stem)).unwrap()
}
fn checkpoint(model: &str) -> PathBuf {
    fixtures().join(format!("tiny/{model}"))
}
fn report() -> Value {
    let p = fixtures().join("gguf/tiny_gemma4.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// The file's config as lapidary reads it, with `raw` cleared so two configs compare by what they build.
fn config_of(m: &GgufModel) -> GemmaConfig {
    let mut c = GemmaConfig::from_json(&m.config_json().unwrap(), m.path()).unwrap();
    c.raw = Value::Null;
    c
}
fn checkpoint_config(model: &str) -> GemmaConfig {
    let mut c = GemmaConfig::from_file(&checkpoint(model).join("config.json")).unwrap();
    c.raw = Value::Null;
    c
}

#[test]
fn gemma4_names() {
    let m = |n: &str| gguf_to_hf_name(GemmaArch::Gemma4, n);
    let some = |h: &str| Some((h.to_owned(), false));
    // No norm shift anywhere in Gemma 4.
    assert_eq!(m("blk.3.attn_norm.weight"), some("model.layers.3.input_layernorm.weight"));
    assert_eq!(m("output_norm.weight"), some("model.norm.weight"));
    assert_eq!(m("blk.0.post_norm.weight"), some("model.layers.0.post_per_layer_input_norm.weight"));
    assert_eq!(m("blk.0.inp_gate.weight"), some("model.layers.0.per_layer_input_gate.weight"));
    assert_eq!(m("blk.0.proj.weight"), some("model.layers.0.per_layer_projection.weight"));
    assert_eq!(m("per_layer_token_embd.weight"), some("model.embed_tokens_per_layer.weight"));
    assert_eq!(m("per_layer_model_proj.weight"), some("model.per_layer_model_projection.weight"));
    assert_eq!(m("per_layer_proj_norm.weight"), some("model.per_layer_projection_norm.weight"));
    assert_eq!(m("blk.7.layer_output_scale.weight"), some("model.layers.7.layer_scalar"));
    assert_eq!(m("blk.1.ffn_gate_inp.weight"), some("model.layers.1.router.proj.weight"));
    assert_eq!(m("blk.1.ffn_gate_inp.scale"), some("model.layers.1.router.scale"));
    assert_eq!(m("blk.1.ffn_down_exps.scale"), some("model.layers.1.router.per_expert_scale"));
    assert_eq!(m("blk.1.ffn_gate_up_exps.weight"), some("model.layers.1.experts.gate_up_proj"));
    assert_eq!(m("blk.1.ffn_down_exps.weight"), some("model.layers.1.experts.down_proj"));
    assert_eq!(m("blk.1.pre_ffw_norm_2.weight"), some("model.layers.1.pre_feedforward_layernorm_2.weight"));
    assert_eq!(m("blk.1.post_ffw_norm_1.weight"), some("model.layers.1.post_feedforward_layernorm_1.weight"));
    assert_eq!(m("blk.1.post_ffw_norm_2.weight"), some("model.layers.1.post_feedforward_layernorm_2.weight"));
    assert_eq!(m("blk.1.post_ffw_norm.weight"), some("model.layers.1.post_feedforward_layernorm.weight"));
    assert_eq!(m("blk.1.ffn_norm.weight"), some("model.layers.1.pre_feedforward_layernorm.weight"));
    assert_eq!(m("rope_freqs.weight"), None);
    // Gemma 4's names are not Gemma 3's.
    assert_eq!(gguf_to_hf_name(GemmaArch::Gemma3, "blk.0.inp_gate.weight"), None);
    assert_eq!(gguf_to_hf_name(GemmaArch::Gemma3, "per_layer_token_embd.weight"), None);
}

/// The f32 file holds exactly the checkpoint: every tensor under its HF name, bit for bit (norms unshifted,
/// the per-layer table unscaled, `layer_scalar`), and only the generated `rope_freqs` besides.
#[test]
fn gemma4_f32_gguf_is_the_checkpoint() {
    let m = open("tiny_gemma4_f32");
    let st = SafetensorsDir::open(&checkpoint("gemma4")).unwrap();
    let (mut ours, mut theirs) = (m.names(), st.names());
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);
    for name in &theirs {
        let (a, b) = (m.get(name).unwrap(), st.get(name).unwrap());
        assert_eq!(a.shape, b.shape, "{name}");
        assert!(a.data.iter().zip(&b.data).all(|(x, y)| x.to_bits() == y.to_bits()), "{name}");
    }
    assert_eq!(m.unmapped_tensors(), vec!["rope_freqs.weight"]);
}

/// The config rebuilt from the metadata (and the tensors present) describes the checkpoint's model.
#[test]
fn gemma4_gguf_config_is_the_checkpoints() {
    for (stem, model) in
        [("tiny_gemma4_f32", "gemma4"), ("tiny_gemma4_q8_0", "gemma4"), ("tiny_gemma4_moe_q8_0", "gemma4_moe")]
    {
        let m = open(stem);
        assert_eq!(config_of(&m), checkpoint_config(model), "{stem}");
        // And in the checkpoint's own words, key by key.
        let ours = m.config_json().unwrap();
        let theirs: Value =
            serde_json::from_str(&std::fs::read_to_string(checkpoint(model).join("config.json")).unwrap()).unwrap();
        for k in [
            "model_type",
            "architectures",
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "per_layer_config",
            "attention_k_eq_v",
            "num_kv_shared_layers",
            "use_double_wide_mlp",
            "layer_types",
            "sliding_window",
            "rope_parameters",
            "final_logit_softcapping",
            "rms_norm_eps",
            "max_position_embeddings",
            "hidden_size_per_layer_input",
            "enable_moe_block",
            "num_experts",
            "top_k_experts",
            "moe_intermediate_size",
            "tie_word_embeddings",
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
            "hidden_activation",
        ] {
            assert_eq!(ours[k], theirs[k], "{stem}: {k}");
        }
        if theirs["hidden_size_per_layer_input"] != 0 {
            assert_eq!(ours["vocab_size_per_layer_input"], theirs["vocab_size_per_layer_input"], "{stem}");
        }
    }
}

fn logits(m: &GgufModel, quant: QuantKind, rows: &[Vec<u32>]) -> Vec<f32> {
    let config = GemmaConfig::from_json(&m.config_json().unwrap(), m.path()).unwrap();
    let model = load_gemma::<Cpu>(&config, m, quant, &Default::default()).unwrap();
    let out = model.forward(&TokenBatch::from_rows(rows), &LoraRuntime::default());
    out.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn rows(path: &Path, name: &str) -> Vec<Vec<u32>> {
    let (shape, ids) = read(path, name);
    ids.chunks(shape[1]).map(|r| r.iter().map(|&x| x as u32).collect()).collect()
}

/// Each file with `--quant none` (dequantized to f32) and `--quant gguf` (the file's own blocks) gives
/// transformers' logits within 1e-4 of their scale (or 2.5× transformers' own f32 noise, see below): for the f32 file, the checkpoint's own reference; for the
/// q8_0 files, transformers on the checkpoint with every weight replaced by the file's dequantized tensor.
/// (These random models are chaotic: q8_0 rounding moves transformers' logits by ~60%, so the q8_0 references
/// pin the exact dequantized weights.)
#[test]
fn gemma4_gguf_logits_match_transformers() {
    let refs = fixtures().join("gguf/tiny_gemma4_reference.safetensors");
    for (stem, reference, prefix) in [
        ("tiny_gemma4_f32", checkpoint("gemma4").join("reference.safetensors"), ""),
        ("tiny_gemma4_q8_0", refs.clone(), "tiny_gemma4_q8_0."),
        ("tiny_gemma4_moe_q8_0", refs.clone(), "tiny_gemma4_moe_q8_0."),
    ] {
        let m = open(stem);
        let rows = rows(&reference, &format!("{prefix}input_ids"));
        let (_, want) = read(&reference, &format!("{prefix}logits"));
        // 1e-4, or 2.5 times transformers' own f32 rounding (its distance from the same model in f64, recorded
        // by the fixture script) where that is larger: 5.0e-5 of the scale on the dense q8_0 model, where we
        // measured 7.3e-5, so a CPU summing in another order may pass 1e-4 without any error of ours.
        let noise = report()["files"][stem]["transformers_f32_vs_f64"].as_f64().expect("recorded noise") as f32;
        let bound = 1e-4f32.max(2.5 * noise);
        for quant in [QuantKind::None, QuantKind::Gguf] {
            let got = logits(&m, quant, &rows);
            let err = scaled_err(&got, &want);
            eprintln!("{stem} --quant {quant:?}: {err:.2e} of the logit scale from transformers");
            assert!(err < bound, "{stem} --quant {quant:?}: logits {err:e} of their scale from transformers'");
        }
    }
}

/// llama.cpp runs the MoE file (not the dense ones: see tests/fixtures/README.md). It is no tight reference
/// here: its CPU path rounds activations to q8 for q8_0 weights and takes GELU from an f16 table, and these
/// random models amplify that (near-tied expert choices flip), so it lands 3-56% of the logit scale from
/// transformers (0.06-1% on an f32 conversion until a near-tied routing flips; tests/fixtures/gguf/
/// tiny_gemma4.json). We must be as close to it as transformers is, position by position.
#[test]
fn gemma4_moe_gguf_is_as_close_to_llama_cpp_as_transformers() {
    let refs = fixtures().join("gguf/tiny_gemma4_reference.safetensors");
    let p = "tiny_gemma4_moe_q8_0.";
    let rows = rows(&refs, &format!("{p}input_ids"));
    let (_, llama) = read(&refs, &format!("{p}logits_llama_cpp"));
    let (_, hf) = read(&refs, &format!("{p}logits"));
    let ours = logits(&open("tiny_gemma4_moe_q8_0"), QuantKind::Gguf, &rows);
    let vocab = 512;
    let scale = hf.iter().fold(0f32, |m, x| m.max(x.abs()));
    let dist = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / scale;
    for (pos, ((o, l), h)) in ours.chunks(vocab).zip(llama.chunks(vocab)).zip(hf.chunks(vocab)).enumerate() {
        let (ours_d, hf_d) = (dist(o, l), dist(h, l));
        assert!(ours_d <= hf_d + 1e-4, "position {pos}: {ours_d:e} from llama.cpp, transformers {hf_d:e}");
    }
}

/// `--quant gguf`'s experts: each expert's rows of the file's 3-D tensor, in its own blocks, dequantizing to
/// the HF tensor `get` gives.
#[test]
fn gemma4_experts_in_the_files_blocks() {
    let m = open("tiny_gemma4_moe_q8_0");
    for (param, out, inp) in [("gate_up_proj", 64, 64), ("down_proj", 64, 32)] {
        let name = format!("model.layers.1.experts.{param}");
        let dense = m.get(&name).unwrap();
        assert_eq!(dense.shape, vec![4, out, inp]);
        let each = m.ggml_experts(&name).unwrap().expect("a GGUF has expert blocks");
        assert_eq!(each.len(), 4);
        for (e, w) in each.iter().enumerate() {
            assert_eq!(w.dtype, GgmlType::Q8_0);
            assert_eq!(w.shape, [out, inp]);
            assert_eq!(w.dequantize(), dense.data[e * out * inp..(e + 1) * out * inp], "{name} expert {e}");
        }
        let gguf = m.gguf_name(&name).unwrap().to_owned();
        assert_eq!(each.iter().map(|w| w.resident_bytes()).sum::<usize>(), m.file().tensor_bytes(&gguf).unwrap().len());
        assert!(m.ggml(&name).unwrap().is_none(), "3-D: no single 2-D weight");
    }
    assert!(m.ggml_experts("model.layers.1.mlp.up_proj.weight").unwrap().is_none(), "2-D");
}

/// A copy of a fixture with metadata and tensors edited: `meta` maps each key/value to its replacement
/// (`None` drops it), `tensor` each tensor to the tensors written in its place.
fn edited(
    stem: &str,
    meta: impl Fn(&str, &GgufValue) -> Option<GgufValue>,
    tensor: impl Fn(&str, GgmlType, &[usize], &[u8]) -> Vec<(String, GgmlType, Vec<usize>, Vec<u8>)>,
) -> GgufModel {
    let path = gguf_path(stem);
    let f = GgufFile::open(&path).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        if let Some(v) = meta(k, v) {
            w.set(k, v);
        }
    }
    for t in f.tensors() {
        for (name, dtype, shape, bytes) in tensor(&t.name, t.dtype, &t.shape(), f.tensor_bytes(&t.name).unwrap()) {
            w.add_tensor(&name, dtype, &shape, bytes);
        }
    }
    GgufModel::new(GgufFile::from_bytes(path, w.to_bytes()).unwrap()).unwrap()
}
fn same_tensor(
    name: &str,
    dtype: GgmlType,
    shape: &[usize],
    bytes: &[u8],
) -> Vec<(String, GgmlType, Vec<usize>, Vec<u8>)> {
    vec![(name.to_owned(), dtype, shape.to_vec(), bytes.to_vec())]
}
fn same_meta(_: &str, v: &GgufValue) -> Option<GgufValue> {
    Some(v.clone())
}

/// Files that store the experts' gate and up halves apart (`ffn_gate_exps` + `ffn_up_exps`, which llama.cpp's
/// loader accepts) or a layer without `layer_output_scale` (optional in llama.cpp: scale 1) read as the same
/// HF tensors.
#[test]
fn gemma4_split_experts_and_missing_layer_scale() {
    let fused = open("tiny_gemma4_moe_q8_0");
    let split = edited("tiny_gemma4_moe_q8_0", same_meta, |name, dtype, shape, bytes| {
        if name == "blk.2.layer_output_scale.weight" {
            return vec![];
        }
        let Some(layer) = name.strip_suffix(".ffn_gate_up_exps.weight") else {
            return same_tensor(name, dtype, shape, bytes);
        };
        let [e, rows, cols] = [shape[0], shape[1], shape[2]];
        let per = bytes.len() / e;
        let (mut gate, mut up) = (Vec::new(), Vec::new());
        for x in 0..e {
            gate.extend_from_slice(&bytes[x * per..x * per + per / 2]);
            up.extend_from_slice(&bytes[x * per + per / 2..(x + 1) * per]);
        }
        vec![
            (format!("{layer}.ffn_gate_exps.weight"), dtype, vec![e, rows / 2, cols], gate),
            (format!("{layer}.ffn_up_exps.weight"), dtype, vec![e, rows / 2, cols], up),
        ]
    });
    assert_eq!(split.names(), fused.names());
    let name = "model.layers.3.experts.gate_up_proj";
    assert_eq!(split.gguf_name(name), Some("blk.3.ffn_gate_exps.weight"));
    assert_eq!(split.shape(name).unwrap(), vec![4, 64, 64]);
    assert_eq!(split.get(name).unwrap(), fused.get(name).unwrap());
    assert_eq!(split.ggml_experts(name).unwrap(), fused.ggml_experts(name).unwrap());
    assert!(split.unmapped_tensors() == vec!["rope_freqs.weight"], "{:?}", split.unmapped_tensors());
    assert_eq!(split.get("model.layers.2.layer_scalar").unwrap().data, vec![1.0]);
    assert_eq!(split.gguf_name("model.layers.2.layer_scalar"), None);
    assert_ne!(fused.get("model.layers.2.layer_scalar").unwrap().data, vec![1.0]);
    assert_eq!(config_of(&split), config_of(&fused));
}

fn config_error(m: &GgufModel) -> String {
    match m.config_json() {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// What the file does not say, or says in a form transformers' config cannot hold, is an error naming the key
/// (or tensor), not a guess.
#[test]
fn gemma4_gguf_config_errors_name_the_key() {
    let without = |key: &'static str| edited("tiny_gemma4_f32", move |k, v| (k != key).then(|| v.clone()), same_tensor);
    for key in [
        "gemma4.final_logit_softcapping",
        "gemma4.attention.sliding_window_pattern",
        "gemma4.attention.key_length_swa",
        "gemma4.attention.shared_kv_layers",
        "gemma4.embedding_length_per_layer_input",
        "gemma4.rope.freq_base_swa",
        "gemma4.attention.sliding_window",
        "gemma4.attention.layer_norm_rms_epsilon",
    ] {
        let e = config_error(&without(key));
        assert!(e.contains(&format!("key `{key}`")) && e.contains("missing"), "{key}: {e}");
    }
    let with = |key: &'static str, value: GgufValue| {
        edited("tiny_gemma4_f32", move |k, v| Some(if k == key { value.clone() } else { v.clone() }), same_tensor)
    };
    let arr = |v: &[i32]| GgufValue::Array { item_type: 5, items: v.iter().map(|&x| GgufValue::I32(x)).collect() };
    let e = config_error(&with("gemma4.feed_forward_length", arr(&[128, 128, 128, 128, 384, 384])));
    assert!(e.contains("gemma4.feed_forward_length") && e.contains("neither 128 nor twice"), "{e}");
    let e = config_error(&with("gemma4.attention.head_count", arr(&[4, 4, 4, 4, 4, 2])));
    assert!(e.contains("gemma4.attention.head_count`") && e.contains("differ"), "{e}");
    let e = config_error(&with("gemma4.attention.head_count_kv", arr(&[2, 1, 1, 2, 2, 1])));
    assert!(e.contains("gemma4.attention.head_count_kv") && e.contains("sliding layers' KV heads"), "{e}");
    let e = config_error(&with("gemma4.rope.dimension_count", GgufValue::U32(16)));
    assert!(e.contains("gemma4.rope.dimension_count`") && e.contains("rotates whole heads"), "{e}");
    let bools = |v: &[bool]| GgufValue::Array { item_type: 7, items: v.iter().map(|&x| GgufValue::Bool(x)).collect() };
    let e =
        config_error(&with("gemma4.attention.sliding_window_pattern", bools(&[true, true, false, true, false, true])));
    assert!(e.contains("the last layer is sliding"), "{e}");

    // rope_freqs must be 1s then 1e30s; without it the global layers' rotation is unknown.
    let no_freqs =
        edited(
            "tiny_gemma4_f32",
            same_meta,
            |n, d, s, b| {
                if n == "rope_freqs.weight" {
                    vec![]
                } else {
                    same_tensor(n, d, s, b)
                }
            },
        );
    assert!(config_error(&no_freqs).contains("rope_freqs.weight"));
    let odd_freqs = edited("tiny_gemma4_f32", same_meta, |n, d, s, b| {
        if n != "rope_freqs.weight" {
            return same_tensor(n, d, s, b);
        }
        let mut v = bytemuck::pod_collect_to_vec::<u8, f32>(b);
        v[5] = 8.0;
        vec![(n.to_owned(), d, s.to_vec(), bytemuck::cast_slice(&v).to_vec())]
    });
    let e = config_error(&odd_freqs);
    assert!(e.contains("rope_freqs.weight") && e.contains("factor 5 is 8"), "{e}");

    // attention_k_eq_v is one setting: a global layer with attn_v beside one without is an error.
    let mixed = edited("tiny_gemma4_moe_q8_0", same_meta, |n, d, s, b| {
        let mut out = same_tensor(n, d, s, b);
        if n == "blk.1.attn_k.weight" {
            out.push(("blk.1.attn_v.weight".into(), d, s.to_vec(), b.to_vec()));
        }
        out
    });
    let e = config_error(&mixed);
    assert!(e.contains("attention_k_eq_v") && e.contains("1 of the 2 global layers"), "{e}");
    // Experts in some layers only.
    let partial = edited("tiny_gemma4_moe_q8_0", same_meta, |n, d, s, b| {
        if n.starts_with("blk.0.ffn_gate_inp") {
            vec![]
        } else {
            same_tensor(n, d, s, b)
        }
    });
    let e = config_error(&partial);
    assert!(e.contains("gemma4.expert_count") && e.contains("3 of 4 layers"), "{e}");
}

/// The tokenizer transformers builds for the file (GemmaTokenizer from its vocabulary and merges, no BOS).
#[test]
fn gemma4_gguf_tokenizer_matches_transformers() {
    let tk = open("tiny_gemma4_f32").tokenizer().unwrap();
    let want = report();
    let records = want["tokenizer"].as_array().unwrap();
    assert!(records.len() >= 8);
    for r in records {
        let text = r["text"].as_str().unwrap();
        let ids: Vec<u32> = r["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let enc = tk.encode(text, true).unwrap();
        assert_eq!(enc.get_ids(), &ids[..], "{text:?}");
        assert_eq!(tk.decode(&ids, false).unwrap(), r["decoded"].as_str().unwrap(), "{text:?}");
    }
    // And it is the checkpoint's own tokenizer, less the BOS that one prepends.
    let hf = tokenizers::Tokenizer::from_file(checkpoint("gemma4").join("tokenizer.json")).unwrap();
    for r in records {
        let text = r["text"].as_str().unwrap();
        let theirs = hf.encode(text, true).unwrap();
        assert_eq!(&theirs.get_ids()[1..], tk.encode(text, true).unwrap().get_ids(), "{text:?}");
    }
}

/// A gemma4 file opens as a model like any other: config, weights and tokenizer.
#[test]
fn gemma4_gguf_opens_as_model_files() {
    let dir = std::env::temp_dir().join(format!("lapidary-gguf-gemma4-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny_gemma4_q8_0.gguf");
    std::fs::copy(gguf_path("tiny_gemma4_q8_0"), &path).unwrap();
    let files = crate::io::files::ModelFiles::open(&path).unwrap();
    assert_eq!(files.config.arch, crate::config::Arch::Gemma4);
    assert_eq!(files.config.num_hidden_layers, 6);
    assert_eq!(files.tokenizer.get_vocab_size(true), 512);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gemma4_unsupported_tokenizer_model_is_an_error() {
    let m = edited(
        "tiny_gemma4_f32",
        |k, v| Some(if k == "tokenizer.ggml.model" { GgufValue::String("llama".into()) } else { v.clone() }),
        same_tensor,
    );
    let e = m.tokenizer().unwrap_err();
    assert!(matches!(e, ModelError::Tokenizer { .. }) && e.to_string().contains("`llama` for architecture `gemma4`"));
}
