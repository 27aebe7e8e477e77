//! CubeCL's CUDA stream, found so that cuBLAS can run on it: products then queue behind CubeCL's kernels on
//! the device, with no host wait before or after each one.
//!
//! CubeCL 0.10 runs each thread's kernels on a private stream and exposes no handle to it, so without this
//! every product costs two host round trips (`client.sync()` before, our stream's `synchronize` after) and the
//! GPU idles while the host queues the next kernels: ~1,600 products a step on Gemma 2B. CUPTI's callback API,
//! NVIDIA's documented interface for tools, reports the arguments of every `cuLaunchKernel`, the stream among
//! them. So, once per thread: subscribe, launch one tiny kernel of ours through CubeCL (it lands on this
//! thread's stream), read `hStream` from the callback whose kernel symbol is ours, unsubscribe.
//!
//! Why it is ordered. CubeCL's device thread issues our queued kernels in order; `client.get_resource` (a
//! blocking call into that thread) returns only after everything queued before it was issued, so a product
//! issued after it onto the same stream runs after the kernels that wrote its inputs, and every kernel
//! queued afterwards (the readers of its output, the reuse of its buffers, all from CubeCL's pool for this
//! stream) runs after it.
//!
//! Anything failing (no libcupti, another CUPTI client such as a profiler, no callback seen) leaves
//! [`cubecl_stream`] at `None`, and the products keep the host waits. `LAPIDARY_CUBLAS_STREAM=sync` asks for
//! the waits regardless, to compare the two in one GPU session.
//!
//! Status: compiles; not run on a GPU yet (`tests/gpu.rs` checks the products against Burn's matmul in
//! whichever mode is on, and `scripts/bench_gpu.sh check` runs a training step in both).
use std::cell::Cell;
use std::ffi::{c_void, CStr};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, OnceLock};

use cubecl::cuda::CudaRuntime;
use cubecl::prelude::*;
use cudarc::cupti::sys as cupti;
use cudarc::driver::sys::CUstream;

/// The symbol our probe kernel compiles to starts with its name (CubeCL may add a dtype suffix).
const PROBE: &str = "lapidary_stream_probe";

#[cube(launch)]
fn lapidary_stream_probe(out: &mut Array<u32>) {
    if ABSOLUTE_POS == 0 {
        out[0] = 1;
    }
}

/// Whether products may use CubeCL's stream (`LAPIDARY_CUBLAS_STREAM`, read once): anything but `sync`.
pub fn wanted() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("LAPIDARY_CUBLAS_STREAM").as_deref() != Ok("sync"))
}

thread_local! {
    /// This thread's CubeCL stream: not looked for yet (`None`), or what the look found.
    static FOUND: Cell<Option<Option<usize>>> = const { Cell::new(None) };
}

/// The stream CubeCL runs this thread's kernels on, when it can be found (looked for once per thread).
pub fn cubecl_stream(client: &ComputeClient<CudaRuntime>) -> Option<CUstream> {
    if !wanted() {
        return None;
    }
    let found = FOUND.with(|f| {
        if f.get().is_none() {
            let s = find(client);
            if let Err(why) = &s {
                static WARNED: OnceLock<()> = OnceLock::new();
                WARNED.get_or_init(|| {
                    eprintln!(
                        "note: cuBLAS waits on the host around each product ({why}; see lapidary_model::cuda::stream)"
                    )
                });
            }
            f.set(Some(s.ok().map(|p| p as usize)));
        }
        f.get().flatten()
    });
    found.map(|p| p as CUstream)
}

