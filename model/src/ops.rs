//! The backend extension the model is generic over: [`FrozenMatmul`] adds to Burn's ops the ones that
//! QLoRA needs fused or frozen — the matmul by a packed frozen weight (`crate::quant::linear`), the LM head
//! with its cross-entropy (`crate::lm_head_loss`), Gemma's GeGLU (`crate::cpu::geglu`) and RoPE
//! (`crate::cpu::rope`), attention (`crate::fused_attention`) — and gives each its own backward on
//! `Autodiff`, so that no dequantized weight, no `[tokens × vocab]` logits, no `[heads × seq × keys]`
//! attention probabilities and no activation intermediates are kept for the backward pass.
use std::sync::Arc;

use burn::tensor::activation::gelu_approximate;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorMetadata, TensorPrimitive};
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn_autodiff::Autodiff;

use crate::compute::cast_prim;
use crate::fused_attention::{backward_generic, forward_generic, host_dims, AttnSpec};
use crate::layers::lora::{branch, branch_backward, LoraPrims};
use crate::quant::linear::{frozen_matmul_dequant, FrozenWeight, PackedWeight};

/// What the model needs of a backend beyond Burn's ops: multiplying by a packed frozen weight, the fused
/// LM-head cross-entropy (`crate::lm_head_loss`), GeGLU and RoPE, each with its own backward on `Autodiff`.
/// The defaults are written in Burn ops (any backend); burn-flex overrides them with host kernels.
pub trait FrozenMatmul: Backend {
    /// `x: [n, in]` → `[n, out]`.
    fn frozen_matmul(x: FloatTensor<Self>, w: &Arc<PackedWeight>) -> FloatTensor<Self>;

    /// `dy · W` for `dy: [n, out]`: the gradient of [`Self::frozen_matmul`] with respect to `x`.
    fn frozen_matmul_dx(dy: FloatTensor<Self>, w: &Arc<PackedWeight>) -> FloatTensor<Self> {
        let device = Self::float_device(&dy);
        let dense = cast_prim::<Self>(w.to_primitive::<Self>(&device), dy.dtype());
        Self::float_matmul(dy, dense)
    }

