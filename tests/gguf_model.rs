//! Whole models written as GGUF (`lapidary convert --out X.gguf`, `lapidary merge --out X.gguf`) against
//! llama.cpp: its converter's metadata and tensors, its logits and tokenization on our file
//! (tests/fixtures/gguf_model/, made by scripts/make_gguf_model_fixtures.py).
mod common;

use std::path::Path;

use common::*;
use lapidary_model::backends::Cpu;
use lapidary_model::gemma::load::load_gemma;
use lapidary_model::io::gguf::{GgufFile, GgufModel, GgufValue};
use lapidary_model::io::safetensors::SafetensorsDir;
use lapidary_model::nn::lora::LoraRuntime;
use lapidary_model::quant::QuantKind;
use lapidary_model::{ModelFiles, TokenBatch, WeightSource};
use sha2::{Digest, Sha256};

const GENS: [&str; 3] = ["gemma1", "gemma2", "gemma3"];

fn convert(model: &Path, out: &Path, dtype: &str) {
    let o =
        lapidary(&["convert", "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap(), "--dtype", dtype]);
    assert!(o.status.success(), "convert {dtype}: {}", String::from_utf8_lossy(&o.stderr));
}

fn ours(gen: &str, dir: &Path) -> std::path::PathBuf {
    let out = dir.join(format!("{gen}.gguf"));
    convert(&fixture(&format!("tiny/{gen}")), &out, "f32");
    out
}

/// gguf-py's names of a value's type (`UINT32`, `ARRAY[STRING]`).
fn type_name(v: &GgufValue) -> String {
    let id = |v: &GgufValue| match v {
        GgufValue::U8(_) => "UINT8",
        GgufValue::I8(_) => "INT8",
        GgufValue::U16(_) => "UINT16",
        GgufValue::I16(_) => "INT16",
        GgufValue::U32(_) => "UINT32",
        GgufValue::I32(_) => "INT32",
        GgufValue::F32(_) => "FLOAT32",
        GgufValue::Bool(_) => "BOOL",
        GgufValue::String(_) => "STRING",
        GgufValue::U64(_) => "UINT64",
        GgufValue::I64(_) => "INT64",
        GgufValue::F64(_) => "FLOAT64",
        GgufValue::Array { .. } => "ARRAY",
    };
    match v {
        GgufValue::Array { items, .. } => format!("ARRAY[{}]", items.first().map_or("?", id)),
        other => id(other).to_string(),
    }
}

/// Every metadata key, value and type, and every tensor's name, type and shape, in order, as llama.cpp's
/// convert_hf_to_gguf.py writes them (the fixture lists deliberate differences; there are none for these).
#[test]
fn metadata_and_tensors_equal_the_converters() {
    let tmp = tempfile::tempdir().unwrap();
    for gen in GENS {
        let fx = read_json(&fixture(&format!("gguf_model/{gen}.json")));
        let file = GgufFile::open(ours(gen, tmp.path())).unwrap();
        let differences = fx["differences"].as_object().unwrap();
        let theirs = fx["converter"]["metadata"].as_array().unwrap();
        let keys: Vec<&str> = file.metadata().iter().map(|(k, _)| k.as_str()).collect();
        let their_keys: Vec<&str> = theirs.iter().map(|m| m["key"].as_str().unwrap()).collect();
        assert_eq!(keys, their_keys, "{gen}: keys and their order");
        for (m, (key, v)) in theirs.iter().zip(file.metadata()) {
            assert_eq!(type_name(v), m["type"].as_str().unwrap(), "{gen}: type of {key}");
            if differences.contains_key(key) {
                continue;
            }
            assert_eq!(v.to_json(), m["value"], "{gen}: value of {key}");
        }
        let tensors: Vec<serde_json::Value> = file
            .tensors()
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "type": t.dtype.to_string(), "shape": t.shape()}))
            .collect();
        assert_eq!(&tensors, fx["converter"]["tensors"].as_array().unwrap(), "{gen}: tensors");
    }
}

