//! The CPU backends' ops: burn-ndarray takes the Burn-op defaults (with the product by a packed weight
//! dequantized per call); burn-flex runs the host kernels of `crate::cpu` on its own buffers (no copy when
//! contiguous), and tensors not stored as f32 take the Burn-op default.
use std::sync::Arc;

use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorData;

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
        let Some(xs) = x.as_slice::<f32>() else {
            return frozen_matmul_dequant::<Self>(x, w);
        };
        let n = xs.len() / w.shape()[1];
        flex_from(crate::cpu::qmatmul::packed_matmul(xs, n, w), [shape[0], w.shape()[0]].into())
    }

    fn frozen_matmul_dx(dy: FloatTensor<Self>, w: &Arc<PackedWeight>) -> FloatTensor<Self> {
        let shape = dy.layout().shape().clone();
        let dy = dy.to_contiguous();
        let Some(ds) = dy.as_slice::<f32>() else {
            return frozen_matmul_dx_dequant::<Self>(dy, w);
        };
        let n = ds.len() / w.shape()[0];
        flex_from(crate::cpu::qmatmul::packed_matmul_dx(ds, n, w), [shape[0], w.shape()[1]].into())
    }

    // Each runs the host kernel on burn-flex's own buffers (no copy when contiguous); tensors not stored
    // as f32 take the Burn-op default.

    fn rope(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = x.layout().shape().clone();
        let (x, c, s) = (x.to_contiguous(), cos.to_contiguous(), sin.to_contiguous());
        let (Some(xs), Some(cs), Some(ss)) = (x.as_slice::<f32>(), c.as_slice::<f32>(), s.as_slice::<f32>()) else {
            return rope::forward::<Self>(x, c, s);
        };
        flex_from(crate::cpu::rope::rotate(xs, cs, ss, shape[2], shape[3], 1.0), shape)
    }

    fn geglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = gate.layout().shape().clone();
        let (g, u) = (gate.to_contiguous(), up.to_contiguous());
        let (Some(gs), Some(us)) = (g.as_slice::<f32>(), u.as_slice::<f32>()) else {
            return geglu::forward::<Self>(g, u);
        };
        flex_from(crate::cpu::geglu::forward(gs, us), shape)
    }

    fn geglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dout: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let shape = gate.layout().shape().clone();
        let (g, u, d) = (gate.to_contiguous(), up.to_contiguous(), dout.to_contiguous());
        let (Some(gs), Some(us), Some(ds)) = (g.as_slice::<f32>(), u.as_slice::<f32>(), d.as_slice::<f32>()) else {
            return geglu::backward::<Self>(g, u, d);
        };
        let (dg, du) = crate::cpu::geglu::backward(gs, us, ds);
        (flex_from(dg, shape.clone()), flex_from(du, shape))
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
            (_, Some(d)) => d.as_slice::<f32>().map(TableRows::Dense),
            _ => None,
        };
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
        let (Some(qs), Some(ks), Some(vs)) = (q.as_slice::<f32>(), k.as_slice::<f32>(), v.as_slice::<f32>()) else {
            return attention::forward_generic::<Self>(q, k, v, spec);
        };
        let dims = attention::host_dims(&qshape, &kshape);
        let cap = spec.softcap.map(|c| c as f32);
        let (out, lse) = crate::cpu::attention::forward(qs, ks, vs, dims, &spec.mask, spec.scaling as f32, cap);
        (flex_from(out, qshape.clone()), flex_from(lse, [qshape[0], qshape[1], qshape[2]].into()))
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
        let slices = [&q, &k, &v, &out, &lse, &dout].map(|t| t.as_slice::<f32>());
        let [Some(qs), Some(ks), Some(vs), Some(os), Some(ls), Some(ds)] = slices else {
            return attention::backward_generic::<Self>(q, k, v, out, lse, dout, spec);
        };
        let dims = attention::host_dims(&qshape, &kshape);
        let cap = spec.softcap.map(|c| c as f32);
        let (dq, dk, dv) =
            crate::cpu::attention::backward(qs, ks, vs, os, ls, ds, dims, &spec.mask, spec.scaling as f32, cap);
        (flex_from(dq, qshape), flex_from(dk, kshape.clone()), flex_from(dv, kshape))
    }
}

fn flex_from(data: Vec<f32>, shape: burn::tensor::Shape) -> burn_flex::FlexTensor {
    burn_flex::FlexTensor::from_data(TensorData::new(data, shape))
}
