//! Dot products of f32 activations with rows of packed weights read as stored, for the matrix–vector
//! products of generation (`super::qmatmul`). Each block's integers are widened to f32 in registers and
//! multiplied by the activations; the block's (or sub-block's) scale multiplies the block's sum once, and
//! a minimum or offset (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K) multiplies the sum of the activations over its
//! (sub-)block — the same product as with the dequantized weight `d·q − m`, summed in another order. The
//! activations stay f32 (llama.cpp rounds them to 8 bits here; we keep transformers' answers).
//!
//! Hand-written with AVX2 + FMA + F16C intrinsics, and AVX-512 where the CPU has it (run-time checked): the
//! compiler does not turn the block decoders into this on its own (measured: decoding into a buffer then a
//! dot product ran at a third of the speed, at an eighth for Q2_K / Q3_K). Types without a kernel here
//! (Q8_K, the float types) go through `decode_rows` and a plain dot product.
use crate::quant::ggml::GgmlType;
use crate::quant::PackedWeight;

/// Whether [`dot_rows`] has a kernel for `w` on this CPU.
pub fn has_kernel(w: &PackedWeight) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if !(super::avx2_fma() && std::is_x86_feature_detected!("f16c")) {
            return false;
        }
        match w {
            PackedWeight::Ggml(g) => ggml_kernel(g.dtype, false).is_some(),
            PackedWeight::Nf4(q) => q.shape[1].is_multiple_of(crate::quant::nf4::NF4_BLOCK),
            PackedWeight::Int8(_) => true,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = w;
        false
    }
}

/// Whether the ggml kernels may use AVX-512 (twice the floats per instruction; `LAPIDARY_NO_AVX512=1`
/// keeps them on AVX2, to compare).
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::is_x86_feature_detected!("avx512f") && std::env::var_os("LAPIDARY_NO_AVX512").is_none())
}

/// Sums of `x` over each run of 32 elements (`[n, in / 32]`): what the minimums of Q4_1, Q5_1, Q4_K and Q5_K
/// multiply.
pub fn sums32(x: &[f32]) -> Vec<f32> {
    x.chunks_exact(32).map(|c| c.iter().sum()).collect()
}

/// The same over 16: what Q2_K's minimums multiply (computed per call of [`dot_rows`]: a few rows' work).
fn sums16(x: &[f32]) -> Vec<f32> {
    x.chunks_exact(16).map(|c| c.iter().sum()).collect()
}

/// `y[r·n + j] = W[r0 + r] · x_j` for `rows` rows of `w` and the `n` rows of `x` (`[n, in]`), with
/// `xs32 = sums32(x)`. Only where [`has_kernel`] says so.
pub fn dot_rows(w: &PackedWeight, r0: usize, x: &[f32], xs32: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    dot_rows_with(w, r0, x, xs32, y, avx512());
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (r0, x, xs32, y);
        assert!(has_kernel(w), "dot_rows: no kernel for this weight on this CPU");
    }
}

/// [`dot_rows`] with the ggml kernels' width chosen (`wide`: AVX-512, which the caller has checked).
#[cfg(target_arch = "x86_64")]
fn dot_rows_with(w: &PackedWeight, r0: usize, x: &[f32], xs32: &[f32], y: &mut [f32], wide: bool) {
    assert!(has_kernel(w), "dot_rows: no kernel for this weight on this CPU");
    let [out, inp] = w.shape();
    let n = x.len() / inp;
    let rows = y.len() / n.max(1);
    assert!(n > 0 && x.len() == n * inp && y.len() == rows * n && r0 + rows <= out, "dot_rows: shapes");
    assert_eq!(xs32.len(), n * (inp / 32), "dot_rows: sums of x");
    let xj = |j: usize| &x[j * inp..(j + 1) * inp];
    // SAFETY: the CPU has AVX2, FMA and F16C (has_kernel), and AVX-512 when `wide`; every kernel reads
    // whole blocks of a row whose byte length it checks against the row length, and `inp` elements of x.
    unsafe {
        match w {
            PackedWeight::Ggml(g) => {
                let (block, bytes) = g.dtype.block_layout().expect("checked by GgmlWeight::new");
                let row_bytes = inp / block * bytes;
                let f = ggml_kernel(g.dtype, wide).expect("has_kernel");
                // Q2_K's minimums are per 16 elements; the other types' per 32.
                let (xs16, per) = if g.dtype == GgmlType::Q2_K { (sums16(x), 16) } else { (vec![], 32) };
                let xs = if per == 16 { &xs16[..] } else { xs32 };
                for (r, yr) in y.chunks_exact_mut(n).enumerate() {
                    let row = &g.bytes[(r0 + r) * row_bytes..(r0 + r + 1) * row_bytes];
                    for (j, v) in yr.iter_mut().enumerate() {
                        *v = f(row, xj(j), &xs[j * (inp / per)..(j + 1) * (inp / per)]);
                    }
                }
            }
            PackedWeight::Nf4(q) => {
                use crate::quant::nf4::{dynamic_map, nf4_code, NF4_BLOCK};
                let (code, dynm) = (nf4_code(), dynamic_map());
                let per_row = inp / NF4_BLOCK;
                let mut scales = vec![0f32; per_row];
                for (r, yr) in y.chunks_exact_mut(n).enumerate() {
                    let b0 = (r0 + r) * per_row;
                    for (k, s) in scales.iter_mut().enumerate() {
                        *s = q.block_scale(b0 + k, &dynm);
                    }
                    let row = &q.packed[b0 * NF4_BLOCK / 2..(b0 + per_row) * NF4_BLOCK / 2];
                    for (j, v) in yr.iter_mut().enumerate() {
                        *v = avx2::nf4(row, &scales, &code, xj(j));
                    }
                }
            }
            PackedWeight::Int8(q) => {
                for (r, yr) in y.chunks_exact_mut(n).enumerate() {
                    let row = &q.cb[(r0 + r) * inp..(r0 + r + 1) * inp];
                    for (j, v) in yr.iter_mut().enumerate() {
                        // bitsandbytes' `q · SCB · (1/127)`, the row's two factors applied to its sum.
                        *v = avx2::i8_dot(row, xj(j)) * q.scb[r0 + r] * crate::quant::int8::INV_127;
                    }
                }
            }
        }
    }
}

