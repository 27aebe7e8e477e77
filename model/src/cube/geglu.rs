//! Gemma's GeGLU, `gelu_tanh(gate) · up`, and its backward as one CubeCL kernel each (`GemmaBackend::geglu`
//! on the CubeCL backends). Burn's ops would run ~8 kernels forward and ~20 backward over the
//! `[tokens × intermediate]` activations, each reading and writing all of them; these read the inputs once
//! and write the outputs once. Any float dtype in memory (the kernels are compiled for the tensors' dtype),
//! f32 arithmetic inside: for bf16 activations the one rounding is the output's.
//!
//! gelu_tanh(x) = ½x(1 + t), t = tanh(k(x + c·x³)), k = √(2/π), c = 0.044715;
//! gelu_tanh'(x) = ½(1 + t) + ½x(1 − t²)·k(1 + 3c·x²).
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::launch::{arg, elementwise, empty_like};

#[cube(launch)]
fn geglu_forward_kernel<F: Float>(
    gate: &Array<F>,
    up: &Array<F>,
    out: &mut Array<F>,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i >= out.len() {
        terminate!();
    }
    let g = f32::cast_from(gate[i]);
    let u = f32::cast_from(up[i]);
    let t = f32::tanh(0.797_884_6 * (g + 0.044715 * g * g * g));
    out[i] = F::cast_from(0.5 * g * (1.0 + t) * u);
}

#[cube(launch)]
fn geglu_backward_kernel<F: Float>(
    gate: &Array<F>,
    up: &Array<F>,
    dout: &Array<F>,
    dgate: &mut Array<F>,
    dup: &mut Array<F>,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i >= dgate.len() {
        terminate!();
    }
    let g = f32::cast_from(gate[i]);
    let u = f32::cast_from(up[i]);
    let d = f32::cast_from(dout[i]);
    let t = f32::tanh(0.797_884_6 * (g + 0.044715 * g * g * g));
    let gelu = 0.5 * g * (1.0 + t);
    let dgelu = 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * 0.797_884_6 * (1.0 + 3.0 * 0.044715 * g * g);
    dgate[i] = F::cast_from(d * u * dgelu);
    dup[i] = F::cast_from(d * gelu);
}

/// `gelu_tanh(gate) · up`, same shapes and dtype.
pub fn forward<R: CubeRuntime>(gate: CubeTensor<R>, up: CubeTensor<R>) -> CubeTensor<R> {
    assert_eq!(gate.dtype, up.dtype, "geglu: gate and up of different dtypes");
    let (gate, up) = (into_contiguous(gate), into_contiguous(up));
    let shape = gate.meta.shape().clone();
    let n = shape.num_elements();
    let out = empty_like(&gate, shape);
    let client = gate.client.clone();
    let (cube_count, cube_dim) = elementwise(&client, n);
    geglu_forward_kernel::launch::<R>(
        &client,
        cube_count,
        cube_dim,
        arg(&gate),
        arg(&up),
        arg(&out),
        gate.dtype.into(),
    );
    out
}

/// `(d/dgate, d/dup)` of `Σ dout · geglu(gate, up)`.
pub fn backward<R: CubeRuntime>(
    gate: CubeTensor<R>,
    up: CubeTensor<R>,
    dout: CubeTensor<R>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    assert!(gate.dtype == up.dtype && up.dtype == dout.dtype, "geglu backward: inputs of different dtypes");
    let (gate, up, dout) = (into_contiguous(gate), into_contiguous(up), into_contiguous(dout));
    let shape = gate.meta.shape().clone();
    let n = shape.num_elements();
    let (dgate, dup) = (empty_like(&gate, shape.clone()), empty_like(&gate, shape));
    let client = gate.client.clone();
    let (cube_count, cube_dim) = elementwise(&client, n);
    geglu_backward_kernel::launch::<R>(
        &client,
        cube_count,
        cube_dim,
        arg(&gate),
        arg(&up),
        arg(&dout),
        arg(&dgate),
        arg(&dup),
        gate.dtype.into(),
    );
    (dgate, dup)
}
