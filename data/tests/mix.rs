//! Data recipes: weighted mixing against `datasets.interleave_datasets` (tests/fixtures/data/mix/, made by
//! scripts/make_mix_fixtures.py), exact resume of a mixture, the held-out eval split, column renames, ShareGPT
//! rows and `train_on`.

mod common;

use std::path::{Path, PathBuf};

use common::{data, encoder, tokenizer};
use lapidary_data::{
    parse_row, Batch, Batches, Columns, DataConfig, DataSpec, Dataset, Location, Roles, Row, RowFormat, Side, Source,
    SpecialTokens, Split, Stopping, TrainOn, IGNORE_INDEX,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    sources: Vec<String>,
    weights: Vec<f64>,
    seed: u64,
    stopping_strategy: String,
    probabilities: Vec<f64>,
    texts: Vec<String>,
}

fn mix_dir() -> PathBuf {
    data("mix")
}

fn spec(sources: &[(&str, f64)], seed: u64, stopping: Stopping) -> DataSpec {
    DataSpec {
        sources: sources.iter().map(|(p, w)| Source { path: mix_dir().join(p), weight: *w, format: None }).collect(),
        stopping,
        seed,
        ..DataSpec::file("unused")
    }
}

fn texts(d: &Dataset) -> Vec<String> {
    d.rows().unwrap().map(|r| r.unwrap().0.fields["text"].as_str().unwrap().to_string()).collect()
}

#[test]
fn mixing_equals_interleave_datasets() {
    let f: Fixture =
        serde_json::from_str(&std::fs::read_to_string(mix_dir().join("interleave.json")).unwrap()).unwrap();
    assert_eq!(f.cases.len(), 6);
    for c in &f.cases {
        let total: f64 = c.weights.iter().sum();
        let p: Vec<f64> = c.weights.iter().map(|w| w / total).collect();
        assert_eq!(p, c.probabilities, "the fixture's probabilities are the weights normalised as here");
        let stopping = match c.stopping_strategy.as_str() {
            "first_exhausted" => Stopping::FirstExhausted,
            "all_exhausted" => Stopping::AllExhausted,
            other => panic!("{other}"),
        };
        let sources: Vec<(&str, f64)> = c.sources.iter().map(String::as_str).zip(c.weights.iter().copied()).collect();
        let d = Dataset::new(spec(&sources, c.seed, stopping)).unwrap();
        assert_eq!(texts(&d), c.texts, "{:?} {:?} seed {} {}", c.sources, c.weights, c.seed, c.stopping_strategy);
        assert_eq!(texts(&d), c.texts, "a second read gives the same mixture");
    }
}

#[test]
fn bad_mixtures_are_config_errors() {
    for (w, want) in [(0.0, "weight must be a positive number, got 0"), (-1.0, "got -1"), (f64::NAN, "got NaN")] {
        let e = Dataset::new(spec(&[("a.jsonl", 1.0), ("b.jsonl", w)], 0, Stopping::FirstExhausted)).err().unwrap();
        let e = e.to_string();
        assert!(e.contains("data.sources[1]") && e.contains("b.jsonl") && e.contains(want), "{e}");
    }
    let e = Dataset::new(spec(&[("a.jsonl", 1.0), ("nope.jsonl", 1.0)], 0, Stopping::FirstExhausted)).err().unwrap();
    assert!(e.to_string().contains("nope.jsonl"), "{e}");
}

fn packed(seed: u64) -> DataConfig {
    DataConfig {
        max_seq_len: 24,
        batch_size: 2,
        packing: true,
        shuffle_buffer: 5,
        seed,
        epochs: Some(2),
        ..DataConfig::default()
    }
}

fn special() -> SpecialTokens {
    SpecialTokens::from_tokenizer(&tokenizer()).unwrap()
}

/// The reference rows (every format) mixed with the small text sets: the pipeline resumed after every batch
/// yields exactly the rest of the uninterrupted run.
#[test]
fn a_mixture_resumes_exactly() {
    let mut s = spec(&[("a.jsonl", 1.0), ("c.jsonl", 2.0)], 5, Stopping::AllExhausted);
    s.sources.push(Source { path: data("rows.jsonl"), weight: 1.5, format: None });
    let config = packed(5);
    let all: Vec<(Batch, _)> = {
        let mut it = Batches::from_spec(s.clone(), tokenizer(), special(), config.clone()).unwrap();
        let mut out = Vec::new();
        while let Some(b) = it.next() {
            out.push((b.unwrap(), it.position()));
        }
        out
    };
    assert!(all.len() > 6, "{} batches", all.len());
    for n in 1..all.len() {
        let pos = serde_json::from_str(&serde_json::to_string(&all[n - 1].1).unwrap()).unwrap();
        let rest: Vec<Batch> =
            Batches::resume_spec(s.clone(), tokenizer(), config.clone(), &pos).unwrap().map(Result::unwrap).collect();
        let want: Vec<Batch> = all[n..].iter().map(|(b, _)| b.clone()).collect();
        assert_eq!(rest, want, "resumed after {n} batches");
    }
}