/// A ggml kernel: a row's blocks, `x`, and the sums of `x` over each 32 (over each 16 for Q2_K) that the
/// minimums multiply.
#[cfg(target_arch = "x86_64")]
type Kernel = unsafe fn(&[u8], &[f32], &[f32]) -> f32;

/// The kernel for rows of `dtype`, at AVX-512's width when `wide`; `None` for types without one.
#[cfg(target_arch = "x86_64")]
fn ggml_kernel(dtype: GgmlType, wide: bool) -> Option<Kernel> {
    macro_rules! pick {
        ($($t:ident => $k:ident),*) => {
            match dtype {
                $(GgmlType::$t => Some(if wide { avx512::$k as Kernel } else { avx2::$k as Kernel }),)*
                _ => None,
            }
        };
    }
    pick!(Q8_0 => q8_0, Q4_0 => q4_0, Q4_1 => q4_1, Q5_0 => q5_0, Q5_1 => q5_1, Q2_K => q2_k, Q3_K => q3_k,
        Q4_K => q4_k, Q5_K => q5_k, Q6_K => q6_k)
}

/// The sixteen 6-bit scales of a Q3_K block (`scales: [u8; 12]`: the low four bits of each in the first 8
/// bytes, the high two in the last 4), as ggml's `dequantize_row_q3_K` unpacks them, four at a time (a loop
/// per scale cost as much as the block's products).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn q3_k_scales(sb: &[u8]) -> [u8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let a0 = u32::from_le_bytes([sb[0], sb[1], sb[2], sb[3]]);
    let a1 = u32::from_le_bytes([sb[4], sb[5], sb[6], sb[7]]);
    let t = u32::from_le_bytes([sb[8], sb[9], sb[10], sb[11]]);
    let aux = [
        (a0 & KMASK2) | ((t & KMASK1) << 4),
        (a1 & KMASK2) | (((t >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((t >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((t >> 6) & KMASK1) << 4),
    ];
    let mut s = [0u8; 16];
    for (c, a) in s.chunks_exact_mut(4).zip(aux) {
        c.copy_from_slice(&a.to_le_bytes());
    }
    s
}

/// Runs `$body` (which reads block `$i` and returns `$acc` plus its terms) over `0..$nb`, alternating two
/// accumulators held in registers, so that consecutive blocks do not wait on each other's multiply-add.
/// A macro rather than a closure, so that the body is compiled with the caller's target features.
#[cfg(target_arch = "x86_64")]
macro_rules! two_accumulators {
    ($nb:expr, $a0:ident, $a1:ident, |$i:ident, $acc:ident| $body:expr) => {{
        let mut k = 0;
        while k + 1 < $nb {
            {
                let ($i, $acc) = (k, $a0);
                $a0 = $body;
            }
            {
                let ($i, $acc) = (k + 1, $a1);
                $a1 = $body;
            }
            k += 2;
        }
        if k < $nb {
            let ($i, $acc) = (k, $a0);
            $a0 = $body;
        }
    }};
}

/// The ggml kernels both widths share, written once over the width's primitives (`zero`, `splat`, `add`,
/// `fmadd`, `reduce`, and `dot16`: 16 signed bytes times 16 floats added to an accumulator), which each
/// module below defines before invoking this with its target features.
#[cfg(target_arch = "x86_64")]
macro_rules! ggml_kernels {
    ($features:literal) => {
        /// The same over 32 bytes.
        #[inline(always)]
        unsafe fn dot32(q: __m256i, x: *const f32) -> V {
            let acc = dot16(_mm256_castsi256_si128(q), x, zero());
            dot16(_mm256_extracti128_si256(q, 1), x.add(16), acc)
        }

        /// Q8_0: `d: f16, qs: [i8; 32]`.
        #[target_feature(enable = $features)]
        pub unsafe fn q8_0(b: &[u8], x: &[f32], _: &[f32]) -> f32 {
            let nb = check(b, x, 32, 34);
            let (mut a0, mut a1) = (zero(), zero());
            two_accumulators!(nb, a0, a1, |i, acc| {
                let p = b.as_ptr().add(i * 34);
                let q = _mm256_loadu_si256(p.add(2) as *const __m256i);
                fmadd(splat(f16(p)), dot32(q, x.as_ptr().add(i * 32)), acc)
            });
            reduce(add(a0, a1))
        }

        /// Q4_0: `d: f16, qs: [u8; 16]`; element j is the low nibble of qs[j], j + 16 the high one; q − 8.
        #[target_feature(enable = $features)]
        pub unsafe fn q4_0(b: &[u8], x: &[f32], _: &[f32]) -> f32 {
            let nb = check(b, x, 32, 18);
            let (m4, e8) = (_mm_set1_epi8(0x0F), _mm_set1_epi8(8));
            let (mut a0, mut a1) = (zero(), zero());
            two_accumulators!(nb, a0, a1, |i, acc| {
                let p = b.as_ptr().add(i * 18);
                let xp = x.as_ptr().add(i * 32);
                let qs = _mm_loadu_si128(p.add(2) as *const __m128i);
                let lo = _mm_sub_epi8(_mm_and_si128(qs, m4), e8);
                let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(qs, 4), m4), e8);
                fmadd(splat(f16(p)), dot16(hi, xp.add(16), dot16(lo, xp, zero())), acc)
            });
            reduce(add(a0, a1))
        }

        /// Q4_1: `d, m: f16, qs: [u8; 16]`; Q4_0's nibbles without the offset, `d·q + m`; `xs` holds the
        /// sums of x over each block, which `m` multiplies.
        #[target_feature(enable = $features)]
        pub unsafe fn q4_1(b: &[u8], x: &[f32], xs: &[f32]) -> f32 {
            let nb = check(b, x, 32, 20);
            assert_eq!(xs.len(), nb);
            let m4 = _mm_set1_epi8(0x0F);
            let (mut a0, mut a1) = (zero(), zero());
            let mut mins = 0f32;
            two_accumulators!(nb, a0, a1, |i, acc| {
                let p = b.as_ptr().add(i * 20);
                let xp = x.as_ptr().add(i * 32);
                let qs = _mm_loadu_si128(p.add(4) as *const __m128i);
                let lo = _mm_and_si128(qs, m4);
                let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), m4);
                mins += f16(p.add(2)) * xs[i];
                fmadd(splat(f16(p)), dot16(hi, xp.add(16), dot16(lo, xp, zero())), acc)
            });
            reduce(add(a0, a1)) + mins
        }

        /// Q2_K: `scales: [u8; 16], qs: [u8; 64], d, dmin: f16`; sixteen sub-blocks of 16, each with a 4-bit
        /// scale (low nibble) and minimum (high nibble), `d·sc·q − dmin·m`; element 128·h + 32·j + l is bits
        /// 2j, 2j + 1 of qs[32·h + l]; `xs` holds the sums of x over each 16 (not 32).
        #[target_feature(enable = $features)]
        pub unsafe fn q2_k(b: &[u8], x: &[f32], xs: &[f32]) -> f32 {
            let nb = check(b, x, 256, 84);
            assert_eq!(xs.len(), nb * 16);
            let (m3, m4) = (_mm256_set1_epi8(3), _mm_set1_epi8(0x0F));
            let (mut a0, mut a1) = (zero(), zero());
            // The sixteen minimums times the sums of x over their sub-blocks, as one dot product per block.
            let mut mins = zero();
            for i in 0..nb {
                let p = b.as_ptr().add(i * 84);
                let (d, dmin) = (f16(p.add(80)), f16(p.add(82)));
                let m = _mm_and_si128(_mm_srli_epi16(_mm_loadu_si128(p as *const __m128i), 4), m4);
                mins = fmadd(splat(dmin), dot16(m, xs.as_ptr().add(i * 16), zero()), mins);
                for h in 0..2 {
                    let mut q = _mm256_loadu_si256(p.add(16 + 32 * h) as *const __m256i);
                    for j in 0..4 {
                        // Bits of the neighbouring byte that the 16-bit shift brings in are masked off.
                        let v = _mm256_and_si256(q, m3);
                        q = _mm256_srli_epi16(q, 2);
                        let (sc0, sc1) = (*p.add(8 * h + 2 * j), *p.add(8 * h + 2 * j + 1));
                        let xp = x.as_ptr().add(i * 256 + 128 * h + 32 * j);
                        let s0 = dot16(_mm256_castsi256_si128(v), xp, zero());
                        let s1 = dot16(_mm256_extracti128_si256(v, 1), xp.add(16), zero());
                        a0 = fmadd(splat(d * (sc0 & 0x0F) as f32), s0, a0);
                        a1 = fmadd(splat(d * (sc1 & 0x0F) as f32), s1, a1);
                    }
                }
            }
            reduce(add(a0, a1)) - reduce(mins)
        }

        /// Q3_K: `hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16`; sixteen sub-blocks of 16 with
        /// 6-bit scales (`q3_k_scales`), `d·(sc − 32)·(q − 4)`: q's two low bits laid out as Q2_K's, its
        /// third bit 4·h + j of hmask[l].
        #[target_feature(enable = $features)]
        pub unsafe fn q3_k(b: &[u8], x: &[f32], _: &[f32]) -> f32 {
            let nb = check(b, x, 256, 110);
            let (m3, one, e4) = (_mm256_set1_epi8(3), _mm256_set1_epi8(1), _mm256_set1_epi8(4));
            let (mut a0, mut a1) = (zero(), zero());
            for i in 0..nb {
                let p = b.as_ptr().add(i * 110);
                let d = f16(p.add(108));
                let sc = super::q3_k_scales(std::slice::from_raw_parts(p.add(96), 12));
                let mut hm = _mm256_loadu_si256(p as *const __m256i);
                for h in 0..2 {
                    let mut q = _mm256_loadu_si256(p.add(32 + 32 * h) as *const __m256i);
                    for j in 0..4 {
                        let high = _mm256_slli_epi16(_mm256_and_si256(hm, one), 2);
                        let v = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(q, m3), high), e4);
                        q = _mm256_srli_epi16(q, 2);
                        hm = _mm256_srli_epi16(hm, 1);
                        let k = 8 * h + 2 * j;
                        let xp = x.as_ptr().add(i * 256 + 128 * h + 32 * j);
                        let s0 = dot16(_mm256_castsi256_si128(v), xp, zero());
                        let s1 = dot16(_mm256_extracti128_si256(v, 1), xp.add(16), zero());
                        a0 = fmadd(splat(d * (sc[k] as i32 - 32) as f32), s0, a0);
                        a1 = fmadd(splat(d * (sc[k + 1] as i32 - 32) as f32), s1, a1);
                    }
                }
            }
            reduce(add(a0, a1))
        }

        /// Q4_K: `d, dmin: f16, scales: [u8; 12], qs: [u8; 128]`; eight sub-blocks of 32, `d·sc·q − dmin·m`
        /// (ggml's `get_scale_min_k4`); `xs` holds the sums of x over each 32.
        #[target_feature(enable = $features)]
        pub unsafe fn q4_k(b: &[u8], x: &[f32], xs: &[f32]) -> f32 {
            let nb = check(b, x, 256, 144);
            assert_eq!(xs.len(), nb * 8);
            let m4 = _mm256_set1_epi8(0x0F);
            let (mut a0, mut a1) = (zero(), zero());
            let mut mins = 0f32;
            for i in 0..nb {
                let p = b.as_ptr().add(i * 144);
                let (d, dmin) = (f16(p), f16(p.add(2)));
                let sc = std::slice::from_raw_parts(p.add(4), 12);
                for g in 0..4 {
                    let xp = x.as_ptr().add(i * 256 + 64 * g);
                    let q = _mm256_loadu_si256(p.add(16 + 32 * g) as *const __m256i);
                    let (s0, m0) = scale_min_k4(2 * g, sc);
                    let (s1, m1) = scale_min_k4(2 * g + 1, sc);
                    // Nibbles (0..15) read as signed bytes are the same numbers.
                    let lo = dot32(_mm256_and_si256(q, m4), xp);
                    let hi = dot32(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), xp.add(32));
                    a0 = fmadd(splat(d * s0 as f32), lo, a0);
                    a1 = fmadd(splat(d * s1 as f32), hi, a1);
                    mins += dmin * m0 as f32 * xs[i * 8 + 2 * g] + dmin * m1 as f32 * xs[i * 8 + 2 * g + 1];
                }
            }
            reduce(add(a0, a1)) - mins
        }

        /// Q5_K: `d, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`; Q4_K with a fifth bit per
        /// element: bit j of qh[l] for element 32·j + l.
        #[target_feature(enable = $features)]
        pub unsafe fn q5_k(b: &[u8], x: &[f32], xs: &[f32]) -> f32 {
            let nb = check(b, x, 256, 176);
            assert_eq!(xs.len(), nb * 8);
            let (m4, one) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(1));
            let (mut a0, mut a1) = (zero(), zero());
            let mut mins = 0f32;
            for i in 0..nb {
                let p = b.as_ptr().add(i * 176);
                let (d, dmin) = (f16(p), f16(p.add(2)));
                let sc = std::slice::from_raw_parts(p.add(4), 12);
                let mut qh = _mm256_loadu_si256(p.add(16) as *const __m256i);
                for g in 0..4 {
                    let xp = x.as_ptr().add(i * 256 + 64 * g);
                    let q = _mm256_loadu_si256(p.add(48 + 32 * g) as *const __m256i);
                    let (s0, m0) = scale_min_k4(2 * g, sc);
                    let (s1, m1) = scale_min_k4(2 * g + 1, sc);
                    // The fifth bits of sub-blocks 2g and 2g + 1 (bits 0 and 1 of qh shifted down 2g), as 16.
                    let h0 = _mm256_slli_epi16(_mm256_and_si256(qh, one), 4);
                    let h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 1), one), 4);
                    qh = _mm256_srli_epi16(qh, 2);
                    let lo = dot32(_mm256_or_si256(_mm256_and_si256(q, m4), h0), xp);
                    let hi = dot32(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), h1), xp.add(32));
                    a0 = fmadd(splat(d * s0 as f32), lo, a0);
                    a1 = fmadd(splat(d * s1 as f32), hi, a1);
                    mins += dmin * m0 as f32 * xs[i * 8 + 2 * g] + dmin * m1 as f32 * xs[i * 8 + 2 * g + 1];
                }
            }
            reduce(add(a0, a1)) - mins
        }

        /// Q6_K: `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`; sixteen sub-blocks of 16,
        /// `d·sc·(q − 32)`.
        #[target_feature(enable = $features)]
        pub unsafe fn q6_k(b: &[u8], x: &[f32], _: &[f32]) -> f32 {
            let nb = check(b, x, 256, 210);
            let (m4, m3, e32) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3), _mm256_set1_epi8(32));
            let (mut a0, mut a1) = (zero(), zero());
            for i in 0..nb {
                let p = b.as_ptr().add(i * 210);
                let d = f16(p.add(208));
                for h in 0..2 {
                    let ql0 = _mm256_loadu_si256(p.add(64 * h) as *const __m256i);
                    let ql1 = _mm256_loadu_si256(p.add(64 * h + 32) as *const __m256i);
                    let qh = _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i);
                    // The two high bits of each element, moved to bits 4 and 5.
                    let h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4);
                    let h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4);
                    let h4 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4);
                    let h6 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4);
                    let qs = [
                        _mm256_or_si256(_mm256_and_si256(ql0, m4), h0),
                        _mm256_or_si256(_mm256_and_si256(ql1, m4), h2),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), h4),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), h6),
                    ];
                    let sc = p.add(192 + 8 * h) as *const i8;
                    for (k, q) in qs.into_iter().enumerate() {
                        let q = _mm256_sub_epi8(q, e32);
                        let xp = x.as_ptr().add(i * 256 + 128 * h + 32 * k);
                        let s0 = dot16(_mm256_castsi256_si128(q), xp, zero());
                        let s1 = dot16(_mm256_extracti128_si256(q, 1), xp.add(16), zero());
                        a0 = fmadd(splat(d * *sc.add(2 * k) as f32), s0, a0);
                        a1 = fmadd(splat(d * *sc.add(2 * k + 1) as f32), s1, a1);
                    }
                }
            }
            reduce(add(a0, a1))
        }
    };
}

