//! Times the host LM-head loss + gradient (`cpu::lm_head::nll_grad_host_tiled`) at the 270M shape for
//! several (rows, tile) choices, each twice (this machine's speed drifts by up to 2x over minutes).
//! usage: cargo run --release -p lapidary-model --example lm_head
use std::time::Instant;
fn main() {
    let (n, h, v) = (1024usize, 640usize, 262144usize);
    let hid: Vec<f32> = (0..n * h).map(|i| ((i * 31) % 100) as f32 / 1000.0).collect();
    let e: Vec<f32> = (0..v * h).map(|i| ((i * 7919) % 1000) as f32 / 20000.0).collect();
    let t: Vec<(usize, u32)> = (0..n).map(|i| (i, (i * 997 % v) as u32)).collect();
    for (rows, tile) in [(1024, 6528), (256, v), (2048, 65536), (1024, 6528), (256, v), (2048, 65536)] {
        let s = Instant::now();
        let _ = lapidary_model::cpu::lm_head::nll_grad_host_tiled(
            &hid,
            lapidary_model::cpu::lm_head::TableRows::Dense(&e),
            h,
            &t,
            None,
            true,
            rows,
            tile,
        );
        let dt = s.elapsed().as_secs_f64();
        println!("rows {rows} tile {tile}: {dt:.2} s  {:.1} GFLOP/s", 4.0 * (n * h * v) as f64 / dt / 1e9);
    }
}
