//! Host (CPU) kernels used where Burn's generic ops are too slow: a safe row-major front to the `gemm`
//! crate (the same matmul burn-flex runs, here called on our own buffers), and the vectorised softmax /
//! cross-entropy rows of the fused LM-head loss, and the tiled attention.
/// `$vis fn $name(args) -> ret` that runs `$imp` compiled a second time with AVX2+FMA when the CPU has them
/// (the binary targets baseline x86-64), else `$imp` as compiled. `$imp` should be `#[inline(always)]`, so
/// that its body is what the second compilation vectorises.
macro_rules! avx2_dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $imp:ident) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) $(-> $ret)? {
                    $imp($($arg),*)
                }
                if $crate::cpu::avx2_fma() {
                    // SAFETY: the CPU has the features `fast` was compiled for (checked just above).
                    return unsafe { fast($($arg),*) };
                }
            }
            $imp($($arg),*)
        }
    };
}

pub mod attention;
pub mod bf16;
pub mod bf16_gemm;
pub mod geglu;
pub mod gemm;
pub mod lm_head;
pub mod math;
pub mod qdot;
pub mod qmatmul;
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
