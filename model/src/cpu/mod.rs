//! Host (CPU) kernels used where Burn's generic ops are too slow: a safe row-major front to the `gemm`
//! crate (the same matmul burn-flex runs, here called on our own buffers), and the vectorised softmax /
//! cross-entropy rows of the fused LM-head loss, and the tiled attention.
pub mod attention;
pub mod geglu;
pub mod gemm;
pub mod math;
pub mod rope;
pub mod softmax;

/// Whether this CPU has AVX2 and FMA: the kernels compiled a second time with them (the binary targets
/// baseline x86-64) are picked at run time by this check.
pub(crate) fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
    #[allow(unreachable_code)]
    false
}
