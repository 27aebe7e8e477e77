//! What the kernel launches here share: the grid for `n` threads, or for one cube per row; an output buffer;
//! a contiguous tensor as an array argument; the reduction over a cube's units; the softcap.
use burn::tensor::Shape;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

/// The cube count and cube size for one thread per element of `n` (at least one).
pub fn elementwise<R: Runtime>(client: &ComputeClient<R>, n: usize) -> (CubeCount, CubeDim) {
    let cube_dim = CubeDim::new(client, n.max(1));
    (cubecl::calculate_cube_count_elemwise(client, n.max(1), cube_dim), cube_dim)
}

/// A new contiguous tensor shaped and typed as `like`.
pub fn empty_like<R: CubeRuntime>(like: &CubeTensor<R>, shape: Shape) -> CubeTensor<R> {
    let n = shape.num_elements();
    let handle = like.client.empty(n.max(1) * like.dtype.size());
    CubeTensor::new_contiguous(like.client.clone(), like.device.clone(), shape, handle, like.dtype)
}

/// `(handle, length)` of a contiguous tensor as a kernel's array argument.
pub fn arg<R: CubeRuntime>(t: &CubeTensor<R>) -> ArrayArg<R> {
    // SAFETY: `t` is contiguous (the callers make it so) and holds `num_elements` values of its dtype, which
    // is the dtype the kernel is compiled for.
    unsafe { ArrayArg::from_raw_parts(t.handle.clone(), t.meta.num_elements()) }
}

/// Units per cube of the row kernels (a power of two, for [`reduce`]).
pub const ROW_UNITS: u32 = 256;

/// One cube per row, for kernels that number rows with [`cube_row`] (a grid may hold more rows than one axis
/// allows); the kernel drops the rows past `rows` in the last line of cubes.
pub fn row_grid(rows: usize) -> CubeCount {
    let x = rows.clamp(1, 65_535);
    CubeCount::Static(x as u32, rows.div_ceil(x).max(1) as u32, 1)
}

/// The max (`is_max`) or sum of `v` over the cube's units (a power of two of them, each with its `unit`
/// index), returned to every unit; `shared` holds one value per unit. Every unit of the cube must call it.
#[cube]
pub fn reduce(shared: &mut SharedMemory<f32>, v: f32, unit: usize, #[comptime] is_max: bool) -> f32 {
    shared[unit] = v;
    sync_cube();
    let mut stride = (CUBE_DIM_X / 2) as usize;
    while stride > 0 {
        if unit < stride {
            let (a, b) = (shared[unit], shared[unit + stride]);
            shared[unit] = if is_max { a.max(b) } else { a + b };
        }
        sync_cube();
        stride /= 2;
    }
    let r = shared[0];
    // Everyone has read the result before the memory is used again.
    sync_cube();
    r
}

/// The row of a kernel launched on [`row_grid`]: `CUBE_POS_Y · CUBE_COUNT_X + CUBE_POS_X`.
#[cube]
pub fn cube_row() -> usize {
    (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize
}

/// `(cap · tanh(x / cap), its derivative 1 − tanh²)`, or `(x, 1)` when `cap` is 0 (no softcap): Gemma 2's
/// attention and final-logit softcapping.
#[cube]
pub fn softcap(x: f32, cap: f32) -> (f32, f32) {
    let mut z = x;
    let mut dcap = f32::new(1.0);
    if cap > 0.0 {
        let th = f32::tanh(x / cap);
        z = th * cap;
        dcap = 1.0 - th * th;
    }
    (z, dcap)
}
