//! The fused ops' backward passes against autodiff of their compositions, on both CPU backends, f32 and
//! bf16: values and gradients equal (bit for bit where the ops are the same).
use burn::tensor::activation::gelu_approximate;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_autodiff::Autodiff;

use super::gemma_backend::GemmaBackend;
use super::kernels::Kernels;
use super::lora::LoraPrims;
use crate::backends::{Cpu, NdArrayCpu};
use crate::testing::{host, values};

fn close(name: &str, a: &[f32], b: &[f32], tol: f32) {
    let err = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(err < tol, "{name}: max difference {err}");
}

/// Outputs and gradients of the fused GeGLU and RoPE (host kernels on flex, the Burn-op defaults on
/// ndarray) equal Burn's own autodiff through the unfused composition.
#[test]
fn fused_ops_equal_autodiff_of_the_composition() {
    fn run<B: GemmaBackend>(fused: bool) -> Vec<Vec<f32>> {
        type T<B, const D: usize> = Tensor<Autodiff<B>, D>;
        let dev = Default::default();
        let shape = [2, 5, 3, 8]; // batch, seq, heads, head_dim
        let n: usize = shape.iter().product();
        let t4 = |v: Vec<f32>, s: [usize; 4]| T::<B, 4>::from_data(TensorData::new(v, s), &dev);
        let g = t4(values(n, 1, 5.0), shape).require_grad();
        let u = t4(values(n, 2, 1.0), shape).require_grad();
        let x = t4(values(n, 3, 2.0), shape).require_grad();
        // RoPE tables repeat their angles in both halves of head_dim (transformers' cat(freqs, freqs)).
        let ang: Vec<f32> = values(2 * 5 * 4, 4, 3.0).chunks(4).flat_map(|h| [h, h].concat()).collect();
        let cos = t4(ang.iter().map(|a| a.cos()).collect(), [2, 5, 1, 8]);
        let sin = t4(ang.iter().map(|a| a.sin()).collect(), [2, 5, 1, 8]);
        let prim = |t: T<B, 4>| t.into_primitive().tensor();
        let wrap = |p| T::<B, 4>::from_primitive(TensorPrimitive::Float(p));
        let (act, rot) = if fused {
            (
                wrap(Autodiff::<B>::geglu(prim(g.clone()), prim(u.clone()))),
                wrap(Autodiff::<B>::rope(prim(x.clone()), prim(cos.clone()), prim(sin.clone()))),
            )
        } else {
            let x1 = x.clone().narrow(3, 0, 4);
            let x2 = x.clone().narrow(3, 4, 4);
            let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
            (gelu_approximate(g.clone()) * u.clone(), x.clone() * cos + rotated * sin)
        };
        let w1 = t4(values(n, 5, 1.0), shape);
        let w2 = t4(values(n, 6, 1.0), shape);
        let loss = (act.clone() * w1).sum() + (rot.clone() * w2).sum();
        let grads = loss.backward();
        vec![
            host(act.inner()),
            host(rot.inner()),
            host(g.grad(&grads).unwrap()),
            host(u.grad(&grads).unwrap()),
            host(x.grad(&grads).unwrap()),
        ]
    }
    let want = run::<Cpu>(false);
    for (name, got) in [("flex", run::<Cpu>(true)), ("ndarray", run::<NdArrayCpu>(true))] {
        for (i, what) in ["geglu", "rope", "d gate", "d up", "d x"].iter().enumerate() {
            close(&format!("{name} {what}"), &got[i], &want[i], 2e-5);
        }
    }
}