    /// `a · b` (either may be a transposed view; rank 2, or batches of matrices with the same leading
    /// dimensions) where a vendor library matters: the LM head's products and attention's. Default: Burn's
    /// matmul; CUDA: cuBLAS (`crate::cube::Gemm`).
    fn dense_matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(a, b)
    }

    /// LoRA dropout's `[rows, cols]` mask for `seed` (`crate::layers::dropout`: 0 or `1 / (1 − p)`, the same
    /// values on every backend), made where it is used. On `Autodiff`, a constant.
    fn dropout_mask(shape: [usize; 2], p: f64, seed: u64, device: &Self::Device) -> FloatTensor<Self> {
        crate::layers::dropout::mask_host::<Self>(shape, p, seed, device)
    }

    /// LoRA's branch `(α/r)·dropout(x)·Aᵀ·Bᵀ` for `x` `[n, in]` (any float dtype; computed in `A`'s, f32, and
    /// returned in `x`'s).
    /// On `Autodiff`, with its own backward, which keeps `x` as it is (bf16 in bf16 compute: not its f32
    /// copy, one per projection, as a composition of Burn ops would) and makes the dropout mask again
    /// rather than keeping it; gradients as the composition's (`crate::layers::lora::branch`).
    fn lora_delta(x: FloatTensor<Self>, lora: LoraPrims<Self>) -> FloatTensor<Self> {
        branch::<Self>(x, &lora).0
    }

    /// Gemma's down projection with a LoRA adapter, applied to the GeGLU: `act·Wᵀ + cast(lora_delta(act))`
    /// with `act = geglu(gate, up)`, for `gate`, `up` `[n, inter]` → `[n, out]`
    /// (`crate::layers::mlp::geglu_lora_down`). On `Autodiff`, one op that keeps `gate` and `up` (what
    /// GeGLU's backward needs anyway) but not `act`, the adapter's input, which its backward makes again for
    /// `dA`: one `[n, inter]` tensor less per layer (128 MB on Gemma 2B at 4096 tokens in bf16). Values and
    /// gradients as the composition's.
    fn geglu_lora_down(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        w: &FrozenWeight<Self>,
        lora: LoraPrims<Self>,
    ) -> FloatTensor<Self> {
        crate::layers::mlp::geglu_lora_down::<Self>(gate, up, w, &lora).0
    }

    /// `(Σ −log softmax(cap(h·Eᵀ))[target] as [1], its gradient with respect to `hidden` [n, h] when `grad`)`
    /// for `hidden` `[n, h]`, the table `E` `[vocab, h]` and `(row, target id)` pairs.
    fn lm_head_nll_grad(
        hidden: FloatTensor<Self>,
        table: FloatTensor<Self>,
        targets: &[(usize, u32)],
        softcap: Option<f64>,
        grad: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        crate::lm_head_loss::nll_grad_generic::<Self>(hidden, table, targets, softcap, grad)
    }

    /// The summed NLL as `[1]`, differentiable with respect to `hidden` on `Autodiff`.
    fn lm_head_nll(
        hidden: FloatTensor<Self>,
        table: FloatTensor<Self>,
        targets: &[(usize, u32)],
        softcap: Option<f64>,
    ) -> FloatTensor<Self> {
        Self::lm_head_nll_grad(hidden, table, targets, softcap, false).0
    }

    /// Rotary embedding, rotate-half layout: `x` `[batch, seq, heads, d]`, `cos`/`sin` `[batch, seq, 1, d]`
    /// with equal halves (each angle at `i` and `i + d/2`, as RoPE tables are). The backward is the same call
    /// with `−sin`.
    fn rope(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self> {
        rope_burn::<Self>(x, cos, sin)
    }

    /// `gelu_tanh(gate) · up`, same shapes.
    fn geglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        geglu_burn::<Self>(gate, up)
    }

    /// `(d/dgate, d/dup)` of `Σ dout · geglu(gate, up)`.
    fn geglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dout: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        geglu_backward_burn::<Self>(gate, up, dout)
    }

    /// Gemma's RMSNorm over the last dimension (`crate::layers::norm`): `x · scale / sqrt(mean(x²) + eps)`,
    /// in f32 inside, `x`'s dtype out; `scale` `[dim]` f32 (`1 + w`). On `Autodiff`, `scale` is a constant.
    fn rms_norm(x: FloatTensor<Self>, scale: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        crate::layers::norm::forward_burn::<Self>(x, scale, eps)
    }

    /// `d Σ dout · rms_norm(x) / dx`, in `x`'s dtype.
    fn rms_norm_backward(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        eps: f64,
        dout: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        crate::layers::norm::backward_burn::<Self>(x, scale, eps, dout)
    }

    /// `softmax(cap(scaling · q·kᵀ) | mask) · v` for `q` `[b, s, h, d]` and `k`, `v` `[b, t, kv_heads, d]`
    /// → `[b, s, h, d]` (`crate::fused_attention`); on `Autodiff`, with its own backward.
    fn attend(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, spec: &AttnSpec) -> FloatTensor<Self> {
        Self::attend_lse(q, k, v, spec).0
    }

    /// The output and each (position, head)'s log-sum-exp `[b, s, h]`, which the backward needs.
    fn attend_lse(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        spec: &AttnSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        forward_generic::<Self>(q, k, v, spec)
    }

    /// `(dq, dk, dv)` of `Σ dout · out` from the forward's output and log-sum-exp.
    #[allow(clippy::too_many_arguments)]
    fn attend_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        spec: &AttnSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        backward_generic::<Self>(q, k, v, out, lse, dout, spec)
    }
}

/// `a · b` on tensors through [`FrozenMatmul::dense_matmul`] (rank 2, or batches with the same leading
/// dimensions; either may be a transposed view).
pub fn dense<B: FrozenMatmul, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::dense_matmul(
        a.into_primitive().tensor(),
        b.into_primitive().tensor(),
    )))
}

// The default implementations, in Burn ops: any backend, any float dtype.

fn rope_burn<B: Backend>(x: FloatTensor<B>, cos: FloatTensor<B>, sin: FloatTensor<B>) -> FloatTensor<B> {
    let [x, cos, sin] = [x, cos, sin].map(|t| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(t)));
    let d = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, d / 2);
    let x2 = x.clone().narrow(3, d / 2, d / 2);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    (x * cos + rotated * sin).into_primitive().tensor()
}