/// The file the fixture script ran llama.cpp on is the one we write today, byte for byte.
#[test]
fn written_file_is_the_one_llama_cpp_ran() {
    let tmp = tempfile::tempdir().unwrap();
    for gen in GENS {
        let fx = read_json(&fixture(&format!("gguf_model/{gen}.json")));
        let bytes = std::fs::read(ours(gen, tmp.path())).unwrap();
        let sha = format!("{:x}", Sha256::digest(&bytes));
        assert_eq!(sha, fx["ours"]["sha256"].as_str().unwrap(), "{gen}: sha256 of the written file");
    }
}

/// `convert --dtype q4_k_m|q5_k_m|q6_k` from a model directory writes, byte for byte, what llama-quantize
/// writes from our f32 file (recorded sha256): the per-tensor types, the blocks, llama-quantize's tensor order
/// and its metadata order (quantization_version and file_type moved to the end).
#[test]
fn k_quants_equal_llama_quantize_on_our_f32_file() {
    let tmp = tempfile::tempdir().unwrap();
    for gen in GENS {
        let fx = read_json(&fixture(&format!("gguf_model/{gen}.json")));
        for (ty, sha) in fx["llama_quantize"].as_object().unwrap() {
            let out = tmp.path().join(format!("{gen}_{ty}.gguf"));
            convert(&fixture(&format!("tiny/{gen}")), &out, &ty.to_ascii_lowercase());
            let got = format!("{:x}", Sha256::digest(std::fs::read(&out).unwrap()));
            assert_eq!(&got, sha.as_str().unwrap(), "{gen} {ty}: not llama-quantize's file");
        }
    }
}

/// Our model's logits (f32, read back through our GGUF reader) on the rows `input_ids` of a fixture file.
fn our_logits(gguf: &Path, fixture_file: &Path) -> Vec<f64> {
    let files = ModelFiles::open(gguf).unwrap();
    let model = load_gemma::<Cpu>(&files.config, files.weights.as_ref(), QuantKind::None, &Default::default()).unwrap();
    let (shape, ids) = read_tensor(fixture_file, "input_ids");
    let rows: Vec<Vec<u32>> = ids.chunks(shape[1]).map(|r| r.iter().map(|&x| x as u32).collect()).collect();
    let logits = model.forward(&TokenBatch::from_rows(&rows), &LoraRuntime::default());
    logits.into_data().convert::<f32>().to_vec::<f32>().unwrap().iter().map(|&x| x as f64).collect()
}

/// The largest difference as a fraction of `theirs`' largest magnitude.
fn scaled_dist(ours: &[f64], theirs: &[f64]) -> f64 {
    let scale = theirs.iter().fold(0f64, |m, x| m.max(x.abs()));
    ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max) / scale
}

/// Our model code on our file read back through our GGUF reader (f32 weights):
/// * within 1e-4 of the logits' scale of transformers running the checkpoint as the GGUF describes it (for
///   tiny gemma2: queries scaled by 1/sqrt(head_dim), as llama.cpp does; GGUF has no query_pre_attn_scalar);
/// * within 1e-3 of llama.cpp's logits on the same file, or, where llama.cpp's own distance from that exact
///   computation is larger (its CPU GELU goes through an f16 table: 1.25e-3 on tiny gemma2, recorded by the
///   fixture script), within that distance plus 1e-4.
#[test]
fn logits_match_llama_cpp_on_our_file() {
    let tmp = tempfile::tempdir().unwrap();
    for gen in GENS {
        let path = ours(gen, tmp.path());
        let fx = fixture(&format!("gguf_model/{gen}_llama_cpp.safetensors"));
        let ours = our_logits(&path, &fx);
        let dist = |theirs: &[f64]| scaled_dist(&ours, theirs);
        let (_, exact) = read_tensor(&fx, "logits_transformers");
        let (_, llama) = read_tensor(&fx, "logits_llama_cpp");
        let vs_exact = dist(&exact);
        assert!(vs_exact < 1e-4, "{gen}: logits differ from transformers' by {vs_exact:e} of scale");
        let llama_own =
            read_json(&fixture(&format!("gguf_model/{gen}.json")))["llama_cpp_vs_transformers"].as_f64().unwrap();
        let bound = 1e-3f64.max(llama_own + 1e-4);
        let vs_llama = dist(&llama);
        assert!(vs_llama < bound, "{gen}: logits differ from llama.cpp's by {vs_llama:e} of scale (> {bound:e})");
        eprintln!(
            "{gen}: vs transformers {vs_exact:.2e}, vs llama.cpp {vs_llama:.2e} (llama.cpp's own {llama_own:.2e})"
        );
    }
}

