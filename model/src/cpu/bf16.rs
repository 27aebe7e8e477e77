//! bf16 on the host: conversions (round to nearest even, as `half::bf16::from_f32` and torch round), and
//! which CPU path a bf16 model runs on. bf16 activations are multiplied either by the AVX-512-BF16
//! instruction `VDPBF16PS` (pairs of bf16 products summed into f32: `super::bf16_gemm`), or, on CPUs
//! without it, widened to f32 and multiplied by the `gemm` crate ("emulated": the same products, exact in
//! f32, in another summation order), so that bf16 is never slower than f32.
use half::bf16;

/// What the products of a model run on, for the user (`lapidary bench`, the trainer's first line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuPath {
    F32,
    /// bf16 operands, f32 accumulation, by `VDPBF16PS`.
    Bf16Native,
    /// bf16 operands widened to f32 (exact) and multiplied by the f32 kernels.
    Bf16Emulated,
}

impl std::fmt::Display for CpuPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CpuPath::F32 => "f32",
            CpuPath::Bf16Native => "bf16 native (AVX512-BF16)",
            CpuPath::Bf16Emulated => "bf16 emulated (widened to f32: this CPU has no AVX512-BF16)",
        })
    }
}

/// The path a model computing in bf16 (`bf16 = true`) or f32 takes on this CPU.
pub fn cpu_path(bf16: bool) -> CpuPath {
    match (bf16, native()) {
        (false, _) => CpuPath::F32,
        (true, true) => CpuPath::Bf16Native,
        (true, false) => CpuPath::Bf16Emulated,
    }
}

/// Whether this CPU has AVX-512F and AVX512-BF16 (and the OS saves the AVX-512 state: the detection macro
/// checks that too). `LAPIDARY_NO_BF16_NATIVE=1` takes the emulated path anyway (to compare the two).
pub fn native() -> bool {
    use std::sync::OnceLock;
    static NATIVE: OnceLock<bool> = OnceLock::new();
    *NATIVE.get_or_init(|| {
        let off = std::env::var_os("LAPIDARY_NO_BF16_NATIVE").is_some_and(|v| v == "1");
        !off && has_instruction()
    })
}

/// Whether the CPU itself has the instruction (whatever the environment says).
pub fn has_instruction() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16");
    #[allow(unreachable_code)]
    false
}

/// `x` rounded to bf16 (nearest, ties to even; NaN stays NaN), as bits.
#[inline(always)]
pub fn bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        // Quiet NaN with the sign and top mantissa bits kept, as `half` does.
        return ((b >> 16) | 0x0040) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// bf16 bits as f32 (exact).
#[inline(always)]
pub fn widen(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

#[inline(always)]
fn narrow_imp(src: &[f32], dst: &mut [bf16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16::from_bits(bits(s));
    }
}
avx2_dispatch!(
    /// `dst[i] = bf16(src[i])`.
    pub fn narrow_into(src: &[f32], dst: &mut [bf16]) => narrow_imp
);

#[inline(always)]
fn widen_imp(src: &[bf16], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = widen(s.to_bits());
    }
}
avx2_dispatch!(
    /// `dst[i] = f32(src[i])`.
    pub fn widen_into(src: &[bf16], dst: &mut [f32]) => widen_imp
);

#[inline(always)]
fn round_imp(v: &mut [f32]) {
    for x in v.iter_mut() {
        *x = widen(bits(*x));
    }
}
avx2_dispatch!(
    /// Each value rounded to the nearest bf16, kept as f32.
    pub fn round_in_place(v: &mut [f32]) => round_imp
);

/// `t` cast to `dtype` by the conversions here when it is a burn-flex tensor cast between f32 and bf16
/// (burn-flex 0.21 casts through an f64 copy of the whole tensor, element by element: the LoRA branch's and
/// RMSNorm's casts of every activation made that a few percent of a bf16 training step, and the embedding's
/// f64 copy doubled the load's peak memory; it also rounded a few RoPE table values of a step to the
/// farther bf16 neighbour, where these conversions round to the nearest as torch does); `Err(t)` for any
/// other backend or dtype.
pub fn flex_cast<B: burn::tensor::backend::Backend>(
    t: burn::tensor::ops::FloatTensor<B>,
    dtype: burn::tensor::DType,
) -> Result<burn::tensor::ops::FloatTensor<B>, burn::tensor::ops::FloatTensor<B>> {
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{DType, TensorData};
    use burn_flex::FlexTensor;
    use std::any::Any;
    type Ad = burn_autodiff::Autodiff<burn_flex::Flex>;
    type AdTensor = burn::tensor::ops::FloatTensor<Ad>;
    let boxed: Box<dyn Any> = Box::new(t);
    // A constant on `Autodiff<Flex>` (the frozen embedding table a training run casts at load): its inner
    // tensor cast, as a new constant (no graph to record for a tensor without gradient).
    let boxed = match boxed.downcast::<AdTensor>() {
        // Only a constant: `float_is_require_grad` is false for tracked intermediates too.
        Ok(a) if a.node.requirement.is_none() => {
            let back = |a: AdTensor| -> burn::tensor::ops::FloatTensor<B> {
                *(Box::new(a) as Box<dyn Any>).downcast().expect("B's float tensor is Autodiff<Flex>'s")
            };
            return match flex_cast::<burn_flex::Flex>(Ad::inner(*a), dtype) {
                Ok(c) => Ok(back(Ad::from_inner(c))),
                Err(i) => Err(back(Ad::from_inner(i))),
            };
        }
        Ok(a) => a as Box<dyn Any>,
        Err(other) => other,
    };
    let flex = match boxed.downcast::<FlexTensor>() {
        Ok(f) => *f,
        Err(other) => return Err(*other.downcast().expect("the same value back")),
    };
    let back = |f: FlexTensor| -> burn::tensor::ops::FloatTensor<B> {
        *(Box::new(f) as Box<dyn Any>).downcast().expect("B's float tensor is FlexTensor")
    };
    let flex = flex.to_contiguous();
    let shape = flex.layout().shape().clone();
    let out = match (flex.dtype(), dtype) {
        (DType::F32, DType::BF16) => flex.as_slice::<f32>().map(|s| TensorData::new(narrow(s), shape)),
        (DType::BF16, DType::F32) => flex.as_slice::<bf16>().map(|s| TensorData::new(widen_vec(s), shape)),
        _ => None,
    };
    match out {
        Some(d) => Ok(back(FlexTensor::from_data(d))),
        None => Err(back(flex)),
    }
}

