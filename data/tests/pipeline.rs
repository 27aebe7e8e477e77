//! The whole pipeline: same batches from every source, packing invariants, padding, counters, shuffling,
//! skip_bad_rows, and exact resume.

mod common;

use std::path::{Path, PathBuf};

use common::{data, encoder, tokenizer, SOURCES};
use lapidary_data::{examples, Batch, Batches, DataConfig, DataError, DataPosition, PadTo, RowFormat, IGNORE_INDEX};

fn all(path: &Path, config: &DataConfig) -> Vec<Batch> {
    Batches::new(path, tokenizer(), config.clone()).unwrap().map(|b| b.unwrap()).collect()
}

fn packed(seed: u64) -> DataConfig {
    DataConfig {
        max_seq_len: 64,
        batch_size: 2,
        packing: true,
        shuffle_buffer: 5,
        seed,
        epochs: Some(3),
        ..DataConfig::default()
    }
}

/// A scratch copy of rows.jsonl with malformed lines mixed in.
fn with_bad_rows() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lapidary-data-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mixed.jsonl");
    let good = std::fs::read_to_string(data("rows.jsonl")).unwrap();
    let mut out = String::new();
    for (i, line) in good.lines().enumerate() {
        out.push_str(line);
        out.push('\n');
        match i % 4 {
            1 => out.push_str("{not json\n"),
            3 => out.push_str("{\"prompt\": \"no completion\"}\n"),
            _ => {}
        }
    }
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn every_source_gives_the_same_batches() {
    for config in [DataConfig { batch_size: 3, shuffle_buffer: 0, ..DataConfig::default() }, packed(11)] {
        let reference = all(&data("rows.jsonl"), &config);
        assert!(!reference.is_empty());
        for name in SOURCES {
            assert_eq!(all(&data(name), &config), reference, "{name}");
        }
    }
}

#[test]
fn packed_batches_keep_examples_apart() {
    let config = packed(3);
    let batches = all(&data("rows.jsonl"), &config);
    let mut multi_segment_rows = 0;
    for b in &batches {
        assert!(b.seq_len <= config.max_seq_len);
        for r in 0..b.batch {
            let span = r * b.seq_len..(r + 1) * b.seq_len;
            let (seg, pos, ids, labels) = (
                &b.segment_ids[span.clone()],
                &b.position_ids[span.clone()],
                &b.input_ids[span.clone()],
                &b.labels[span],
            );
            multi_segment_rows += (seg.iter().max() > Some(&1)) as usize;
            for t in 0..b.seq_len {
                if seg[t] == 0 {
                    assert_eq!((ids[t], labels[t], pos[t]), (0, IGNORE_INDEX, 0), "padding");
                    assert!(seg[t..].iter().all(|&s| s == 0), "padding only at the end");
                } else if t == 0 || seg[t] != seg[t - 1] {
                    assert_eq!(pos[t], 0, "positions restart at each example");
                    assert_eq!(labels[t], IGNORE_INDEX, "no target across a boundary");
                    assert_eq!(seg[t], if t == 0 { 1 } else { seg[t - 1] + 1 });
                } else {
                    assert_eq!(pos[t], pos[t - 1] + 1);
                }
            }
            for (t, _) in b.targets(r) {
                assert_eq!(seg[t], seg[t + 1], "every loss term stays inside one example");
            }
        }
        let counted = b.labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
        assert_eq!(b.n_targets, counted);
        assert_eq!(b.n_targets, (0..b.batch).map(|r| b.targets(r).len()).sum::<usize>());
    }
    assert!(multi_segment_rows > 0, "the fixture should actually pack");
}

