//! Finding the GPU before anything touches it. cudarc loads `libcuda` lazily and panics when the library or a
//! symbol is missing, and CubeCL unwraps every driver call while it starts its device thread: on a machine
//! without a GPU, the first tensor would abort the program with a backtrace. [`probe`] asks the same questions
//! with calls that return errors, so the CLI can refuse `--backend cuda` with a message instead.
use std::sync::{Arc, OnceLock};

use cudarc::driver::CudaContext;

/// Why the CUDA backend cannot run here.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CudaUnavailable {
    #[error(
        "no CUDA driver: libcuda could not be loaded (--backend cuda needs an NVIDIA GPU and its driver; \
         is this a machine with one?)"
    )]
    NoDriver,
    #[error("the CUDA driver sees no usable GPU: {0}")]
    NoDevice(String),
    #[error(
        "libnvrtc could not be loaded: CubeCL compiles its kernels at run time with NVRTC (put the CUDA \
         toolkit's lib64, or a pip nvidia-cuda-nvrtc package's lib directory, on LD_LIBRARY_PATH)"
    )]
    NoNvrtc,
    #[error(
        "no CUDA toolkit headers: CubeCL passes CUDA_PATH/include to NVRTC when it compiles its kernels (set \
         CUDA_PATH, or install the toolkit in /usr/local/cuda)"
    )]
    NoToolkit,
    #[error("CUDA driver error on GPU 0: {0}")]
    Driver(String),
    #[error("the CUDA driver panicked while being probed: {0}")]
    Panicked(String),
}

/// What the CLI and the bench report about the GPU.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// As the driver names it, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    pub total_bytes: usize,
    pub compute_capability: (i32, i32),
    /// Whether `libcublas` loads; without it products fall back to Burn's matmul (`crate::cuda::matmul`).
    pub cublas: bool,
}

/// GPU 0, or why there is none. The answer is computed once per process.
pub fn probe() -> Result<DeviceInfo, CudaUnavailable> {
    static PROBE: OnceLock<Result<DeviceInfo, CudaUnavailable>> = OnceLock::new();
    PROBE.get_or_init(probe_quietly).clone()
}

/// [`probe_uncached`], with any panic from the driver bindings turned into an error and its message kept off
/// stderr (nothing else runs yet when the CLI probes).
fn probe_quietly() -> Result<DeviceInfo, CudaUnavailable> {
    crate::cube::gemm::quietly(probe_uncached).unwrap_or_else(|msg| Err(CudaUnavailable::Panicked(msg)))
}

fn probe_uncached() -> Result<DeviceInfo, CudaUnavailable> {
    // SAFETY: each `is_culib_present` only tries to dlopen the library by its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaUnavailable::NoDriver);
    }
    let count = CudaContext::device_count().map_err(|e| CudaUnavailable::NoDevice(e.to_string()))?;
    if count < 1 {
        return Err(CudaUnavailable::NoDevice("the driver reports 0 devices".to_string()));
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaUnavailable::NoNvrtc);
    }
    // CubeCL panics on its first kernel without it (`cubecl::cuda::install::include_path`).
    if cubecl::cuda::install::cuda_path().is_none() {
        return Err(CudaUnavailable::NoToolkit);
    }
    let ctx = context()?;
    let driver = |e: cudarc::driver::DriverError| CudaUnavailable::Driver(e.to_string());
    Ok(DeviceInfo {
        name: ctx.name().map_err(driver)?,
        total_bytes: ctx.total_mem().map_err(driver)?,
        compute_capability: ctx.compute_capability().map_err(driver)?,
        cublas: unsafe { cudarc::cublas::sys::is_culib_present() },
    })
}

/// GPU 0's primary context, which CubeCL's device thread also uses (it retains the primary context too), so
/// device pointers from Burn's buffers are valid in it. Our calls (cuBLAS, memory queries) run on the
/// caller's thread, which CubeCL never makes current; cudarc binds this context to it before each call.
pub fn context() -> Result<Arc<CudaContext>, CudaUnavailable> {
    static CTX: OnceLock<Result<Arc<CudaContext>, CudaUnavailable>> = OnceLock::new();
    CTX.get_or_init(|| {
        // Checked here too, for callers that did not probe first: without the library cudarc panics.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaUnavailable::NoDriver);
        }
        CudaContext::new(0).map_err(|e| CudaUnavailable::Driver(e.to_string()))
    })
    .clone()
}

/// `total − free` device memory as the driver counts it (every process and context on GPU 0), or `None`
/// when the driver cannot be asked.
pub fn device_used_bytes() -> Option<u64> {
    let ctx = context().ok()?;
    let (free, total) = ctx.mem_get_info().ok()?;
    Some(total.saturating_sub(free) as u64)
}
