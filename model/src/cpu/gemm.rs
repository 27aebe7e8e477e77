//! `dst = a · b` on host slices through the `gemm` crate (runtime-dispatched AVX2/AVX-512/NEON kernels,
//! multi-threaded with rayon). Views carry strides, so transposed operands are never copied.

/// A strided view of an f32 matrix.
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> Mat<'a> {
    /// A contiguous row-major `[rows, cols]` matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
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
}

/// `dst = a · b` (or `dst += a · b` with `accumulate`), `dst` row-major `[a.rows, b.cols]`.
pub fn matmul(dst: &mut [f32], a: Mat, b: Mat, accumulate: bool) {
    // Small products are not worth waking the thread pool for (burn-flex uses the same threshold).
    let parallel = a.rows * a.cols * b.cols >= 192 * 192 * 192;
    matmul_with(dst, a, b, accumulate, parallel)
}

/// [`matmul`] on the calling thread only: for kernels that are already parallel over their own tasks.
pub fn matmul_serial(dst: &mut [f32], a: Mat, b: Mat, accumulate: bool) {
    matmul_with(dst, a, b, accumulate, false)
}

fn matmul_with(dst: &mut [f32], a: Mat, b: Mat, accumulate: bool, parallel: bool) {
    assert_eq!(dst.len(), a.rows * b.cols, "matmul: destination has the wrong size");
    matmul_into(dst, b.cols, a, b, accumulate, parallel)
}

/// `dst = a · b` (or `+=`) into a row-major destination whose rows are `ldc` apart (`dst` starts at its
/// first element): a block of a wider matrix.
pub fn matmul_into(dst: &mut [f32], ldc: usize, a: Mat, b: Mat, accumulate: bool, parallel: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul: inner dimensions differ");
    assert!(m == 0 || n == 0 || (ldc >= n && dst.len() >= (m - 1) * ldc + n), "matmul: destination too small");
    a.check();
    b.check();
    if m == 0 || n == 0 {
        return;
    }
    let par = if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: every index the kernel touches is inside the slices (checked above: the last element of each
    // view is in bounds and strides are non-negative); `dst` is exclusively borrowed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_naive_product_with_transposed_views() {
        let (m, k, n) = (37, 300, 29);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 13) % 17) as f32 - 8.0).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| ((i * 7) % 11) as f32 - 5.0).collect(); // b stored as [n, k]
        let mut dst = vec![1f32; m * n];
        matmul(&mut dst, Mat::rows(&a, m, k), Mat::rows(&bt, n, k).t(), true);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = 1.0 + (0..k).map(|x| a[i * k + x] * bt[j * k + x]).sum::<f32>();
                assert_eq!(dst[i * n + j], want, "({i}, {j})"); // small integers: exact in f32
            }
        }
    }
}