#[test]
fn unpacked_batches_are_padded_to_the_longest_row() {
    let config = DataConfig { batch_size: 4, shuffle_buffer: 0, max_seq_len: 512, ..DataConfig::default() };
    let enc = encoder(512, true);
    let exs: Vec<_> = examples(data("rows.jsonl"), &enc, RowFormat::Auto).unwrap().map(Result::unwrap).collect();
    let batches = all(&data("rows.jsonl"), &config);
    assert_eq!(batches.len(), 3);
    for (b, chunk) in batches.iter().zip(exs.chunks(4)) {
        assert_eq!(b.seq_len, chunk.iter().map(|e| e.len()).max().unwrap());
        for (r, ex) in chunk.iter().enumerate() {
            let row = &b.input_ids[r * b.seq_len..(r + 1) * b.seq_len];
            assert_eq!(&row[..ex.len()], &ex.input_ids[..]);
            assert!(row[ex.len()..].iter().all(|&t| t == 0), "pad id is <pad> = 0");
            assert!(b.segment_ids[r * b.seq_len..r * b.seq_len + ex.len()].iter().all(|&s| s == 1));
        }
    }
    let fixed = all(&data("rows.jsonl"), &DataConfig { pad_to: PadTo::MaxSeqLen, ..config.clone() });
    assert!(fixed.iter().all(|b| b.seq_len == 512));
}

#[test]
fn truncation_is_counted() {
    let max = 24;
    let enc = encoder(max, true);
    let exs: Vec<_> = examples(data("rows.jsonl"), &enc, RowFormat::Auto).unwrap().map(Result::unwrap).collect();
    let want_truncated = exs.iter().filter(|e| e.truncated).count() as u64;
    let want_dropped = exs.iter().filter(|e| e.n_targets() == 0).count() as u64;
    assert!(want_truncated > 0);
    let mut it = Batches::new(
        data("rows.jsonl"),
        tokenizer(),
        DataConfig { max_seq_len: max, batch_size: 4, shuffle_buffer: 0, ..DataConfig::default() },
    )
    .unwrap();
    let batches: Vec<_> = it.by_ref().map(Result::unwrap).collect();
    let s = it.summary();
    assert_eq!((s.truncated, s.dropped_no_targets), (want_truncated, want_dropped));
    assert_eq!(s.rows, 12);
    assert_eq!(s.examples + s.dropped_no_targets, 12);
    assert_eq!(s.epochs_completed, 1);
    assert_eq!(s.batches, batches.len() as u64);
    assert_eq!(s.target_tokens, batches.iter().map(|b| b.n_targets as u64).sum::<u64>());
    assert!(batches.iter().all(|b| b.seq_len <= max));
}

#[test]
fn shuffling_is_seeded_and_differs_per_epoch() {
    let config = DataConfig { batch_size: 1, shuffle_buffer: 4, epochs: Some(2), seed: 5, ..DataConfig::default() };
    let a = all(&data("rows.jsonl"), &config);
    assert_eq!(a, all(&data("rows.jsonl"), &config));
    assert_ne!(a, all(&data("rows.jsonl"), &DataConfig { seed: 6, ..config.clone() }));
    assert_eq!(a.len(), 24);
    assert_ne!(a[..12], a[12..], "each epoch has its own order");
    let unshuffled = all(&data("rows.jsonl"), &DataConfig { shuffle_buffer: 0, epochs: Some(1), ..config.clone() });
    assert_ne!(a[..12], unshuffled[..]);
    let key = |b: &Batch| b.input_ids.clone();
    let (mut x, mut y): (Vec<_>, Vec<_>) = (a[..12].iter().map(key).collect(), unshuffled.iter().map(key).collect());
    x.sort();
    y.sort();
    assert_eq!(x, y, "an epoch is a permutation of the rows");
}

#[test]
fn bad_rows_stop_the_run_or_are_skipped_and_counted() {
    let path = with_bad_rows();
    let config = DataConfig { batch_size: 2, shuffle_buffer: 0, ..DataConfig::default() };
    let out: Vec<_> = Batches::new(&path, tokenizer(), config.clone()).unwrap().collect();
    let err = out.last().unwrap().as_ref().unwrap_err();
    assert!(err.to_string().contains("mixed.jsonl:3: invalid json"), "{err}");
    assert!(out[..out.len() - 1].iter().all(Result::is_ok));

    let mut it = Batches::new(&path, tokenizer(), DataConfig { skip_bad_rows: true, ..config.clone() }).unwrap();
    let batches: Vec<_> = it.by_ref().map(Result::unwrap).collect();
    assert_eq!(it.summary().skipped_bad_rows, 6);
    assert_eq!(it.summary().rows, 18);
    assert_eq!(batches, all(&data("rows.jsonl"), &config), "the good rows give the same batches");
}

