//! cuBLAS on Burn's buffers: `C = op(A) · op(B)` for `CubeTensor`s in f32, bf16 or f16 (2-D, or batches of
//! matrices as one strided batched call), through cudarc's bindings (libcublas loaded at run time), on the
//! raw device pointers that CubeCL's `get_resource` gives.
//!
//! Layout. Burn's tensors are row-major; cuBLAS is column-major. A row-major `[r, c]` buffer with row
//! stride `ld` is, read column-major, the `[c, r]` matrix `Xᵀ` with leading dimension `ld`. So we ask cuBLAS
//! for `Cᵀ = op(B)ᵀ · op(A)ᵀ` (an `[n, m]` column-major result = our row-major `[m, n]`), passing B first: an
//! operand not transposed by the caller is then passed as `N`, a transposed one as `T`. A tensor whose
//! strides say it is the transpose of a row-major buffer (what `float_transpose` makes: it only swaps the
//! strides) is passed as that buffer with the opposite flag, not copied; any other layout is made contiguous
//! first.
//!
//! Synchronisation. CubeCL runs its kernels on a private stream per thread, whose handle it does not expose.
//! `super::stream` finds it through CUPTI; then cuBLAS runs on that very stream and nothing waits on the
//! host (the ordering argument is in that module). Where it cannot be found (or `LAPIDARY_CUBLAS_STREAM=sync`),
//! the product runs on a stream of ours between two host waits: for CubeCL's work (`client.sync()`) before,
//! for ours (our stream's `synchronize`) after. The output buffer comes from CubeCL's pool, allocated
//! before the first wait, so it is ready when cuBLAS writes it, and CubeCL reads it only after the second.
//!
//! Status: compiles; not run on a GPU yet (`tests/gpu.rs` checks it against Burn's matmul).
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::CudaRuntime;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaStream};

/// How f32 products are computed (bf16 and f16 always accumulate in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Math {
    /// Full f32 (`CUBLAS_COMPUTE_32F`): the CPU backends' results to rounding.
    F32,
    /// TF32 tensor cores for f32 inputs (10-bit mantissa products, f32 accumulation): several times faster,
    /// ~1e-3 relative error.
    Tf32,
}

#[derive(Debug, thiserror::Error)]
pub enum CublasError {
    #[error("{0}")]
    Unavailable(#[from] super::device::CudaUnavailable),
    #[error("libcublas could not be loaded (put the CUDA toolkit's lib64, or a pip nvidia-cublas package's lib directory, on LD_LIBRARY_PATH)")]
    NoLibrary,
    #[error("cuBLAS: {0}")]
    Status(String),
    #[error("CUDA driver: {0}")]
    Driver(String),
    #[error("CubeCL: {0}")]
    Server(String),
    #[error("cuBLAS product of {a:?} and {b:?}: {why}")]
    Unsupported { a: DType, b: DType, why: String },
}

/// One handle on one stream of GPU 0's primary context, for the whole process. Burn's ops all run on the
/// main thread, so the lock is never contended; it is there because a handle must not be used by two
/// threads at once.
struct Blas {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    handle: CudaBlas,
}

fn blas() -> Result<&'static Mutex<Blas>, CublasError> {
    static BLAS: OnceLock<Result<Mutex<Blas>, String>> = OnceLock::new();
    let init = || -> Result<Mutex<Blas>, CublasError> {
        let ctx = super::device::context()?;
        // SAFETY: only tries to dlopen the library; without it every cuBLAS call would panic.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(CublasError::NoLibrary);
        }
        let stream = ctx.new_stream().map_err(|e| CublasError::Driver(e.to_string()))?;
        let handle = CudaBlas::new(stream.clone()).map_err(|e| CublasError::Status(e.to_string()))?;
        Ok(Mutex::new(Blas { ctx, stream, handle }))
    };
    match BLAS.get_or_init(|| init().map_err(|e| e.to_string())) {
        Ok(b) => Ok(b),
        Err(e) => Err(CublasError::Status(e.clone())),
    }
}

/// An operand as cuBLAS takes it: row-major matrices at a fixed stride from one another, their row stride,
/// and whether the caller's logical matrix is that buffer transposed.
struct Operand {
    tensor: CubeTensor<CudaRuntime>,
    /// Matrices in the batch (the product of the leading dimensions; 1 for a 2-D tensor).
    batch: usize,
    /// Elements from one matrix to the next (0 when `batch` is 1).
    batch_stride: usize,
    /// Rows and columns of the logical matrix `op(X)`.
    rows: usize,
    cols: usize,
    ld: usize,
    transposed: bool,
}

