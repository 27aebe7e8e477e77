//! Rotary embedding (rotate-half layout) as one CubeCL kernel (`GemmaBackend::rope` on the CubeCL backends):
//! `out = x·cos + rotate_half(x)·sin`, `rotate_half(x) = [−x₂, x₁]` over the halves of each head's `d`
//! values, with `cos`/`sin` `[b, s, 1, d]` broadcast over the heads. Burn's ops would slice, negate,
//! concatenate, multiply twice and add. The backward is the same kernel with `−sin` (`crate::ops`). Any float
//! dtype in memory, f32 arithmetic inside.
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::launch::{arg, elementwise, empty_like};

#[cube(launch)]
fn rope_kernel<F: Float>(
    x: &Array<F>,
    cos: &Array<F>,
    sin: &Array<F>,
    out: &mut Array<F>,
    heads: u32,
    head_dim: u32,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i >= out.len() {
        terminate!();
    }
    let d = usize::cast_from(head_dim);
    let half = d / 2;
    let k = i % d;
    // The (batch, position) row of the tables: one per `heads · d` values of `x`.
    let j = (i / (usize::cast_from(heads) * d)) * d + k;
    let partner = f32::cast_from(x[if k < half { i + half } else { i - half }]);
    let rotated = if k < half { -partner } else { partner };
    let v = f32::cast_from(x[i]) * f32::cast_from(cos[j]) + rotated * f32::cast_from(sin[j]);
    out[i] = F::cast_from(v);
}

/// `x` `[b, s, heads, d]`, `cos`/`sin` `[b, s, 1, d]`, all of one dtype.
pub fn forward<R: CubeRuntime>(x: CubeTensor<R>, cos: CubeTensor<R>, sin: CubeTensor<R>) -> CubeTensor<R> {
    assert!(x.dtype == cos.dtype && cos.dtype == sin.dtype, "rope: inputs of different dtypes");
    let (x, cos, sin) = (into_contiguous(x), into_contiguous(cos), into_contiguous(sin));
    let shape = x.meta.shape().clone();
    let (heads, d) = (shape[2], shape[3]);
    let n = shape.num_elements();
    let out = empty_like(&x, shape);
    let client = x.client.clone();
    let (cube_count, cube_dim) = elementwise(&client, n);
    rope_kernel::launch::<R>(
        &client,
        cube_count,
        cube_dim,
        arg(&x),
        arg(&cos),
        arg(&sin),
        arg(&out),
        heads as u32,
        d as u32,
        x.dtype.into(),
    );
    out
}