fn geglu_burn<B: Backend>(gate: FloatTensor<B>, up: FloatTensor<B>) -> FloatTensor<B> {
    let shape = gate.shape();
    let [g, u] = [gate, up].map(flat::<B>);
    B::float_reshape((gelu_approximate(g) * u).into_primitive().tensor(), shape)
}

fn geglu_backward_burn<B: Backend>(
    gate: FloatTensor<B>,
    up: FloatTensor<B>,
    dout: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let shape = gate.shape();
    let [g, u, d] = [gate, up, dout].map(flat::<B>);
    // gelu'(x) = ½(1 + t) + ½x(1 − t²)·k(1 + 3c·x²), t = tanh(k(x + c·x³)).
    let (k, c) = ((2.0 / std::f64::consts::PI).sqrt(), 0.044715);
    let t = ((g.clone() + g.clone().powi_scalar(3) * c) * k).tanh();
    let gelu = g.clone() * (t.clone() + 1.0) * 0.5;
    let inner = (g.clone() * g.clone() * (3.0 * c) + 1.0) * k;
    let dgelu = (t.clone() + 1.0) * 0.5 + g * (t.clone() * t).neg().add_scalar(1.0) * inner * 0.5;
    let dg = d.clone() * u * dgelu;
    let du = d * gelu;
    let back = |t: Tensor<B, 1>| B::float_reshape(t.into_primitive().tensor(), shape.clone());
    (back(dg), back(du))
}

/// Any-rank primitive as a 1-D tensor (elementwise ops only).
fn flat<B: Backend>(t: FloatTensor<B>) -> Tensor<B, 1> {
    let n = t.shape().num_elements();
    Tensor::from_primitive(TensorPrimitive::Float(B::float_reshape(t, [n].into())))
}

impl FrozenMatmul for burn_ndarray::NdArray<f32> {
    fn frozen_matmul(x: FloatTensor<Self>, w: &Arc<PackedWeight>) -> FloatTensor<Self> {
        frozen_matmul_dequant::<Self>(x, w)
    }
}

impl FrozenMatmul for burn_flex::Flex<f32> {
    fn frozen_matmul(x: FloatTensor<Self>, w: &Arc<PackedWeight>) -> FloatTensor<Self> {
        frozen_matmul_dequant::<Self>(x, w)
    }

    // Each runs the host kernel on burn-flex's own buffers (no copy when contiguous); tensors not stored
    // as f32 take the Burn-op default.

    fn lm_head_nll_grad(
        hidden: FloatTensor<Self>,
        table: FloatTensor<Self>,
        targets: &[(usize, u32)],
        softcap: Option<f64>,
        grad: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let (hidden, table) = (hidden.to_contiguous(), table.to_contiguous());
        let (n, h) = (hidden.layout().shape()[0], hidden.layout().shape()[1]);
        let (Some(hs), Some(es)) = (hidden.as_slice::<f32>(), table.as_slice::<f32>()) else {
            return crate::lm_head_loss::nll_grad_generic::<Self>(hidden, table, targets, softcap, grad);
        };
        let (nll, dh) = crate::lm_head_loss::nll_grad_host(hs, es, h, targets, softcap, grad);
        (flex_from(vec![nll as f32], [1].into()), dh.map(|d| flex_from(d, [n, h].into())))
    }

    fn rope(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = x.layout().shape().clone();
        let (x, c, s) = (x.to_contiguous(), cos.to_contiguous(), sin.to_contiguous());
        let (Some(xs), Some(cs), Some(ss)) = (x.as_slice::<f32>(), c.as_slice::<f32>(), s.as_slice::<f32>()) else {
            return rope_burn::<Self>(x, c, s);
        };
        flex_from(crate::cpu::rope::rotate(xs, cs, ss, shape[2], shape[3], 1.0), shape)
    }

