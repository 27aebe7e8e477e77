//! The Gemma chat template against transformers' `apply_chat_template(tokenize=False)` renderings
//! (tests/fixtures/data/chat_template.json, made by scripts/make_data_fixtures.py), and the chat token ids
//! against tokenizing the whole rendered string.

mod common;

use common::{data, encoder, ids};
use lapidary_data::{parse_row, render_chat, Location, Message, Row, RowFormat, Sample, IGNORE_INDEX};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    template: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    messages: serde_json::Value,
    add_generation_prompt: bool,
    rendered: String,
}

/// The case's messages, read by the same parser as dataset rows.
fn messages(c: &Case) -> Vec<Message> {
    let mut fields = serde_json::Map::new();
    fields.insert("messages".into(), c.messages.clone());
    let row = Row { fields, loc: Location::line("chat_template.json".as_ref(), 1) };
    match parse_row(&row, RowFormat::Messages).unwrap() {
        Sample::Messages(m) => m,
        other => panic!("{other:?}"),
    }
}

fn fixture() -> Fixture {
    let text = std::fs::read_to_string(data("chat_template.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn renders_like_transformers() {
    let f = fixture();
    assert!(f.template.contains("first_user_prefix = messages[0]['content'] + '\\n\\n'"));
    let names: Vec<&str> = f.cases.iter().map(|c| c.name.as_str()).collect();
    for want in
        ["single_turn", "multi_turn", "system_prompt", "model_role", "whitespace", "single_turn_generation_prompt"]
    {
        assert!(names.contains(&want), "fixture lacks {want}");
    }
    for c in &f.cases {
        let got = render_chat(&messages(c), c.add_generation_prompt, "<bos>").unwrap();
        assert_eq!(got, c.rendered, "case {}", c.name);
    }
}

/// Concatenated per-piece ids equal the ids of the whole rendering (what `apply_chat_template(tokenize=True)`
/// gives), so the mask boundary costs nothing.
#[test]
fn piecewise_ids_equal_whole_string_ids() {
    let enc = encoder(4096, true);
    let loc = Location::line("chat_template.json".as_ref(), 1);
    for c in fixture().cases {
        let whole = c.rendered.strip_prefix("<bos>").unwrap();
        let mut want = vec![2];
        want.extend(ids(whole));
        let got = if c.add_generation_prompt {
            enc.encode_chat_prompt(&messages(&c)).unwrap()
        } else {
            enc.encode(&Sample::Messages(messages(&c)), &loc).unwrap().input_ids
        };
        assert_eq!(got, want, "case {}", c.name);
    }
}

/// Labels of a two-turn chat, derived by hand: only each model turn's content and `<end_of_turn>`.
#[test]
fn completion_only_trains_model_turns() {
    let msgs = vec![
        Message::new("system", "Be brief."),
        Message::new("user", "Hi"),
        Message::new("assistant", " Hello. "),
        Message::new("user", "Bye"),
        Message::new("model", "Bye."),
    ];
    let prompt1 = ids("<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n");
    let answer1 = ids("Hello.<end_of_turn>");
    let prompt2 = ids("\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n");
    let answer2 = ids("Bye.<end_of_turn>");
    let tail = ids("\n");
    assert_eq!(*answer1.last().unwrap(), 5, "<end_of_turn> is one token");

    let ex = encoder(4096, true).encode(&Sample::Messages(msgs.clone()), &Location::line("t".as_ref(), 1)).unwrap();
    let mask = |v: &[u32]| vec![IGNORE_INDEX; v.len()];
    let keep = |v: &[u32]| v.iter().map(|&t| t as i64).collect::<Vec<_>>();
    let want_ids: Vec<u32> =
        [vec![2], prompt1.clone(), answer1.clone(), prompt2.clone(), answer2.clone(), tail.clone()].concat();
    let want_labels: Vec<i64> =
        [vec![IGNORE_INDEX], mask(&prompt1), keep(&answer1), mask(&prompt2), keep(&answer2), mask(&tail)].concat();
    assert_eq!(ex.input_ids, want_ids);
    assert_eq!(ex.labels, want_labels);
    assert!(!ex.truncated);

    // Without completion_only everything but position 0 is trained, and there is no eos.
    let ex = encoder(4096, false).encode(&Sample::Messages(msgs), &Location::line("t".as_ref(), 1)).unwrap();
    assert_eq!(ex.input_ids, want_ids);
    assert_eq!(ex.labels[0], IGNORE_INDEX);
    assert_eq!(&ex.labels[1..], &keep(&want_ids)[1..]);
}

#[test]
fn bad_conversations_are_row_errors_naming_the_row() {
    let msgs = vec![Message::new("user", "a"), Message::new("user", "b")];
    let e = encoder(64, true).encode(&Sample::Messages(msgs), &Location::line("c.jsonl".as_ref(), 9)).unwrap_err();
    assert!(e.is_row_error());
    assert_eq!(
        e.to_string(),
        "c.jsonl:9: field `messages`: message 1: roles must alternate user/assistant starting with user \
         (after an optional system message), found `user`"
    );
}