/// llama.cpp tokenizes our file as transformers tokenizes the checkpoint (recorded), and so does the
/// tokenizer our GGUF reader builds from the file.
#[test]
fn tokenization_matches_llama_cpp_and_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    for gen in GENS {
        let fx = read_json(&fixture(&format!("gguf_model/{gen}.json")));
        let files = ModelFiles::open(&ours(gen, tmp.path())).unwrap();
        for row in fx["tokenizer"]["rows"].as_array().unwrap() {
            let text = row["text"].as_str().unwrap();
            assert_eq!(row["llama_cpp"], row["transformers"], "{gen}: llama.cpp vs transformers on {text:?}");
            let enc = files.tokenizer.encode(text, true).unwrap();
            let ids: Vec<u64> = enc.get_ids().iter().map(|&i| i as u64).collect();
            assert_eq!(serde_json::json!(ids), row["transformers"], "{gen}: our tokenizer from the file on {text:?}");
        }
    }
}

/// Our written file read back holds the checkpoint's tensors: f32 exactly (norms as the f32 `(w + 1) - 1`),
/// f16 / bf16 within half a unit in the last place, q8_0 within half a step (amax/127) of its block plus the
/// scale's f16 rounding.
#[test]
fn reading_back_gives_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("tiny/gemma3");
    let st = SafetensorsDir::open(&dir).unwrap();
    for dtype in ["f32", "f16", "bf16", "q8_0"] {
        let out = tmp.path().join(format!("{dtype}.gguf"));
        convert(&dir, &out, dtype);
        let g = GgufModel::open(&out).unwrap();
        let mut names = st.names();
        names.retain(|n| n != "lm_head.weight");
        let mut got_names = g.names();
        got_names.sort();
        names.sort();
        assert_eq!(got_names, names, "{dtype}");
        for n in &names {
            let want = st.get(n).unwrap();
            let got = g.get(n).unwrap();
            assert_eq!(got.shape, want.shape, "{dtype} {n}");
            let norm = n.ends_with("norm.weight");
            let info = g.file().tensor_info(g.gguf_name(n).unwrap()).unwrap();
            let cols = *want.shape.last().unwrap();
            for (i, (a, w)) in got.data.iter().zip(&want.data).enumerate() {
                if norm || dtype == "f32" {
                    // Bit for bit: norms are F32 in every dtype, stored as the f32 `1 + w` and read back as
                    // that minus 1; everything else of the f32 file as it is.
                    let want_bits = if norm { ((w + 1.0) - 1.0).to_bits() } else { w.to_bits() };
                    assert_eq!(a.to_bits(), want_bits, "{dtype} {n}[{i}]: {a} vs {w}");
                    continue;
                }
                let bound = match dtype {
                    "bf16" => w.abs() * 2f32.powi(-8),
                    "q8_0" if info.dtype.to_string() == "Q8_0" => {
                        let start = i / 32 * 32;
                        let amax = want.data[start..start + 32].iter().fold(0f32, |m, x| m.max(x.abs()));
                        amax / 127.0 * (0.5 + 127.0 * 2f32.powi(-11)) + 1e-7
                    }
                    // f16, and q8_0's f16 fallback for rows that are not whole blocks of 32.
                    _ => w.abs() * 2f32.powi(-11) + 6e-8,
                };
                assert!((a - w).abs() <= bound, "{dtype} {n}[{i}] (rows of {cols}): {a} vs {w}");
            }
        }
    }
}