/// 8 floats per instruction: AVX2 + FMA + F16C.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use crate::quant::ggml::dequant::scale_min_k4;

    type V = __m256;

    #[inline(always)]
    unsafe fn zero() -> V {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> V {
        _mm256_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn add(a: V, b: V) -> V {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: V, b: V, c: V) -> V {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn reduce(v: V) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// The little-endian f16 at `p`, widened exactly.
    #[inline(always)]
    pub(super) unsafe fn f16(p: *const u8) -> f32 {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// The low 8 signed bytes of `v` as 8 f32.
    #[inline(always)]
    unsafe fn i8x8(v: __m128i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))
    }

    /// `acc + Σ q·x` over 16 signed bytes and 16 floats, as 8 partial sums.
    #[inline(always)]
    unsafe fn dot16(q: __m128i, x: *const f32, acc: V) -> V {
        let acc = _mm256_fmadd_ps(i8x8(q), _mm256_loadu_ps(x), acc);
        _mm256_fmadd_ps(i8x8(_mm_srli_si128(q, 8)), _mm256_loadu_ps(x.add(8)), acc)
    }

    /// The number of blocks in a row of `x.len()` elements, checked against the row's bytes.
    pub(super) fn check(b: &[u8], x: &[f32], block: usize, bytes: usize) -> usize {
        let nb = x.len() / block;
        assert!(x.len() == nb * block && b.len() == nb * bytes, "a row of whole blocks");
        nb
    }

    ggml_kernels!("avx2,fma,f16c");

    /// 16 bytes, 0x10 where bit k of `bits` is set (byte k), else 0.
    #[inline(always)]
    unsafe fn bit4_bytes(bits: u16) -> __m128i {
        let v = _mm_set1_epi16(bits as i16);
        let spread = _mm_shuffle_epi8(v, _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
        let mask = _mm_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128);
        _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(spread, mask), mask), _mm_set1_epi8(0x10))
    }

    /// Q5_0: `d: f16, qh: u32, qs: [u8; 16]`; element e's fifth bit is bit e of qh; q − 16.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q5_0(b: &[u8], x: &[f32], _: &[f32]) -> f32 {
        let nb = check(b, x, 32, 22);
        let (m4, e16) = (_mm_set1_epi8(0x0F), _mm_set1_epi8(16));
        let (mut a0, mut a1) = (zero(), zero());
        two_accumulators!(nb, a0, a1, |i, acc| {
            let p = b.as_ptr().add(i * 22);
            let xp = x.as_ptr().add(i * 32);
            let qh = u32::from_le_bytes([*p.add(2), *p.add(3), *p.add(4), *p.add(5)]);
            let qs = _mm_loadu_si128(p.add(6) as *const __m128i);
            let lo = _mm_sub_epi8(_mm_or_si128(_mm_and_si128(qs, m4), bit4_bytes(qh as u16)), e16);
            let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), m4);
            let hi = _mm_sub_epi8(_mm_or_si128(hi, bit4_bytes((qh >> 16) as u16)), e16);
            fmadd(splat(f16(p)), dot16(hi, xp.add(16), dot16(lo, xp, zero())), acc)
        });
        reduce(add(a0, a1))
    }

    /// Q5_1: `d, m: f16, qh: u32, qs: [u8; 16]`; Q5_0's bits without the offset, `d·q + m`; `xs` holds the
    /// sums of x over each block.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q5_1(b: &[u8], x: &[f32], xs: &[f32]) -> f32 {
        let nb = check(b, x, 32, 24);
        assert_eq!(xs.len(), nb);
        let m4 = _mm_set1_epi8(0x0F);
        let (mut a0, mut a1) = (zero(), zero());
        let mut mins = 0f32;
        two_accumulators!(nb, a0, a1, |i, acc| {
            let p = b.as_ptr().add(i * 24);
            let xp = x.as_ptr().add(i * 32);
            let qh = u32::from_le_bytes([*p.add(4), *p.add(5), *p.add(6), *p.add(7)]);
            let qs = _mm_loadu_si128(p.add(8) as *const __m128i);
            let lo = _mm_or_si128(_mm_and_si128(qs, m4), bit4_bytes(qh as u16));
            let hi = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(qs, 4), m4), bit4_bytes((qh >> 16) as u16));
            mins += f16(p.add(2)) * xs[i];
            fmadd(splat(f16(p)), dot16(hi, xp.add(16), dot16(lo, xp, zero())), acc)
        });
        reduce(add(a0, a1)) + mins
    }

    /// NF4 (bitsandbytes: two codes per byte, the first in the high nibble) over a row of whole 64-blocks,
    /// `code[q] · scale` per block.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn nf4(packed: &[u8], scales: &[f32], code: &[f32; 16], x: &[f32]) -> f32 {
        assert!(packed.len() * 2 == x.len() && scales.len() * 64 == x.len(), "a row of whole NF4 blocks");
        let (lo_code, hi_code) = (_mm256_loadu_ps(code.as_ptr()), _mm256_loadu_ps(code.as_ptr().add(8)));
        let (m4, seven) = (_mm_set1_epi8(0x0F), _mm256_set1_epi32(7));
        let mut acc = zero();
        for (blk, &scale) in scales.iter().enumerate() {
            let mut s = zero();
            for half in 0..2 {
                let bytes = _mm_loadu_si128(packed.as_ptr().add(blk * 32 + 16 * half) as *const __m128i);
                let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), m4);
                let lo = _mm_and_si128(bytes, m4);
                // Element order: byte k's high nibble, then its low one.
                for (k, v) in [_mm_unpacklo_epi8(hi, lo), _mm_unpackhi_epi8(hi, lo)].into_iter().enumerate() {
                    for e in 0..2 {
                        let idx = _mm256_cvtepu8_epi32(if e == 0 { v } else { _mm_srli_si128(v, 8) });
                        let a = _mm256_permutevar8x32_ps(lo_code, idx);
                        let c = _mm256_permutevar8x32_ps(hi_code, idx);
                        let w = _mm256_blendv_ps(a, c, _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, seven)));
                        let xp = x.as_ptr().add(blk * 64 + 32 * half + 16 * k + 8 * e);
                        s = fmadd(w, _mm256_loadu_ps(xp), s);
                    }
                }
            }
            acc = fmadd(splat(scale), s, acc);
        }
        reduce(acc)
    }

    /// `Σ q·x` over signed bytes.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn i8_dot(q: &[i8], x: &[f32]) -> f32 {
        assert_eq!(q.len(), x.len());
        let n16 = q.len() / 16 * 16;
        let mut acc = zero();
        for i in (0..n16).step_by(16) {
            acc = dot16(_mm_loadu_si128(q.as_ptr().add(i) as *const __m128i), x.as_ptr().add(i), acc);
        }
        let mut s = reduce(acc);
        for i in n16..q.len() {
            s += q[i] as f32 * x[i];
        }
        s
    }
}

