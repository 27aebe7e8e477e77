//! `Autodiff`'s side of the ops: each op of [`Kernels`] and [`GemmaBackend`] that the model differentiates
//! through is one node with its own backward, which saves only what that backward needs (a packed weight, not
//! its dense form; `gate` and `up`, not GeGLU's output; attention's log-sum-exp, not its probabilities) and
//! runs the inner backend's ops. Ops not overridden here take the defaults, on `Autodiff` tensors.
use std::sync::Arc;

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorMetadata;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn_autodiff::Autodiff;

use super::attention::AttnSpec;
use super::frozen_weight::FrozenWeight;
use super::gemma_backend::GemmaBackend;
use super::kernels::Kernels;
use super::lm_head::LmTable;
use super::lora::{self, LoraPrims};
use crate::dtype::cast_prim;
use crate::quant::PackedWeight;

/// A single-input backward op: its name, what it saves, and `|state, grad| -> grad of the input`.
macro_rules! unary_backward {
    ($(#[$doc:meta])* $name:ident, $state:ty, |$st:ident, $grad:ident| $body:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        struct $name;

        impl<B: GemmaBackend> Backward<B, 1> for $name {
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

impl<B: GemmaBackend, C: CheckpointStrategy> Kernels for Autodiff<B, C> {
    fn frozen_matmul(x: FloatTensor<Self>, w: &Arc<PackedWeight>) -> FloatTensor<Self> {
        match FrozenMatmulBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(w.clone(), B::frozen_matmul(x.primitive, w)),
            OpsKind::UnTracked(prep) => prep.finish(B::frozen_matmul(x.primitive, w)),
        }
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

    fn dropout_mask(shape: [usize; 2], p: f64, seed: u64, device: &Self::Device) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(B::dropout_mask(shape, p, seed, device))
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

    fn rms_norm(x: FloatTensor<Self>, scale: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        let scale = scale.primitive;
        match RmsNormBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                prep.finish((x.primitive.clone(), scale.clone(), eps), B::rms_norm(x.primitive, scale, eps))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rms_norm(x.primitive, scale, eps)),
        }
    }
}

impl<B: GemmaBackend, C: CheckpointStrategy> GemmaBackend for Autodiff<B, C> {
    fn lora_delta(x: FloatTensor<Self>, lora: LoraPrims<Self>) -> FloatTensor<Self> {
        let parents = [x.node.clone(), lora.a.node.clone(), lora.b.node.clone()];
        let lora = inner_lora(&lora);
        match LoraBackward.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (delta, h) = lora::branch::<B>(x.primitive.clone(), &lora);
                prep.finish((x.primitive, lora, h), delta)
            }
            OpsKind::UnTracked(prep) => prep.finish(lora::branch::<B>(x.primitive, &lora).0),
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
        let forward = lora::geglu_lora_down::<B>;
        match GegluLoraDownBackward.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (y, h) = forward(g.clone(), u.clone(), &w, &lora);
                prep.finish((g, u, w, lora, h), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(g, u, &w, &lora).0),
        }
    }

    fn lm_head_nll(
        hidden: FloatTensor<Self>,
        table: LmTable<Self>,
        targets: &[(usize, u32)],
        softcap: Option<f64>,
    ) -> FloatTensor<Self> {
        // The table is frozen: only its values go to the inner backend.
        let inner = |t: &LmTable<Self>| match t {
            LmTable::Dense(t) => LmTable::<B>::Dense(t.primitive.clone()),
            LmTable::Packed(w) => LmTable::Packed(w.clone()),
        };
        match LmHeadNllBackward.prepare::<C>([hidden.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (nll, dh) = B::lm_head_nll_grad(hidden.primitive, inner(&table), targets, softcap, true);
                prep.finish(dh.expect("asked for the gradient"), nll)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::lm_head_nll_grad(hidden.primitive, inner(&table), targets, softcap, false).0)
            }
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

impl<B: GemmaBackend> Backward<B, 3> for AttentionBackward {
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
fn inner_lora<B: GemmaBackend, C: CheckpointStrategy>(lora: &LoraPrims<Autodiff<B, C>>) -> LoraPrims<B> {
    let (a, b) = (lora.a.primitive.clone(), lora.b.primitive.clone());
    LoraPrims { a, b, scale: lora.scale, dropout: lora.dropout }
}

#[derive(Debug)]
struct LoraBackward;

impl<B: GemmaBackend> Backward<B, 3> for LoraBackward {
    /// `x`, the adapter, `h = dropout(x)·Aᵀ`.
    type State = (FloatTensor<B>, LoraPrims<B>, FloatTensor<B>);

    /// `super::lora::branch_backward`.
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
        let dgrads = lora::branch_backward::<B>(|| x, dt, lora, h, dy, want);
        for (parent, grad) in ops.parents.into_iter().zip(dgrads) {
            if let (Some(p), Some(g)) = (parent, grad) {
                grads.register::<B>(p.id, g);
            }
        }
    }
}

#[derive(Debug)]
struct GegluLoraDownBackward;

impl<B: GemmaBackend> Backward<B, 4> for GegluLoraDownBackward {
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
        let [dx, da, db] = lora::branch_backward::<B>(act, dy.dtype(), lora, h, dy.clone(), want);
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

impl<B: GemmaBackend> Backward<B, 2> for DenseMatmulBackward {
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

impl<B: GemmaBackend> Backward<B, 2> for GegluBackward {
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
