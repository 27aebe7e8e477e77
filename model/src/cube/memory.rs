//! Device memory as the bench reports it. CubeCL keeps its own pools: `bytes_in_use` is what live tensors
//! occupy, `bytes_reserved` what the pools hold from the driver (pages are kept for reuse, so it only grows
//! until a cleanup). Neither has a high-water mark, so we keep one: [`sample`] reads the pools' counters (a
//! round trip to CubeCL's device thread, no GPU synchronisation) and folds them into running maxima. The model
//! samples at every frozen matmul (seven per layer in the forward and again in the backward), the bench after
//! every step: the true peak can fall between two samples, by at most the activations of one projection.
//!
//! For comparison with PyTorch (`torch.cuda.max_memory_allocated`, the peak of its allocator's live
//! tensors, what transformers + PEFT + bitsandbytes report), `peak_in_use` is the like-for-like number and `peak_reserved` the conservative one; the driver's
//! view on CUDA (`crate::cuda::device_used_bytes`, `total − free`) also counts the CUDA context, cuBLAS's workspace and the
//! NVRTC-compiled modules.
//!
//! CubeCL keeps one pool per stream, and a stream per calling thread: these are the main thread's, the one
//! the trainer and the bench run on. One runtime per process is assumed (the counters are shared).
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cubecl::client::ComputeClient;
use cubecl::Runtime;

static TRACKING: AtomicBool = AtomicBool::new(false);
static PEAK_IN_USE: AtomicU64 = AtomicU64::new(0);
static PEAK_RESERVED: AtomicU64 = AtomicU64::new(0);
static LAST_IN_USE: AtomicU64 = AtomicU64::new(0);
static LAST_RESERVED: AtomicU64 = AtomicU64::new(0);

/// Byte counts of the main thread's pools: the latest sample and the maxima since [`reset_peaks`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub in_use: u64,
    pub reserved: u64,
    pub peak_in_use: u64,
    pub peak_reserved: u64,
}

/// Turns sampling in the model's frozen matmuls on or off (off by default: it costs a round trip to the
/// device thread per projection, which only the bench wants to pay).
pub fn track(on: bool) {
    TRACKING.store(on, Ordering::Relaxed);
}

/// Samples `client`'s pools when tracking is on.
pub fn sample<R: Runtime>(client: &ComputeClient<R>) {
    if TRACKING.load(Ordering::Relaxed) {
        sample_now(client);
    }
}

/// Samples `client`'s pools now, whether or not tracking is on, and returns the stats.
pub fn sample_now<R: Runtime>(client: &ComputeClient<R>) -> MemoryStats {
    if let Ok(u) = client.memory_usage() {
        LAST_IN_USE.store(u.bytes_in_use, Ordering::Relaxed);
        LAST_RESERVED.store(u.bytes_reserved, Ordering::Relaxed);
        PEAK_IN_USE.fetch_max(u.bytes_in_use, Ordering::Relaxed);
        PEAK_RESERVED.fetch_max(u.bytes_reserved, Ordering::Relaxed);
    }
    stats()
}

/// The latest sample and the maxima, without sampling.
pub fn stats() -> MemoryStats {
    MemoryStats {
        in_use: LAST_IN_USE.load(Ordering::Relaxed),
        reserved: LAST_RESERVED.load(Ordering::Relaxed),
        peak_in_use: PEAK_IN_USE.load(Ordering::Relaxed),
        peak_reserved: PEAK_RESERVED.load(Ordering::Relaxed),
    }
}

/// Restarts the maxima from the latest sample (the bench does this after its warm-up steps).
pub fn reset_peaks() {
    PEAK_IN_USE.store(LAST_IN_USE.load(Ordering::Relaxed), Ordering::Relaxed);
    PEAK_RESERVED.store(LAST_RESERVED.load(Ordering::Relaxed), Ordering::Relaxed);
}
