//! Times loading, one forward and the LM-head loss of a model on each CPU backend.
//! usage: cargo run --release -p lapidary-model --example timing -- MODEL [TOKENS]
use lapidary_model::backend::*;
use lapidary_model::layers::lora::LoraRuntime;
use lapidary_model::load::load_gemma;
use lapidary_model::loss::shifted_targets;
use lapidary_model::quant::{FrozenMatmul, QuantKind};
use lapidary_model::{ModelFiles, TokenBatch};
use std::time::Instant;

fn go<B: FrozenMatmul>(name: &str, path: &str, n: u32) {
    let t = Instant::now();
    let files = ModelFiles::open(std::path::Path::new(path)).unwrap();
    let m = load_gemma::<B>(&files.config, files.weights.as_ref(), QuantKind::None, &Default::default()).unwrap();
    println!("{name} load {:?}", t.elapsed());
    let row: Vec<u32> = (100..100 + n).collect();
    for _ in 0..2 {
        let t = Instant::now();
        let h = m.forward_hidden(&TokenBatch::from_rows(std::slice::from_ref(&row)), None, &LoraRuntime::default());
        let _ = h.clone().into_data();
        let t1 = t.elapsed();
        let labels: Vec<i64> = row.iter().map(|&x| x as i64).collect();
        let _ = m.nll_sum(h, &shifted_targets(&labels, 1, row.len())).into_data();
        println!("{name} forward_hidden {t1:?}, nll {:?}", t.elapsed() - t1);
    }
}
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(13);
    go::<NdArrayCpu>("ndarray", &args[1], n);
    go::<FlexCpu>("flex", &args[1], n);
}
