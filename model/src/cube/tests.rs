//! The CubeCL code on the wgpu runtime against the CPU backend: the NF4/int8, GeGLU, RoPE and attention
//! kernels (the shared checks of `crate::testing::cube`, which `tests/gpu.rs` runs on CUDA), logits and losses on
//! the tiny Gemma 1/2/3 fixtures, and LoRA gradients through the whole model (frozen products by the
//! kernels' dense weights, the kernels' backwards, the chunked LM-head loss in Burn ops).
//!
//! `scripts/test.sh` runs them (it installs Mesa's CPU Vulkan driver, `mesa-vulkan-drivers`, when missing,
//! and sets `LAPIDARY_REQUIRE_WGPU=1`, so that no adapter is a failure there). Alone: `cargo test --release
//! -p lapidary-model --features wgpu,testing cube::`; where wgpu finds no adapter and the variable is unset,
//! each test prints `skipped: no wgpu adapter (why)` and passes.
//!
//! Tolerances: both sides compute in f32 and differ by summation order (and fused multiply-adds) only.
use std::path::PathBuf;

use burn::tensor::{ElementConversion, Tensor, TensorData};
use burn_autodiff::Autodiff;

use crate::backends::{FlexCpu, WgpuGpu};
use crate::config::GemmaConfig;
use crate::gemma::load::load_gemma;
use crate::gemma::loss::shifted_targets;
use crate::gemma::model::{linears_mut, TokenBatch};
use crate::io::files::ModelFiles;
use crate::io::weights::WeightSource;
use crate::nn::lora::{LoraRuntime, TARGETS};
use crate::ops::gemma_backend::GemmaBackend;
use crate::ops::kernels::Kernels;
use crate::peft::adapter::{init_lora, AdapterConfig};
use crate::quant::QuantKind;
use crate::testing::cube::{
    attention_equals_cpu, dequant_equals_host, dropout_equals_host, lm_head_equals_cpu, rms_norm_equals_cpu,
};
use crate::testing::{host, scaled_err, values};

fn adapter() -> bool {
    crate::testing::wgpu_or_skip()
}

fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny").join(arch)
}

#[test]
fn kernels_equal_host_dequantization() {
    if !adapter() {
        return;
    }
    // Odd sizes (a partial byte, word and 64-block) and more than 256 blocks (two second-level scales).
    let shapes = [[3, 7], [33, 130], [300, 64], [513, 96]];
    dequant_equals_host::<cubecl::wgpu::WgpuRuntime, u32>(&shapes, &Default::default()).unwrap();
}

/// The GeGLU kernels against the definition in f64 (`gelu_tanh(g)·u` and its two partial derivatives), on
/// f32 tensors of an odd size.
#[test]
fn geglu_kernels_equal_the_definition() {
    if !adapter() {
        return;
    }
    let device = Default::default();
    let n = 3 * 1031;
    let (g, u, d) = (values(n, 1, 4.0), values(n, 2, 2.0), values(n, 3, 1.0));
    let t = |v: &[f32]| {
        Tensor::<WgpuGpu, 2>::from_data(TensorData::new(v.to_vec(), [3, n / 3]), &device).into_primitive().tensor()
    };
    let back = |p| host(Tensor::<WgpuGpu, 2>::from_primitive(burn::tensor::TensorPrimitive::Float(p)));
    let out = back(WgpuGpu::geglu(t(&g), t(&u)));
    let (dg, du) = WgpuGpu::geglu_backward(t(&g), t(&u), t(&d));
    let (dg, du) = (back(dg), back(du));
    let (k, c) = ((2.0f64 / std::f64::consts::PI).sqrt(), 0.044715f64);
    for i in 0..n {
        let (x, y, z) = (g[i] as f64, u[i] as f64, d[i] as f64);
        let th = (k * (x + c * x * x * x)).tanh();
        let gelu = 0.5 * x * (1.0 + th);
        let dgelu = 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * k * (1.0 + 3.0 * c * x * x);
        for (name, got, want) in [("out", out[i], gelu * y), ("dgate", dg[i], z * y * dgelu), ("dup", du[i], z * gelu)]
        {
            assert!((got as f64 - want).abs() < 1e-5 * (1.0 + want.abs()), "{name}[{i}]: {got} vs {want}");
        }
    }
}