/// 16 floats per instruction: AVX-512 (with AVX2's byte handling).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::avx2::{check, f16};
    use crate::quant::ggml::dequant::scale_min_k4;

    type V = __m512;

    #[inline(always)]
    unsafe fn zero() -> V {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> V {
        _mm512_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn add(a: V, b: V) -> V {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: V, b: V, c: V) -> V {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn reduce(v: V) -> f32 {
        _mm512_reduce_add_ps(v)
    }

    /// `acc + Σ q·x` over 16 signed bytes and 16 floats, as 16 partial sums.
    #[inline(always)]
    unsafe fn dot16(q: __m128i, x: *const f32, acc: V) -> V {
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), _mm512_loadu_ps(x), acc)
    }

    ggml_kernels!("avx512f,avx2,fma,f16c");

    /// Q5_0 with the fifth bits as mask registers: (nibble | bit·16) − 16 = nibble − 16 where the bit is
    /// clear (no byte shuffles, unlike AVX2's).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn q5_0(b: &[u8], x: &[f32], _: &[f32]) -> f32 {
        let nb = check(b, x, 32, 22);
        let (m4, e16) = (_mm_set1_epi8(0x0F), splat(16.0));
        let (mut a0, mut a1) = (zero(), zero());
        two_accumulators!(nb, a0, a1, |i, acc| {
            let p = b.as_ptr().add(i * 22);
            let xp = x.as_ptr().add(i * 32);
            let qh = u32::from_le_bytes([*p.add(2), *p.add(3), *p.add(4), *p.add(5)]);
            let qs = _mm_loadu_si128(p.add(6) as *const __m128i);
            let lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(qs, m4)));
            let hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(qs, 4), m4)));
            let lo = _mm512_mask_sub_ps(lo, !(qh as u16), lo, e16);
            let hi = _mm512_mask_sub_ps(hi, !((qh >> 16) as u16), hi, e16);
            fmadd(splat(f16(p)), fmadd(hi, _mm512_loadu_ps(xp.add(16)), _mm512_mul_ps(lo, _mm512_loadu_ps(xp))), acc)
        });
        reduce(add(a0, a1))
    }

    /// Q5_1 with the fifth bits as mask registers, as Q5_0: 16 added where the bit is set.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn q5_1(b: &[u8], x: &[f32], xs: &[f32]) -> f32 {
        let nb = check(b, x, 32, 24);
        assert_eq!(xs.len(), nb);
        let (m4, e16) = (_mm_set1_epi8(0x0F), splat(16.0));
        let (mut a0, mut a1) = (zero(), zero());
        let mut mins = 0f32;
        two_accumulators!(nb, a0, a1, |i, acc| {
            let p = b.as_ptr().add(i * 24);
            let xp = x.as_ptr().add(i * 32);
            let qh = u32::from_le_bytes([*p.add(4), *p.add(5), *p.add(6), *p.add(7)]);
            let qs = _mm_loadu_si128(p.add(8) as *const __m128i);
            let lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(qs, m4)));
            let hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(qs, 4), m4)));
            let lo = _mm512_mask_add_ps(lo, qh as u16, lo, e16);
            let hi = _mm512_mask_add_ps(hi, (qh >> 16) as u16, hi, e16);
            mins += f16(p.add(2)) * xs[i];
            fmadd(splat(f16(p)), fmadd(hi, _mm512_loadu_ps(xp.add(16)), _mm512_mul_ps(lo, _mm512_loadu_ps(xp))), acc)
        });
        reduce(add(a0, a1)) + mins
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::cpu::qmatmul::tests::weights;
    use crate::testing::values;

    /// Each kernel, at each width this CPU has, against the dequantized weight's dot products in f64,
    /// relative to the size of the terms: for 1, 3 and 4 rows of x (as `packed_matmul` calls them), rows of
    /// 5 blocks of 256 (40 of 32) and of 3 blocks of 32 (an odd count: `two_accumulators`' last block).
    #[test]
    fn kernels_equal_dot_products_with_the_dequantized_rows() {
        let mut checked = std::collections::BTreeSet::new();
        for (out, inp) in [(9, 1280), (5, 96)] {
            for (name, w) in weights(out, inp) {
                if !has_kernel(&w) {
                    continue;
                }
                let wd = w.dequantize();
                for n in [1, 3, 4] {
                    let x = values(n * inp, 8 + n as u64, 1.0);
                    let xs = sums32(&x);
                    let avx512 = std::is_x86_feature_detected!("avx512f");
                    let widths: &[bool] = if avx512 { &[false, true] } else { &[false] };
                    for &wide in widths {
                        let mut y = vec![0f32; (out - 2) * n];
                        dot_rows_with(&w, 2, &x, &xs, &mut y, wide);
                        for r in 0..out - 2 {
                            for j in 0..n {
                                let terms = (0..inp).map(|k| wd[(r + 2) * inp + k] as f64 * x[j * inp + k] as f64);
                                let want: f64 = terms.clone().sum();
                                let size: f64 = terms.map(f64::abs).sum();
                                let got = y[r * n + j] as f64;
                                assert!(
                                    (got - want).abs() <= 1e-6 * size,
                                    "{name} {out}x{inp} (wide {wide}) row {r} x{j} of {n}: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
                checked.insert(name);
            }
        }
        eprintln!("kernels checked: {checked:?}");
        // Every ggml type with a kernel was among the weights (and so was checked).
        for t in ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "nf4", "int8"] {
            assert!(checked.contains(t), "no kernel checked for {t}");
        }
    }
}

#[cfg(test)]
mod speed {
    use crate::cpu::qmatmul::{packed_matmul, tests::weights};
    use crate::quant::PackedWeight;
    use crate::testing::values;

    /// `cargo test --release -p lapidary-model --lib qdot::speed -- --ignored --nocapture`: GB/s of weight
    /// bytes read by the matrix–vector product (one row of x, as in generation), per weight kind
    /// (`LAPIDARY_NO_AVX512=1` for the AVX2 kernels).
    #[test]
    #[ignore]
    fn matrix_vector_gbps() {
        // `LAPIDARY_QDOT_SHAPE=OUTxIN` (e.g. 2048x640, the real 270M's gate and up projections) and
        // `LAPIDARY_QDOT_TYPES=Q5_0,Q4_K` narrow the measurement.
        let shape = std::env::var("LAPIDARY_QDOT_SHAPE").unwrap_or_else(|_| "2048x2048".into());
        let (out, inp) = shape.split_once('x').map(|(o, i)| (o.parse().unwrap(), i.parse().unwrap())).unwrap();
        let only = std::env::var("LAPIDARY_QDOT_TYPES").ok();
        let x = values(inp, 3, 1.0);
        for (name, w) in weights(out, inp) {
            if only.as_ref().is_some_and(|o| !o.split(',').any(|t| t == name.trim())) {
                continue;
            }
            let bytes = match &w {
                PackedWeight::Ggml(g) => g.bytes.len(),
                PackedWeight::Nf4(q) => q.packed.len(),
                PackedWeight::Int8(q) => q.cb.len(),
            };
            std::hint::black_box(packed_matmul(&x, 1, &w));
            // On a worker of rayon's pool, as generation runs (`Gemma::generate`).
            rayon::scope(|_| {
                // The fastest of many runs: this measures the kernel, not the machine's other load.
                let reps = (400 * 2048 * 2048 / (out * inp)).max(400);
                let s = (0..reps)
                    .map(|_| {
                        let t = std::time::Instant::now();
                        std::hint::black_box(packed_matmul(&x, 1, &w));
                        t.elapsed().as_secs_f64()
                    })
                    .fold(f64::INFINITY, f64::min);
                eprintln!(
                    "{name:>5}: {:6.1} GB/s ({:.0} µs, kernel: {})",
                    bytes as f64 / s / 1e9,
                    s * 1e6,
                    super::has_kernel(&w)
                );
            });
        }
    }
}