/// LoRA's branch with its own backward equals Burn's autodiff through the composition PEFT computes
/// (`cast → dropout → ·Aᵀ → ·Bᵀ → ·scale → cast`), with and without dropout, for f32 and bf16 inputs:
/// the output and the gradients with respect to `x`, `A` and `B` bit for bit (the same ops in the same
/// order; only what is kept for the backward differs).
#[test]
fn lora_branch_equals_autodiff_of_the_composition() {
    use burn::tensor::DType;

    fn run(dtype: DType, dropout: Option<(f64, u64)>, fused: bool) -> Vec<Vec<f32>> {
        type T<const D: usize> = Tensor<Autodiff<Cpu>, D>;
        let dev = Default::default();
        let (n, i, r, o) = (37, 24, 4, 19);
        let x = crate::dtype::cast(T::<2>::from_data(TensorData::new(values(n * i, 1, 2.0), [n, i]), &dev), dtype)
            .require_grad();
        let a = T::<2>::from_data(TensorData::new(values(r * i, 2, 0.5), [r, i]), &dev).require_grad();
        let b = T::<2>::from_data(TensorData::new(values(o * r, 3, 0.5), [o, r]), &dev).require_grad();
        let scale = 2.0;
        let y = if fused {
            let lora = LoraPrims {
                a: a.clone().into_primitive().tensor(),
                b: b.clone().into_primitive().tensor(),
                scale,
                dropout,
            };
            let p = Autodiff::<Cpu>::lora_delta(x.clone().into_primitive().tensor(), lora);
            T::<2>::from_primitive(TensorPrimitive::Float(p))
        } else {
            let mut x2 = crate::dtype::cast(x.clone(), DType::F32);
            if let Some((p, seed)) = dropout {
                let m = crate::ops::dropout::mask_values(n * i, p, seed);
                x2 = x2 * T::<2>::from_data(TensorData::new(m, [n, i]), &dev);
            }
            let d = super::dense(super::dense(x2, a.clone().transpose()), b.clone().transpose()) * scale;
            crate::dtype::cast(d, dtype)
        };
        let w = crate::dtype::cast(T::<2>::from_data(TensorData::new(values(n * o, 4, 1.0), [n, o]), &dev), dtype);
        let grads = (y.clone() * w).sum().backward();
        vec![
            host(y.inner()),
            host(x.grad(&grads).unwrap()),
            host(a.grad(&grads).unwrap()),
            host(b.grad(&grads).unwrap()),
        ]
    }
    for dtype in [DType::F32, DType::BF16] {
        for dropout in [None, Some((0.3, 11u64))] {
            let (got, want) = (run(dtype, dropout, true), run(dtype, dropout, false));
            for (k, what) in ["delta", "d x", "d A", "d B"].iter().enumerate() {
                assert_eq!(got[k], want[k], "{dtype:?} dropout {dropout:?}: {what}");
            }
            if dropout.is_some() {
                let none = run(dtype, None, true);
                assert_ne!(got[2], none[2], "dropout changes dA");
            }
        }
    }
}

/// GeGLU and the down projection with its adapter as one op (which keeps `gate` and `up` but not the
/// adapter's input) equal the composition it replaces (GeGLU op, frozen product, LoRA op, add) bit for
/// bit: output and the gradients with respect to `gate`, `up`, `A` and `B`; dense and NF4 weights, f32
/// and bf16, with and without dropout.
#[test]
fn geglu_lora_down_equals_the_composition() {
    use std::sync::Arc;

    use burn::tensor::DType;

    use crate::ops::frozen_weight::FrozenWeight;
    use crate::quant::{Nf4Weight, PackedWeight};

    type T<const D: usize> = Tensor<Autodiff<Cpu>, D>;
    fn run(dtype: DType, packed: bool, dropout: Option<(f64, u64)>, fused: bool) -> Vec<Vec<f32>> {
        let dev = Default::default();
        let (n, i, r, o) = (13, 70, 4, 10);
        let t2 = |v: Vec<f32>, s: [usize; 2]| T::<2>::from_data(TensorData::new(v, s), &dev);
        let act_input = |seed, scale| crate::dtype::cast(t2(values(n * i, seed, scale), [n, i]), dtype);
        let gate = act_input(1, 3.0).require_grad();
        let up = act_input(2, 1.0).require_grad();
        let a = t2(values(r * i, 3, 0.5), [r, i]).require_grad();
        let b = t2(values(o * r, 4, 0.5), [o, r]).require_grad();
        let wv = values(o * i, 5, 0.3);
        let w: FrozenWeight<Autodiff<Cpu>> = if packed {
            FrozenWeight::Packed(Arc::new(PackedWeight::Nf4(Nf4Weight::quantize(&wv, [o, i]))))
        } else {
            let wt = crate::dtype::cast(t2(wv, [o, i]).transpose(), dtype);
            FrozenWeight::Dense(wt.into_primitive().tensor())
        };
        let prim = |t: &T<2>| t.clone().into_primitive().tensor();
        let lora = LoraPrims { a: prim(&a), b: prim(&b), scale: 2.0, dropout };
        let y = if fused {
            Autodiff::<Cpu>::geglu_lora_down(prim(&gate), prim(&up), &w, lora)
        } else {
            let act = Autodiff::<Cpu>::geglu(prim(&gate), prim(&up));
            let base = w.matmul(act.clone());
            let delta = Autodiff::<Cpu>::lora_delta(act, lora);
            <Autodiff<Cpu> as burn::tensor::ops::FloatTensorOps<_>>::float_add(
                base,
                crate::dtype::cast_prim::<Autodiff<Cpu>>(delta, dtype),
            )
        };
        let y = T::<2>::from_primitive(TensorPrimitive::Float(y));
        let up_grad = crate::dtype::cast(t2(values(n * o, 6, 1.0), [n, o]), dtype);
        let grads = (y.clone() * up_grad).sum().backward();
        let mut out = vec![host(y.inner())];
        out.extend([&gate, &up, &a, &b].map(|t| host(t.grad(&grads).unwrap())));
        out
    }
    for dtype in [DType::F32, DType::BF16] {
        for packed in [false, true] {
            for dropout in [None, Some((0.3, 11u64))] {
                let (got, want) = (run(dtype, packed, dropout, true), run(dtype, packed, dropout, false));
                for (k, what) in ["y", "d gate", "d up", "d A", "d B"].iter().enumerate() {
                    assert_eq!(got[k], want[k], "{dtype:?} packed {packed} dropout {dropout:?}: {what}");
                }
            }
        }
    }
}