/// Whether the leading (batch) dimensions of `shape`/`strides` step uniformly, so the batch is one strided
/// sequence of matrices; returns the stride from one matrix to the next.
fn batch_stride(shape: &[usize], strides: &[usize]) -> Option<usize> {
    let lead = shape.len() - 2;
    // Dimensions of size 1 take no part in the layout.
    let dims: Vec<(usize, usize)> = (0..lead).filter(|&i| shape[i] > 1).map(|i| (shape[i], strides[i])).collect();
    let Some(&(_, inner)) = dims.last() else { return Some(0) };
    dims.windows(2).all(|w| w[0].1 == w[1].1 * w[1].0).then_some(inner)
}

/// `t` (rank 2 or more: a batch of matrices in its last two dimensions) as an operand whose logical matrices
/// are `t`'s, or their transposes when `transpose`.
fn operand(t: CubeTensor<CudaRuntime>, transpose: bool) -> Operand {
    let shape = t.meta.shape().clone();
    let strides = t.meta.strides().clone();
    let rank = shape.len();
    let batch: usize = shape[..rank - 2].iter().product();
    let (r, c) = (shape[rank - 2], shape[rank - 1]);
    let (s0, s1) = (strides[rank - 2], strides[rank - 1]);
    let (rows, cols) = if transpose { (c, r) } else { (r, c) };
    if let Some(bs) = batch_stride(&shape, &strides) {
        // Row-major with a row stride of at least the row length (CubeCL pitches rows of some buffers).
        if (s1 == 1 || c == 1) && (r == 1 || s0 >= c) {
            let ld = if r == 1 { c.max(1) } else { s0 };
            return Operand { tensor: t, batch, batch_stride: bs, rows, cols, ld, transposed: transpose };
        }
        // The transpose of a row-major `[c, r]` buffer.
        if (s0 == 1 || r == 1) && (c == 1 || s1 >= r) {
            let ld = if c == 1 { r.max(1) } else { s1 };
            return Operand { tensor: t, batch, batch_stride: bs, rows, cols, ld, transposed: !transpose };
        }
    }
    let t = into_contiguous(t);
    let batch_stride = if batch > 1 { r * c } else { 0 };
    Operand { tensor: t, batch, batch_stride, rows, cols, ld: c.max(1), transposed: transpose }
}

fn data_type(d: DType) -> Option<cudaDataType> {
    match d {
        DType::F32 => Some(cudaDataType::CUDA_R_32F),
        DType::BF16 => Some(cudaDataType::CUDA_R_16BF),
        DType::F16 => Some(cudaDataType::CUDA_R_16F),
        _ => None,
    }
}

/// `op(a) · op(b)` as a new contiguous tensor of `a`'s dtype, where `op` transposes when asked: 2-D
/// `[m, n]`, or for batches (rank 3 or more, the same leading dimensions on both) `[..., m, n]`, one strided
/// batched call. Both on GPU 0, of the same float dtype (f32, bf16 or f16).
pub fn matmul(
    a: CubeTensor<CudaRuntime>,
    b: CubeTensor<CudaRuntime>,
    transpose_a: bool,
    transpose_b: bool,
    math: Math,
) -> Result<CubeTensor<CudaRuntime>, CublasError> {
    let dtype = a.dtype;
    matmul_as(a, b, transpose_a, transpose_b, dtype, math)
}