    fn geglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = gate.layout().shape().clone();
        let (g, u) = (gate.to_contiguous(), up.to_contiguous());
        let (Some(gs), Some(us)) = (g.as_slice::<f32>(), u.as_slice::<f32>()) else {
            return geglu_burn::<Self>(g, u);
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
            return geglu_backward_burn::<Self>(g, u, d);
        };
        let (dg, du) = crate::cpu::geglu::backward(gs, us, ds);
        (flex_from(dg, shape.clone()), flex_from(du, shape))
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
            return forward_generic::<Self>(q, k, v, spec);
        };
        let dims = host_dims(&qshape, &kshape);
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
            return backward_generic::<Self>(q, k, v, out, lse, dout, spec);
        };
        let dims = host_dims(&qshape, &kshape);
        let cap = spec.softcap.map(|c| c as f32);
        let (dq, dk, dv) =
            crate::cpu::attention::backward(qs, ks, vs, os, ls, ds, dims, &spec.mask, spec.scaling as f32, cap);
        (flex_from(dq, qshape), flex_from(dk, kshape.clone()), flex_from(dv, kshape))
    }
}

fn flex_from(data: Vec<f32>, shape: burn::tensor::Shape) -> burn_flex::FlexTensor {
    burn_flex::FlexTensor::from_data(TensorData::new(data, shape))
}

/// A single-input backward op: its name, what it saves, and `|state, grad| -> grad of the input`.
macro_rules! unary_backward {
    ($(#[$doc:meta])* $name:ident, $state:ty, |$st:ident, $grad:ident| $body:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        struct $name;

        impl<B: FrozenMatmul> Backward<B, 1> for $name {
            type State = $state;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut burn_autodiff::checkpoint::base::Checkpointer,
            ) {
                let $st = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |$grad| $body);
            }
        }
    };
}

unary_backward!(
    /// Saves d Σnll / d hidden, computed with the loss: the backward only scales it by the upstream scalar.
    LmHeadNllBackward,
    FloatTensor<B>,
    |dh, grad| {
        let dt = dh.dtype();
        B::float_mul(dh, B::float_reshape(cast_prim::<B>(grad, dt), [1, 1].into()))
    }
);

unary_backward!(
    /// Saves the packed weight, not its dense form: the backward rebuilds it. dy `[n, out]` · W `[out, in]`.
    FrozenMatmulBackward,
    Arc<PackedWeight>,
    |w, grad| B::frozen_matmul_dx(grad, &w)
);

unary_backward!(
    /// Saves the tables; a rotation's transpose is the rotation by the opposite angle.
    RopeBackward,
    (FloatTensor<B>, FloatTensor<B>),
    |tables, grad| B::rope(grad, tables.0, B::float_neg(tables.1))
);

unary_backward!(
    /// Saves the input and the (frozen) scale; the statistics are recomputed.
    RmsNormBackward,
    (FloatTensor<B>, FloatTensor<B>, f64),
    |st, grad| B::rms_norm_backward(st.0, st.1, st.2, grad)
);

