//! The CUDA backend (`--features cuda`) against the CPU one: the NF4/int8 kernels against the host
//! dequantization, the cuBLAS bridge against the CPU matmul, logits and eval losses on the tiny fixtures and
//! the real Gemma 3 270M, and whole training steps (forward, backward, AdamW) through `lapidary bench`.
//!
//! Where the binary was built without the feature, or there is no GPU, every GPU test prints
//! `skipped: no CUDA GPU (why)` on stderr and passes. Two tests need no GPU and always run: the error that
//! `--backend cuda` gives where it cannot run, and the kernels' index arithmetic replayed on the host.
//!
//! Run elsewhere than where it was built (a GPU machine, by `scripts/bench_gpu.sh tests`), `LAPIDARY_REPO`
//! names the repository (for `tests/fixtures`) and `LAPIDARY_BIN` the lapidary binary.
//!
//! Tolerances: both sides compute in f32, so they differ by summation order only (1e-4 of the logits'
//! scale, as the CPU backends against transformers). With `LAPIDARY_CUBLAS=tf32` the GPU products round
//! their inputs to 10-bit mantissas, and the tolerances widen to 2e-2.
mod common;

#[cfg(feature = "cuda")]
use common::fixture;

/// A fixture, under `LAPIDARY_REPO` when set (see the header).
#[cfg(feature = "cuda")]
fn fixture_at(rel: &str) -> std::path::PathBuf {
    match std::env::var_os("LAPIDARY_REPO") {
        Some(root) => std::path::PathBuf::from(root).join("tests/fixtures").join(rel),
        None => fixture(rel),
    }
}

/// Runs the CLI (`LAPIDARY_BIN` when set).
fn cli(args: &[&str]) -> std::process::Output {
    let bin = std::env::var_os("LAPIDARY_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_lapidary").into());
    std::process::Command::new(bin).args(args).output().expect("run lapidary")
}

/// Runs the CLI, asserts success, parses stdout as JSON.
#[cfg(feature = "cuda")]
fn cli_json(args: &[&str]) -> serde_json::Value {
    let out = cli(args);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "lapidary {args:?} failed: {stderr}\n{stdout}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("lapidary {args:?}: not JSON ({e}): {stdout}"))
}

/// Says why a GPU test does not run.
fn skipped(why: &str) {
    eprintln!("skipped: no CUDA GPU ({why})");
}

/// Each name is a test that runs `gpu::name()` where a GPU is, and says it was skipped elsewhere.
macro_rules! gpu_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                #[cfg(feature = "cuda")]
                match lapidary_model::cuda::probe() {
                    Ok(_) => gpu::$name(),
                    Err(e) => skipped(&e.to_string()),
                }
                #[cfg(not(feature = "cuda"))]
                skipped("this test binary was built without `--features cuda`");
            }
        )*
    };
}

gpu_tests!(
    kernels_equal_host_dequantization,
    ggml_kernel_equals_host_dequantization,
    dropout_equals_host,
    attention_equals_cpu,
    rms_norm_equals_cpu,
    lm_head_equals_cpu,
    cublas_equals_cpu_matmul,
    logits_and_loss_equal_cpu_on_the_fixtures,
    training_steps_equal_cpu_on_a_fixture,
    bf16_training_steps_equal_cpu_on_a_fixture,
    training_step_equals_cpu_at_the_270m_shape,
    real_270m_eval_loss_equals_cpu,
);

