//! Checks of the CubeCL code against the CPU that every runtime runs the same way: the wgpu tests
//! (`crate::cube::tests`, on Mesa's CPU Vulkan driver here) and the CUDA ones (`tests/gpu.rs`, where a GPU is)
//! call these, so both hold the kernels to one standard. Each returns what differed, as a message.
use std::sync::Arc;

use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_cubecl::element::BoolElement;

use super::{host, scaled_err, values};
use crate::backends::FlexCpu;
use crate::cube::gemm::Gemm;
use crate::mask::{AttnMask, Span};
use crate::ops::attention::AttnSpec;
use crate::ops::gemma_backend::GemmaBackend;
use crate::quant::ggml::{GgmlType, GgmlWeight, SUPPORTED_TYPES};
use crate::quant::{Int8Weight, Nf4Weight, PackedWeight};

/// The NF4 and int8 dequantization kernels of runtime `R` against the host's, within 2 ulp (a compiler may
/// fuse the absmax's multiply-add, see `crate::cube::dequant`), on weights of the given shapes.
pub fn dequant_equals_host<R: Gemm, BT: BoolElement>(shapes: &[[usize; 2]], device: &R::Device) -> Result<(), String> {
    for &shape in shapes {
        let data = values(shape[0] * shape[1], shape[1] as u64, 0.05);
        let q = Nf4Weight::quantize(&data, shape);
        // A checkpoint saved without double quantization: one f32 absmax per block.
        let single = Arc::new(PackedWeight::Nf4(Nf4Weight::single_level(shape, q.packed.clone(), q.absmax())));
        let nf4 = Arc::new(PackedWeight::Nf4(q));
        let int8 = Arc::new(PackedWeight::Int8(Int8Weight::quantize(&data, shape)));
        for (name, w) in [("nf4", nf4), ("nf4 single-level", single), ("int8", int8)] {
            let got = host(crate::cube::weights::dense_tensor::<R, BT>(&w, device));
            let want = w.dequantize();
            if got.len() != want.len() {
                return Err(format!("{name} {shape:?}: {} values, want {}", got.len(), want.len()));
            }
            for (i, (g, h)) in got.iter().zip(&want).enumerate() {
                if (g - h).abs() > 2.0 * f32::EPSILON * h.abs() {
                    return Err(format!("{name} {shape:?} element {i}: kernel {g} vs host {h}"));
                }
            }
        }
    }
    Ok(())
}

/// A splitmix64 stream: the same blocks on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Finite f16 bits of any exponent (zeros and subnormals included), either sign.
    fn f16(&mut self) -> [u8; 2] {
        let mut h = self.next() as u16;
        if (h >> 10) & 0x1f == 0x1f {
            h &= !0x4000; // exponent 31 (inf, NaN) -> 15
        }
        h.to_le_bytes()
    }
}

/// Byte offsets of the f16 fields (scales, mins) of one block of `ty`; the quant bytes between are free.
pub fn ggml_f16_fields(ty: GgmlType) -> &'static [usize] {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 => &[0],
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82],
        Q3_K => &[108],
        Q6_K => &[208],
        _ => &[],
    }
}

/// Random but valid blocks of `ty` for `shape`: random quant bytes, finite f16 (or f32) scales of every
/// magnitude, subnormals and zeros included.
pub fn random_ggml_weight(ty: GgmlType, shape: [usize; 2], seed: u64) -> GgmlWeight {
    let (block, block_bytes) = ty.block_layout().unwrap();
    let mut rng = Rng(seed);
    let n_blocks = shape[0] * shape[1] / block;
    let mut bytes: Vec<u8> = (0..n_blocks * block_bytes).map(|_| rng.next() as u8).collect();
    for b in bytes.chunks_exact_mut(block_bytes) {
        match ty {
            GgmlType::F16 => b.copy_from_slice(&rng.f16()),
            // Finite: exponent 255 (inf, NaN) cleared to 127.
            GgmlType::BF16 if b[1] & 0x7f == 0x7f && b[0] & 0x80 != 0 => b[1] &= !0x40,
            GgmlType::F32 if b[3] & 0x7f == 0x7f && b[2] & 0x80 != 0 => b[3] &= !0x40,
            GgmlType::Q8_K => b[..4].copy_from_slice(&((rng.next() % 2001) as f32 / 1000.0 - 1.0).to_le_bytes()),
            _ => {
                for &o in ggml_f16_fields(ty) {
                    b[o..o + 2].copy_from_slice(&rng.f16());
                }
            }
        }
    }
    GgmlWeight::new(ty, shape, bytes).unwrap()
}

