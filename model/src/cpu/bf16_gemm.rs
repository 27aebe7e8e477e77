//! `C (+)= A · B` with bf16 operands and f32 accumulation, the product bf16 models compute (as torch's bf16
//! matmul on CPU and cuBLAS do: products of bf16 values, exact in f32, summed in f32).
//!
//! Written here because no maintained Rust crate multiplies bf16 by `VDPBF16PS` (the `gemm` crate has f16
//! but no bf16 kernels). The instruction takes, in each of its 16 f32 lanes, a pair of adjacent bf16 values
//! from each operand and computes `acc + a₁·b₁ + a₀·b₀` (two roundings, odd element first; bf16 and f32
//! subnormals read and written as zero). So operands are packed in pairs along `k`, one 32-bit lane each:
//! - [`PackedA`]: panels of [`MR`] rows; per pair of `k`, the panel's `MR` lanes side by side (each is
//!   broadcast to all 16 lanes);
//! - [`PackedB`]: panels of [`NR`] columns; per pair of `k`, the panel's `NR` lanes side by side (four
//!   512-bit loads).
//!
//! The micro-kernel keeps an `MR × NR` block of `C` in 24 registers over the whole `k` range, so it reads
//! each packed element once per block. [`Kernel::Scalar`] is the same micro-kernel in scalar code that
//! rounds exactly as the instruction does (tested bit for bit against it where the CPU has it), so that
//! every machine tests the packing and the tiling. On CPUs without the instruction [`Kernel::Wide`] keeps
//! the operands as f32 (their bf16 values, exactly) for the `gemm` crate: the same products, summed in
//! another order, and never slower than f32.
use half::bf16;
use rayon::prelude::*;

use super::bf16::{bits, widen};
use super::gemm::{matmul_into, Mat};

/// Rows of `A` per panel.
pub const MR: usize = 6;
/// Columns of `B` per panel (four 16-lane registers).
pub const NR: usize = 64;

/// How products are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// `VDPBF16PS` (AVX512-BF16).
    Native,
    /// The native kernel's arithmetic in scalar code (tests).
    Scalar,
    /// f32 operands holding the bf16 values, multiplied by the `gemm` crate.
    Wide,
}

/// The kernel for this CPU: native where it has AVX512-BF16, else wide.
pub fn kernel() -> Kernel {
    if super::bf16::native() {
        Kernel::Native
    } else {
        Kernel::Wide
    }
}

/// A value an operand is read from: f32 (rounded to bf16 when packed) or bf16.
pub trait Operand: Copy + Send + Sync {
    fn bf16_bits(self) -> u16;
}

impl Operand for f32 {
    #[inline(always)]
    fn bf16_bits(self) -> u16 {
        bits(self)
    }
}

impl Operand for bf16 {
    #[inline(always)]
    fn bf16_bits(self) -> u16 {
        self.to_bits()
    }
}

/// A strided view of a matrix of operands.
#[derive(Clone, Copy)]
pub struct View<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a, T: Operand> View<'a, T> {
    /// A contiguous row-major `[rows, cols]` matrix.
    pub fn rows(data: &'a [T], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data does not match its shape");
        Self { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The transpose, as a view.
    pub fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(last < self.data.len(), "matrix view reaches past its data");
        }
    }

    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> u16 {
        self.data[i * self.row_stride + j * self.col_stride].bf16_bits()
    }

    /// The pair `(self[i][2q], self[i][2q + 1])` as one lane (the first in the low half, as it lies in
    /// memory), a missing second element as zero.
    #[inline(always)]
    fn pair_along_cols(&self, i: usize, q: usize) -> u32 {
        let lo = self.at(i, 2 * q) as u32;
        let hi = if 2 * q + 1 < self.cols { self.at(i, 2 * q + 1) as u32 } else { 0 };
        lo | hi << 16
    }

    /// The pair `(self[2q][j], self[2q + 1][j])`.
    #[inline(always)]
    fn pair_along_rows(&self, q: usize, j: usize) -> u32 {
        let lo = self.at(2 * q, j) as u32;
        let hi = if 2 * q + 1 < self.rows { self.at(2 * q + 1, j) as u32 } else { 0 };
        lo | hi << 16
    }

    /// As f32 (the bf16 values), row-major.
    fn wide(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for i in 0..self.rows {
            out.extend((0..self.cols).map(|j| widen(self.at(i, j))));
        }
        out
    }
}

