//! Batches as the model takes them: a data batch converted to the model's input ([`token_batch`], used by
//! the training step and the eval loss), and batches of random ids ([`random_batch`], for `lapidary bench`
//! and the step's tests, which need no data file).
use lapidary_data::Batch;
use lapidary_model::TokenBatch;
use rand::{Rng, SeedableRng};

/// A data batch as the model takes it: positions restart per packed example, segments keep examples apart.
pub fn token_batch(b: &Batch) -> TokenBatch {
    TokenBatch {
        ids: b.input_ids.clone(),
        batch: b.batch,
        seq: b.seq_len,
        positions: b.position_ids.iter().map(|&p| p as usize).collect(),
        segments: Some(b.segment_ids.clone()),
    }
}

/// Random ids in `[3, vocab)` (no special tokens), labels = inputs, one sequence per row.
pub fn random_batch(vocab: usize, batch: usize, seq: usize, seed: u64) -> Batch {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let ids: Vec<u32> = (0..batch * seq).map(|_| rng.random_range(3..vocab as u32)).collect();
    let n = ids.len();
    Batch {
        labels: ids.iter().map(|&i| i as i64).collect(),
        input_ids: ids,
        position_ids: (0..batch).flat_map(|_| 0..seq as u32).collect(),
        segment_ids: vec![1; n],
        batch,
        seq_len: seq,
        n_targets: batch * (seq - 1),
        n_tokens: n,
    }
}
