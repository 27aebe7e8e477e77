//! Helpers shared by the end-to-end tests: fixture paths, reading reference tensors, running the CLI.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::Output;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("trainer/ has a parent").to_path_buf()
}

pub fn fixture(rel: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(rel)
}

/// The real Gemma 3 270M GGUF, if `scripts/fetch_model.sh` has fetched it.
pub fn real_model() -> Option<PathBuf> {
    let cache = std::env::var_os("LAPIDARY_CACHE").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".cache"));
    let p = cache.join("models/gemma-3-270m-q4_k_m.gguf");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIPPED: {} is absent; run scripts/fetch_model.sh", p.display());
        None
    }
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A tensor of a safetensors file as (shape, f32 values) — integer tensors are converted too.
pub fn read_tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f64>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{}: {name}: {e}", path.display()));
    let d = t.data();
    use safetensors::Dtype::*;
    let v: Vec<f64> = match t.dtype() {
        F32 => d.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
        F64 => d.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect(),
        I64 => d.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
        I32 => d.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
        U8 => d.iter().map(|&b| b as f64).collect(),
        I8 => d.iter().map(|&b| b as i8 as f64).collect(),
        BF16 => d.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64()).collect(),
        F16 => d.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64()).collect(),
        other => panic!("{name}: dtype {other:?} not handled in tests"),
    };
    (t.shape().to_vec(), v)
}

pub fn read_bytes(path: &Path, name: &str) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}")).data().to_vec()
}

/// Largest |a - b| / max(|b|, floor) over all entries.
pub fn max_rel_err(a: &[f64], b: &[f64], floor: f64) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(floor)).fold(0.0, f64::max)
}

pub fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

pub fn lapidary(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lapidary")).args(args).output().expect("run lapidary")
}

/// Runs the CLI, asserts success, parses stdout as JSON.
pub fn lapidary_json(args: &[&str]) -> serde_json::Value {
    let out = lapidary(args);
    assert!(
        out.status.success(),
        "lapidary {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Runs the CLI expecting failure; returns stderr. Asserts a non-zero exit and no panic.
pub fn lapidary_fails(args: &[&str]) -> String {
    let out = lapidary(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "lapidary {args:?} should fail but succeeded");
    assert!(!err.contains("panicked"), "lapidary {args:?} panicked: {err}");
    assert!(err.starts_with("error:") || err.contains("error:"), "no error message: {err}");
    err
}
