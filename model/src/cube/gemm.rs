//! How a CubeCL runtime multiplies matrices: the vendor library where it has one (cuBLAS on CUDA, through
//! [`Gemm::vendor_matmul`]), else Burn's matmul. Every product of the GPU path goes through here.
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::DType;
use burn_cubecl::element::BoolElement;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::kernel::matmul::{self, MatmulStrategy};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime};

use crate::dtype::cast_prim;

/// A CubeCL runtime, and how it multiplies matrices when a vendor library can do better than Burn.
pub trait Gemm: CubeRuntime {
    /// `a · bᵀ` (`transpose_b`) or `a · b` for float `a` and `b` of one dtype (2-D, or batches with the same
    /// leading dimensions), through a vendor library, the result in `out` (the inputs' dtype, or f32);
    /// `None` to leave it to Burn's matmul (the default).
    fn vendor_matmul(
        a: &CubeTensor<Self>,
        b: &CubeTensor<Self>,
        transpose_b: bool,
        out: DType,
    ) -> Option<CubeTensor<Self>> {
        let _ = (a, b, transpose_b, out);
        None
    }

    /// How Burn's matmul picks its kernel where the vendor product does not run: autotuned (the default).
    fn burn_matmul_strategy() -> MatmulStrategy {
        MatmulStrategy::default()
    }
}

/// `a · op(b)` in the inputs' dtype: the runtime's vendor product when it has one, else Burn's matmul.
pub(crate) fn product<R: Gemm, BT: BoolElement>(
    a: CubeTensor<R>,
    b: CubeTensor<R>,
    transpose_b: bool,
) -> CubeTensor<R> {
    let dtype = a.dtype;
    product_as::<R, BT>(a, b, transpose_b, dtype)
}

/// [`product`] with the result in `out` (the inputs' dtype, or f32): a vendor library writes its f32
/// accumulator directly; Burn's matmul (which returns the inputs' dtype) is cast.
pub(crate) fn product_as<R: Gemm, BT: BoolElement>(
    a: CubeTensor<R>,
    b: CubeTensor<R>,
    transpose_b: bool,
    out: DType,
) -> CubeTensor<R> {
    if let Some(c) = R::vendor_matmul(&a, &b, transpose_b, out) {
        return c;
    }
    let b = if transpose_b { CubeBackend::<R, f32, i32, BT>::float_transpose(b) } else { b };
    // Burn 0.21's matmul on wgpu returns wrong values for some batched products whose left operand is a
    // transposed view (e.g. `[2, 600, 300]ᵀ · [2, 600, 16]`, off by ~30% of the scale, while k = 1200 or
    // one batch is right; `cube::tests::batched_products_of_transposed_views_equal_cpu`): batched operands go
    // in contiguous.
    let (a, b) = if a.meta.shape().num_dims() > 2 { (into_contiguous(a), into_contiguous(b)) } else { (a, b) };
    let dtype = a.dtype;
    let c = match matmul::matmul(a.clone(), b.clone(), None, R::burn_matmul_strategy(), dtype) {
        Ok(c) => c,
        // A strategy that cannot take these operands: Burn's own dispatch, as `float_matmul` would.
        Err(_) => CubeBackend::<R, f32, i32, BT>::float_matmul(a, b),
    };
    cast_prim::<CubeBackend<R, f32, i32, BT>>(c, out)
}

/// Runs `f`, turning a panic into `Err(its message)` and keeping the panic's report off stderr (the hook is
/// restored before returning). For probing runtimes whose set-up panics where there is no device; call it
/// before anything else runs, since the hook is process-wide.
pub fn quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(f);
    std::panic::set_hook(hook);
    result.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".to_string())
    })
}