thread_local! {
    /// Packing buffers, reused: a training step packs operands of the same few sizes over and over, and
    /// fresh allocations of this size are fresh pages from the kernel (page faults and zeroing).
    static POOL: std::cell::RefCell<Vec<Vec<u32>>> = const { std::cell::RefCell::new(Vec::new()) };
}
/// Buffers kept per thread.
const POOL_KEEP: usize = 4;

/// A buffer of `len` lanes from this thread's pool (or new), with unspecified contents: packing writes
/// every lane, padding included.
fn take(len: usize) -> Vec<u32> {
    let mut v = POOL.with(|p| {
        let mut p = p.borrow_mut();
        let i = p.iter().position(|b| b.capacity() >= len).or(if p.is_empty() { None } else { Some(0) });
        i.map(|i| p.swap_remove(i)).unwrap_or_default()
    });
    if v.len() < len {
        v.resize(len, 0);
    }
    v.truncate(len);
    v
}

fn give(v: Vec<u32>) {
    if v.capacity() > 0 {
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_KEEP {
                p.push(v);
            }
        });
    }
}

impl Drop for PackedA {
    fn drop(&mut self) {
        if let PackedA::Pairs { data, .. } = self {
            give(std::mem::take(data));
        }
    }
}

impl Drop for PackedB {
    fn drop(&mut self) {
        if let PackedB::Pairs { data, .. } = self {
            give(std::mem::take(data));
        }
    }
}

/// Consecutive pairs of `src` (the last one zero-padded) into `dst`.
#[inline(always)]
fn pairs_of<'a, T: Operand>(src: &[T], dst: impl Iterator<Item = &'a mut u32>) {
    let mut it = src.chunks(2);
    for d in dst {
        let Some(p) = it.next() else { break };
        let hi = p.get(1).map_or(0, |h| h.bf16_bits() as u32);
        *d = p[0].bf16_bits() as u32 | hi << 16;
    }
}

/// The left operand `[m, k]`, packed for a [`Kernel`].
pub enum PackedA {
    /// Panel `p`, pair `q`, row `r` at `(p·kp + q)·MR + r`; rows past `m` and the element past an odd `k`
    /// are zero.
    Pairs {
        data: Vec<u32>,
        m: usize,
        k: usize,
        kp: usize,
    },
    Wide {
        data: Vec<f32>,
        m: usize,
        k: usize,
    },
}

impl PackedA {
    pub fn new<T: Operand>(a: View<T>, kernel: Kernel) -> Self {
        a.check();
        let (m, k) = (a.rows, a.cols);
        if kernel == Kernel::Wide {
            return PackedA::Wide { data: a.wide(), m, k };
        }
        let kp = k.div_ceil(2);
        let mut data = take(m.div_ceil(MR) * kp * MR);
        if kp > 0 {
            data.par_chunks_mut(kp * MR).enumerate().for_each(|(p, panel)| {
                let rows = MR.min(m - p * MR);
                for q in 0..kp {
                    panel[q * MR + rows..(q + 1) * MR].fill(0); // rows past m
                }
                for r in 0..rows {
                    let i = p * MR + r;
                    if a.col_stride == 1 {
                        // Contiguous rows (the usual case): pairs straight from the row.
                        pairs_of(&a.data[i * a.row_stride..i * a.row_stride + k], panel[r..].iter_mut().step_by(MR));
                    } else {
                        for q in 0..kp {
                            panel[q * MR + r] = a.pair_along_cols(i, q);
                        }
                    }
                }
            });
        }
        PackedA::Pairs { data, m, k, kp }
    }

    pub fn rows(&self) -> usize {
        match self {
            PackedA::Pairs { m, .. } | PackedA::Wide { m, .. } => *m,
        }
    }
}

/// The right operand `[k, n]`, packed for a [`Kernel`]: pair `q` of panel `p` starts at
/// `p·panel_step + q·pair_step` (panel-major, each panel contiguous, or pair-major).
pub enum PackedB {
    Pairs { data: Vec<u32>, k: usize, n: usize, panel_step: usize, pair_step: usize },
    Wide { data: Vec<f32>, k: usize, n: usize },
}