/// The RoPE kernel against the definition (rotate-half, tables broadcast over heads), on f32.
#[test]
fn rope_kernel_equals_the_definition() {
    if !adapter() {
        return;
    }
    let device = Default::default();
    let (b, s, h, d) = (2, 5, 3, 8);
    let x = values(b * s * h * d, 4, 1.0);
    let (cos, sin) = (values(b * s * d, 5, 1.0), values(b * s * d, 6, 1.0));
    let t = |v: &[f32], shape: [usize; 4]| {
        Tensor::<WgpuGpu, 4>::from_data(TensorData::new(v.to_vec(), shape), &device).into_primitive().tensor()
    };
    let out = WgpuGpu::rope(t(&x, [b, s, h, d]), t(&cos, [b, s, 1, d]), t(&sin, [b, s, 1, d]));
    let out = host(Tensor::<WgpuGpu, 4>::from_primitive(burn::tensor::TensorPrimitive::Float(out)));
    for (i, got) in out.iter().enumerate() {
        let (row, k) = (i / (h * d), i % d);
        let rotated = if k < d / 2 { -x[i + d / 2] } else { x[i - d / 2] };
        let want = x[i] * cos[row * d + k] + rotated * sin[row * d + k];
        assert!((got - want).abs() < 1e-6, "element {i}: {got} vs {want}");
    }
}

fn fixture_batch() -> TokenBatch {
    // Two packed rows of 12: segments restart positions (the mask and RoPE see both).
    let ids: Vec<u32> = (0..24).map(|i| (i * 13 % 200 + 3) as u32).collect();
    let positions: Vec<usize> = (0..24).map(|i| if i % 12 < 7 { i % 12 } else { i % 12 - 7 }).collect();
    let segments: Vec<u32> = (0..24).map(|i| if i % 12 < 7 { 1 } else { 2 }).collect();
    TokenBatch { ids, batch: 2, seq: 12, positions, segments: Some(segments) }
}

/// Logits and summed NLL of the fixture batch on backend `B`.
fn logits_and_nll<B: GemmaBackend>(arch: &str, quant: QuantKind) -> (Vec<f32>, f64) {
    let files = ModelFiles::open(&fixture(arch)).expect("fixture model");
    let model = load_gemma::<B>(&files.config, files.weights.as_ref(), quant, &Default::default()).expect("load");
    let tokens = fixture_batch();
    let logits = host(model.forward(&tokens, &LoraRuntime::default()));
    let labels: Vec<i64> = tokens.ids.iter().map(|&i| i as i64).collect();
    let nll = model.eval_nll(&tokens, &shifted_targets(&labels, tokens.batch, tokens.seq));
    (logits, nll)
}

#[test]
fn logits_and_loss_equal_cpu_on_the_fixtures() {
    if !adapter() {
        return;
    }
    // Gemma 4: global layers of head_dim 32 beside sliding ones of 16, shared keys/values, per-layer inputs;
    // the MoE one's router and expert products.
    for arch in ["gemma1", "gemma2", "gemma3", "gemma4", "gemma4_moe"] {
        for quant in [QuantKind::None, QuantKind::Nf4, QuantKind::Int8] {
            let (gl, gn) = logits_and_nll::<WgpuGpu>(arch, quant);
            let (cl, cn) = logits_and_nll::<FlexCpu>(arch, quant);
            let err = scaled_err(&gl, &cl);
            let loss_err = (gn - cn).abs() / cn.abs();
            assert!(err < 1e-4, "{arch} {quant:?}: logits differ by {err:e} of their scale");
            assert!(loss_err < 1e-5, "{arch} {quant:?}: summed NLL {gn} on wgpu vs {cn} on CPU");
        }
    }
}

/// Each LoRA linear's `(d lora_A, d lora_B)`, flattened.
pub(super) type LoraGrads = Vec<(Vec<f32>, Vec<f32>)>;

/// The summed NLL of the fixture batch and every LoRA factor's gradient on `Autodiff<B>`.
fn lora_gradients<B: GemmaBackend>(arch: &str) -> (f32, LoraGrads) {
    let files = ModelFiles::open(&fixture(arch)).expect("fixture model");
    lora_gradients_of::<B>(&files.config, files.weights.as_ref(), QuantKind::Nf4)
}

/// [`lora_gradients`] of a model from `src`, its frozen weights as `quant` makes them.
pub(super) fn lora_gradients_of<B: GemmaBackend>(
    config: &GemmaConfig,
    src: &dyn WeightSource,
    quant: QuantKind,
) -> (f32, LoraGrads) {
    let device = Default::default();
    let mut model = load_gemma::<Autodiff<B>>(config, src, quant, &device).expect("load");
    let targets: Vec<String> = TARGETS.iter().map(|s| s.to_string()).collect();
    let mut cfg = AdapterConfig::new(4, 8.0, 0.0, &targets, false, None);
    if model.config.moe.is_some() {
        cfg = cfg.with_target_parameters(&crate::peft::adapter::EXPERT_PARAMETERS.map(String::from));
    }
    init_lora(&mut model, &cfg, 3).expect("lora");
    // A and B set by hand (the random init draws from each backend's generator), B nonzero so that A has a
    // gradient too.
    for (k, (_, l)) in linears_mut(&mut model).into_iter().enumerate() {
        let ad = l.adapter.as_mut().expect("adapter");
        let ([o, r], [r2, i]) = (ad.b.dims(), ad.a.dims());
        ad.b = Tensor::from_data(TensorData::new(values(o * r, 2 * k as u64, 0.05), [o, r]), &device).require_grad();
        ad.a =
            Tensor::from_data(TensorData::new(values(r2 * i, 2 * k as u64 + 1, 0.2), [r2, i]), &device).require_grad();
    }
    let tokens = fixture_batch();
    let labels: Vec<i64> = tokens.ids.iter().map(|&i| i as i64).collect();
    let targets = shifted_targets(&labels, tokens.batch, tokens.seq);
    let rt = LoraRuntime::default();
    let nll = model.nll_sum(model.forward_hidden(&tokens, None, &rt), &targets);
    let value: f32 = nll.clone().into_scalar().elem();
    let grads = nll.backward();
    let out = linears_mut(&mut model)
        .into_iter()
        .map(|(_, l)| {
            let ad = l.adapter.as_ref().expect("adapter");
            (host(ad.a.grad(&grads).expect("grad of A")), host(ad.b.grad(&grads).expect("grad of B")))
        })
        .collect();
    (value, out)
}

