//! The ggml block kernel (`super::ggml`) on the wgpu runtime (Mesa's lavapipe where there is no GPU) against
//! the host's reference dequantization (`crate::quant::ggml::dequant`) and gguf-py's recorded values, bit for
//! bit; products by a ggml weight and the tiny GGUF models under `--quant gguf` against the CPU backend.
//! Run alone: `cargo test --release -p lapidary-model --features wgpu cube::ggml_tests`.
use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use serde_json::Value;

use super::ggml::GgmlDevice;
use crate::backends::{FlexCpu, WgpuGpu};
use crate::config::GemmaConfig;
use crate::gemma::load::load_gemma;
use crate::gemma::loss::shifted_targets;
use crate::gemma::model::TokenBatch;
use crate::io::gguf::model::GgufModel;
use crate::io::weights::WeightSource;
use crate::nn::lora::LoraRuntime;
use crate::ops::kernels::Kernels;
use crate::quant::ggml::{GgmlType, GgmlWeight};
use crate::quant::{PackedWeight, QuantKind};
use crate::testing::cube::{ggml_dequant_equals_host, ggml_f16_fields, random_ggml_weight};
use crate::testing::{host, scaled_err, values};

fn adapter() -> bool {
    crate::testing::wgpu_or_skip()
}

fn gguf_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf").join(name)
}

/// The weight dequantized by the kernel on wgpu, as f32.
fn on_wgpu(w: &GgmlWeight) -> Vec<f32> {
    let w = Arc::new(PackedWeight::Ggml(w.clone()));
    host(super::weights::dense_tensor::<cubecl::wgpu::WgpuRuntime, u32>(&w, &Default::default()))
}

/// The first element whose bits differ, as a message.
fn first_difference(name: &str, got: &[f32], want: &[f32]) -> Option<String> {
    assert_eq!(got.len(), want.len(), "{name}: lengths");
    let i = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits())?;
    Some(format!(
        "{name} element {i}: kernel {:e} ({:#x}) vs {:e} ({:#x})",
        got[i],
        got[i].to_bits(),
        want[i],
        want[i].to_bits()
    ))
}

/// gguf-py's blocks and values (`scripts/make_gguf_fixtures.py`, every type it quantizes plus F32/F16/BF16),
/// dequantized on the device: the recorded values exactly.
#[test]
fn kernel_equals_gguf_py_for_every_type() {
    if !adapter() {
        return;
    }
    let path = gguf_fixture("quant_vectors.json");
    let qv: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut seen = Vec::new();
    for (name, case) in qv["types"].as_object().unwrap() {
        let ty = GgmlType::from_id(case["type_id"].as_u64().unwrap() as u32);
        let hex = case["bytes_hex"].as_str().unwrap();
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let want: Vec<f32> = case["values_f32_bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| f32::from_bits(x.as_u64().unwrap() as u32))
            .collect();
        let (block, _) = ty.block_layout().unwrap();
        // One row per block: rows of whole blocks, as a weight's.
        let w = GgmlWeight::new(ty, [want.len() / block, block], bytes).unwrap();
        if let Some(e) = first_difference(name, &on_wgpu(&w), &want) {
            panic!("{e}");
        }
        seen.push(ty);
    }
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q2_K]
        .into_iter()
        .chain([GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::F16, GgmlType::BF16])
    {
        assert!(seen.contains(&ty), "the fixture has no {ty} vectors");
    }
}

/// Every type the kernel reads, random blocks of several shapes, dequantized on the device: the host's
/// reference values, bit for bit (`crate::testing::cube::ggml_dequant_equals_host`).
#[test]
fn kernel_equals_host_dequantization_for_every_type() {
    if !adapter() {
        return;
    }
    ggml_dequant_equals_host::<cubecl::wgpu::WgpuRuntime, u32>(false, &Default::default()).unwrap();
}

/// The resident bytes of a ggml weight on the device are its blocks' bytes (to the next whole word), and the
/// weight cache counts them.
#[test]
fn resident_bytes_are_the_blocks() {
    if !adapter() {
        return;
    }
    let client = <cubecl::wgpu::WgpuRuntime as cubecl::Runtime>::client(&Default::default());
    for (ty, shape) in [(GgmlType::Q4_0, [5, 64]), (GgmlType::Q6_K, [2, 256]), (GgmlType::F16, [3, 7])] {
        let w = random_ggml_weight(ty, shape, 7);
        let d = GgmlDevice::upload(&client, &w);
        assert_eq!(d.resident_bytes(), w.bytes.len().div_ceil(4) * 4, "{ty} {shape:?}");
    }
    // The cache: a live weight's blocks are counted once it has been used (other tests may add theirs at the
    // same time, so only a lower bound is certain).
    let w = Arc::new(PackedWeight::Ggml(random_ggml_weight(GgmlType::Q5_K, [4, 512], 3)));
    let _ = super::weights::dense_tensor::<cubecl::wgpu::WgpuRuntime, u32>(&w, &Default::default());
    assert!(super::weights::resident_bytes() >= w.resident_bytes());
}