impl PackedB {
    /// Panel-major: each panel's pairs contiguous (the kernel streams one panel).
    pub fn new<T: Operand>(b: View<T>, kernel: Kernel) -> Self {
        b.check();
        let (k, n) = (b.rows, b.cols);
        if kernel == Kernel::Wide {
            return PackedB::Wide { data: b.wide(), k, n };
        }
        let kp = k.div_ceil(2);
        let mut data = take(n.div_ceil(NR) * kp * NR);
        if kp > 0 {
            data.par_chunks_mut(kp * NR).enumerate().for_each(|(p, panel)| {
                let cols = NR.min(n - p * NR);
                for q in 0..kp {
                    panel[q * NR + cols..(q + 1) * NR].fill(0); // columns past n
                }
                for j in 0..cols {
                    let c = p * NR + j;
                    if b.row_stride == 1 {
                        // Contiguous columns (`Wᵀ` of a row-major weight): pairs straight from the column.
                        pairs_of(&b.data[c * b.col_stride..c * b.col_stride + k], panel[j..].iter_mut().step_by(NR));
                    } else {
                        for q in 0..kp {
                            panel[q * NR + j] = b.pair_along_rows(q, c);
                        }
                    }
                }
            });
        }
        PackedB::Pairs { data, k, n, panel_step: kp * NR, pair_step: NR }
    }

    /// Pair-major, from a row-major `[k, n]` matrix: each pair of rows becomes one run of interleaved lanes
    /// (cheaper to pack when `B`'s rows are `k`, as in `dy · W`).
    pub fn from_rows<T: Operand>(b: &[T], k: usize, n: usize, kernel: Kernel) -> Self {
        assert_eq!(b.len(), k * n, "matrix data does not match its shape");
        if kernel == Kernel::Wide {
            return PackedB::Wide { data: View::rows(b, k, n).wide(), k, n };
        }
        let (kp, panels) = (k.div_ceil(2), n.div_ceil(NR));
        let mut data = take(kp * panels * NR);
        if kp > 0 && n > 0 {
            data.par_chunks_mut(panels * NR).enumerate().for_each(|(q, run)| {
                run[n..].fill(0); // columns past n
                let lo = &b[2 * q * n..(2 * q + 1) * n];
                let hi = (2 * q + 1 < k).then(|| &b[(2 * q + 1) * n..(2 * q + 2) * n]);
                for (j, v) in run[..n].iter_mut().enumerate() {
                    let h = hi.map_or(0, |h| h[j].bf16_bits() as u32);
                    *v = lo[j].bf16_bits() as u32 | h << 16;
                }
            });
        }
        PackedB::Pairs { data, k, n, panel_step: NR, pair_step: panels * NR }
    }

    pub fn k(&self) -> usize {
        match self {
            PackedB::Pairs { k, .. } | PackedB::Wide { k, .. } => *k,
        }
    }

    pub fn n(&self) -> usize {
        match self {
            PackedB::Pairs { n, .. } | PackedB::Wide { n, .. } => *n,
        }
    }
}

/// `C[i][j] (+)= Σ_k A[i][k0 + k] · B[k][j]` for `C` row-major with row stride `ldc` (`c` starts at
/// `C[0][0]`), `k` over `B`'s rows; `k0` even. With `parallel`, split between rayon's threads.
#[allow(clippy::too_many_arguments)]
pub fn gemm(c: &mut [f32], ldc: usize, a: &PackedA, k0: usize, b: &PackedB, accumulate: bool, parallel: bool) {
    let (m, n, kb) = (a.rows(), b.n(), b.k());
    assert!(n <= ldc || m <= 1, "gemm: row stride shorter than a row");
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= (m - 1) * ldc + n, "gemm: C is too small");
    match (a, b) {
        (PackedA::Wide { data, k, .. }, PackedB::Wide { data: bd, .. }) => {
            assert!(k0 + kb <= *k, "gemm: B has more rows than A has columns left");
            let av = Mat { data: &data[k0.min(data.len())..], rows: m, cols: kb, row_stride: *k, col_stride: 1 };
            if kb == 0 && !accumulate {
                (0..m).for_each(|i| c[i * ldc..i * ldc + n].fill(0.0));
                return;
            }
            matmul_into(c, ldc, av, Mat::rows(bd, kb, n), accumulate, parallel);
        }
        (PackedA::Pairs { data, k, kp, .. }, PackedB::Pairs { data: bd, panel_step, pair_step, .. }) => {
            assert!(k0.is_multiple_of(2), "gemm: A's offset must be even");
            assert!(k0 + kb <= *k, "gemm: B has more rows than A has columns left");
            let kernel = if super::bf16::native() { Kernel::Native } else { Kernel::Scalar };
            let spec = Pairs { a: data, akp: *kp, q0: k0 / 2, b: bd, panel_step: *panel_step, pair_step: *pair_step };
            pairs_gemm(c, ldc, m, n, kb.div_ceil(2), &spec, kernel, accumulate, parallel);
        }
        _ => panic!("gemm: operands packed for different kernels"),
    }
}