/// Where the callback leaves the stream it saw.
static SEEN: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// CUPTI calls this on the thread that calls the driver (CubeCL's device thread) at the entry and exit of
/// each `cuLaunchKernel` while we are subscribed.
unsafe extern "C" fn on_launch(_: *mut c_void, domain: cupti::CUpti_CallbackDomain, cbid: u32, data: *const c_void) {
    let launch = cupti::CUpti_driver_api_trace_cbid_enum::CUPTI_DRIVER_TRACE_CBID_cuLaunchKernel as u32;
    if domain != cupti::CUpti_CallbackDomain::CUPTI_CB_DOMAIN_DRIVER_API || cbid != launch || data.is_null() {
        return;
    }
    // SAFETY: for the driver domain CUPTI passes a `CUpti_CallbackData`, whose `functionParams` for
    // `cuLaunchKernel` is a `cuLaunchKernel_params`; both stay valid for the duration of the callback.
    unsafe {
        let d = &*(data as *const cupti::CUpti_CallbackData);
        if d.callbackSite != cupti::CUpti_ApiCallbackSite::CUPTI_API_ENTER
            || d.symbolName.is_null()
            || d.functionParams.is_null()
        {
            return;
        }
        if !CStr::from_ptr(d.symbolName).to_string_lossy().contains(PROBE) {
            return;
        }
        let p = &*(d.functionParams as *const cupti::cuLaunchKernel_params);
        SEEN.store(p.hStream as *mut c_void, Ordering::SeqCst);
    }
}

/// Subscribes, launches the probe on this thread's CubeCL stream, waits for it, unsubscribes.
fn find(client: &ComputeClient<CudaRuntime>) -> Result<CUstream, String> {
    // One look at a time: the callback and `SEEN` are process-wide.
    static LOOK: Mutex<()> = Mutex::new(());
    let _one = LOOK.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: only tries to dlopen libcupti by its usual names; without it every CUPTI call would panic.
    if !unsafe { cupti::is_culib_present() } {
        return Err("libcupti could not be loaded; put the CUDA toolkit's extras/CUPTI/lib64 or a pip \
                    nvidia-cuda-cupti package's lib directory on LD_LIBRARY_PATH"
            .to_string());
    }
    let check = |what: &str, r: cupti::CUptiResult| match r {
        cupti::CUptiResult::CUPTI_SUCCESS => Ok(()),
        e => Err(format!("CUPTI {what}: {e:?}")),
    };
    let mut sub: cupti::CUpti_SubscriberHandle = std::ptr::null_mut();
    // SAFETY: `on_launch` has the callback signature CUPTI expects and touches only `SEEN`; the subscriber is
    // released below on every path after a successful subscribe.
    check("subscribe", unsafe { cupti::cuptiSubscribe(&mut sub, Some(on_launch), std::ptr::null_mut()) })?;
    SEEN.store(std::ptr::null_mut(), Ordering::SeqCst);
    let launch = cupti::CUpti_driver_api_trace_cbid_enum::CUPTI_DRIVER_TRACE_CBID_cuLaunchKernel as u32;
    // SAFETY: `sub` is the live subscriber from above.
    let enabled = check("enable callback", unsafe {
        cupti::cuptiEnableCallback(1, sub, cupti::CUpti_CallbackDomain::CUPTI_CB_DOMAIN_DRIVER_API, launch)
    });
    let probed = enabled.and_then(|()| {
        let out = client.empty(4);
        // SAFETY: a one-element u32 buffer, written by unit 0 only.
        let arg = unsafe { ArrayArg::<CudaRuntime>::from_raw_parts(out, 1) };
        lapidary_stream_probe::launch::<CudaRuntime>(client, CubeCount::Static(1, 1, 1), CubeDim::new_1d(1), arg);
        // Blocking: the launch above was issued (and ran) before this returns.
        cubecl::future::block_on(client.sync()).map_err(|e| format!("CubeCL: {e:?}"))
    });
    // SAFETY: as above; unsubscribing also disables the callback.
    let released = check("unsubscribe", unsafe { cupti::cuptiUnsubscribe(sub) });
    probed?;
    released?;
    let s = SEEN.swap(std::ptr::null_mut(), Ordering::SeqCst);
    if s.is_null() {
        return Err("CUPTI reported no launch of the probe kernel".to_string());
    }
    Ok(s as CUstream)
}
