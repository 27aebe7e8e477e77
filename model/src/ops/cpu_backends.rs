//! The CPU backends' ops: burn-ndarray takes the Burn-op defaults (with the product by a packed weight
//! dequantized per call); burn-flex runs the host kernels of `crate::cpu` on its own buffers (no copy when
//! contiguous), and tensors not stored as f32 take the Burn-op default.
use std::borrow::Cow;
use std::sync::Arc;

use burn::tensor::ops::FloatTensor;
use burn::tensor::{Element, TensorData};
use half::bf16;

use super::attention::{self, AttnSpec};
use super::frozen::{frozen_matmul_dequant, frozen_matmul_dx_dequant};
use super::gemma_backend::GemmaBackend;
use super::kernels::Kernels;
use super::lm_head::LmTable;
use super::{geglu, lm_head, rope};
use crate::quant::PackedWeight;

impl Kernels for burn_ndarray::NdArray<f32> {
    fn frozen_matmul(x: FloatTensor<Self>, w: &Arc<PackedWeight>) -> FloatTensor<Self> {
        frozen_matmul_dequant::<Self>(x, w)
    }
}

impl GemmaBackend for burn_ndarray::NdArray<f32> {}

impl Kernels for burn_flex::Flex<f32> {
    /// Multiplies by the packed blocks as stored (`crate::cpu::qmatmul`): no dense weight.
    fn frozen_matmul(x: FloatTensor<Self>, w: &Arc<PackedWeight>) -> FloatTensor<Self> {
        let shape = x.layout().shape().clone();
        let x = x.to_contiguous();
        let out_shape: burn::tensor::Shape = [shape[0], w.shape()[0]].into();
        if let Some(xs) = x.as_slice::<bf16>() {
            let n = xs.len() / w.shape()[1];
            return flex_from(crate::cpu::qmatmul::packed_matmul_bf16(xs, n, w), out_shape);
        }
        let Some(xs) = x.as_slice::<f32>() else {
            return frozen_matmul_dequant::<Self>(x, w);
        };
        let n = xs.len() / w.shape()[1];
        flex_from(crate::cpu::qmatmul::packed_matmul(xs, n, w), out_shape)
    }

    fn frozen_matmul_dx(dy: FloatTensor<Self>, w: &Arc<PackedWeight>) -> FloatTensor<Self> {
        let shape = dy.layout().shape().clone();
        let dy = dy.to_contiguous();
        let out_shape: burn::tensor::Shape = [shape[0], w.shape()[1]].into();
        if let Some(ds) = dy.as_slice::<bf16>() {
            let n = ds.len() / w.shape()[0];
            return flex_from(crate::cpu::qmatmul::packed_matmul_dx_bf16(ds, n, w), out_shape);
        }
        let Some(ds) = dy.as_slice::<f32>() else {
            return frozen_matmul_dx_dequant::<Self>(dy, w);
        };
        let n = ds.len() / w.shape()[0];
        flex_from(crate::cpu::qmatmul::packed_matmul_dx(ds, n, w), out_shape)
    }

    // Each runs the host kernel on burn-flex's own buffers (no copy when contiguous f32); bf16 tensors are
    // widened to f32 for the kernel (exact) and its results rounded back, as the Burn-op defaults compute
    // these in f32 too; other dtypes take the Burn-op default.

    fn rope(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = x.layout().shape().clone();
        let (x, c, s) = (x.to_contiguous(), cos.to_contiguous(), sin.to_contiguous());
        let (Some(xs), Some(cs), Some(ss)) = (host(&x), host(&c), host(&s)) else {
            return rope::forward::<Self>(x, c, s);
        };
        let rotate = if bf16_like(&x) { crate::cpu::rope::rotate_bf16 } else { crate::cpu::rope::rotate };
        flex_like(rotate(&xs, &cs, &ss, shape[2], shape[3], 1.0), shape, &x)
    }

    fn geglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = gate.layout().shape().clone();
        let (g, u) = (gate.to_contiguous(), up.to_contiguous());
        let (Some(gs), Some(us)) = (host(&g), host(&u)) else {
            return geglu::forward::<Self>(g, u);
        };
        let forward = if bf16_like(&g) { crate::cpu::geglu::forward_rounded } else { crate::cpu::geglu::forward };
        flex_like(forward(&gs, &us), shape, &g)
    }

    fn geglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dout: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let shape = gate.layout().shape().clone();
        let (g, u, d) = (gate.to_contiguous(), up.to_contiguous(), dout.to_contiguous());
        let (Some(gs), Some(us), Some(ds)) = (host(&g), host(&u), host(&d)) else {
            return geglu::backward::<Self>(g, u, d);
        };
        let backward = if bf16_like(&g) { crate::cpu::geglu::backward_rounded } else { crate::cpu::geglu::backward };
        let (dg, du) = backward(&gs, &us, &ds);
        (flex_like(dg, shape.clone(), &g), flex_like(du, shape, &u))
    }
}