/// [`matmul`] with the result in `out`: the inputs' dtype, or f32 for bf16/f16 inputs (the f32 accumulator
/// written as it is, e.g. attention's scores before an f32 softmax, with no rounding to 16 bits between).
pub fn matmul_as(
    a: CubeTensor<CudaRuntime>,
    b: CubeTensor<CudaRuntime>,
    transpose_a: bool,
    transpose_b: bool,
    out_dtype: DType,
    math: Math,
) -> Result<CubeTensor<CudaRuntime>, CublasError> {
    let (da, db) = (a.dtype, b.dtype);
    let unsupported = |why: String| CublasError::Unsupported { a: da, b: db, why };
    let (ra, rb) = (a.meta.num_dims(), b.meta.num_dims());
    if ra < 2 || ra != rb {
        return Err(unsupported(format!("ranks {ra} and {rb} (equal, 2 or more)")));
    }
    let lead = a.meta.shape()[..ra - 2].to_vec();
    if lead != b.meta.shape()[..rb - 2] {
        return Err(unsupported("different batch dimensions (no broadcasting)".to_string()));
    }
    if a.dtype != b.dtype {
        return Err(unsupported("mixed dtypes".to_string()));
    }
    let Some(dt) = data_type(a.dtype) else {
        return Err(unsupported("not a float type cuBLAS multiplies here".to_string()));
    };
    if out_dtype != a.dtype && out_dtype != DType::F32 {
        return Err(unsupported(format!("a {out_dtype:?} result (the inputs' dtype or f32)")));
    }
    let dt_out = data_type(out_dtype).expect("f32 or the inputs' float dtype");
    let (dtype, client, device) = (out_dtype, a.client.clone(), a.device.clone());
    let (a, b) = (operand(a, transpose_a), operand(b, transpose_b));
    let (m, k, n, batch) = (a.rows, a.cols, b.cols, a.batch);
    if b.rows != k {
        return Err(unsupported(format!("inner dimensions {k} and {} differ", b.rows)));
    }
    let too_big = |x: usize| i32::try_from(x).is_err();
    if [m, n, k, a.ld, b.ld, batch].into_iter().any(too_big) {
        return Err(unsupported(format!("{batch}x{m}x{k}x{n} exceeds cuBLAS's 32-bit sizes")));
    }
    if m == 0 || n == 0 || k == 0 || batch == 0 {
        // Nothing for cuBLAS to do (k = 0 would be all zeros): leave it to Burn.
        return Err(unsupported(format!("empty product {batch}x{m}x{k}x{n}")));
    }

    let out = client.empty(batch * m * n * dtype.size());
    let server = |e: cubecl::server::ServerError| CublasError::Server(format!("{e:?}"));
    let res_a = client.get_resource(a.tensor.handle.clone()).map_err(server)?;
    let res_b = client.get_resource(b.tensor.handle.clone()).map_err(server)?;
    let res_c = client.get_resource(out.clone()).map_err(server)?;
    // On CubeCL's stream, the blocking `get_resource` calls above have issued every kernel queued before
    // them; on ours, those kernels (writing A and B, allocating C) must finish first.
    let shared = super::stream::cubecl_stream(&client);
    if shared.is_none() {
        cubecl::future::block_on(client.sync()).map_err(server)?;
    }

    let blas = blas()?;
    let blas = blas.lock().unwrap_or_else(|e| e.into_inner());
    blas.ctx.bind_to_thread().map_err(|e| CublasError::Driver(e.to_string()))?;
    let stream = shared.unwrap_or(blas.stream.cu_stream());
    // SAFETY: a live stream of GPU 0's primary context (CubeCL's streams are never destroyed).
    unsafe { cudarc::cublas::result::set_stream(*blas.handle.handle(), stream as _) }
        .map_err(|e| CublasError::Status(e.to_string()))?;
    let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    let compute = match (a.tensor.dtype, math) {
        (DType::F32, Math::Tf32) => cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
        _ => cublasComputeType_t::CUBLAS_COMPUTE_32F,
    };
    let (alpha, beta) = (1f32, 0f32);
    // SAFETY: the pointers are live CubeCL buffers (the `ManagedResource`s keep them allocated until the
    // product is queued; on CubeCL's stream later reuse of the memory is queued after it, on ours we wait
    // for it below), of the dtype and extent the sizes, leading dimensions and batch strides
    // describe (checked above: `ld` is at least the row length of each row-major buffer, the batch steps
    // uniformly); alpha and beta are host f32, as `CUBLAS_COMPUTE_32F*` requires.
    unsafe {
        cudarc::cublas::result::gemm_strided_batched_ex(
            *blas.handle.handle(),
            op(b.transposed),
            op(a.transposed),
            n as i32,
            m as i32,
            k as i32,
            &alpha as *const f32 as *const c_void,
            res_b.resource().ptr as *const c_void,
            dt,
            b.ld as i32,
            b.batch_stride as i64,
            res_a.resource().ptr as *const c_void,
            dt,
            a.ld as i32,
            a.batch_stride as i64,
            &beta as *const f32 as *const c_void,
            res_c.resource().ptr as *mut c_void,
            dt_out,
            n as i32,
            (m * n) as i64,
            batch as i32,
            compute,
            cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
        )
    }
    .map_err(|e| CublasError::Status(e.to_string()))?;
    if shared.is_none() {
        blas.stream.synchronize().map_err(|e| CublasError::Driver(e.to_string()))?;
    }
    drop((res_a, res_b, res_c));
    let mut shape = lead;
    shape.extend([m, n]);
    Ok(CubeTensor::new_contiguous(client, device, shape.into(), out, dtype))
}
