//! Labels and special tokens per row format, derived by hand from the parts' ids; truncation.

mod common;

use common::{encoder, ids};
use lapidary_data::{alpaca_prompt, Location, Sample, IGNORE_INDEX as X};

const BOS: u32 = 2;
const EOS: u32 = 1;

fn loc() -> Location {
    Location::line("t.jsonl".as_ref(), 1)
}

fn keep(v: &[u32]) -> Vec<i64> {
    v.iter().map(|&t| t as i64).collect()
}

fn mask(v: &[u32]) -> Vec<i64> {
    vec![X; v.len()]
}

#[test]
fn text_trains_everything_but_the_first_position() {
    let t = ids("The river ran.");
    let ex = encoder(64, true).encode(&Sample::Text("The river ran.".into()), &loc()).unwrap();
    assert_eq!(ex.input_ids, [vec![BOS], t.clone(), vec![EOS]].concat());
    assert_eq!(ex.labels, [vec![X], keep(&t), vec![EOS as i64]].concat());
}

#[test]
fn prompt_completion_masks_the_prompt() {
    let s = Sample::PromptCompletion { prompt: "Question: why?\nAnswer:".into(), completion: " Because.".into() };
    let (p, c) = (ids("Question: why?\nAnswer:"), ids(" Because."));
    let ex = encoder(64, true).encode(&s, &loc()).unwrap();
    assert_eq!(ex.input_ids, [vec![BOS], p.clone(), c.clone(), vec![EOS]].concat());
    assert_eq!(ex.labels, [vec![X], mask(&p), keep(&c), vec![EOS as i64]].concat());
    assert_eq!(ex.n_targets(), c.len() + 1);

    let ex = encoder(64, false).encode(&s, &loc()).unwrap();
    assert_eq!(ex.labels, [vec![X], keep(&p), keep(&c), vec![EOS as i64]].concat());
}

#[test]
fn alpaca_uses_the_stanford_prompt() {
    let s = Sample::Alpaca { instruction: "Add.".into(), input: Some("2 and 3".into()), output: "5".into() };
    let p = alpaca_prompt("Add.", Some("2 and 3"));
    assert!(p.ends_with("### Instruction:\nAdd.\n\n### Input:\n2 and 3\n\n### Response:\n"));
    assert!(alpaca_prompt("Add.", Some("")).ends_with("### Instruction:\nAdd.\n\n### Response:\n"));
    let (pi, oi) = (ids(&p), ids("5"));
    let ex = encoder(256, true).encode(&s, &loc()).unwrap();
    assert_eq!(ex.input_ids, [vec![BOS], pi.clone(), oi.clone(), vec![EOS]].concat());
    assert_eq!(ex.labels, [vec![X], mask(&pi), keep(&oi), vec![EOS as i64]].concat());
}

#[test]
fn tokens_are_kept_as_given() {
    let ex = encoder(64, true).encode(&Sample::Tokens { input_ids: vec![7, 8, 9], labels: None }, &loc()).unwrap();
    assert_eq!(ex.input_ids, vec![7, 8, 9]);
    assert_eq!(ex.labels, vec![X, 8, 9], "position 0 is never a target");
    let s = Sample::Tokens { input_ids: vec![7, 8, 9, 10], labels: Some(vec![X, X, 9, 10]) };
    assert_eq!(encoder(64, true).encode(&s, &loc()).unwrap().labels, vec![X, X, 9, 10]);
}

#[test]
fn truncation_is_flagged() {
    let s = Sample::PromptCompletion { prompt: "abc".into(), completion: " defgh ijk".into() };
    let full = encoder(64, true).encode(&s, &loc()).unwrap();
    assert!(!full.truncated);
    let cut = encoder(full.len() - 2, true).encode(&s, &loc()).unwrap();
    assert!(cut.truncated);
    assert_eq!(cut.input_ids, full.input_ids[..full.len() - 2]);
    assert_eq!(cut.labels, full.labels[..full.len() - 2]);
    let exact = encoder(full.len(), true).encode(&s, &loc()).unwrap();
    assert!(!exact.truncated);
}