/// `x · Wᵀ` and `dy · W` by a ggml weight (the frozen projection's forward and input gradient) on wgpu equal
/// the CPU's, which multiplies the blocks as stored.
#[test]
fn products_by_ggml_weights_equal_cpu() {
    if !adapter() {
        return;
    }
    for (k, ty) in [GgmlType::Q4_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q6_K]
        .into_iter()
        .enumerate()
    {
        // Small scales so that products stay of order one: f16 scales of every magnitude would let one
        // huge element dominate the comparison's scale.
        let mut w = random_ggml_weight(ty, [48, 512], 50 + k as u64);
        let (_, block_bytes) = ty.block_layout().unwrap();
        for b in w.bytes.chunks_exact_mut(block_bytes) {
            for &o in ggml_f16_fields(ty) {
                let d = half::f16::from_f32(0.01 + 0.001 * (b[o] % 7) as f32);
                b[o..o + 2].copy_from_slice(&d.to_le_bytes());
            }
        }
        let w = Arc::new(PackedWeight::Ggml(w));
        let x = values(5 * 512, 1 + k as u64, 1.0);
        let dy = values(5 * 48, 2 + k as u64, 1.0);
        fn run<B: Kernels>(w: &Arc<PackedWeight>, x: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
            let device = Default::default();
            let t = |v: &[f32], c: usize| {
                Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), [5, c]), &device).into_primitive().tensor()
            };
            let back = |p| host(Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(p)));
            (back(B::frozen_matmul(t(x, 512), w)), back(B::frozen_matmul_dx(t(dy, 48), w)))
        }
        let (gy, gdx) = run::<WgpuGpu>(&w, &x, &dy);
        let (cy, cdx) = run::<FlexCpu>(&w, &x, &dy);
        for (name, g, c) in [("x·Wᵀ", gy, cy), ("dy·W", gdx, cdx)] {
            let err = scaled_err(&g, &c);
            assert!(err < 1e-5, "{ty} {name}: wgpu differs from the CPU by {err:e} of the scale");
        }
    }
}

/// Logits and summed NLL of a GGUF fixture model under `--quant gguf` (projections and the tied token table
/// in the file's blocks) on backend `B`.
fn gguf_logits_and_nll<B: crate::ops::gemma_backend::GemmaBackend>(file: &str) -> (Vec<f32>, f64) {
    let m = GgufModel::open(gguf_fixture(file)).expect("fixture");
    let config = GemmaConfig::from_json(&m.config_json().unwrap(), m.path()).unwrap();
    let model = load_gemma::<B>(&config, &m, QuantKind::Gguf, &Default::default()).expect("load");
    let ids: Vec<u32> = (0..24).map(|i| (i * 13 % 200 + 3) as u32).collect();
    let tokens = TokenBatch { ids, batch: 2, seq: 12, positions: (0..24).map(|i| i % 12).collect(), segments: None };
    let logits = host(model.forward(&tokens, &LoraRuntime::default()));
    let labels: Vec<i64> = tokens.ids.iter().map(|&i| i as i64).collect();
    let nll = model.eval_nll(&tokens, &shifted_targets(&labels, tokens.batch, tokens.seq));
    (logits, nll)
}

/// The tiny Gemma 3 and Gemma 4 GGUF files (Q8_0, F16 and F32 tensors; the tied Q8_0 token table) under
/// `--quant gguf` on wgpu: the CPU's logits and loss.
#[test]
fn gguf_models_equal_cpu() {
    if !adapter() {
        return;
    }
    for file in ["tiny_gemma3.gguf.bin", "tiny_gemma4_q8_0.gguf.bin"] {
        let (gl, gn) = gguf_logits_and_nll::<WgpuGpu>(file);
        let (cl, cn) = gguf_logits_and_nll::<FlexCpu>(file);
        let err = scaled_err(&gl, &cl);
        assert!(err < 1e-4, "{file}: logits differ by {err:e} of their scale");
        assert!((gn - cn).abs() <= 1e-5 * cn.abs(), "{file}: summed NLL {gn} on wgpu vs {cn} on CPU");
    }
}

/// LoRA's gradients through the tiny Gemma 3 GGUF under `--quant gguf` on wgpu (the frozen products' input
/// gradients by the kernel's dense weights; the LM-head loss's gradient through the packed token table) equal
/// the CPU's.
#[test]
fn lora_gradients_through_gguf_blocks_equal_cpu() {
    if !adapter() {
        return;
    }
    let m = GgufModel::open(gguf_fixture("tiny_gemma3.gguf.bin")).expect("fixture");
    let config = GemmaConfig::from_json(&m.config_json().unwrap(), m.path()).unwrap();
    let (gn, gg) = super::tests::lora_gradients_of::<WgpuGpu>(&config, &m, QuantKind::Gguf);
    let (cn, cg) = super::tests::lora_gradients_of::<FlexCpu>(&config, &m, QuantKind::Gguf);
    assert!((gn - cn).abs() <= 1e-5 * cn.abs(), "NLL {gn} on wgpu vs {cn} on CPU");
    assert!(!gg.is_empty() && gg.len() == cg.len(), "{} adapted linears on wgpu, {} on CPU", gg.len(), cg.len());
    for (j, ((ga, gb), (ca, cb))) in gg.iter().zip(&cg).enumerate() {
        for (name, g, c) in [("A", ga, ca), ("B", gb, cb)] {
            let err = scaled_err(g, c);
            assert!(err < 1e-4, "linear {j} {name}: gradients differ by {err:e} of their scale");
        }
    }
}