impl<B: FrozenMatmul, C: CheckpointStrategy> FrozenMatmul for Autodiff<B, C> {
    fn lora_delta(x: FloatTensor<Self>, lora: LoraPrims<Self>) -> FloatTensor<Self> {
        let parents = [x.node.clone(), lora.a.node.clone(), lora.b.node.clone()];
        let lora = inner_lora(&lora);
        match LoraBackward.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (delta, h) = branch::<B>(x.primitive.clone(), &lora);
                prep.finish((x.primitive, lora, h), delta)
            }
            OpsKind::UnTracked(prep) => prep.finish(branch::<B>(x.primitive, &lora).0),
        }
    }

    fn geglu_lora_down(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        w: &FrozenWeight<Self>,
        lora: LoraPrims<Self>,
    ) -> FloatTensor<Self> {
        // The weight is frozen: its inner tensor is all the op needs.
        let w = match w {
            FrozenWeight::Dense(t) => FrozenWeight::Dense(t.primitive.clone()),
            FrozenWeight::Packed(p) => FrozenWeight::Packed(p.clone()),
        };
        let parents = [gate.node.clone(), up.node.clone(), lora.a.node.clone(), lora.b.node.clone()];
        let lora = inner_lora(&lora);
        let (g, u) = (gate.primitive, up.primitive);
        let forward = crate::layers::mlp::geglu_lora_down::<B>;
        match GegluLoraDownBackward.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (y, h) = forward(g.clone(), u.clone(), &w, &lora);
                prep.finish((g, u, w, lora, h), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(g, u, &w, &lora).0),
        }
    }

    fn dropout_mask(shape: [usize; 2], p: f64, seed: u64, device: &Self::Device) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(B::dropout_mask(shape, p, seed, device))
    }

    /// Tracked, with both products of the backward through the inner backend's `dense_matmul` too (cuBLAS on
    /// CUDA; Burn's autodiff matmul would run Burn's). Same leading dimensions only (no broadcasting).
    fn dense_matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        match DenseMatmulBackward.prepare::<C>([a.node.clone(), b.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let state = (a.primitive.clone(), b.primitive.clone());
                prep.finish(state, B::dense_matmul(a.primitive, b.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::dense_matmul(a.primitive, b.primitive)),
        }
    }

    fn rms_norm(x: FloatTensor<Self>, scale: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        let scale = scale.primitive;
        match RmsNormBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                prep.finish((x.primitive.clone(), scale.clone(), eps), B::rms_norm(x.primitive, scale, eps))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rms_norm(x.primitive, scale, eps)),
        }
    }

    fn frozen_matmul(x: FloatTensor<Self>, w: &Arc<PackedWeight>) -> FloatTensor<Self> {
        match FrozenMatmulBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(w.clone(), B::frozen_matmul(x.primitive, w)),
            OpsKind::UnTracked(prep) => prep.finish(B::frozen_matmul(x.primitive, w)),
        }
    }

    fn lm_head_nll(
        hidden: FloatTensor<Self>,
        table: FloatTensor<Self>,
        targets: &[(usize, u32)],
        softcap: Option<f64>,
    ) -> FloatTensor<Self> {
        match LmHeadNllBackward.prepare::<C>([hidden.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (nll, dh) = B::lm_head_nll_grad(hidden.primitive, table.primitive, targets, softcap, true);
                prep.finish(dh.expect("asked for the gradient"), nll)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::lm_head_nll_grad(hidden.primitive, table.primitive, targets, softcap, false).0)
            }
        }
    }

    fn rope(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self> {
        // The tables are constants of the forward (never tracked).
        let (cos, sin) = (cos.primitive, sin.primitive);
        match RopeBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((cos.clone(), sin.clone()), B::rope(x.primitive, cos, sin)),
            OpsKind::UnTracked(prep) => prep.finish(B::rope(x.primitive, cos, sin)),
        }
    }

    fn geglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        match GegluBackward.prepare::<C>([gate.node.clone(), up.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let state = (gate.primitive.clone(), up.primitive.clone());
                prep.finish(state, B::geglu(gate.primitive, up.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::geglu(gate.primitive, up.primitive)),
        }
    }

    fn attend(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, spec: &AttnSpec) -> FloatTensor<Self> {
        let parents = [q.node.clone(), k.node.clone(), v.node.clone()];
        match AttentionBackward.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (out, lse) = B::attend_lse(q.primitive.clone(), k.primitive.clone(), v.primitive.clone(), spec);
                prep.finish((q.primitive, k.primitive, v.primitive, out.clone(), lse, spec.clone()), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::attend(q.primitive, k.primitive, v.primitive, spec)),
        }
    }
}

#[derive(Debug)]
struct AttentionBackward;

impl<B: FrozenMatmul> Backward<B, 3> for AttentionBackward {
    /// q, k, v, the output and its log-sum-exp: the probabilities are recomputed tile by tile.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, AttnSpec);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut burn_autodiff::checkpoint::base::Checkpointer,
    ) {
        let (q, k, v, out, lse, spec) = ops.state;
        let dout = grads.consume::<B>(&ops.node);
        let (dq, dk, dv) = B::attend_backward(q, k, v, out, lse, dout, &spec);
        for (parent, grad) in ops.parents.into_iter().zip([dq, dk, dv]) {
            if let Some(p) = parent {
                grads.register::<B>(p.id, grad);
            }
        }
    }
}

/// An adapter's inner tensors (its nodes stay with `lora`, for `prepare`).
fn inner_lora<B: FrozenMatmul, C: CheckpointStrategy>(lora: &LoraPrims<Autodiff<B, C>>) -> LoraPrims<B> {
    let (a, b) = (lora.a.primitive.clone(), lora.b.primitive.clone());
    LoraPrims { a, b, scale: lora.scale, dropout: lora.dropout }
}