/// The fused RMSNorm (its own backward) equals Burn's autodiff through transformers' formulation
/// `x · rsqrt(mean(x²) + eps) · scale`, over the last dimension of a rank-3 and a rank-4 input.
#[test]
fn fused_rms_norm_equals_autodiff_of_the_composition() {
    fn run<B: GemmaBackend>(shape: [usize; 4], fused: bool) -> Vec<Vec<f32>> {
        type T<B, const D: usize> = Tensor<Autodiff<B>, D>;
        let dev = Default::default();
        let n: usize = shape.iter().product();
        let dim = shape[3];
        let x = T::<B, 4>::from_data(TensorData::new(values(n, 7, 3.0), shape), &dev).require_grad();
        let scale = T::<B, 1>::from_data(TensorData::new(values(dim, 8, 2.0), [dim]), &dev);
        let eps = 1e-6;
        let y = if fused {
            let p = Autodiff::<B>::rms_norm(x.clone().into_primitive().tensor(), scale.into_primitive().tensor(), eps);
            T::<B, 4>::from_primitive(TensorPrimitive::Float(p))
        } else {
            let var = x.clone().powi_scalar(2).mean_dim(3);
            x.clone() * (var + eps).sqrt().recip() * scale.unsqueeze::<4>()
        };
        let w = T::<B, 4>::from_data(TensorData::new(values(n, 9, 1.0), shape), &dev);
        let grads = (y.clone() * w).sum().backward();
        vec![host(y.inner()), host(x.grad(&grads).unwrap())]
    }
    for shape in [[1, 3, 5, 64], [2, 5, 3, 8]] {
        let want = run::<Cpu>(shape, false);
        for (name, got) in [("flex", run::<Cpu>(shape, true)), ("ndarray", run::<NdArrayCpu>(shape, true))] {
            close(&format!("{name} {shape:?} rms_norm"), &got[0], &want[0], 2e-5);
            close(&format!("{name} {shape:?} d x"), &got[1], &want[1], 2e-5);
        }
    }
}