#[test]
fn setup_errors_are_clear() {
    let e = Batches::new(data("missing-file.jsonl"), tokenizer(), DataConfig::default()).err().unwrap();
    assert!(matches!(e, DataError::NotFound { .. }), "{e}");
    let e = Batches::new(data("rows.jsonl"), tokenizer(), DataConfig { batch_size: 0, ..DataConfig::default() })
        .err()
        .unwrap();
    assert_eq!(e.to_string(), "invalid data config: batch_size must be at least 1");
    // An epoch without a single usable example would loop forever with `epochs = None`.
    let config = DataConfig { skip_bad_rows: true, epochs: None, ..DataConfig::default() };
    let mut it =
        Batches::new(data("notobject.jsonl"), tokenizer(), DataConfig { format: RowFormat::Messages, ..config })
            .unwrap();
    let e = it.next().unwrap().unwrap_err();
    assert!(e.to_string().ends_with("notobject.jsonl: has no usable examples"), "{e}");
    assert!(it.next().is_none());
}

/// Run N batches, snapshot the position, continue; versus a fresh iterator resumed from the (serialised)
/// snapshot: identical batches and identical final counters, for every N.
#[test]
fn resume_is_exact() {
    let bad = with_bad_rows();
    let cases = [
        (data("rows.jsonl"), packed(1)),
        (data("rows_disk"), DataConfig { packing: false, batch_size: 3, ..packed(2) }),
        (bad, DataConfig { skip_bad_rows: true, max_seq_len: 40, ..packed(3) }),
        (data("rows.parquet"), DataConfig { shuffle_buffer: 0, ..packed(4) }),
    ];
    for (path, config) in cases {
        let mut it = Batches::new(&path, tokenizer(), config.clone()).unwrap();
        let mut batches = Vec::new();
        let mut positions = vec![it.position()];
        while let Some(b) = it.next() {
            batches.push(b.unwrap());
            positions.push(it.position());
        }
        let final_summary = it.summary();
        assert_eq!(final_summary.epochs_completed, 3);
        assert_eq!(final_summary.skipped_bad_rows, if config.skip_bad_rows { 18 } else { 0 });
        if config.packing {
            assert!(final_summary.sequences < final_summary.examples, "packs several examples per row");
        }
        assert!(batches.len() >= 6, "{}: {} batches", path.display(), batches.len());
        for n in 0..=batches.len() {
            let json = serde_json::to_string(&positions[n]).unwrap();
            let pos: DataPosition = serde_json::from_str(&json).unwrap();
            let mut resumed = Batches::resume(&path, tokenizer(), config.clone(), &pos).unwrap();
            assert_eq!(resumed.position(), positions[n]);
            let rest: Vec<Batch> = resumed.by_ref().map(Result::unwrap).collect();
            assert_eq!(rest, batches[n..], "{} resumed after {n} batches", path.display());
            assert_eq!(resumed.summary(), final_summary, "{} counters after resuming at {n}", path.display());
        }
    }
}

#[test]
fn resume_checks_the_config() {
    let mut it = Batches::new(data("rows.jsonl"), tokenizer(), packed(1)).unwrap();
    it.next().unwrap().unwrap();
    let pos = it.position();
    let e = Batches::resume(data("rows.jsonl"), tokenizer(), packed(2), &pos).err().unwrap();
    assert!(e.to_string().starts_with("cannot resume from this data position: it was taken with seed 1"), "{e}");
    // A position past the data of a shorter file.
    let far = DataPosition { rows_in_epoch: 1000, ..pos };
    let e = Batches::resume(data("rows.jsonl"), tokenizer(), packed(1), &far).err().unwrap();
    assert!(e.to_string().contains("has only 12 rows"), "{e}");
}

#[test]
fn endless_epochs() {
    let config = DataConfig { epochs: None, batch_size: 5, ..packed(9) };
    let n = Batches::new(data("rows.jsonl"), tokenizer(), config).unwrap().take(40).map(Result::unwrap).count();
    assert_eq!(n, 40);
}
