//! Helpers the tests share, in the library's tests and in the workspace's (feature `testing`, which only
//! the test builds turn on): deterministic values, host copies of tensors, a scale-relative error, and the
//! CubeCL kernels' checks against the CPU (`cube`), which the wgpu tests and tests/gpu.rs both run.
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

#[cfg(feature = "cube")]
pub mod cube;

/// Deterministic values in `[-scale, scale]`.
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    (0..n).map(|i| (((i as u64 * 2_654_435_761 + seed * 97) % 2001) as f32 / 1000.0 - 1.0) * scale).collect()
}

/// Largest |a − b| over the largest |b|.
pub fn scaled_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths");
    let scale = b.iter().fold(1e-30f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

/// A tensor of a safetensors fixture as f32 (int64 ids converted): its shape and values.
pub fn read_safetensor(path: &std::path::Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let data = match t.dtype() {
        safetensors::Dtype::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(t.data()),
        safetensors::Dtype::I64 => {
            bytemuck::pod_collect_to_vec::<u8, i64>(t.data()).into_iter().map(|x| x as f32).collect()
        }
        other => panic!("{name}: unexpected dtype {other:?}"),
    };
    (t.shape().to_vec(), data)
}

/// A tensor's values as f32 on the host.
pub fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().expect("f32 data")
}

/// Whether the wgpu tests can run here: a wgpu adapter exists (Mesa's lavapipe on a machine without a GPU).
/// Without one they are skipped, saying why on stderr, unless `LAPIDARY_REQUIRE_WGPU` is set (as
/// `scripts/test.sh` sets it): then a missing adapter fails the test instead of skipping it silently.
#[cfg(feature = "wgpu")]
pub fn wgpu_or_skip() -> bool {
    match crate::cube::wgpu::probe() {
        Ok(()) => true,
        Err(e) if std::env::var_os("LAPIDARY_REQUIRE_WGPU").is_some() => {
            panic!("LAPIDARY_REQUIRE_WGPU is set but {e}")
        }
        Err(e) => {
            eprintln!("skipped: no wgpu adapter ({e})");
            false
        }
    }
}
