//! Packing changes nothing but speed: the summed loss of packed rows (several examples per row, positions
//! restarting, attention kept within each example, sliding windows included) equals the sum of the same
//! examples' losses one per row, for all three generations.
mod common;

use common::*;
use lapidary_data::{Batch, Batches, DataConfig};
use lapidary_model::backends::Cpu;
use lapidary_model::gemma::loss::shifted_targets;
use lapidary_model::{ModelFiles, TokenBatch};

fn token_batch(b: &Batch) -> TokenBatch {
    TokenBatch {
        ids: b.input_ids.clone(),
        batch: b.batch,
        seq: b.seq_len,
        positions: b.position_ids.iter().map(|&p| p as usize).collect(),
        segments: Some(b.segment_ids.clone()),
    }
}

#[test]
fn packed_loss_equals_sum_of_unpacked_losses() {
    for gen in ["gemma1", "gemma2", "gemma3"] {
        let files = ModelFiles::open(&fixture(&format!("tiny/{gen}"))).unwrap();
        let model = lapidary_model::gemma::load::load_gemma::<Cpu>(
            &files.config,
            files.weights.as_ref(),
            Default::default(),
            &Default::default(),
        )
        .unwrap();
        let run = |packing: bool| -> (f64, usize, usize) {
            let cfg = DataConfig {
                max_seq_len: 128,
                batch_size: 3,
                packing,
                shuffle_buffer: 0,
                epochs: Some(1),
                ..DataConfig::default()
            };
            let batches = Batches::new(fixture("train/train.jsonl"), files.tokenizer.clone(), cfg).unwrap();
            let (mut nll, mut n, mut rows) = (0f64, 0usize, 0usize);
            for b in batches {
                let b = b.unwrap();
                let targets = shifted_targets(&b.labels, b.batch, b.seq_len);
                assert_eq!(targets.len(), b.n_targets);
                nll += model.eval_nll(&token_batch(&b), &targets);
                n += targets.len();
                rows += b.batch;
            }
            (nll, n, rows)
        };
        let (packed, n_packed, rows_packed) = run(true);
        let (plain, n_plain, rows_plain) = run(false);
        assert_eq!(n_packed, n_plain, "{gen}: same targets");
        assert!(rows_packed * 2 < rows_plain, "{gen}: packing should merge rows ({rows_packed} vs {rows_plain})");
        assert!(rel(packed, plain) < 2e-6, "{gen}: packed {packed} vs unpacked {plain}");
    }
}