/// The real Gemma 3 270M Q4_K_M with `--dtype same`: every tensor's bytes and every metadata key (tokenizer
/// included) of the input; in fact the whole file.
#[test]
fn real_model_same_keeps_every_byte() {
    let Some(model) = real_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("same.gguf");
    convert(&model, &out, "same");
    let (a, b) = (GgufFile::open(&model).unwrap(), GgufFile::open(&out).unwrap());
    assert_eq!(a.metadata(), b.metadata());
    assert!(a.metadata().iter().any(|(k, _)| k == "tokenizer.ggml.tokens"));
    assert_eq!(a.tensors().len(), b.tensors().len());
    for (x, y) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!((&x.name, x.dtype, &x.dims), (&y.name, y.dtype, &y.dims));
        assert_eq!(a.tensor_bytes(&x.name).unwrap(), b.tensor_bytes(&y.name).unwrap(), "{}", x.name);
    }
    assert_eq!(std::fs::read(&model).unwrap(), std::fs::read(&out).unwrap(), "the whole file");

    // --dtype q4_k_m: llama-quantize's choice per tensor (quant::ggml::preset) is the file's own for every
    // tensor (it is a Q4_K_M file), so each is copied, not re-quantized: the same bytes again.
    let mix = tmp.path().join("q4_k_m.gguf");
    convert(&model, &mix, "q4_k_m");
    assert_eq!(std::fs::read(&model).unwrap(), std::fs::read(&mix).unwrap(), "q4_k_m of a Q4_K_M file");
}

fn merge_args<'a>(model: &'a str, adapter: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    [&["merge", "--model", model, "--adapter", adapter, "--out", out, "--json"][..], extra].concat()
}