fn split_spec(path: &Path, fraction: f64, seed: u64, side: Side) -> DataSpec {
    DataSpec { split: Some(Split { fraction, seed, side }), ..DataSpec::file(path) }
}

#[test]
fn eval_split_holds_out_rows_that_are_never_trained() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("rows.jsonl");
    let rows: String = (0..200).map(|i| format!("{{\"text\": \"row {i}\"}}\n")).collect();
    std::fs::write(&path, rows).unwrap();
    let read = |side, seed| texts(&Dataset::new(split_spec(&path, 0.02, seed, side)).unwrap());
    let (train, eval) = (read(Side::Train, 3), read(Side::Eval, 3));
    assert_eq!(eval.len(), 4, "ceil(0.02 * 200), as train_test_split sizes it");
    assert_eq!(train.len(), 196);
    assert!(eval.iter().all(|e| !train.contains(e)), "no held-out row is trained on");
    let mut both: Vec<String> = train.iter().chain(&eval).cloned().collect();
    both.sort();
    both.dedup();
    assert_eq!(both.len(), 200, "together they are every row once");
    assert_eq!((read(Side::Train, 3), read(Side::Eval, 3)), (train, eval.clone()), "deterministic");
    assert_ne!(read(Side::Eval, 4), eval, "and seeded");

    // In the pipeline, over epochs and shuffling: only training rows come out.
    let config = DataConfig { shuffle_buffer: 16, epochs: Some(3), completion_only: false, ..packed(3) };
    let spec = split_spec(&path, 0.1, 3, Side::Train);
    let held = texts(&Dataset::new(split_spec(&path, 0.1, 3, Side::Eval)).unwrap());
    // A whole example: BOS, the text, EOS (a row's text alone could be the start of another's).
    let sp = special();
    let held_ids: Vec<Vec<u32>> = held.iter().map(|t| [vec![sp.bos], common::ids(t), vec![sp.eos]].concat()).collect();
    let batches = Batches::from_spec(spec, tokenizer(), special(), config).unwrap();
    let mut rows = 0;
    for b in batches {
        let b = b.unwrap();
        rows += 1;
        for h in &held_ids {
            assert!(!b.input_ids.windows(h.len()).any(|w| w == h.as_slice()), "held-out row trained");
        }
    }
    assert!(rows > 0);

    for f in [0.0, 1.0, -0.5, 1.5] {
        let e = Dataset::new(split_spec(&path, f, 3, Side::Train)).err().unwrap().to_string();
        assert!(e.contains("data.eval_split") && e.contains(&f.to_string()), "{e}");
    }
}

/// `data.columns` renames a dataset's columns to the fields a format reads, JSONL and Parquet alike.
#[test]
fn columns_are_renamed_before_the_format_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("qa.jsonl");
    std::fs::write(&path, "{\"question\": \"2+2?\", \"answer\": \"4\"}\n{\"question\": \"3+3?\", \"answer\": \"6\"}\n")
        .unwrap();
    let same = tmp.path().join("pc.jsonl");
    std::fs::write(
        &same,
        "{\"prompt\": \"2+2?\", \"completion\": \"4\"}\n{\"prompt\": \"3+3?\", \"completion\": \"6\"}\n",
    )
    .unwrap();
    let columns = Columns([("prompt", "question"), ("completion", "answer")].map(|(a, b)| (a.into(), b.into())).into());
    let config = DataConfig { shuffle_buffer: 0, batch_size: 2, ..DataConfig::default() };
    let renamed: Vec<Batch> =
        Batches::from_spec(DataSpec { columns, ..DataSpec::file(&path) }, tokenizer(), special(), config.clone())
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let plain: Vec<Batch> = Batches::new(&same, tokenizer(), config.clone()).unwrap().map(Result::unwrap).collect();
    assert_eq!(renamed, plain);

    // A mapped column a row lacks is named, with the key that maps it.
    let columns = Columns([("completion".to_string(), "reply".to_string())].into());
    let e = Batches::from_spec(DataSpec { columns, ..DataSpec::file(&same) }, tokenizer(), special(), config.clone())
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(e.contains("pc.jsonl:1") && e.contains("field `reply`") && e.contains("data.columns.completion"), "{e}");
    let bad = Columns([("answr".to_string(), "reply".to_string())].into());
    let e = Dataset::new(DataSpec { columns: bad, ..DataSpec::file(&same) }).err().unwrap().to_string();
    assert!(e.contains("data.columns.answr") && e.contains("not a field"), "{e}");
}