/// A contiguous tensor's values as f32: borrowed when stored as f32, widened when bf16, else `None`.
fn host(t: &burn_flex::FlexTensor) -> Option<Cow<'_, [f32]>> {
    if let Some(s) = t.as_slice::<f32>() {
        return Some(Cow::Borrowed(s));
    }
    t.as_slice::<bf16>().map(|s| Cow::Owned(crate::cpu::bf16::widen_vec(s)))
}

fn bf16_like(t: &burn_flex::FlexTensor) -> bool {
    t.dtype() == burn::tensor::DType::BF16
}

/// Host results in `like`'s dtype (f32, or rounded to bf16).
fn flex_like(data: Vec<f32>, shape: burn::tensor::Shape, like: &burn_flex::FlexTensor) -> burn_flex::FlexTensor {
    if bf16_like(like) {
        flex_from(crate::cpu::bf16::narrow(&data), shape)
    } else {
        flex_from(data, shape)
    }
}

/// The fused ops on burn-flex's buffers.
impl GemmaBackend for burn_flex::Flex<f32> {
    fn lm_head_nll_grad(
        hidden: FloatTensor<Self>,
        table: LmTable<Self>,
        targets: &[(usize, u32)],
        softcap: Option<f64>,
        grad: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        use crate::cpu::lm_head::{nll_grad_host, TableRows};
        let hidden = hidden.to_contiguous();
        let (n, h) = (hidden.layout().shape()[0], hidden.layout().shape()[1]);
        let dense = match &table {
            LmTable::Dense(t) => Some(t.to_contiguous()),
            LmTable::Packed(_) => None,
        };
        let rows = match (&table, &dense) {
            (LmTable::Packed(w), _) => Some(TableRows::Packed(w)),
            (_, Some(d)) => {
                d.as_slice::<f32>().map(TableRows::Dense).or_else(|| d.as_slice::<bf16>().map(TableRows::DenseBf16))
            }
            _ => None,
        };
        if let (Some(hs), Some(rows)) = (hidden.as_slice::<bf16>(), rows) {
            let (nll, dh) = crate::cpu::lm_head::nll_grad_host_bf16(hs, rows, h, targets, softcap, grad);
            return (flex_from(vec![nll as f32], [1].into()), dh.map(|d| flex_from(d, [n, h].into())));
        }
        let (Some(hs), Some(rows)) = (hidden.as_slice::<f32>(), rows) else {
            let table = table.into_dense(&hidden);
            return lm_head::nll_grad_generic::<Self>(hidden, table, targets, softcap, grad);
        };
        let (nll, dh) = nll_grad_host(hs, rows, h, targets, softcap, grad);
        (flex_from(vec![nll as f32], [1].into()), dh.map(|d| flex_from(d, [n, h].into())))
    }

    fn attend_lse(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        spec: &AttnSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (qshape, kshape) = (q.layout().shape().clone(), k.layout().shape().clone());
        let (q, k, v) = (q.to_contiguous(), k.to_contiguous(), v.to_contiguous());
        // In bf16, q, k, v are widened and the output rounded back: attention computes in f32 (as
        // `attention::forward_generic` does).
        let (Some(qs), Some(ks), Some(vs)) = (host(&q), host(&k), host(&v)) else {
            return attention::forward_generic::<Self>(q, k, v, spec);
        };
        let dims = attention::host_dims(&qshape, &kshape);
        let cap = spec.softcap.map(|c| c as f32);
        let (out, lse) = crate::cpu::attention::forward(&qs, &ks, &vs, dims, &spec.mask, spec.scaling as f32, cap);
        (flex_like(out, qshape.clone(), &q), flex_from(lse, [qshape[0], qshape[1], qshape[2]].into()))
    }

    fn attend_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        spec: &AttnSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (qshape, kshape) = (q.layout().shape().clone(), k.layout().shape().clone());
        let [q, k, v, out, lse, dout] = [q, k, v, out, lse, dout].map(|t| t.to_contiguous());
        let slices = [&q, &k, &v, &out, &lse, &dout].map(host);
        let [Some(qs), Some(ks), Some(vs), Some(os), Some(ls), Some(ds)] = slices else {
            return attention::backward_generic::<Self>(q, k, v, out, lse, dout, spec);
        };
        let dims = attention::host_dims(&qshape, &kshape);
        let cap = spec.softcap.map(|c| c as f32);
        let (dq, dk, dv) =
            crate::cpu::attention::backward(&qs, &ks, &vs, &os, &ls, &ds, dims, &spec.mask, spec.scaling as f32, cap);
        (flex_like(dq, qshape, &q), flex_like(dk, kshape.clone(), &k), flex_like(dv, kshape, &v))
    }
}

fn flex_from<E: Element>(data: Vec<E>, shape: burn::tensor::Shape) -> burn_flex::FlexTensor {
    burn_flex::FlexTensor::from_data(TensorData::new(data, shape))
}