/// `merge --out x.gguf` on tiny gemma3: verified by reading the file back; the merged projections equal the
/// directory merge's (f32, same arithmetic); `same` from a GGUF base keeps every tensor the adapter does not
/// touch byte for byte; an existing output needs --overwrite; a failed check leaves nothing at the output path
/// (and an existing file there untouched).
#[test]
fn merge_to_gguf_verifies_keeps_untouched_tensors_and_renames_last() {
    let tmp = tempfile::tempdir().unwrap();
    let base = fixture("tiny/gemma3");
    let adapter = fixture("tiny/gemma3/adapter");
    let (b, a) = (base.to_str().unwrap(), adapter.to_str().unwrap());

    // f32 from the directory, against the directory merge.
    let out = tmp.path().join("m.gguf");
    let o = out.to_str().unwrap();
    let r = lapidary_json(&merge_args(b, a, o, &["--dtype", "f32"]));
    assert!(r["diff"].as_f64().unwrap() <= r["tolerance"].as_f64().unwrap());
    assert!(!tmp.path().join("m.partial.gguf").exists());
    let dir_out = tmp.path().join("m_dir");
    lapidary_json(&merge_args(b, a, dir_out.to_str().unwrap(), &["--dtype", "f32"]));
    let (g, d) = (GgufModel::open(&out).unwrap(), SafetensorsDir::open(&dir_out).unwrap());
    let q = "model.layers.0.self_attn.q_proj.weight";
    assert_eq!(g.get(q).unwrap().data, d.get(q).unwrap().data, "merged projection");
    assert_ne!(g.get(q).unwrap().data, SafetensorsDir::open(&base).unwrap().get(q).unwrap().data, "adapter applied");

    // q8_0, and `same` from a q8_0 GGUF base.
    let q8 = tmp.path().join("base_q8.gguf");
    convert(&base, &q8, "q8_0");
    let r = lapidary_json(&merge_args(b, a, tmp.path().join("m8.gguf").to_str().unwrap(), &["--dtype", "q8_0"]));
    assert!(r["diff"].as_f64().unwrap() <= r["tolerance"].as_f64().unwrap());
    let same = tmp.path().join("same.gguf");
    let r = lapidary_json(&merge_args(q8.to_str().unwrap(), a, same.to_str().unwrap(), &[]));
    assert_eq!(r["dtype"], "same");
    let (src, dst) = (GgufFile::open(&q8).unwrap(), GgufFile::open(&same).unwrap());
    assert_eq!(src.metadata(), dst.metadata());
    let mut changed = 0;
    for t in src.tensors() {
        let (x, y) = (src.tensor_bytes(&t.name).unwrap(), dst.tensor_bytes(&t.name).unwrap());
        assert_eq!(dst.tensor_info(&t.name).unwrap().dtype, t.dtype, "{}", t.name);
        let projection = ["attn_q.", "attn_k.", "attn_v.", "attn_output.", "ffn_gate.", "ffn_up.", "ffn_down."]
            .iter()
            .any(|p| t.name.contains(p));
        if !projection {
            assert_eq!(x, y, "{} is untouched by the adapter", t.name);
        } else if x != y {
            changed += 1;
        }
    }
    assert!(changed > 0, "the adapter changed no projection");

    // The block types llama-quantize would choose (tiny rows of 64 fall back as it does: Q4_K -> Q5_0).
    for dtype in ["q4_k_m", "q4_0"] {
        let out = tmp.path().join(format!("m_{dtype}.gguf"));
        let r = lapidary_json(&merge_args(b, a, out.to_str().unwrap(), &["--dtype", dtype]));
        assert!(r["diff"].as_f64().unwrap() <= r["tolerance"].as_f64().unwrap(), "{dtype}: {r}");
        let f = GgufFile::open(&out).unwrap();
        let t = f.tensor_info("blk.0.attn_q.weight").unwrap().dtype.to_string();
        assert_eq!(t, if dtype == "q4_0" { "Q4_0" } else { "Q5_0" }, "{dtype}");
    }

    // An existing output: refused without --overwrite, the file untouched.
    let before = std::fs::read(&out).unwrap();
    let err = lapidary_fails(&merge_args(b, a, o, &["--dtype", "f16"]));
    assert!(err.contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), before);

    // A failed check (forced by the test hook): nothing at the output path; with --overwrite, the old file
    // stays as it was.
    let fresh = tmp.path().join("fresh.gguf");
    let run_failing = |out: &Path, extra: &[&str]| {
        let args = merge_args(b, a, out.to_str().unwrap(), extra);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_lapidary"))
            .args(&args)
            .env("LAPIDARY_TEST_MERGE_TOLERANCE", "-1")
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let err = run_failing(&fresh, &["--dtype", "f32"]);
    assert!(err.contains("verification failed"), "{err}");
    assert!(!fresh.exists(), "a failed check left a file at the output path");
    assert!(tmp.path().join("fresh.partial.gguf").exists(), "the unverified file is kept aside");
    let err = run_failing(&out, &["--dtype", "f16", "--overwrite"]);
    assert!(err.contains("verification failed"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), before, "a failed check replaced the existing output");
    // --overwrite with a passing check replaces it.
    lapidary_json(&merge_args(b, a, o, &["--dtype", "f16", "--overwrite"]));
    assert_ne!(std::fs::read(&out).unwrap(), before);
}

#[test]
fn errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let g3 = fixture("tiny/gemma3");
    let out = tmp.path().join("x.gguf");
    let (m, o) = (g3.to_str().unwrap(), out.to_str().unwrap());
    let err = lapidary_fails(&["convert", "--model", m, "--out", o, "--dtype", "same"]);
    assert!(err.contains("`same`") && err.contains("model directory"), "{err}");
    let err = lapidary_fails(&["convert", "--model", m, "--out", o, "--dtype", "q3_k"]);
    assert!(err.contains("unknown GGUF dtype `q3_k`"), "{err}");
    let g4 = fixture("tiny/gemma4");
    let err = lapidary_fails(&["convert", "--model", g4.to_str().unwrap(), "--out", o, "--dtype", "f32"]);
    assert!(err.contains("Gemma 4") && err.contains("not supported"), "{err}");
    let a = fixture("tiny/gemma3/adapter");
    let dir = tmp.path().join("dir");
    let err = lapidary_fails(&merge_args(m, a.to_str().unwrap(), dir.to_str().unwrap(), &["--dtype", "q8_0"]));
    assert!(err.contains("GGUF type") && err.contains(".gguf"), "{err}");
    assert!(!out.exists() && !dir.exists(), "an error wrote something");
}