fn row(json: serde_json::Value) -> Row {
    Row { fields: json.as_object().unwrap().clone(), loc: Location::line("c.jsonl".as_ref(), 1) }
}

/// A ShareGPT row is the `messages` row of the same conversation: the same ids and the same labels, with the
/// hand-written template and with a checkpoint's (Gemma 3's, from the chat fixtures).
#[test]
fn sharegpt_rows_encode_as_the_same_messages() {
    let sharegpt = row(serde_json::json!({"conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hi there"},
        {"from": "gpt", "value": "Hello!"},
        {"from": "human", "value": "2+2?"},
        {"from": "gpt", "value": "4"},
    ]}));
    let messages = row(serde_json::json!({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]}));
    let a = parse_row(&sharegpt, RowFormat::Auto).unwrap();
    assert_eq!(a, parse_row(&sharegpt, RowFormat::Sharegpt).unwrap());
    let b = parse_row(&messages, RowFormat::Auto).unwrap();
    assert_eq!(a, b);
    let loc = Location::line("c.jsonl".as_ref(), 1);
    let template: lapidary_data::ChatTemplate =
        std::fs::read_to_string(data("chat/gemma3/chat_template.jinja")).unwrap().parse().unwrap();
    for enc in [encoder(512, true), encoder(512, true).with_chat_template(Some(template))] {
        let (x, y) = (enc.encode(&a, &loc).unwrap(), enc.encode(&b, &loc).unwrap());
        assert_eq!(x, y);
        assert!(x.n_targets() > 0);
    }

    // Roles from data.roles; an unknown one is a row error naming the turn and the key.
    let custom = row(serde_json::json!({"conversations": [
        {"from": "person", "value": "Hi there"}, {"from": "bot", "value": "Hello!"}]}));
    let roles = Roles { user: vec!["person".into()], assistant: vec!["bot".into()], ..Roles::default() };
    let s = lapidary_data::parse_row_with(&custom, RowFormat::Auto, &roles).unwrap();
    assert_eq!(
        s,
        parse_row(
            &row(serde_json::json!({"messages": [
        {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]})),
            RowFormat::Auto
        )
        .unwrap()
    );
    let e = parse_row(&custom, RowFormat::Auto).unwrap_err();
    assert!(e.is_row_error());
    let e = e.to_string();
    assert!(e.contains("c.jsonl:1") && e.contains("turn 0: unknown role `person`") && e.contains("data.roles"), "{e}");
}

/// `last_turn` trains exactly the final assistant turn's labels of what `all_assistant` trains.
#[test]
fn train_on_last_turn_trains_only_the_final_assistant_turn() {
    let conv = parse_row(
        &row(serde_json::json!({"conversations": [
            {"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello!"},
            {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]})),
        RowFormat::Auto,
    )
    .unwrap();
    let last_only = parse_row(
        &row(serde_json::json!({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]})),
        RowFormat::Auto,
    )
    .unwrap();
    let loc = Location::line("c.jsonl".as_ref(), 1);
    let all = encoder(512, true).encode(&conv, &loc).unwrap();
    let last = encoder(512, true).with_train_on(TrainOn::LastTurn).encode(&conv, &loc).unwrap();
    assert_eq!(all.input_ids, last.input_ids, "the same text");
    let trained = |labels: &[i64]| labels.iter().filter(|&&l| l != IGNORE_INDEX).copied().collect::<Vec<_>>();
    let final_turn = trained(&encoder(512, true).encode(&last_only, &loc).unwrap().labels);
    assert_eq!(trained(&last.labels), final_turn, "last_turn: the final answer and its end-of-turn only");
    assert!(trained(&all.labels).len() > final_turn.len());
    assert!(trained(&all.labels).ends_with(&final_turn));
    // Without completion_only every token is trained either way.
    let every = encoder(512, false).with_train_on(TrainOn::LastTurn).encode(&conv, &loc).unwrap();
    assert_eq!(every.n_targets(), every.len() - 1);
}