#[test]
fn lora_gradients_equal_cpu_on_the_fixtures() {
    if !adapter() {
        return;
    }
    for arch in ["gemma1", "gemma2", "gemma3", "gemma4", "gemma4_moe"] {
        let (gn, gg) = lora_gradients::<WgpuGpu>(arch);
        let (cn, cg) = lora_gradients::<FlexCpu>(arch);
        assert!((gn - cn).abs() <= 1e-5 * cn.abs(), "{arch}: NLL {gn} on wgpu vs {cn} on CPU");
        assert_eq!(gg.len(), cg.len());
        for (j, ((ga, gb), (ca, cb))) in gg.iter().zip(&cg).enumerate() {
            for (name, g, c) in [("A", ga, ca), ("B", gb, cb)] {
                let err = scaled_err(g, c);
                assert!(err < 1e-4, "{arch} linear {j} {name}: gradients differ by {err:e} of their scale");
            }
        }
    }
}

/// The attention kernels (`super::attention`: vendor products around one softmax kernel each way, the mask
/// computed on the device) against the CPU: outputs, log-sum-exps and all three gradients.
#[test]
fn attention_kernels_equal_cpu() {
    if !adapter() {
        return;
    }
    attention_equals_cpu::<WgpuGpu>(1e-5, burn::tensor::DType::F32).unwrap();
}

/// The RMSNorm kernels against the CPU.
#[test]
fn rms_norm_kernels_equal_cpu() {
    if !adapter() {
        return;
    }
    rms_norm_equals_cpu::<WgpuGpu>(1e-5).unwrap();
}

/// The LM-head loss's kernel (and its products) against the CPU.
#[test]
fn lm_head_loss_equals_cpu() {
    if !adapter() {
        return;
    }
    lm_head_equals_cpu::<WgpuGpu>(1e-5).unwrap();
}

/// `dense_matmul` (Burn's matmul behind `super::product` on wgpu) of batched transposed views against the
/// CPU, on the shapes where Burn's own wgpu matmul is wrong (`[2|4, 600, m]ᵀ · [2|4, 600, n]`) and around
/// them.
#[test]
fn batched_products_of_transposed_views_equal_cpu() {
    if !adapter() {
        return;
    }
    for (batch, m, k, n) in
        [(2, 300, 600, 16), (4, 64, 600, 16), (4, 300, 600, 8), (2, 300, 1200, 16), (1, 16, 2048, 640)]
    {
        let (a, b) = (values(batch * k * m, 1, 1.0), values(batch * k * n, 2, 1.0));
        fn run<B: GemmaBackend>(a: &[f32], b: &[f32], [batch, m, k, n]: [usize; 4]) -> Vec<f32> {
            let device = Default::default();
            let a = Tensor::<B, 3>::from_data(TensorData::new(a.to_vec(), [batch, k, m]), &device).swap_dims(1, 2);
            let b = Tensor::<B, 3>::from_data(TensorData::new(b.to_vec(), [batch, k, n]), &device);
            let c = B::dense_matmul(a.into_primitive().tensor(), b.into_primitive().tensor());
            host(Tensor::<B, 3>::from_primitive(burn::tensor::TensorPrimitive::Float(c)))
        }
        let dims = [batch, m, k, n];
        let err = scaled_err(&run::<WgpuGpu>(&a, &b, dims), &run::<FlexCpu>(&a, &b, dims));
        assert!(err < 1e-5, "{dims:?}: differs from the CPU by {err:e} of its scale");
    }
}

/// The dropout-mask kernel against the host's generator, element for element.
#[test]
fn dropout_kernel_equals_host() {
    if !adapter() {
        return;
    }
    dropout_equals_host::<WgpuGpu>().unwrap();
}
