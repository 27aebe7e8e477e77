//! GeGLU, `gelu_tanh(gate) · up`, and its backward in Burn ops: the reference for `Kernels::geglu` and
//! `Kernels::geglu_backward` (any backend, any float dtype). All Gemma generations use the tanh
//! approximation of GELU (transformers' `gelu_pytorch_tanh`).
use burn::tensor::activation::gelu_approximate;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorMetadata, TensorPrimitive};

/// `gelu_tanh(gate) · up`.
pub fn forward<B: Backend>(gate: FloatTensor<B>, up: FloatTensor<B>) -> FloatTensor<B> {
    let shape = gate.shape();
    let [g, u] = [gate, up].map(flat::<B>);
    B::float_reshape((gelu_approximate(g) * u).into_primitive().tensor(), shape)
}

/// `(d/dgate, d/dup)` of `Σ dout · geglu(gate, up)`.
pub fn backward<B: Backend>(
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
