//! The ops of `crate::ops` on Burn's CubeCL backends (`CubeBackend<R, f32, i32, _>`, any runtime `R`): the
//! product by a packed weight dequantized on the device, the vendor products, and one kernel per fused op.
use std::sync::Arc;

use burn::tensor::ops::FloatTensor;
use burn_cubecl::element::BoolElement;
use burn_cubecl::CubeBackend;

use super::gemm::{product, Gemm};
use super::{attention, dropout, geglu, lm_head, memory, rms_norm, rope, weights};
use crate::ops::attention::AttnSpec;
use crate::ops::gemma_backend::GemmaBackend;
use crate::ops::kernels::Kernels;
use crate::ops::lm_head::LmTable;
use crate::quant::PackedWeight;

impl<R: Gemm, BT: BoolElement> Kernels for CubeBackend<R, f32, i32, BT> {
    /// `x · Wᵀ`: the weight dequantized on the device, then one product (`W` passed transposed, not copied).
    fn frozen_matmul(x: FloatTensor<Self>, w: &Arc<PackedWeight>) -> FloatTensor<Self> {
        memory::sample(&x.client);
        let dense = weights::dense(w, &x.client, &x.device, x.dtype);
        product::<R, BT>(x, dense, true)
    }

    /// `dy · W`, the backward's product, the same way.
    fn frozen_matmul_dx(dy: FloatTensor<Self>, w: &Arc<PackedWeight>) -> FloatTensor<Self> {
        memory::sample(&dy.client);
        let dense = weights::dense(w, &dy.client, &dy.device, dy.dtype);
        product::<R, BT>(dy, dense, false)
    }

    /// The LM head's and attention's products: the runtime's vendor product when it has one.
    fn dense_matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        product::<R, BT>(a, b, false)
    }

    /// LoRA dropout's mask made on the device, one kernel (`dropout`).
    fn dropout_mask(shape: [usize; 2], p: f64, seed: u64, device: &Self::Device) -> FloatTensor<Self> {
        dropout::mask::<R>(shape, p, seed, device)
    }

    /// RoPE as one kernel (`rope`); its backward is the same call with `−sin`.
    fn rope(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self> {
        rope::forward(x, cos, sin)
    }

    /// GeGLU and its backward as one kernel each (`geglu`).
    fn geglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        geglu::forward(gate, up)
    }

    fn geglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dout: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        geglu::backward(gate, up, dout)
    }

    /// RMSNorm and its backward as one kernel each (`rms_norm`).
    fn rms_norm(x: FloatTensor<Self>, scale: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        rms_norm::forward(x, scale, eps)
    }

    fn rms_norm_backward(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        eps: f64,
        dout: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        rms_norm::backward(x, scale, eps, dout)
    }
}

impl<R: Gemm, BT: BoolElement> GemmaBackend for CubeBackend<R, f32, i32, BT> {
    /// The LM-head loss in chunks, each two vendor products around one kernel (`lm_head`).
    fn lm_head_nll_grad(
        hidden: FloatTensor<Self>,
        table: LmTable<Self>,
        targets: &[(usize, u32)],
        softcap: Option<f64>,
        grad: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        // A packed table (a GGUF file's under `--quant gguf`) is dequantized for the call by the kernels,
        // from its blocks kept on the device, as a projection's weight is (the loss kernel takes dense chunks).
        let table = match table {
            LmTable::Dense(t) => t,
            LmTable::Packed(w) => weights::dense(&w, &hidden.client, &hidden.device, hidden.dtype),
        };
        crate::ops::lm_head::chunked::<Self>(hidden, table, targets, grad, lm_head::CHUNK, |hc, table, ids, grad| {
            lm_head::chunk::<R, BT>(hc, table, ids, softcap, grad)
        })
    }

    /// Attention: vendor products around one softmax kernel each way, the mask computed on the device
    /// (`attention`).
    fn attend_lse(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        spec: &AttnSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        attention::forward::<R, BT>(q, k, v, spec)
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
        attention::backward::<R, BT>(q, k, v, out, lse, dout, spec)
    }
}