/// The ggml block kernel of runtime `R` (`crate::cube::ggml`) against the host's reference dequantization, for
/// every type it reads, on random blocks of several shapes (one block; odd row counts; more blocks than one
/// cube of threads): bit for bit, or where the compiler may contract `d · q − m` into a fused multiply-add
/// (`fused`: NVRTC), the types with that add within 2 ulp of their block's largest value.
pub fn ggml_dequant_equals_host<R: Gemm, BT: BoolElement>(fused: bool, device: &R::Device) -> Result<(), String> {
    use crate::quant::ggml::GgmlType::*;
    let types: Vec<GgmlType> = SUPPORTED_TYPES.iter().copied().filter(|&t| crate::cube::ggml::on_device(t)).collect();
    if types.len() != SUPPORTED_TYPES.len() - 1 {
        return Err(format!("kernels for {types:?}: every type but F64 should have one"));
    }
    for (k, &ty) in types.iter().enumerate() {
        let (block, _) = ty.block_layout().expect("a supported type has a layout");
        let with_add = matches!(ty, Q4_1 | Q5_1 | Q2_K | Q4_K | Q5_K);
        // Scalar types get a wider row, so that a row is not one element.
        let width = if block == 1 { 96 } else { block };
        for (s, shape) in [[1, width], [3, 2 * width], [37, 3 * width]].into_iter().enumerate() {
            let w = random_ggml_weight(ty, shape, 1000 * k as u64 + s as u64);
            let want = w.dequantize();
            if !want.iter().all(|x| x.is_finite()) {
                return Err(format!("{ty} {shape:?}: the test's blocks must dequantize to finite values"));
            }
            let got = host(crate::cube::weights::dense_tensor::<R, BT>(&Arc::new(PackedWeight::Ggml(w)), device));
            for (b, (g, h)) in got.chunks(block).zip(want.chunks(block)).enumerate() {
                let tol = if fused && with_add {
                    2.0 * f32::EPSILON * h.iter().fold(0f32, |m, x| m.max(x.abs()))
                } else {
                    0.0
                };
                for (j, (g, h)) in g.iter().zip(h).enumerate() {
                    if g.to_bits() != h.to_bits() && (g - h).abs() > tol {
                        let i = b * block + j;
                        return Err(format!(
                            "{ty} {shape:?} element {i}: kernel {g:e} ({:#x}) vs host {h:e} ({:#x})",
                            g.to_bits(),
                            h.to_bits()
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Backend `B`'s dropout masks against the host's (`crate::ops::dropout`), element for element: the
/// generator is integer arithmetic, so they must be identical; shapes with a partial last cube and more
/// elements than one grid row of cubes, seeds with high bits set.
pub fn dropout_equals_host<B: GemmaBackend>() -> Result<(), String> {
    let device = Default::default();
    for (shape, p, seed) in [([3, 7], 0.1, 1u64), ([1000, 777], 0.05, 0xdead_beef_0123_4567), ([64, 2048], 0.5, 9)] {
        let got =
            host(Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(B::dropout_mask(shape, p, seed, &device))));
        let want = crate::ops::dropout::mask_values(shape[0] * shape[1], p, seed);
        if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
            return Err(format!(
                "dropout {shape:?} p {p} seed {seed:#x}: element {i} is {} on the device, {} on the host",
                got[i], want[i]
            ));
        }
    }
    Ok(())
}

/// `(batch, queries, keys, heads, kv heads, head dim, window, softcap, packed)`.
type AttnCase = (usize, usize, usize, usize, usize, usize, Option<usize>, Option<f64>, bool);

/// Grouped queries, softcapping, a sliding window, packed segments (70 tokens each, positions restarting),
/// queries after cached keys, a single query; one with `kv heads · rep · queries` rows of 600 (the shape of
/// Burn's wgpu product bug, `super::product`).
const ATTN_CASES: [AttnCase; 6] = [
    (2, 300, 300, 4, 2, 16, None, None, false),
    // Gemma 4's global layers: head_dim 512.
    (1, 70, 70, 4, 1, 512, None, None, false),
    (1, 300, 300, 4, 1, 8, Some(37), Some(5.0), false),
    (2, 210, 210, 2, 2, 8, None, None, true),
    (2, 3, 260, 4, 2, 8, None, Some(5.0), false),
    (1, 1, 140, 8, 1, 8, Some(50), None, false),
];

fn attn_spec(&(b, s, t, _, _, d, window, softcap, packed): &AttnCase) -> AttnSpec {
    let (q, k) = if packed {
        let seg: Vec<u32> = (0..b * t).map(|i| ((i % t) / 70) as u32).collect();
        let span = Span { positions: (0..b * t).map(|i| (i % t) % 70).collect(), segments: Some(seg) };
        (span.clone(), span)
    } else {
        // Keys at 0..t, queries the last s of them.
        let q = Span { positions: (0..b).flat_map(|_| t - s..t).collect(), segments: None };
        (q, Span { positions: (0..b).flat_map(|_| 0..t).collect(), segments: None })
    };
    AttnSpec { mask: Arc::new(AttnMask::new(b, q, k, window)), scaling: 1.0 / (d as f64).sqrt(), softcap }
}

/// `[out, lse, dq, dk, dv]` of `B::attend_lse` and `B::attend_backward` on `(q, k, v, dout)` held in
/// `dtype`, read back as f32.
fn attention_on<B: GemmaBackend>(data: &[(Vec<f32>, [usize; 4]); 4], spec: &AttnSpec, dtype: DType) -> Vec<Vec<f32>> {
    let device = Default::default();
    let t = |(v, s): &(Vec<f32>, [usize; 4])| {
        crate::dtype::cast(Tensor::<B, 4>::from_data(TensorData::new(v.clone(), *s), &device), dtype)
            .into_primitive()
            .tensor()
    };
    let back = |p| host(Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(p)));
    let (out, lse) = B::attend_lse(t(&data[0]), t(&data[1]), t(&data[2]), spec);
    let lse3 = host(Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(lse.clone())));
    let (dq, dk, dv) = B::attend_backward(t(&data[0]), t(&data[1]), t(&data[2]), out.clone(), lse, t(&data[3]), spec);
    vec![back(out), lse3, back(dq), back(dk), back(dv)]
}

/// Backend `B`'s attention (output, log-sum-exp, and the three gradients) against burn-flex's host kernel —
/// itself checked against autodiff through transformers' formulation in `crate::ops` — within `tol` of each
/// result's scale, on [`ATTN_CASES`], whole and by query chunks (`crate::cube::attention::with_query_chunk`: key
/// ranges cut per chunk, dk and dv summed over chunks). With `dtype` bf16, `B` gets the inputs in bf16 and the CPU the same
/// (bf16-rounded) values in f32: `B`'s own roundings (`P` and `dS` to bf16, the outputs) are what differs.
pub fn attention_equals_cpu<B: GemmaBackend>(tol: f32, dtype: DType) -> Result<(), String> {
    let round = |v: Vec<f32>| match dtype {
        DType::BF16 => v.into_iter().map(|x| half::bf16::from_f32(x).to_f32()).collect(),
        _ => v,
    };
    for (n, case) in ATTN_CASES.iter().enumerate() {
        let &(b, s, t, h, kvh, d, ..) = case;
        let spec = attn_spec(case);
        let (qs, ks) = ([b, s, h, d], [b, t, kvh, d]);
        let data = [
            (round(values(qs.iter().product(), 1, 3.0)), qs),
            (round(values(ks.iter().product(), 2, 3.0)), ks),
            (round(values(ks.iter().product(), 3, 1.0)), ks),
            (round(values(qs.iter().product(), 4, 1.0)), qs),
        ];
        let want = attention_on::<FlexCpu>(&data, &spec, DType::F32);
        // Whole (these shapes fit one chunk), then by chunks of 64 and of 7 query positions.
        for chunk in [None, Some(64), Some(7)] {
            let got = match chunk {
                None => attention_on::<B>(&data, &spec, dtype),
                Some(c) => crate::cube::attention::with_query_chunk(c, || attention_on::<B>(&data, &spec, dtype)),
            };
            // Each score sums d products in an order of its own on either side: the rounding difference grows
            // with d (5.7e-5 of the scale at d = 512 against < 1e-5 at d <= 64 on lavapipe).
            let tol = tol * (d as f32 / 64.0).max(1.0);
            for (i, what) in ["out", "lse", "dq", "dk", "dv"].iter().enumerate() {
                let err = scaled_err(&got[i], &want[i]);
                if err.is_nan() || err >= tol {
                    return Err(format!(
                        "attention ({dtype:?}, query chunks {chunk:?}) case {n} {case:?} {what}: differs from the \
                         CPU by {err:e} of its scale"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Backend `B`'s RMSNorm and its backward against burn-flex's (the Burn-op version, checked against
/// autodiff through transformers' formulation in `crate::ops`) within `tol` of each result's scale: rows of
/// a hidden size wider than a cube's units (and not a multiple of them), and of a head size narrower.
pub fn rms_norm_equals_cpu<B: GemmaBackend>(tol: f32) -> Result<(), String> {
    fn on<B: GemmaBackend>(shape: [usize; 3], data: &[Vec<f32>; 3]) -> [Vec<f32>; 2] {
        let device = Default::default();
        let x =
            || Tensor::<B, 3>::from_data(TensorData::new(data[0].clone(), shape), &device).into_primitive().tensor();
        let dim = shape[2];
        let scale =
            || Tensor::<B, 1>::from_data(TensorData::new(data[1].clone(), [dim]), &device).into_primitive().tensor();
        let dout =
            Tensor::<B, 3>::from_data(TensorData::new(data[2].clone(), shape), &device).into_primitive().tensor();
        let back = |p| host(Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(p)));
        [back(B::rms_norm(x(), scale(), 1e-6)), back(B::rms_norm_backward(x(), scale(), 1e-6, dout))]
    }
    for shape in [[2, 7, 1000], [3, 5, 64]] {
        let n = shape.iter().product();
        let data = [values(n, 11, 4.0), values(shape[2], 12, 1.5), values(n, 13, 1.0)];
        let (got, want) = (on::<B>(shape, &data), on::<FlexCpu>(shape, &data));
        for (i, what) in ["rms_norm", "its backward"].iter().enumerate() {
            let err = scaled_err(&got[i], &want[i]);
            if err.is_nan() || err >= tol {
                return Err(format!("{what} {shape:?}: differs from the CPU by {err:e} of its scale"));
            }
        }
    }
    Ok(())
}

/// Backend `B`'s LM-head loss (the summed NLL and its gradient with respect to the hidden states) against
/// burn-flex's host kernel (checked against transformers' losses in `crate::lm_head_loss`) within `tol`:
/// more rows than one chunk, a vocabulary that is no multiple of a cube's units, targets on some rows only
/// (one at the vocabulary's last id), with and without a softcap.
pub fn lm_head_equals_cpu<B: GemmaBackend>(tol: f32) -> Result<(), String> {
    let (n, h, vocab) = (300, 48, 1000);
    let hidden = values(n * h, 21, 2.0);
    let table = values(vocab * h, 22, 1.0);
    let mut targets: Vec<(usize, u32)> = (0..n).filter(|i| i % 7 != 3).map(|i| (i, (i * 37 % vocab) as u32)).collect();
    targets[5].1 = vocab as u32 - 1;
    fn on<B: GemmaBackend>(
        hidden: &[f32],
        table: &[f32],
        [n, h, vocab]: [usize; 3],
        targets: &[(usize, u32)],
        softcap: Option<f64>,
    ) -> (f32, Vec<f32>) {
        let device = Default::default();
        let hs = Tensor::<B, 2>::from_data(TensorData::new(hidden.to_vec(), [n, h]), &device).into_primitive().tensor();
        let e =
            Tensor::<B, 2>::from_data(TensorData::new(table.to_vec(), [vocab, h]), &device).into_primitive().tensor();
        let (nll, dh) = B::lm_head_nll_grad(hs, crate::ops::lm_head::LmTable::Dense(e), targets, softcap, true);
        let nll = host(Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(nll)))[0];
        (nll, host(Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(dh.expect("gradient")))))
    }
    for softcap in [None, Some(3.0)] {
        let dims = [n, h, vocab];
        let (gn, gd) = on::<B>(&hidden, &table, dims, &targets, softcap);
        let (cn, cd) = on::<FlexCpu>(&hidden, &table, dims, &targets, softcap);
        let (nll_err, grad_err) = ((gn - cn).abs() / cn.abs(), scaled_err(&gd, &cd));
        if nll_err.is_nan() || nll_err >= tol || grad_err.is_nan() || grad_err >= tol {
            return Err(format!(
                "LM-head loss (softcap {softcap:?}): NLL {gn} vs {cn} on the CPU, gradient off by {grad_err:e} of its scale"
            ));
        }
    }
    Ok(())
}