#[derive(Debug)]
struct LoraBackward;

impl<B: FrozenMatmul> Backward<B, 3> for LoraBackward {
    /// `x`, the adapter, `h = dropout(x)·Aᵀ`.
    type State = (FloatTensor<B>, LoraPrims<B>, FloatTensor<B>);

    /// `crate::layers::lora::branch_backward`.
    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut burn_autodiff::checkpoint::base::Checkpointer,
    ) {
        let (x, lora, h) = ops.state;
        let dy = grads.consume::<B>(&ops.node);
        let want = ops.parents.each_ref().map(Option::is_some);
        let dt = x.dtype();
        let dgrads = branch_backward::<B>(|| x, dt, lora, h, dy, want);
        for (parent, grad) in ops.parents.into_iter().zip(dgrads) {
            if let (Some(p), Some(g)) = (parent, grad) {
                grads.register::<B>(p.id, g);
            }
        }
    }
}

#[derive(Debug)]
struct GegluLoraDownBackward;

impl<B: FrozenMatmul> Backward<B, 4> for GegluLoraDownBackward {
    /// `gate`, `up`, the frozen weight, the adapter, `h = dropout(act)·Aᵀ`.
    type State = (FloatTensor<B>, FloatTensor<B>, FrozenWeight<B>, LoraPrims<B>, FloatTensor<B>);

    /// As autodiff of the composition: `dact = dy·W + dx` of the branch, then GeGLU's backward; `act` is
    /// made again (from `gate`, `up`) only for `dA`.
    fn backward(
        self,
        ops: Ops<Self::State, 4>,
        grads: &mut Gradients,
        _checkpointer: &mut burn_autodiff::checkpoint::base::Checkpointer,
    ) {
        let (gate, up, w, lora, h) = ops.state;
        let dy = grads.consume::<B>(&ops.node);
        let [pg, pu, pa, pb] = ops.parents;
        let need_act = pg.is_some() || pu.is_some();
        let act = || B::geglu(gate.clone(), up.clone());
        let want = [need_act, pa.is_some(), pb.is_some()];
        let [dx, da, db] = branch_backward::<B>(act, dy.dtype(), lora, h, dy.clone(), want);
        for (parent, grad) in [(pa, da), (pb, db)] {
            if let (Some(p), Some(g)) = (parent, grad) {
                grads.register::<B>(p.id, g);
            }
        }
        if let Some(dx) = dx {
            let (dg, du) = B::geglu_backward(gate, up, B::float_add(w.matmul_dx(dy), dx));
            for (parent, grad) in [(pg, dg), (pu, du)] {
                if let Some(p) = parent {
                    grads.register::<B>(p.id, grad);
                }
            }
        }
    }
}

#[derive(Debug)]
struct DenseMatmulBackward;

impl<B: FrozenMatmul> Backward<B, 2> for DenseMatmulBackward {
    /// The operands: `da = g · bᵀ`, `db = aᵀ · g` (transposed views, not copies).
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut burn_autodiff::checkpoint::base::Checkpointer,
    ) {
        let (a, b) = ops.state;
        let g = grads.consume::<B>(&ops.node);
        let [pa, pb] = ops.parents;
        if let Some(p) = pa {
            grads.register::<B>(p.id, B::dense_matmul(g.clone(), B::float_transpose(b)));
        }
        if let Some(p) = pb {
            grads.register::<B>(p.id, B::dense_matmul(B::float_transpose(a), g));
        }
    }
}

#[derive(Debug)]
struct GegluBackward;

