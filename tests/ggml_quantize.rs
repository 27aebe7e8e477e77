//! lapidary's ggml quantizers (`quant::ggml::encode`) and llama-quantize's per-tensor types (`quant::ggml::
//! Planner`) against llama.cpp itself (tests/fixtures/ggml_quant/, made by scripts/make_ggml_quant_fixtures.py):
//! seeded rows through ggml's `ggml_quantize_chunk`, and the real Gemma 3 270M through `llama-quantize` (its
//! f32 dequantization, then every single type with --pure and the Q4_K_M / Q5_K_M presets), compared by the
//! sha256 of every tensor's bytes. The real-model test skips, visibly, without scripts/fetch_model.sh's file.
mod common;

use std::collections::HashMap;

use common::*;
use lapidary_model::io::gguf::GgufFile;
use lapidary_model::quant::ggml::preset::llama_quantize_order;
use lapidary_model::quant::ggml::{encode, GgmlType, Planner, Target};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn type_named(name: &str) -> GgmlType {
    (0..64).map(GgmlType::from_id).find(|t| t.to_string() == name).unwrap_or_else(|| panic!("ggml type {name}"))
}

/// Every fixture made by llama-quantize from the f32 file, with the target it was made for.
fn targets() -> Vec<(String, Target)> {
    let singles = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "Q2_K", "Q3_K"];
    let mut out: Vec<(String, Target)> =
        singles.iter().map(|t| (format!("pure_{t}"), Target::Single(type_named(t)))).collect();
    out.push(("Q4_K_M".into(), Target::Q4KM));
    out.push(("Q5_K_M".into(), Target::Q5KM));
    out
}

/// A fixture's tensors by name: (type, shape, sha256).
type Records = HashMap<String, (String, Vec<usize>, String)>;

fn records(v: &serde_json::Value) -> Records {
    v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let shape = t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            (
                t["name"].as_str().unwrap().to_string(),
                (t["type"].as_str().unwrap().to_string(), shape, t["sha256"].as_str().unwrap().to_string()),
            )
        })
        .collect()
}

