//! What every elementwise kernel launch here needs: the grid for `n` threads, an output buffer, a
//! contiguous tensor as an array argument.
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