impl<B: FrozenMatmul> Backward<B, 2> for GegluBackward {
    // The inputs; the output is recomputed inside the backward kernel.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut burn_autodiff::checkpoint::base::Checkpointer,
    ) {
        let (gate, up) = ops.state;
        let dout = grads.consume::<B>(&ops.node);
        let (dg, du) = B::geglu_backward(gate, up, dout);
        let [pg, pu] = ops.parents;
        if let Some(p) = pg {
            grads.register::<B>(p.id, dg);
        }
        if let Some(p) = pu {
            grads.register::<B>(p.id, du);
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::gelu_approximate;
    use burn::tensor::{Tensor, TensorData, TensorPrimitive};
    use burn_autodiff::Autodiff;

    use super::{FrozenMatmul, LoraPrims};
    use crate::backend::{Cpu, NdArrayCpu};

    fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        (0..n).map(|i| (((i as u64 * 2_654_435_761 + seed * 97) % 2001) as f32 / 1000.0 - 1.0) * scale).collect()
    }

    /// A tensor's values on the host, as f32.
    fn host<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
    }

    fn close(name: &str, a: &[f32], b: &[f32], tol: f32) {
        let err = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(err < tol, "{name}: max difference {err}");
    }

    /// Outputs and gradients of the fused GeGLU and RoPE (host kernels on flex, the Burn-op defaults on
    /// ndarray) equal Burn's own autodiff through the unfused composition.
    #[test]
    fn fused_ops_equal_autodiff_of_the_composition() {
        fn run<B: FrozenMatmul>(fused: bool) -> Vec<Vec<f32>> {
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
            let x =
                crate::compute::cast(T::<2>::from_data(TensorData::new(values(n * i, 1, 2.0), [n, i]), &dev), dtype)
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
                let mut x2 = crate::compute::cast(x.clone(), DType::F32);
                if let Some((p, seed)) = dropout {
                    let m = crate::layers::dropout::mask_values(n * i, p, seed);
                    x2 = x2 * T::<2>::from_data(TensorData::new(m, [n, i]), &dev);
                }
                let d = super::dense(super::dense(x2, a.clone().transpose()), b.clone().transpose()) * scale;
                crate::compute::cast(d, dtype)
            };
            let w =
                crate::compute::cast(T::<2>::from_data(TensorData::new(values(n * o, 4, 1.0), [n, o]), &dev), dtype);
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

        use crate::quant::{FrozenWeight, Nf4Weight, PackedWeight};

        type T<const D: usize> = Tensor<Autodiff<Cpu>, D>;
        fn run(dtype: DType, packed: bool, dropout: Option<(f64, u64)>, fused: bool) -> Vec<Vec<f32>> {
            let dev = Default::default();
            let (n, i, r, o) = (13, 70, 4, 10);
            let t2 = |v: Vec<f32>, s: [usize; 2]| T::<2>::from_data(TensorData::new(v, s), &dev);
            let act_input = |seed, scale| crate::compute::cast(t2(values(n * i, seed, scale), [n, i]), dtype);
            let gate = act_input(1, 3.0).require_grad();
            let up = act_input(2, 1.0).require_grad();
            let a = t2(values(r * i, 3, 0.5), [r, i]).require_grad();
            let b = t2(values(o * r, 4, 0.5), [o, r]).require_grad();
            let wv = values(o * i, 5, 0.3);
            let w: FrozenWeight<Autodiff<Cpu>> = if packed {
                FrozenWeight::Packed(Arc::new(PackedWeight::Nf4(Nf4Weight::quantize(&wv, [o, i]))))
            } else {
                let wt = crate::compute::cast(t2(wv, [o, i]).transpose(), dtype);
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
                    crate::compute::cast_prim::<Autodiff<Cpu>>(delta, dtype),
                )
            };
            let y = T::<2>::from_primitive(TensorPrimitive::Float(y));
            let up_grad = crate::compute::cast(t2(values(n * o, 6, 1.0), [n, o]), dtype);
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
        fn run<B: FrozenMatmul>(shape: [usize; 4], fused: bool) -> Vec<Vec<f32>> {
            type T<B, const D: usize> = Tensor<Autodiff<B>, D>;
            let dev = Default::default();
            let n: usize = shape.iter().product();
            let dim = shape[3];
            let x = T::<B, 4>::from_data(TensorData::new(values(n, 7, 3.0), shape), &dev).require_grad();
            let scale = T::<B, 1>::from_data(TensorData::new(values(dim, 8, 2.0), [dim]), &dev);
            let eps = 1e-6;
            let y = if fused {
                let p =
                    Autodiff::<B>::rms_norm(x.clone().into_primitive().tensor(), scale.into_primitive().tensor(), eps);
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

        use crate::fused_attention::AttnSpec;
        use crate::layers::mask::{AttnMask, Span};

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
        fn run<B: FrozenMatmul>(c: &Case, fused: bool) -> Vec<Vec<f32>> {
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
}