/// The fused attention (the host kernel on flex, the Burn-op version on ndarray) and its gradients equal
/// Burn's autodiff through transformers' formulation (KV heads repeated per query head, additive mask,
/// softmax), with grouped queries, softcapping, a sliding window, packed segments, several key tiles and
/// query blocks, and queries that come after cached keys.
#[test]
fn fused_attention_equals_autodiff_of_the_composition() {
    use std::sync::Arc;

    use burn::tensor::activation::softmax;

    use crate::mask::{AttnMask, Span};
    use crate::ops::attention::AttnSpec;

    struct Case {
        b: usize,
        s: usize,
        t: usize,
        h: usize,
        kvh: usize,
        d: usize,
        window: Option<usize>,
        softcap: Option<f64>,
        packed: bool,
    }
    fn spec(c: &Case) -> AttnSpec {
        // Keys at positions 0..t, queries the last s of them (a cache of t - s earlier tokens).
        let kpos: Vec<usize> = (0..c.b).flat_map(|_| 0..c.t).collect();
        let qpos: Vec<usize> = (0..c.b).flat_map(|_| c.t - c.s..c.t).collect();
        // Packing: segments of 70 tokens, positions restarting in each.
        let (q, k) = if c.packed {
            let seg: Vec<u32> = (0..c.b * c.t).map(|i| ((i % c.t) / 70) as u32).collect();
            let pos: Vec<usize> = (0..c.b * c.t).map(|i| (i % c.t) % 70).collect();
            let span = Span { positions: pos, segments: Some(seg) };
            (span.clone(), span)
        } else {
            (Span { positions: qpos, segments: None }, Span { positions: kpos, segments: None })
        };
        let mask = Arc::new(AttnMask::new(c.b, q, k, c.window));
        AttnSpec { mask, scaling: 1.0 / (c.d as f64).sqrt(), softcap: c.softcap }
    }
    fn run<B: GemmaBackend>(c: &Case, fused: bool) -> Vec<Vec<f32>> {
        type T<B, const D: usize> = Tensor<Autodiff<B>, D>;
        let dev = Default::default();
        let sp = spec(c);
        let t4 = |v: Vec<f32>, s: [usize; 4]| T::<B, 4>::from_data(TensorData::new(v, s), &dev);
        let (qs, ks) = ([c.b, c.s, c.h, c.d], [c.b, c.t, c.kvh, c.d]);
        let q = t4(values(qs.iter().product(), 1, 3.0), qs).require_grad();
        let k = t4(values(ks.iter().product(), 2, 3.0), ks).require_grad();
        let v = t4(values(ks.iter().product(), 3, 1.0), ks).require_grad();
        let out = if fused {
            let prim = |t: T<B, 4>| t.into_primitive().tensor();
            let o = Autodiff::<B>::attend(prim(q.clone()), prim(k.clone()), prim(v.clone()), &sp);
            T::<B, 4>::from_primitive(TensorPrimitive::Float(o))
        } else {
            let rep = c.h / c.kvh;
            let repeat = |x: T<B, 4>| {
                let x = x.swap_dims(1, 2); // [b, kvh, t, d]
                Tensor::cat((0..c.h).map(|i| x.clone().narrow(1, i / rep, 1)).collect(), 1)
            };
            let scores = q.clone().swap_dims(1, 2).matmul(repeat(k.clone()).swap_dims(2, 3)) * sp.scaling;
            let scores = match c.softcap {
                Some(cap) => (scores / cap).tanh() * cap,
                None => scores,
            };
            let probs = softmax(scores + sp.mask.bias::<Autodiff<B>>(&dev), 3);
            probs.matmul(repeat(v.clone())).swap_dims(1, 2)
        };
        let w = t4(values(qs.iter().product(), 4, 1.0), qs);
        let grads = (out.clone() * w).sum().backward();
        vec![
            host(out.inner()),
            host(q.grad(&grads).unwrap()),
            host(k.grad(&grads).unwrap()),
            host(v.grad(&grads).unwrap()),
        ]
    }
    let cases = [
        Case { b: 2, s: 300, t: 300, h: 4, kvh: 2, d: 16, window: None, softcap: None, packed: false },
        Case { b: 1, s: 300, t: 300, h: 4, kvh: 1, d: 8, window: Some(37), softcap: Some(5.0), packed: false },
        Case { b: 2, s: 210, t: 210, h: 2, kvh: 2, d: 8, window: None, softcap: None, packed: true },
        Case { b: 2, s: 3, t: 260, h: 4, kvh: 2, d: 8, window: None, softcap: Some(5.0), packed: false },
        Case { b: 1, s: 1, t: 140, h: 8, kvh: 1, d: 8, window: Some(50), softcap: None, packed: false },
    ];
    for (n, c) in cases.iter().enumerate() {
        let want = run::<Cpu>(c, false);
        for (name, got) in [("flex", run::<Cpu>(c, true)), ("ndarray", run::<NdArrayCpu>(c, true))] {
            for (i, what) in ["out", "dq", "dk", "dv"].iter().enumerate() {
                close(&format!("case {n} {name} {what}"), &got[i], &want[i], 2e-5);
            }
        }
    }
}
