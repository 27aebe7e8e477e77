//! The backend extension the model is generic over: [`FrozenMatmul`] adds to Burn's ops the three that
//! QLoRA needs fused or frozen — the matmul by a packed frozen weight (`crate::quant::linear`), the LM head
//! with its cross-entropy (`crate::lm_head_loss`) and Gemma's GeGLU (`crate::cpu::geglu`) — and gives each
//! its own backward on `Autodiff`, so that no dequantized weight, no `[tokens × vocab]` logits and no
//! activation intermediates are kept for the backward pass.
use std::sync::Arc;

use burn::tensor::activation::gelu_approximate;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorMetadata, TensorPrimitive};
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn_autodiff::Autodiff;

use crate::quant::linear::{frozen_matmul_dequant, PackedWeight};

/// What the model needs of a backend beyond Burn's ops: multiplying by a packed frozen weight, the fused
/// LM-head cross-entropy (`crate::lm_head_loss`) and the fused GeGLU, each with its own backward on
/// `Autodiff`. The defaults are written in Burn ops (any backend); burn-flex overrides them with host kernels.
pub trait FrozenMatmul: Backend {
    /// `x: [n, in]` → `[n, out]`.
    fn frozen_matmul(x: FloatTensor<Self>, w: &Arc<PackedWeight>) -> FloatTensor<Self>;

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

    /// `gelu_tanh(gate) · up`, same shapes.
    fn geglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = gate.shape();
        let [g, u] = [gate, up].map(flat::<Self>);
        Self::float_reshape((gelu_approximate(g) * u).into_primitive().tensor(), shape)
    }

    /// `(d/dgate, d/dup)` of `Σ dout · geglu(gate, up)`.
    fn geglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dout: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let shape = gate.shape();
        let [g, u, d] = [gate, up, dout].map(flat::<Self>);
        // gelu'(x) = ½(1 + t) + ½x(1 − t²)·k(1 + 3c·x²), t = tanh(k(x + c·x³)).
        let (k, c) = ((2.0 / std::f64::consts::PI).sqrt(), 0.044715);
        let t = ((g.clone() + g.clone().powi_scalar(3) * c) * k).tanh();
        let gelu = g.clone() * (t.clone() + 1.0) * 0.5;
        let inner = (g.clone() * g.clone() * (3.0 * c) + 1.0) * k;
        let dgelu = (t.clone() + 1.0) * 0.5 + g * (t.clone() * t).neg().add_scalar(1.0) * inner * 0.5;
        let dg = d.clone() * u * dgelu;
        let du = d * gelu;
        let back = |t: Tensor<Self, 1>| Self::float_reshape(t.into_primitive().tensor(), shape.clone());
        (back(dg), back(du))
    }
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

    /// On the host buffers burn-flex keeps its tensors in, without copying them.
    fn lm_head_nll_grad(
        hidden: FloatTensor<Self>,
        table: FloatTensor<Self>,
        targets: &[(usize, u32)],
        softcap: Option<f64>,
        grad: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        use burn_flex::FlexTensor;
        let (hidden, table) = (hidden.to_contiguous(), table.to_contiguous());
        let slice = |t: &FlexTensor| -> Vec<usize> { t.layout().shape().to_vec() };
        let [n, h] = [slice(&hidden)[0], slice(&hidden)[1]];
        let (hs, es) = match (hidden.as_slice::<f32>(), table.as_slice::<f32>()) {
            (Some(a), Some(b)) => (a, b),
            // Not f32 storage: the generic path handles any dtype.
            _ => return crate::lm_head_loss::nll_grad_generic::<Self>(hidden, table, targets, softcap, grad),
        };
        let (nll, dh) = crate::lm_head_loss::nll_grad_host(hs, es, h, targets, softcap, grad);
        let nll = FlexTensor::from_data(TensorData::new(vec![nll as f32], [1]));
        (nll, dh.map(|d| FlexTensor::from_data(TensorData::new(d, [n, h]))))
    }

    fn geglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = gate.layout().shape().clone();
        let (g, u) = (gate.to_contiguous(), up.to_contiguous());
        match (g.as_slice::<f32>(), u.as_slice::<f32>()) {
            (Some(gs), Some(us)) => flex_from(crate::cpu::geglu::forward(gs, us), shape),
            _ => {
                let [g, u] = [g, u].map(flat::<Self>);
                <Self as burn::tensor::ops::FloatTensorOps<Self>>::float_reshape(
                    (gelu_approximate(g) * u).into_primitive().tensor(),
                    shape,
                )
            }
        }
    }

    fn geglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dout: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let shape = gate.layout().shape().clone();
        let (g, u, d) = (gate.to_contiguous(), up.to_contiguous(), dout.to_contiguous());
        let (gs, us, ds) = (g.as_slice::<f32>(), u.as_slice::<f32>(), d.as_slice::<f32>());
        let (dg, du) = crate::cpu::geglu::backward(
            gs.expect("burn-flex f32 tensor"),
            us.expect("burn-flex f32 tensor"),
            ds.expect("burn-flex f32 tensor"),
        );
        (flex_from(dg, shape.clone()), flex_from(du, shape))
    }
}

fn flex_from(data: Vec<f32>, shape: burn::tensor::Shape) -> burn_flex::FlexTensor {
    burn_flex::FlexTensor::from_data(TensorData::new(data, shape))
}


#[derive(Debug)]
struct LmHeadNllBackward;

impl<B: Backend> Backward<B, 1> for LmHeadNllBackward {
    // d Σnll / d hidden, computed with the loss: the backward only scales it.
    type State = FloatTensor<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut burn_autodiff::checkpoint::base::Checkpointer,
    ) {
        let dh = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            let g = B::float_reshape(grad, [1, 1].into());
            B::float_mul(dh, g)
        });
    }
}

#[derive(Debug)]
struct FrozenMatmulBackward;

impl<B: Backend> Backward<B, 1> for FrozenMatmulBackward {
    // The packed weight, not its dense form: the backward rebuilds it.
    type State = Arc<PackedWeight>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut burn_autodiff::checkpoint::base::Checkpointer,
    ) {
        let w = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            // dy: [n, out] · W: [out, in] → dx: [n, in]
            let device = B::float_device(&grad);
            B::float_matmul(grad, w.to_primitive::<B>(&device))
        });
    }
}

impl<B: FrozenMatmul, C: CheckpointStrategy> FrozenMatmul for Autodiff<B, C> {
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

    fn geglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        match GegluBackward.prepare::<C>([gate.node.clone(), up.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let state = (gate.primitive.clone(), up.primitive.clone());
                prep.finish(state, B::geglu(gate.primitive, up.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::geglu(gate.primitive, up.primitive)),
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