/// [`gemm`] with the scalar kernel whatever the CPU (tests).
#[cfg(test)]
fn gemm_scalar(c: &mut [f32], ldc: usize, a: &PackedA, k0: usize, b: &PackedB, accumulate: bool) {
    let (PackedA::Pairs { data, k: _, kp, m }, PackedB::Pairs { data: bd, k: kb, n, panel_step, pair_step }) = (a, b)
    else {
        panic!("scalar kernel needs paired operands")
    };
    let spec = Pairs { a: data, akp: *kp, q0: k0 / 2, b: bd, panel_step: *panel_step, pair_step: *pair_step };
    pairs_gemm(c, ldc, *m, *n, kb.div_ceil(2), &spec, Kernel::Scalar, accumulate, false);
}

struct Pairs<'a> {
    a: &'a [u32],
    akp: usize,
    q0: usize,
    b: &'a [u32],
    panel_step: usize,
    pair_step: usize,
}

/// `C`'s rows as shared by the tasks of [`pairs_gemm`]: each writes a disjoint block.
#[derive(Clone, Copy)]
struct SharedC(*mut f32);
// SAFETY: the tasks write disjoint blocks of `C` (distinct panels of columns or of rows) and nothing reads
// `C` while they run.
unsafe impl Send for SharedC {}
unsafe impl Sync for SharedC {}