/// A directory with a `tokenizer.model` takes its pieces from it, as the converter does: a sentencepiece
/// protobuf (the one the fixture script gave the converter) in a copy of tiny gemma3 whose tokenizer.json has
/// its merges removed (read from tokenizer.json, every score would be 0) gives the converter's tokens, scores
/// and types.
#[test]
fn tokenizer_model_is_read_as_the_converter_reads_it() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("tiny/gemma3");
    let dir = tmp.path().join("gemma3");
    std::fs::create_dir(&dir).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer_config.json", "special_tokens_map.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut tj = read_json(&src.join("tokenizer.json"));
    tj["model"]["merges"] = serde_json::json!([]);
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_vec(&tj).unwrap()).unwrap();
    let fx = read_json(&fixture("gguf_model/gemma3.json"));
    let theirs = |key: &str| {
        fx["converter"]["metadata"].as_array().unwrap().iter().find(|m| m["key"] == key).unwrap()["value"].clone()
    };
    let keys = ["tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"];
    let read = |out: &Path| {
        let f = GgufFile::open(out).unwrap();
        keys.map(|k| f.get(k).unwrap().to_json())
    };

    let without = tmp.path().join("without.gguf");
    convert(&dir, &without, "f32");
    assert_ne!(read(&without)[1], theirs(keys[1]), "tokenizer.json without merges still gave the merge scores");

    std::fs::copy(fixture("gguf_model/tiny_tokenizer.model"), dir.join("tokenizer.model")).unwrap();
    let with = tmp.path().join("with.gguf");
    convert(&dir, &with, "f32");
    for (k, v) in keys.iter().zip(read(&with)) {
        assert_eq!(v, theirs(k), "{k} from tokenizer.model");
    }
}

/// The adapter merged into tiny gemma3 as an f32 GGUF: the file llama.cpp ran (sha256); our model on it gives
/// PEFT's merged model's logits (transformers + merge_and_unload) within 1e-4 of their scale, and llama.cpp's
/// within 1e-3 (llama.cpp's own distance from PEFT's is recorded: 6.4e-4, its f16 GELU table).
#[test]
fn merged_gguf_runs_in_llama_cpp_as_peft_merges() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged.gguf");
    let (m, a) = (fixture("tiny/gemma3"), fixture("tiny/gemma3/adapter"));
    lapidary_json(&merge_args(m.to_str().unwrap(), a.to_str().unwrap(), out.to_str().unwrap(), &["--dtype", "f32"]));
    let fx = read_json(&fixture("gguf_model/merged_gemma3.json"));
    let sha = format!("{:x}", Sha256::digest(std::fs::read(&out).unwrap()));
    assert_eq!(sha, fx["sha256"].as_str().unwrap());

    let st = fixture("gguf_model/merged_gemma3_llama_cpp.safetensors");
    let ours = our_logits(&out, &st);
    let dist = |theirs: &[f64]| scaled_dist(&ours, theirs);
    let vs_peft = dist(&read_tensor(&st, "logits_peft").1);
    assert!(vs_peft < 1e-4, "our merged GGUF vs PEFT's merged model: {vs_peft:e} of scale");
    let vs_llama = dist(&read_tensor(&st, "logits_llama_cpp").1);
    assert!(vs_llama < 1e-3, "our logits vs llama.cpp's on the merged GGUF: {vs_llama:e} of scale");
}