#[test]
fn synthetic_rows_are_byte_identical_to_ggml() {
    let fx = read_json(&fixture("ggml_quant/synthetic.json"));
    let mut checked = 0;
    for case in fx["cases"].as_array().unwrap() {
        let cols = case["cols"].as_u64().unwrap() as usize;
        let values: Vec<f32> = hex_bytes(case["values_f32_le"].as_str().unwrap())
            .chunks(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        for (name, want) in case["bytes"].as_object().unwrap() {
            let dtype = type_named(name);
            let want = hex_bytes(want.as_str().unwrap());
            let got = encode(dtype, &values, cols).unwrap();
            assert_eq!(got.len(), want.len(), "{dtype}, rows of {cols}: size");
            let (block, block_bytes) = dtype.block_layout().unwrap();
            for (i, (g, w)) in got.chunks(block_bytes).zip(want.chunks(block_bytes)).enumerate() {
                let first = i * block;
                assert_eq!(g, w, "{dtype}, rows of {cols}: block {i} (row {}, column {})", first / cols, first % cols);
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 30, "10 types x 3 cases");
}

/// `generated_values` of scripts/make_ggml_quant_fixtures.py, with the same exact f32 operations: splitmix64
/// of the index, its top 24 bits as u in [-0.5, 0.5), cubed, times 2^-(row % 8).
fn generated_values(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| {
            let mut z = seed.wrapping_add((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f32 / (1u32 << 24) as f32 - 0.5;
            u * u * u * 2f32.powi(-(((i / cols) % 8) as i32))
        })
        .collect()
}

/// A million generated values: enough k-quant blocks that an f32 rounding done differently from ggml's build
/// (a fused multiply-add, a reordered sum) changes some block, which the few rows above may not show.
#[test]
fn a_million_generated_values_hash_as_ggml_quantizes_them() {
    let fx = read_json(&fixture("ggml_quant/synthetic.json"));
    let g = &fx["generated"];
    let (rows, cols) = (g["rows"].as_u64().unwrap() as usize, g["cols"].as_u64().unwrap() as usize);
    let x = generated_values(rows, cols, g["seed"].as_u64().unwrap());
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(sha_hex(&bytes), g["values_sha256"].as_str().unwrap(), "generated inputs differ from the script's");
    let shas = g["sha256"].as_object().unwrap();
    assert_eq!(shas.len(), 10);
    for (name, want) in shas {
        let dtype = type_named(name);
        assert_eq!(sha_hex(&encode(dtype, &x, cols).unwrap()), want.as_str().unwrap(), "{dtype}");
    }
}

/// The plan alone, from the names and shapes llama-quantize saw (listed here in reverse, to show the order
/// of the list does not matter): every tensor's type equals llama-quantize's, for every target.
#[test]
fn planned_types_equal_llama_quantize() {
    let f32_fx = read_json(&fixture("ggml_quant/f32.json"));
    let arch = f32_fx["arch"].as_str().unwrap();
    let n_layer = f32_fx["block_count"].as_u64().unwrap() as usize;
    let mut tensors: Vec<(String, Vec<usize>)> =
        records(&f32_fx).into_iter().map(|(name, (_, shape, _))| (name, shape)).collect();
    tensors.sort();
    tensors.reverse();
    for (file, target) in targets() {
        let fx = read_json(&fixture(&format!("ggml_quant/{file}.json")));
        let want = records(&fx);
        assert_eq!(want.len(), tensors.len(), "{file}");
        let plan = Planner::new(target, arch, n_layer, &tensors).unwrap();
        for (name, shape) in &tensors {
            let (want_type, want_shape, _) = &want[name];
            assert_eq!(want_shape, shape, "{file}: {name}");
            assert_eq!(&plan.tensor_type(name).unwrap().to_string(), want_type, "{file}: {name}");
        }
        // llama-quantize logs one "falling back" line per tensor whose rows are not whole blocks.
        assert_eq!(plan.n_fallback() as u64, fx["n_fallback_lines"].as_u64().unwrap(), "{file}");
    }
    assert!(Planner::new(Target::Q4KM, arch, n_layer, &tensors).unwrap().tensor_type("nope.weight").is_err());
    // llama-quantize writes its tensors in the order it processes them.
    let in_file: Vec<&str> =
        f32_fx["tensors"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    let ours: Vec<&str> = llama_quantize_order(&names).into_iter().map(|i| names[i]).collect();
    assert_eq!(ours, in_file);
}

/// The real model, end to end: its tensors dequantized equal llama-quantize's F32 file, and quantized to
/// every target (types planned in file order) equal llama-quantize's outputs byte for byte.
#[test]
fn real_model_quantizes_byte_identical_to_llama_quantize() {
    let Some(model) = real_model() else { return };
    let file = GgufFile::open(&model).unwrap();
    let arch = file.architecture().unwrap().to_string();
    let n_layer = file.get_u32(&format!("{arch}.block_count")).unwrap().unwrap() as usize;
    let f32_fx = records(&read_json(&fixture("ggml_quant/f32.json")));
    let tensors: Vec<(String, Vec<usize>)> = file.tensors().iter().map(|t| (t.name.clone(), t.shape())).collect();
    assert_eq!(tensors.len(), f32_fx.len());
    let plans: Vec<(String, Planner, Records)> = targets()
        .into_iter()
        .map(|(name, target)| {
            let want = records(&read_json(&fixture(&format!("ggml_quant/{name}.json"))));
            (name, Planner::new(target, &arch, n_layer, &tensors).unwrap(), want)
        })
        .collect();
    for (name, shape) in &tensors {
        let x = file.dequantize(name).unwrap();
        let bytes: Vec<u8> = x.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let (want_type, want_shape, want_sha) = &f32_fx[name];
        assert_eq!((want_type.as_str(), want_shape), ("F32", shape), "{name}");
        assert_eq!(&sha_hex(&bytes), want_sha, "{name}: dequantized values differ from llama-quantize's F32");
        let cols = shape[shape.len() - 1];
        plans.par_iter().for_each(|(target, plan, want)| {
            let dtype = plan.tensor_type(name).unwrap();
            let (want_type, want_shape, want_sha) = &want[name];
            assert_eq!(&dtype.to_string(), want_type, "{target}: {name}");
            assert_eq!(want_shape, shape, "{target}: {name}");
            let got = encode(dtype, &x.data, cols).unwrap();
            assert_eq!(&sha_hex(&got), want_sha, "{target}: {name} ({dtype}) bytes differ from llama-quantize's");
        });
    }
}