impl SharedC {
    /// The pointer (through a method, so that closures capture the whole `SharedC`, which is `Sync`).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

#[allow(clippy::too_many_arguments)]
fn pairs_gemm(
    c: &mut [f32],
    ldc: usize,
    m: usize,
    n: usize,
    kq: usize,
    s: &Pairs,
    kernel: Kernel,
    acc: bool,
    par: bool,
) {
    let (apanels, bpanels) = (m.div_ceil(MR), n.div_ceil(NR));
    // Tasks: column panels, each split into row ranges when there are fewer panels than threads want.
    let threads = if par { rayon::current_num_threads() } else { 1 };
    let splits = if bpanels >= 2 * threads { 1 } else { (2 * threads).div_ceil(bpanels).min(apanels).max(1) };
    let per = apanels.div_ceil(splits);
    let shared = SharedC(c.as_mut_ptr());
    let task = |t: usize| {
        let (bp, part) = (t / splits, t % splits);
        let cols = NR.min(n - bp * NR);
        let b = &s.b[bp * s.panel_step..];
        let mut tile = [[0f32; NR]; MR];
        for ap in part * per..((part + 1) * per).min(apanels) {
            let rows = MR.min(m - ap * MR);
            let a = &s.a[(ap * s.akp + s.q0) * MR..];
            micro(kernel, rows, a, b, s.pair_step, kq, &mut tile);
            for (r, t) in tile.iter().enumerate().take(rows) {
                // SAFETY: row `ap·MR + r` < m and columns `bp·NR .. + cols` <= n of C, inside `c` (checked
                // by the caller: len >= (m − 1)·ldc + n); no other task writes this block.
                let row = unsafe { std::slice::from_raw_parts_mut(shared.at((ap * MR + r) * ldc + bp * NR), cols) };
                if acc {
                    row.iter_mut().zip(t).for_each(|(x, y)| *x += y);
                } else {
                    row.copy_from_slice(&t[..cols]);
                }
            }
        }
    };
    let tasks = bpanels * splits;
    if par && tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// One `rows × NR` block over `kq` pairs: `a` at the panel's first pair (stride `MR` per pair), `b` at the
/// panel's first pair (stride `pair_step`).
fn micro(kernel: Kernel, rows: usize, a: &[u32], b: &[u32], pair_step: usize, kq: usize, out: &mut [[f32; NR]; MR]) {
    assert!(kq == 0 || (a.len() >= (kq - 1) * MR + rows && b.len() >= (kq - 1) * pair_step + NR));
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Native => {
            // SAFETY: `native()` checked the CPU's features; the reads are in bounds (asserted above).
            unsafe {
                let (a, b) = (a.as_ptr(), b.as_ptr());
                match rows {
                    1 => native_block::<1>(a, b, pair_step, kq, out),
                    2 => native_block::<2>(a, b, pair_step, kq, out),
                    3 => native_block::<3>(a, b, pair_step, kq, out),
                    4 => native_block::<4>(a, b, pair_step, kq, out),
                    5 => native_block::<5>(a, b, pair_step, kq, out),
                    _ => native_block::<MR>(a, b, pair_step, kq, out),
                }
            }
        }
        _ => scalar_block(rows, a, b, pair_step, kq, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn native_block<const R: usize>(
    a: *const u32,
    b: *const u32,
    pair_step: usize,
    kq: usize,
    out: &mut [[f32; NR]; MR],
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NR / 16]; R];
    for q in 0..kq {
        let bp = b.add(q * pair_step);
        let bv: [__m512bh; NR / 16] =
            std::array::from_fn(|j| std::mem::transmute(_mm512_loadu_si512(bp.add(16 * j) as *const __m512i)));
        let ap = a.add(q * MR);
        for (r, accr) in acc.iter_mut().enumerate() {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(r) as i32));
            for (x, y) in accr.iter_mut().zip(&bv) {
                *x = _mm512_dpbf16_ps(*x, av, *y);
            }
        }
    }
    for (o, accr) in out.iter_mut().zip(&acc) {
        for (j, x) in accr.iter().enumerate() {
            _mm512_storeu_ps(o.as_mut_ptr().add(16 * j), *x);
        }
    }
}

/// The instruction's arithmetic: `acc + a₁·b₁`, rounded, then `+ a₀·b₀`, rounded (the products are exact);
/// subnormal inputs (bf16 and the accumulator) read as zero, subnormal results written as zero.
#[inline(always)]
pub fn dot_pair(acc: f32, a: u32, b: u32) -> f32 {
    fn daz(x: f32) -> f32 {
        if x.is_subnormal() {
            0f32.copysign(x)
        } else {
            x
        }
    }
    let half = |v: u32| daz(widen(v as u16)) as f64;
    let (odd, even) = (half(a >> 16) * half(b >> 16), half(a & 0xffff) * half(b & 0xffff));
    let t = daz((daz(acc) as f64 + odd) as f32);
    daz((t as f64 + even) as f32)
}

fn scalar_block(rows: usize, a: &[u32], b: &[u32], pair_step: usize, kq: usize, out: &mut [[f32; NR]; MR]) {
    for (r, o) in out.iter_mut().enumerate().take(rows) {
        for (j, v) in o.iter_mut().enumerate() {
            *v = (0..kq).fold(0.0, |s, q| dot_pair(s, a[q * MR + r], b[q * pair_step + j]));
        }
    }
}

