//! Gemma's RMSNorm and its backward as one CubeCL kernel each (`GemmaBackend::rms_norm` on the CubeCL
//! backends; the definition and the Burn-op version are in `crate::ops::norm`). One cube per row of the
//! last dimension: the row's statistics by a reduction over the cube's units, then the row written once.
//! Burn's ops would run ~8 kernels forward and ~15 backward over `[tokens × hidden]`. Any float dtype in
//! memory for `x` (bf16 activations), f32 arithmetic inside and for the scale.
//!
//! `y = x·r·scale`, `r = 1/sqrt(mean(x²) + eps)`; `dx = r·g − x·r³·mean(g·x)`, `g = dy·scale`.
use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::launch::{arg, cube_row, empty_like, reduce, row_grid, ROW_UNITS};

/// `1/sqrt(mean(x²) + eps)` of row `base..base + dim`, for every unit of the cube.
#[cube]
fn inv_rms<F: Float>(x: &Array<F>, shared: &mut SharedMemory<f32>, base: usize, dim: usize, eps: f32) -> f32 {
    let unit = UNIT_POS_X as usize;
    let mut ss = f32::new(0.0);
    let mut j = unit;
    while j < dim {
        let v = f32::cast_from(x[base + j]);
        ss += v * v;
        j += CUBE_DIM_X as usize;
    }
    let ss = reduce(shared, ss, unit, false);
    1.0 / f32::sqrt(ss / f32::cast_from(dim) + eps)
}

#[cube(launch)]
fn rms_norm_forward_kernel<F: Float>(
    x: &Array<F>,
    scale: &Array<f32>,
    out: &mut Array<F>,
    rows: u32,
    dim: u32,
    eps: f32,
    #[comptime] units: u32,
    #[define(F)] _dtype: StorageType,
) {
    let row = cube_row();
    if row >= rows as usize {
        terminate!();
    }
    let dim = dim as usize;
    let base = row * dim;
    let mut shared = SharedMemory::<f32>::new(units as usize);
    let r = inv_rms::<F>(x, &mut shared, base, dim, eps);
    let mut j = UNIT_POS_X as usize;
    while j < dim {
        out[base + j] = F::cast_from(f32::cast_from(x[base + j]) * r * scale[j]);
        j += CUBE_DIM_X as usize;
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn rms_norm_backward_kernel<F: Float>(
    x: &Array<F>,
    scale: &Array<f32>,
    dout: &Array<F>,
    dx: &mut Array<F>,
    rows: u32,
    dim: u32,
    eps: f32,
    #[comptime] units: u32,
    #[define(F)] _dtype: StorageType,
) {
    let row = cube_row();
    if row >= rows as usize {
        terminate!();
    }
    let (dim, unit) = (dim as usize, UNIT_POS_X as usize);
    let base = row * dim;
    let mut shared = SharedMemory::<f32>::new(units as usize);
    let r = inv_rms::<F>(x, &mut shared, base, dim, eps);
    let mut gx = f32::new(0.0);
    let mut j = unit;
    while j < dim {
        gx += f32::cast_from(dout[base + j]) * scale[j] * f32::cast_from(x[base + j]);
        j += CUBE_DIM_X as usize;
    }
    let gx = reduce(&mut shared, gx, unit, false) / f32::cast_from(dim);
    let r3 = r * r * r;
    let mut j = unit;
    while j < dim {
        let g = f32::cast_from(dout[base + j]) * scale[j];
        dx[base + j] = F::cast_from(r * g - f32::cast_from(x[base + j]) * r3 * gx);
        j += CUBE_DIM_X as usize;
    }
}

/// `(rows, dim)` of `x` normalised over its last dimension.
fn rows_of<R: CubeRuntime>(x: &CubeTensor<R>) -> (usize, usize) {
    let shape = x.meta.shape();
    let dim = shape[shape.num_dims() - 1];
    (shape.num_elements() / dim.max(1), dim)
}

/// The scale as the kernels read it: contiguous f32.
fn f32_scale<R: CubeRuntime>(scale: CubeTensor<R>) -> CubeTensor<R> {
    assert_eq!(scale.dtype, DType::F32, "rms_norm: the scale is kept in f32");
    into_contiguous(scale)
}

/// `x · scale / sqrt(mean(x²) + eps)` over the last dimension, in `x`'s dtype and shape.
pub fn forward<R: CubeRuntime>(x: CubeTensor<R>, scale: CubeTensor<R>, eps: f64) -> CubeTensor<R> {
    let (x, scale) = (into_contiguous(x), f32_scale(scale));
    let (rows, dim) = rows_of(&x);
    let out = empty_like(&x, x.meta.shape().clone());
    let client = x.client.clone();
    rms_norm_forward_kernel::launch::<R>(
        &client,
        row_grid(rows),
        CubeDim::new_1d(ROW_UNITS),
        arg(&x),
        arg(&scale),
        arg(&out),
        rows as u32,
        dim as u32,
        eps as f32,
        ROW_UNITS,
        x.dtype.into(),
    );
    out
}

/// `d Σ dout · forward(x) / dx`, in `x`'s dtype and shape.
pub fn backward<R: CubeRuntime>(
    x: CubeTensor<R>,
    scale: CubeTensor<R>,
    eps: f64,
    dout: CubeTensor<R>,
) -> CubeTensor<R> {
    assert_eq!(x.dtype, dout.dtype, "rms_norm backward: x and its gradient of different dtypes");
    let (x, scale, dout) = (into_contiguous(x), f32_scale(scale), into_contiguous(dout));
    let (rows, dim) = rows_of(&x);
    let dx = empty_like(&x, x.meta.shape().clone());
    let client = x.client.clone();
    rms_norm_backward_kernel::launch::<R>(
        &client,
        row_grid(rows),
        CubeDim::new_1d(ROW_UNITS),
        arg(&x),
        arg(&scale),
        arg(&dout),
        arg(&dx),
        rows as u32,
        dim as u32,
        eps as f32,
        ROW_UNITS,
        x.dtype.into(),
    );
    dx
}