/// `lapidary bench --backend cuda` never panics: where CUDA cannot run it exits 1 with one `error:` line
/// saying why (no driver, no GPU, or a binary built without the feature).
#[test]
fn backend_cuda_fails_clearly_where_it_cannot_run() {
    #[cfg(feature = "cuda")]
    if lapidary_model::cuda::probe().is_ok() {
        return skipped("a GPU is here, so there is no error to check");
    }
    let out = cli(&["bench", "--model", "gemma3-270m", "--backend", "cuda", "--steps", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "a panic instead of an error: {stderr}");
    assert!(stderr.contains("error: --backend cuda:"), "unclear error: {stderr}");
    #[cfg(not(feature = "cuda"))]
    assert!(stderr.contains("built without CUDA"), "{stderr}");
}

/// The NF4 and int8 kernels' index arithmetic (word packing, nibble order, 64- and 256-blocks), replayed
/// line for line on the host, gives exactly the host dequantization. Odd sizes (partial byte, word and
/// block) and more than 256 blocks (two second-level scales) included. No GPU needed.
#[cfg(feature = "cuda")]
#[test]
fn kernel_index_arithmetic_equals_host_dequantization() {
    use lapidary_model::cube::dequant::{words, INV_127};
    use lapidary_model::quant::{Int8Weight, Nf4Weight};
    use lapidary_model::testing::values;
    for shape in [[3, 7], [5, 64], [33, 130], [300, 64]] {
        let data = values(shape[0] * shape[1], shape[1] as u64, 0.05);
        let w = Nf4Weight::quantize(&data, shape);
        let (packed, absmax_q) = (words(&w.packed), words(&w.absmax_q));
        let mut tables = lapidary_model::quant::nf4::nf4_code().to_vec();
        tables.extend_from_slice(&lapidary_model::quant::nf4::dynamic_map());
        let like_kernel: Vec<f32> = (0..w.numel())
            .map(|i| {
                let byte_index = i / 2;
                let byte = (packed[byte_index / 4] >> ((byte_index % 4) as u32 * 8)) & 0xff;
                let code = (byte >> (4 - 4 * (i % 2) as u32)) & 0xf;
                let block = i / 64;
                let q = (absmax_q[block / 4] >> ((block % 4) as u32 * 8)) & 0xff;
                let absmax = tables[16 + q as usize] * w.absmax2[block / 256] + w.offset;
                tables[code as usize] * absmax
            })
            .collect();
        assert_eq!(like_kernel, w.dequantize(), "nf4 {shape:?}");

        let w = Int8Weight::quantize(&data, shape);
        let cb = words(&w.cb.iter().map(|&b| b as u8).collect::<Vec<_>>());
        let like_kernel: Vec<f32> = (0..w.cb.len())
            .map(|i| {
                let byte = (cb[i / 4] >> ((i % 4) as u32 * 8)) & 0xff;
                let value = byte as f32 - 256.0 * (byte >> 7) as f32;
                value * w.scb[i / w.shape[1]] * INV_127
            })
            .collect();
        assert_eq!(like_kernel, w.dequantize(), "int8 {shape:?}");
    }
}

/// The relative tolerance of a GPU result against the CPU's: f32 products, or TF32 ones.
#[cfg(feature = "cuda")]
fn tolerance() -> f64 {
    if std::env::var("LAPIDARY_CUBLAS").as_deref() == Ok("tf32") {
        2e-2
    } else {
        1e-4
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
    use lapidary_model::backends::{CudaGpu, FlexCpu};
    use lapidary_model::cuda::{cublas, CudaRuntime, Math};
    use lapidary_model::dtype::ComputeDtype;
    use lapidary_model::gemma::load::load_gemma;
    use lapidary_model::gemma::loss::shifted_targets;
    use lapidary_model::nn::lora::LoraRuntime;
    use lapidary_model::quant::QuantKind;
    use lapidary_model::testing::cube as checks;
    use lapidary_model::testing::{host, scaled_err};
    use lapidary_model::{ModelFiles, TokenBatch};

    use super::common::{read_tensor, real_model, rel};
    use super::{cli_json, fixture_at as fixture, tolerance};
    use lapidary_model::testing::values;

    pub fn kernels_equal_host_dequantization() {
        let shapes = [[3, 7], [33, 130], [300, 64], [2048, 1024]];
        checks::dequant_equals_host::<CudaRuntime, u8>(&shapes, &Default::default()).unwrap();
    }

    /// The ggml block kernel (`--quant gguf`'s weights) against the host's dequantization, every type; NVRTC
    /// may fuse `d · q − m`, so the types with that add are held to 2 ulp of their block.
    pub fn ggml_kernel_equals_host_dequantization() {
        checks::ggml_dequant_equals_host::<CudaRuntime, u8>(true, &Default::default()).unwrap();
    }

    /// The dropout-mask kernel against the host's generator, element for element.
    pub fn dropout_equals_host() {
        checks::dropout_equals_host::<CudaGpu>().unwrap();
    }

    /// The attention kernels (cuBLAS products around one softmax kernel each way) against the CPU, in f32
    /// and in bf16 (bf16 products, `P` and `dS` rounded to bf16 as FlashAttention does).
    pub fn attention_equals_cpu() {
        checks::attention_equals_cpu::<CudaGpu>(tolerance() as f32, DType::F32).unwrap();
        checks::attention_equals_cpu::<CudaGpu>(2e-2, DType::BF16).unwrap();
    }

    /// The RMSNorm kernels against the CPU.
    pub fn rms_norm_equals_cpu() {
        checks::rms_norm_equals_cpu::<CudaGpu>(1e-5).unwrap();
    }

    /// The LM-head loss's kernel and products against the CPU.
    pub fn lm_head_equals_cpu() {
        checks::lm_head_equals_cpu::<CudaGpu>(tolerance() as f32).unwrap();
    }

    pub fn cublas_equals_cpu_matmul() {
        let gpu = Default::default();
        let cpu = Default::default();
        let (m, k, n) = (37, 70, 53);
        let a = values(m * k, 1, 1.0);
        let b = values(k * n, 2, 1.0);
        let want = Tensor::<FlexCpu, 2>::from_data(TensorData::new(a.clone(), [m, k]), &cpu)
            .matmul(Tensor::from_data(TensorData::new(b.clone(), [k, n]), &cpu))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let on_gpu =
            |v: &[f32], shape: [usize; 2]| Tensor::<CudaGpu, 2>::from_data(TensorData::new(v.to_vec(), shape), &gpu);
        let prim = |t: Tensor<CudaGpu, 2>| t.into_primitive().tensor();
        // a · b, given as (tensor, transpose flag) pairs in every layout the bridge handles: row-major,
        // transposed views (strides swapped, no copy), and explicit transposes.
        let ag = on_gpu(&a, [m, k]);
        let bg = on_gpu(&b, [k, n]);
        let at = on_gpu(&a, [m, k]).transpose().into_data(); // [k, m] row-major data
        let bt = on_gpu(&b, [k, n]).transpose().into_data(); // [n, k]
        let at = Tensor::<CudaGpu, 2>::from_data(at, &gpu);
        let bt = Tensor::<CudaGpu, 2>::from_data(bt, &gpu);
        // Views that start inside their buffer (slices whose offset CubeCL keeps in the handle: attention's
        // key chunks, the flat LoRA parameters): `a` as rows 32.. of a taller matrix (an offset of 32 rows),
        // `b` as columns 16.. of a wider one (an offset, and a row stride past its row length).
        let pad = |v: &[f32], rows: usize, cols: usize, top: usize, left: usize| {
            let mut out = vec![9.0f32; (rows + top) * (cols + left)];
            for r in 0..rows {
                out[(r + top) * (cols + left) + left..(r + top + 1) * (cols + left)]
                    .copy_from_slice(&v[r * cols..(r + 1) * cols]);
            }
            out
        };
        let a_inside = on_gpu(&pad(&a, m, k, 32, 0), [m + 32, k]).slice([32..m + 32, 0..k]);
        let b_inside = on_gpu(&pad(&b, k, n, 0, 16), [k, n + 16]).slice([0..k, 16..n + 16]);
        let cases = [
            ("a b", ag.clone(), false, bg.clone(), false),
            ("offset views", a_inside, false, b_inside, false),
            ("a (bᵀ)ᵀ", ag.clone(), false, bt.clone(), true),
            ("(aᵀ)ᵀ b", at.clone(), true, bg.clone(), false),
            ("view a, view b", at.clone().transpose(), false, bt.clone().transpose(), false),
            ("view-of-view", ag.clone().transpose().transpose(), false, bg.clone(), false),
        ];
        for math in [Math::F32, Math::Tf32] {
            let tol = if math == Math::Tf32 { 2e-2 } else { 1e-5 };
            for (name, x, tx, y, ty) in cases.clone() {
                let c = cublas::matmul(prim(x), prim(y), tx, ty, math).unwrap_or_else(|e| panic!("{name}: {e}"));
                let got = host(Tensor::<CudaGpu, 2>::from_primitive(TensorPrimitive::Float(c)));
                let err = scaled_err(&got, &want);
                eprintln!("cuBLAS {math:?} {name}: {err:e}");
                assert!(err < tol, "cuBLAS {math:?} {name}: {err:e} of scale");
            }
        }
        // Batches: [2, 3] matrices of a · b in one strided call, with b given as a transposed view.
        let (bm, bk, bn) = (5, 7, 4);
        let av = values(6 * bm * bk, 3, 1.0);
        let bv = values(6 * bk * bn, 4, 1.0);
        let want_batched = Tensor::<FlexCpu, 4>::from_data(TensorData::new(av.clone(), [2, 3, bm, bk]), &cpu)
            .matmul(Tensor::from_data(TensorData::new(bv.clone(), [2, 3, bk, bn]), &cpu))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let a4 = Tensor::<CudaGpu, 4>::from_data(TensorData::new(av, [2, 3, bm, bk]), &gpu);
        let b4 = Tensor::<CudaGpu, 4>::from_data(TensorData::new(bv, [2, 3, bk, bn]), &gpu);
        let b4t = Tensor::<CudaGpu, 4>::from_data(b4.clone().swap_dims(2, 3).into_data(), &gpu).swap_dims(2, 3);
        for (name, b) in [("batched", b4), ("batched, b a transposed view", b4t)] {
            let c = cublas::matmul(
                a4.clone().into_primitive().tensor(),
                b.into_primitive().tensor(),
                false,
                false,
                Math::F32,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            let got = Tensor::<CudaGpu, 4>::from_primitive(TensorPrimitive::Float(c))
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap();
            let err = scaled_err(&got, &want_batched);
            eprintln!("cuBLAS {name}: {err:e}");
            assert!(err < 1e-5, "cuBLAS {name}: {err:e} of scale");
        }
        // bf16 in, bf16 out, f32 accumulation.
        let c = cublas::matmul(prim(ag.cast(DType::BF16)), prim(bg.cast(DType::BF16)), false, false, Math::F32)
            .expect("bf16 product");
        let got = host(Tensor::<CudaGpu, 2>::from_primitive(TensorPrimitive::Float(c)).cast(DType::F32));
        let err = scaled_err(&got, &want);
        eprintln!("cuBLAS bf16: {err:e}");
        assert!(err < 2e-2, "cuBLAS bf16: {err:e} of scale");
        // bf16 in, the f32 accumulator out (attention's scores): the CPU's f32 product of the same
        // bf16-rounded values, to f32 rounding (products of bf16 values are exact in f32).
        let round = |v: &[f32]| v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect::<Vec<_>>();
        let (ar, br) = (round(&a), round(&b));
        let want_r = Tensor::<FlexCpu, 2>::from_data(TensorData::new(ar.clone(), [m, k]), &cpu)
            .matmul(Tensor::from_data(TensorData::new(br.clone(), [k, n]), &cpu))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let bf = |v: &[f32], shape: [usize; 2]| prim(on_gpu(v, shape).cast(DType::BF16));
        let c = cublas::matmul_as(bf(&ar, [m, k]), bf(&br, [k, n]), false, false, DType::F32, Math::F32)
            .expect("bf16 product with an f32 result");
        let c = Tensor::<CudaGpu, 2>::from_primitive(TensorPrimitive::Float(c));
        assert_eq!(c.dtype(), DType::F32, "the f32 accumulator comes out as f32");
        let err = scaled_err(&host(c), &want_r);
        eprintln!("cuBLAS bf16 -> f32: {err:e}");
        assert!(err < 1e-5, "cuBLAS bf16 -> f32: {err:e} of scale");
    }

    fn fixture_rows(gen: &str) -> Vec<Vec<u32>> {
        let (shape, ids) = read_tensor(&fixture(&format!("tiny/{gen}/reference.safetensors")), "input_ids");
        ids.chunks(shape[1]).map(|r| r.iter().map(|&x| x as u32).collect()).collect()
    }

    /// Logits and summed NLL of the fixture rows on backend `B`, computing in `dtype`.
    fn logits_and_nll<B: lapidary_model::GemmaBackend>(
        gen: &str,
        quant: QuantKind,
        dtype: ComputeDtype,
    ) -> (Vec<f32>, f64) {
        let files = ModelFiles::open(&fixture(&format!("tiny/{gen}"))).expect("fixture model");
        let model = load_gemma::<B>(&files.config, files.weights.as_ref(), quant, &Default::default())
            .expect("load")
            .with_compute_dtype(dtype);
        let rows = fixture_rows(gen);
        let tokens = TokenBatch::from_rows(&rows);
        let logits = model.forward(&tokens, &LoraRuntime::default());
        let logits = logits.into_data().convert::<f32>().to_vec::<f32>().expect("f32 logits");
        let labels: Vec<i64> = tokens.ids.iter().map(|&i| i as i64).collect();
        let nll = model.eval_nll(&tokens, &shifted_targets(&labels, tokens.batch, tokens.seq));
        (logits, nll)
    }

    pub fn logits_and_loss_equal_cpu_on_the_fixtures() {
        // bf16 against the CPU's bf16 (itself checked against transformers' in lapidary_model::dtype): the
        // two round in different orders, so a few bf16 ulps of the logits' scale apart.
        for (dtype, tol) in [(ComputeDtype::F32, tolerance()), (ComputeDtype::Bf16, 2e-2)] {
            for gen in ["gemma1", "gemma2", "gemma3"] {
                for quant in [QuantKind::None, QuantKind::Nf4, QuantKind::Int8] {
                    let (gl, gn) = logits_and_nll::<CudaGpu>(gen, quant, dtype);
                    let (cl, cn) = logits_and_nll::<FlexCpu>(gen, quant, dtype);
                    let (err, loss_err) = (f64::from(scaled_err(&gl, &cl)), rel(gn, cn));
                    eprintln!("{gen} {quant:?} {dtype:?}: logits {err:e} of scale, NLL {gn} vs {cn} ({loss_err:e})");
                    assert!(err < tol, "{gen} {quant:?} {dtype:?}: logits differ by {err:e} of their scale");
                    assert!(loss_err < tol, "{gen} {quant:?} {dtype:?}: NLL {gn} on CUDA vs {cn} on CPU");
                }
            }
        }
    }

    /// `lapidary bench` on both backends, as JSON; the loss it reports is the last timed step's, after the
    /// earlier steps' AdamW updates, so it covers the forward, the backward and the optimizer.
    fn bench(model: &str, extra: &[&str], backend: &str) -> serde_json::Value {
        let mut args = vec!["bench", "--model", model, "--backend", backend, "--json"];
        args.extend_from_slice(extra);
        cli_json(&args)
    }

    fn same_training(model: &str, extra: &[&str], tol: f64) {
        let g = bench(model, extra, "cuda");
        let c = bench(model, extra, "flex");
        let (gl, cl) = (g["loss"].as_f64().expect("loss"), c["loss"].as_f64().expect("loss"));
        eprintln!(
            "{model} {extra:?}: loss {gl} on {} vs {cl} on CPU; {} vs {} tokens/s",
            g["device"], g["tokens_per_s"], c["tokens_per_s"]
        );
        assert!(rel(gl, cl) < tol, "{model} {extra:?}: loss {gl} on CUDA vs {cl} on CPU");
        assert!(g["peak_gib"].as_f64().is_some_and(|p| p > 0.0), "no device memory reported: {g}");
    }

    pub fn training_steps_equal_cpu_on_a_fixture() {
        let dir = fixture("tiny/gemma3");
        let dir = dir.to_str().expect("utf-8 path");
        for quant in ["nf4", "int8", "none"] {
            let args = ["--seq", "16", "--batch", "2", "--warmup", "1", "--steps", "2", "--quant", quant];
            same_training(dir, &args, tolerance());
            let mut gc = args.to_vec();
            gc.push("--gc");
            same_training(dir, &gc, tolerance());
        }
    }

    pub fn bf16_training_steps_equal_cpu_on_a_fixture() {
        let dir = fixture("tiny/gemma2");
        let dir = dir.to_str().expect("utf-8 path");
        let args =
            ["--seq", "16", "--batch", "2", "--warmup", "1", "--steps", "2", "--quant", "nf4", "--dtype", "bf16"];
        same_training(dir, &args, 2e-2);
    }

    pub fn training_step_equals_cpu_at_the_270m_shape() {
        // Random weights of the published shape: the real one's sizes (262k vocabulary, 18 layers) without
        // its file, which is too large to carry to a GPU machine.
        let args = ["--seq", "64", "--batch", "1", "--warmup", "0", "--steps", "1", "--quant", "nf4"];
        same_training("gemma3-270m", &args, tolerance().max(1e-3));
    }

    pub fn real_270m_eval_loss_equals_cpu() {
        let Some(model) = real_model() else { return };
        let data = fixture("gemma3_270m/eval.jsonl");
        for quant in ["none", "nf4"] {
            let run = |backend: &str| {
                cli_json(&[
                    "eval",
                    "--model",
                    model.to_str().unwrap(),
                    "--data",
                    data.to_str().unwrap(),
                    "--quant",
                    quant,
                    "--backend",
                    backend,
                    "--json",
                ])
            };
            let (g, c) = (run("cuda"), run("flex"));
            let (gl, cl) = (g["loss"].as_f64().unwrap(), c["loss"].as_f64().unwrap());
            eprintln!("real 270M {quant}: eval loss {gl} on CUDA vs {cl} on CPU");
            assert_eq!(g["tokens"], c["tokens"]);
            assert!(rel(gl, cl) < tolerance(), "real 270M {quant}: {gl} vs {cl}");
        }
    }
}