/// `a · b` for two views, in f32 `[a.rows, b.cols]` (each operand rounded to bf16 first).
pub fn matmul<T: Operand, U: Operand>(a: View<T>, b: View<U>, kernel: Kernel) -> Vec<f32> {
    assert_eq!(a.cols, b.rows, "matmul: inner dimensions differ");
    let mut c = vec![0f32; a.rows * b.cols];
    let pa = PackedA::new(a, kernel);
    let pb = PackedB::new(b, kernel);
    gemm(&mut c, b.cols, &pa, 0, &pb, false, true);
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::values;

    fn rounded(v: &[f32]) -> Vec<f32> {
        v.iter().map(|&x| widen(bits(x))).collect()
    }

    /// `a · b` in f64 on the bf16 values.
    fn reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let (a, b) = (rounded(a), rounded(b));
        (0..m * n).map(|ij| (0..k).map(|x| a[ij / n * k + x] as f64 * b[x * n + ij % n] as f64).sum()).collect()
    }

    fn close(got: &[f32], want: &[f64], k: usize, what: &str) {
        let scale = want.iter().fold(1e-30f64, |s, x| s.max(x.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((*g as f64 - w).abs() <= 2e-7 * k as f64 * scale, "{what}: [{i}] {g} vs {w}");
        }
    }

    /// Every packing and kernel against the product in f64 of the bf16 values: odd `k`, partial panels of
    /// rows and columns, transposed views, an offset into `A`, accumulation.
    #[test]
    fn products_equal_the_bf16_values_multiplied() {
        for (m, k, n) in [(1, 1, 1), (7, 33, 65), (13, 128, 130), (6, 64, 64)] {
            let a = values(m * k, 3, 2.0);
            let b = values(k * n, 5, 1.5);
            let want = reference(&a, &b, m, k, n);
            let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect(); // [k, m]
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect(); // [n, k]
            let kernels: &[Kernel] = if super::super::bf16::native() {
                &[Kernel::Native, Kernel::Scalar, Kernel::Wide]
            } else {
                &[Kernel::Scalar, Kernel::Wide]
            };
            for &kern in kernels {
                let what = format!("{kern:?} {m}x{k}x{n}");
                let run = |pa: &PackedA, pb: &PackedB, c: &mut [f32], acc: bool| {
                    if kern == Kernel::Scalar {
                        gemm_scalar(c, n, pa, 0, pb, acc)
                    } else {
                        gemm(c, n, pa, 0, pb, acc, true)
                    }
                };
                let pack = if kern == Kernel::Scalar { Kernel::Native } else { kern };
                for (pa, pb, how) in [
                    (PackedA::new(View::rows(&a, m, k), pack), PackedB::new(View::rows(&b, k, n), pack), "rows"),
                    (PackedA::new(View::rows(&at, k, m).t(), pack), PackedB::new(View::rows(&bt, n, k).t(), pack), "t"),
                    (PackedA::new(View::rows(&a, m, k), pack), PackedB::from_rows(&b, k, n, pack), "from_rows"),
                ] {
                    let mut c = vec![f32::NAN; m * n];
                    run(&pa, &pb, &mut c, false);
                    close(&c, &want, k, &format!("{what} {how}"));
                    run(&pa, &pb, &mut c, true);
                    let twice: Vec<f64> = want.iter().map(|w| 2.0 * w).collect();
                    close(&c, &twice, k, &format!("{what} {how}, accumulated"));
                }
                // B's rows against A's columns from an even offset: C = A[:, 2..] · B[2.., :].
                if k > 2 {
                    let pa = PackedA::new(View::rows(&a, m, k), pack);
                    let pb = PackedB::from_rows(&b[2 * n..], k - 2, n, pack);
                    let mut c = vec![0f32; m * n];
                    if kern == Kernel::Scalar {
                        gemm_scalar(&mut c, n, &pa, 2, &pb, false)
                    } else {
                        gemm(&mut c, n, &pa, 2, &pb, false, true)
                    }
                    let (ar, br) = (rounded(&a), rounded(&b));
                    let want: Vec<f64> = (0..m * n)
                        .map(|ij| (2..k).map(|x| ar[ij / n * k + x] as f64 * br[x * n + ij % n] as f64).sum())
                        .collect();
                    close(&c, &want, k, &format!("{what}, offset 2"));
                }
            }
        }
    }

    /// Where the CPU has the instruction, its results equal the scalar kernel's bit for bit (the scalar
    /// kernel is exact about the instruction's rounding, so it stands for it on other CPUs).
    #[test]
    fn native_kernel_equals_its_scalar_emulation_bit_for_bit() {
        if !super::super::bf16::has_instruction() {
            eprintln!("this CPU has no AVX512-BF16: the native kernel is not run here");
            return;
        }
        let (m, k, n) = (11, 301, 130);
        // Values over many binades, and some that make subnormal products.
        let mut a = values(m * k, 7, 3.0);
        let mut b = values(k * n, 9, 3.0);
        a.iter_mut().step_by(5).for_each(|x| *x *= 1e-20);
        b.iter_mut().step_by(7).for_each(|x| *x *= 1e-19);
        a.iter_mut().step_by(11).for_each(|x| *x *= 1e12);
        let pa = PackedA::new(View::rows(&a, m, k), Kernel::Native);
        let pb = PackedB::new(View::rows(&b, k, n), Kernel::Native);
        let mut scalar = vec![0f32; m * n];
        gemm_scalar(&mut scalar, n, &pa, 0, &pb, false);
        let (PackedA::Pairs { data, kp, .. }, PackedB::Pairs { data: bd, panel_step, pair_step, .. }) = (&pa, &pb)
        else {
            unreachable!()
        };
        let spec = Pairs { a: data, akp: *kp, q0: 0, b: bd, panel_step: *panel_step, pair_step: *pair_step };
        let mut native = vec![0f32; m * n];
        pairs_gemm(&mut native, n, m, n, k.div_ceil(2), &spec, Kernel::Native, false, true);
        for (i, (x, y)) in native.iter().zip(&scalar).enumerate() {
            assert_eq!(x.to_bits(), y.to_bits(), "[{i}]: {x:e} vs {y:e}");
        }
    }

    /// The scalar emulation of one lane on values worked by hand: odd products first, two roundings.
    #[test]
    fn dot_pair_rounds_as_the_instruction_does() {
        let pair = |lo: f32, hi: f32| bits(lo) as u32 | (bits(hi) as u32) << 16;
        // 1 + 2^-24 (odd first) rounds to 1 (ties to even); then + 2^-24 again rounds to 1: two roundings.
        let tiny = 2f32.powi(-12);
        assert_eq!(dot_pair(1.0, pair(tiny, tiny), pair(tiny, tiny)), 1.0);
        // 1 + 2^24 (odd first) rounds to 2^24 (tie to even), then − 2^24 gives 0; even first would give 1.
        assert_eq!(dot_pair(1.0, pair(-4096.0, 4096.0), pair(4096.0, 4096.0)), 0.0);
        // Exact cases: 0.5·3 + 2·4 + 1.
        assert_eq!(dot_pair(1.0, pair(0.5, 2.0), pair(3.0, 4.0)), 10.5);
        // A subnormal accumulator reads as zero.
        assert_eq!(dot_pair(1e-40, pair(0.0, 0.0), pair(0.0, 0.0)), 0.0);
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use crate::testing::values;

    /// `cargo test --release -p lapidary-model --lib bf16_gemm::speed -- --ignored --nocapture`: GFLOP/s of
    /// the kernels and of the f32 `gemm` crate on one training-sized product.
    #[test]
    #[ignore]
    fn gflops() {
        for (m, k, n) in [(1024, 640, 2048), (1024, 2048, 640), (1024, 640, 4096)] {
            let a = values(m * k, 1, 1.0);
            let b = values(k * n, 2, 1.0);
            let flops = 2.0 * (m * k * n) as f64;
            let time = |f: &mut dyn FnMut()| {
                f();
                let t = std::time::Instant::now();
                for _ in 0..5 {
                    f();
                }
                flops * 5.0 / t.elapsed().as_secs_f64() / 1e9
            };
            let mut c = vec![0f32; m * n];
            let f32g =
                time(&mut || super::super::gemm::matmul(&mut c, Mat::rows(&a, m, k), Mat::rows(&b, k, n), false));
            let pb = PackedB::new(View::rows(&b, k, n), Kernel::Native);
            let nat = time(&mut || {
                let pa = PackedA::new(View::rows(&a, m, k), Kernel::Native);
                gemm(&mut c, n, &pa, 0, &pb, false, true)
            });
            let pack = time(&mut || {
                let pa = PackedA::new(View::rows(&a, m, k), Kernel::Native);
                let pb = PackedB::new(View::rows(&b, k, n), Kernel::Native);
                gemm(&mut c, n, &pa, 0, &pb, false, true)
            });
            eprintln!("{m}x{k}x{n}: f32 gemm {f32g:.0} GFLOP/s, bf16 native {nat:.0} (B packed once), {pack:.0} (both packed each time)");
        }
    }
}
