//! Burn's CubeCL backends (`CubeBackend<R, f32, i32, _>` on a CubeCL runtime `R`) with the frozen matmul of
//! QLoRA done our way, for any runtime: the CUDA one (`crate::cuda`, feature `cuda`) and the wgpu one
//! (feature `wgpu`: Vulkan, Metal, DirectX; here, Mesa's CPU Vulkan driver lets the kernels be tested on a
//! machine without a GPU).
//!
//! - `dequant`: NF4 and int8 dequantization as CubeCL kernels, from the packed bytes kept on the device
//!   (uploaded once per weight by `weights`; the dense weight only exists inside one call, as on CPU);
//! - the product itself: a vendor library where the runtime has one ([`Gemm`]: cuBLAS on CUDA), else
//!   Burn's matmul;
//! - `memory`: the pools' high-water marks, for the bench.
//!
//! Switch, read once per process: `LAPIDARY_DEQUANT=host` dequantizes on the host and uploads the dense
//! weight every call (the slow path every backend has, kept as the reference) instead of the kernels.
//!
//! - `geglu`, `rope`, `rms_norm`: GeGLU and RMSNorm forward and backward, RoPE, one kernel each;
//! - `dropout`: LoRA dropout's mask, made on the device (the host's values, by a counter-based generator);
//! - `attention`: the vendor products around one softmax kernel each way, the mask computed on the device
//!   from positions and segments (nothing per key built on the host);
//! - `lm_head`: the LM-head loss's chunks as two vendor products around one kernel (softcap, softmax, the
//!   rows' NLL and the gradient with respect to the logits, in place);
//! - `checks`: the kernels against the CPU, shared by the wgpu tests (`tests`) and the CUDA ones
//!   (`tests/gpu.rs`).
//!
//! The LoRA products use the vendor product too (`FrozenMatmul::dense_matmul`, tracked on `Autodiff`). What
//! stays Burn's: unquantized (`--quant none`) frozen weights' products, residual adds and casts.
pub mod attention;
pub mod checks;
pub mod dequant;
pub mod dropout;
pub mod geglu;
mod launch;
pub mod lm_head;
pub mod memory;
pub mod rms_norm;
pub mod rope;
pub mod weights;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use std::sync::Arc;

use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::DType;
use burn_cubecl::element::BoolElement;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::kernel::matmul::{self, MatmulStrategy};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime};

use crate::fused_attention::AttnSpec;
use crate::ops::FrozenMatmul;
use crate::quant::linear::PackedWeight;

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
fn product<R: Gemm, BT: BoolElement>(a: CubeTensor<R>, b: CubeTensor<R>, transpose_b: bool) -> CubeTensor<R> {
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
    // one batch is right; `tests::batched_products_of_transposed_views_equal_cpu`): batched operands go
    // in contiguous.
    let (a, b) = if a.meta.shape().num_dims() > 2 { (into_contiguous(a), into_contiguous(b)) } else { (a, b) };
    let dtype = a.dtype;
    let c = match matmul::matmul(a.clone(), b.clone(), None, R::burn_matmul_strategy(), dtype) {
        Ok(c) => c,
        // A strategy that cannot take these operands: Burn's own dispatch, as `float_matmul` would.
        Err(_) => CubeBackend::<R, f32, i32, BT>::float_matmul(a, b),
    };
    crate::compute::cast_prim::<CubeBackend<R, f32, i32, BT>>(c, out)
}

impl<R: Gemm, BT: BoolElement> FrozenMatmul for CubeBackend<R, f32, i32, BT> {
    /// `x · Wᵀ`: the weight dequantized on the device, then one product (`W` passed transposed, not copied).
    fn frozen_matmul(x: FloatTensor<Self>, w: &Arc<PackedWeight>) -> FloatTensor<Self> {
        memory::sample(&x.client);
        let dense = weights::dense(w, &x.client, &x.device, x.dtype);
        product::<R, BT>(x, dense, true)
    }

    /// The LM head's and attention's products: the runtime's vendor product when it has one.
    fn dense_matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        product::<R, BT>(a, b, false)
    }

    /// LoRA dropout's mask made on the device, one kernel (`dropout`).
    fn dropout_mask(shape: [usize; 2], p: f64, seed: u64, device: &Self::Device) -> FloatTensor<Self> {
        dropout::mask::<R>(shape, p, seed, device)
    }

    /// RoPE as one kernel (`rope`); its backward is the same call with `−sin`.
    fn rope(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self> {
        rope::forward(x, cos, sin)
    }

    /// GeGLU and its backward as one kernel each (`geglu`).
    fn geglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        geglu::forward(gate, up)
    }

    fn geglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dout: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        geglu::backward(gate, up, dout)
    }

    /// The LM-head loss in chunks, each two vendor products around one kernel (`lm_head`).
    fn lm_head_nll_grad(
        hidden: FloatTensor<Self>,
        table: FloatTensor<Self>,
        targets: &[(usize, u32)],
        softcap: Option<f64>,
        grad: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        crate::lm_head_loss::chunked::<Self>(hidden, table, targets, grad, lm_head::CHUNK, |hc, table, ids, grad| {
            lm_head::chunk::<R, BT>(hc, table, ids, softcap, grad)
        })
    }

    /// RMSNorm and its backward as one kernel each (`rms_norm`).
    fn rms_norm(x: FloatTensor<Self>, scale: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        rms_norm::forward(x, scale, eps)
    }

    fn rms_norm_backward(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        eps: f64,
        dout: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        rms_norm::backward(x, scale, eps, dout)
    }

    /// Attention: vendor products around one softmax kernel each way, the mask computed on the device
    /// (`attention`).
    fn attend_lse(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        spec: &AttnSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        attention::forward::<R, BT>(q, k, v, spec)
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
        attention::backward::<R, BT>(q, k, v, out, lse, dout, spec)
    }

    /// `dy · W`, the backward's product, the same way.
    fn frozen_matmul_dx(dy: FloatTensor<Self>, w: &Arc<PackedWeight>) -> FloatTensor<Self> {
        memory::sample(&dy.client);
        let dense = weights::dense(w, &dy.client, &dy.device, dy.dtype);
        product::<R, BT>(dy, dense, false)
    }
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

#[cfg(all(test, feature = "wgpu"))]
mod tests;