/// `src` as bf16.
pub fn narrow(src: &[f32]) -> Vec<bf16> {
    let mut d = vec![bf16::ZERO; src.len()];
    narrow_into(src, &mut d);
    d
}

/// `src` as f32.
pub fn widen_vec(src: &[bf16]) -> Vec<f32> {
    let mut d = vec![0f32; src.len()];
    widen_into(src, &mut d);
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Casts of burn-flex tensors and of `Autodiff<Flex>` constants round as [`narrow`]; a tensor in the
    /// autodiff graph is left to Burn (its cast has a backward to record).
    #[test]
    fn flex_casts_round_to_nearest_and_leave_tracked_tensors_to_burn() {
        use burn::tensor::{DType, Tensor, TensorData};
        type Ad = burn_autodiff::Autodiff<burn_flex::Flex>;
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let d = Default::default();
        let want: Vec<f32> = narrow(&xs).iter().map(|b| b.to_f32()).collect();
        let flex = Tensor::<burn_flex::Flex, 1>::from_data(TensorData::new(xs.clone(), [1000]), &d);
        let Ok(c) = flex_cast::<burn_flex::Flex>(flex.into_primitive().tensor(), DType::BF16) else {
            panic!("a burn-flex cast is intercepted")
        };
        let got = Tensor::<burn_flex::Flex, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(c));
        assert_eq!(got.dtype(), DType::BF16);
        assert_eq!(got.into_data().convert::<f32>().to_vec::<f32>().unwrap(), want);
        let constant = Tensor::<Ad, 1>::from_data(TensorData::new(xs.clone(), [1000]), &d);
        let Ok(c) = flex_cast::<Ad>(constant.into_primitive().tensor(), DType::BF16) else {
            panic!("a constant's cast is intercepted")
        };
        let got = Tensor::<Ad, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(c));
        assert_eq!(got.into_data().convert::<f32>().to_vec::<f32>().unwrap(), want);
        let tracked = Tensor::<Ad, 1>::from_data(TensorData::new(xs, [1000]), &d).require_grad() * 2.0;
        assert!(flex_cast::<Ad>(tracked.into_primitive().tensor(), DType::BF16).is_err(), "tracked: Burn's cast");
    }

    /// Rounding equals `half`'s on every class of value: ties both ways, the largest finite values (which
    /// round to infinity), subnormals, infinities, NaN.
    #[test]
    fn rounding_equals_half() {
        let mut xs: Vec<f32> = vec![0.0, -0.0, 1.0, f32::MAX, -f32::MAX, f32::INFINITY, f32::NEG_INFINITY, 1e-40];
        xs.extend(
            [0x3f80_8000u32, 0x3f81_8000, 0x3f80_7fff, 0x3f80_8001, 0x7f7f_ffff, 0x0000_8000].map(f32::from_bits),
        );
        let mut s = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..100_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            xs.push(f32::from_bits(s as u32));
        }
        let got = narrow(&xs);
        for (x, g) in xs.iter().zip(&got) {
            let want = bf16::from_f32(*x);
            assert!(
                g.to_bits() == want.to_bits() || (x.is_nan() && g.is_nan()),
                "{x:e} ({:#x}): {:#x} vs {:#x}",
                x.to_bits(),
                g.to_bits(),
                want.to_bits()
            );
        }
        let back = widen_vec(&got);
        let mut rounded = xs.clone();
        round_in_place(&mut rounded);
        for ((b, r), g) in back.iter().zip(&rounded).zip(&got) {
            assert!(b.to_bits() == r.to_bits() || (b.is_nan() && r.is_nan()));
            assert!(*b == g.to_f32() || b.is_nan());
        }
    }
}
