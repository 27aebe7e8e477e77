//! Scaled dot-product attention as one op with its own backward (`GemmaBackend::attend`):
//! the forward returns the output and each query's log-sum-exp, the backward recomputes the probabilities
//! from them, so nothing of size `[heads × seq × keys]` is kept between the passes.
//!
//! This file holds the Burn-op version (any backend; it does build the scores of the whole batch inside each
//! call) and what the others share; burn-flex runs the tiled host kernel of `crate::cpu::attention`, the
//! CubeCL backends the vendor products and softmax kernels of `crate::cube::attention`.
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorMetadata, TensorPrimitive};

use super::kernels::{dense, Kernels};
use crate::dtype::{cast, cast_prim};
use crate::mask::AttnMask;

/// Everything about an attention call but its tensors.
#[derive(Debug, Clone)]
pub struct AttnSpec {
    pub mask: Arc<AttnMask>,
    /// Multiplies `q · kᵀ` (`query_pre_attn_scalar^-0.5`).
    pub scaling: f64,
    /// Gemma 2: scores become `cap · tanh(s / cap)`.
    pub softcap: Option<f64>,
}

pub(crate) fn t4<B: Backend>(x: FloatTensor<B>) -> Tensor<B, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

pub(crate) fn prim<B: Backend, const D: usize>(x: Tensor<B, D>) -> FloatTensor<B> {
    x.into_primitive().tensor()
}

/// The shapes of `q` `[b, s, h, d]` and `k` `[b, t, kvh, d]`: `(b, s, t, h, kvh, d)`.
pub(crate) fn dims<B: Backend>(q: &Tensor<B, 4>, k: &Tensor<B, 4>) -> (usize, usize, usize, usize, usize, usize) {
    let [b, s, h, d] = q.dims();
    let [_, t, kvh, _] = k.dims();
    (b, s, t, h, kvh, d)
}

/// The masked, softcapped, scaled scores `[b, h, s, t]` and, before the mask, the softcapped ones grouped
/// `[b, kvh, rep·s, t]` (the softcap's derivative needs them). Grouped queries: the `rep` query heads sharing
/// a KV head are folded into the sequence axis, so keys are never copied per head.
fn scores<B: Kernels>(q: Tensor<B, 4>, k: Tensor<B, 4>, spec: &AttnSpec) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let (b, s, t, h, kvh, d) = dims(&q, &k);
    let qg = q.swap_dims(1, 2).reshape([b, kvh, h / kvh * s, d]);
    let raw = dense(qg, k.swap_dims(1, 2).swap_dims(2, 3)) * spec.scaling;
    let z = match spec.softcap {
        Some(cap) => (raw / cap).tanh() * cap,
        None => raw,
    };
    let bias = spec.mask.bias::<B>(&z.device());
    (z.clone().reshape([b, h, s, t]) + bias, z)
}

/// `(out [b, s, h, d], lse [b, s, h])` in Burn ops, computed in f32 whatever the inputs' dtype (`out` comes
/// back in `q`'s, `lse` stays f32): transformers' softmax is f32 too.
pub fn forward_generic<B: Kernels>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    spec: &AttnSpec,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let dt = q.dtype();
    let [q, k, v] = [q, k, v].map(|t| t4::<B>(cast_prim::<B>(t, DType::F32)));
    let (b, s, t, h, kvh, d) = dims(&q, &k);
    let (z, _) = scores(q, k, spec);
    let m = z.clone().max_dim(3);
    let e = (z - m.clone()).exp();
    let l = e.clone().sum_dim(3);
    let p = (e / l.clone()).reshape([b, kvh, h / kvh * s, t]);
    let out = dense(p, v.swap_dims(1, 2)).reshape([b, h, s, d]).swap_dims(1, 2);
    let lse = (m + l.log()).reshape([b, h, s]).swap_dims(1, 2);
    (prim(cast(out, dt)), prim(lse))
}

/// `(dq, dk, dv)` in Burn ops, from the forward's `out` and `lse` and the output's gradient; in f32, returned
/// in the inputs' dtypes.
pub fn backward_generic<B: Kernels>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
    dout: FloatTensor<B>,
    spec: &AttnSpec,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let dts = [q.dtype(), k.dtype(), v.dtype()];
    let [q, k, v, out, dout] = [q, k, v, out, dout].map(|t| t4::<B>(cast_prim::<B>(t, DType::F32)));
    let lse = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(cast_prim::<B>(lse, DType::F32)));
    let (b, s, t, h, kvh, d) = dims(&q, &k);
    let rep_s = h / kvh * s;
    let group = |x: Tensor<B, 4>| x.swap_dims(1, 2).reshape([b, kvh, rep_s, d]);
    let (zb, z) = scores(q.clone(), k.clone(), spec);
    let (kt, vt) = (k.swap_dims(1, 2), v.swap_dims(1, 2));
    let lse4 = lse.swap_dims(1, 2).reshape([b, h, s, 1]);
    let p = (zb - lse4).exp().reshape([b, kvh, rep_s, t]);
    let (dog, og) = (group(dout), group(out));
    let dv = dense(p.clone().swap_dims(2, 3), dog.clone());
    let dp = dense(dog.clone(), vt.swap_dims(2, 3));
    let dsum = (dog * og).sum_dim(3);
    let mut ds = p * (dp - dsum);
    if let Some(cap) = spec.softcap {
        let th = z / cap;
        ds = ds * (th.clone() * th).neg().add_scalar(1.0);
    }
    let ds = ds * spec.scaling;
    let dq = dense(ds.clone(), kt).reshape([b, h, s, d]).swap_dims(1, 2);
    let dk = dense(ds.swap_dims(2, 3), group(q)).swap_dims(1, 2);
    (prim(cast(dq, dts[0])), prim(cast(dk, dts[1])), prim(cast(dv.swap_dims(1, 2), dts[2])))
}

/// The host kernel's shapes for `q` and `k` shaped as above.
pub fn host_dims(q: &[usize], k: &[usize]) -> crate::cpu::attention::Dims {
    crate::cpu::attention::Dims { batch: q[0], q_len: q[1], k_len: k[1], heads: q[2], kv_heads: k[2], head_dim: q[3] }
}
