//! Checkpoint chat templates against transformers: every case of tests/fixtures/data/chat_templates.json (made by
//! scripts/make_chat_fixtures.py) is what `apply_chat_template(tokenize=False)` renders from the checkpoint
//! directory beside it, or the error it raises; the training mask found from the template agrees with the
//! hand-written Gemma template's and, for Gemma 4, with the turns read off the template by hand.

mod common;

use std::path::{Path, PathBuf};

use common::{data, encoder, fixtures};
use lapidary_data::{
    chat_pieces, parse_row, Batch, Batches, ChatError, ChatTemplate, DataConfig, DataError, Location, Message, Piece,
    Row, RowFormat, Sample,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    transformers: String,
    templates: Vec<Template>,
}

#[derive(Deserialize)]
struct Template {
    name: String,
    dir: Option<String>,
    template: Option<String>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    messages: serde_json::Value,
    add_generation_prompt: bool,
    rendered: Option<String>,
    error: Option<String>,
    error_type: Option<String>,
}

fn fixture() -> Fixture {
    let text = std::fs::read_to_string(data("chat_templates.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn template(t: &Template) -> ChatTemplate {
    match (&t.dir, &t.template) {
        (Some(dir), _) => ChatTemplate::from_dir(&data(dir)).unwrap().expect("the directory ships a template"),
        (None, Some(source)) => source.parse().unwrap(),
        _ => panic!("{}: neither dir nor template", t.name),
    }
}

fn by_name<'a>(f: &'a Fixture, name: &str) -> &'a Template {
    f.templates.iter().find(|t| t.name == name).unwrap()
}

fn case<'a>(t: &'a Template, name: &str) -> &'a Case {
    t.cases.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("{}: no case {name}", t.name))
}

/// The case's messages, read by the same parser as dataset rows (an empty list is parsed as such).
fn messages(c: &Case) -> Vec<Message> {
    let mut fields = serde_json::Map::new();
    fields.insert("messages".into(), c.messages.clone());
    let row = Row { fields, loc: Location::line("chat_templates.json".as_ref(), 1) };
    match parse_row(&row, RowFormat::Messages).unwrap() {
        Sample::Messages(m) => m,
        other => panic!("{other:?}"),
    }
}

#[test]
fn renders_like_transformers() {
    let f = fixture();
    assert_eq!(f.transformers, "5.23.0");
    let names: Vec<&str> = f.templates.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["gemma2", "gemma3", "gemma3_named", "gemma4", "pycompat"]);
    let mut rendered = 0;
    for t in &f.templates {
        let tpl = template(t);
        for c in &t.cases {
            let got = tpl.render(&messages(c), c.add_generation_prompt);
            match (&c.rendered, &c.error) {
                (Some(want), None) => {
                    assert_eq!(got.as_ref(), Ok(want), "{} / {}", t.name, c.name);
                    rendered += 1;
                }
                (None, Some(want)) => {
                    let err = got.expect_err(&format!("{} / {}: transformers raised {want:?}", t.name, c.name));
                    match c.error_type.as_deref() {
                        // The template's own raise_exception: its message comes through.
                        Some("TemplateError") => match &err {
                            ChatError::Template { message, .. } => assert_eq!(message, want, "{} / {}", t.name, c.name),
                            other => panic!("{} / {}: {other:?}", t.name, c.name),
                        },
                        // transformers' refusal of an empty conversation, before any template runs.
                        Some("ValueError") => assert_eq!(err, ChatError::Empty, "{} / {}", t.name, c.name),
                        other => panic!("{} / {}: unexpected error type {other:?}", t.name, c.name),
                    }
                }
                _ => panic!("{} / {}: a case has a rendering or an error", t.name, c.name),
            }
        }
    }
    assert!(rendered >= 60, "only {rendered} renderings compared");
}

/// The fixture holds, for each template, the cases that show its turn format: system turn, several turns,
/// the generation prompt, content parts where it reads them.
#[test]
fn every_template_is_checked_on_the_required_conversations() {
    let f = fixture();
    for name in ["gemma2", "gemma3", "gemma3_named", "gemma4"] {
        let t = by_name(&f, name);
        for want in ["multi_turn", "multi_turn_generation_prompt", "system_prompt", "system_prompt_generation_prompt"] {
            case(t, want);
        }
    }
    for name in ["gemma3", "gemma4"] {
        let c = case(by_name(&f, name), "content_parts");
        assert!(c.rendered.is_some());
    }
    // Gemma 4's turn format, as transformers rendered it.
    let g4 = case(by_name(&f, "gemma4"), "system_prompt_generation_prompt");
    assert_eq!(
        g4.rendered.as_deref(),
        Some("<bos><|turn>system\nAnswer in French.<turn|>\n<|turn>user\nHello<turn|>\n<|turn>model\n<|channel>thought\n<channel|>")
    );
}

/// Errors the template raises name the message where the conversation goes wrong.
#[test]
fn template_errors_name_the_message() {
    let f = fixture();
    let g3 = template(by_name(&f, "gemma3"));
    let err = g3.render(&messages(case(by_name(&f, "gemma3"), "roles_not_alternating")), false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "message 1 (`user`): chat template: Conversation roles must alternate user/assistant/user/assistant/..."
    );
    let err = g3.render(&messages(case(by_name(&f, "gemma3"), "system_then_model")), false).unwrap_err();
    assert!(matches!(&err, ChatError::Template { index: Some(3), role: Some(r), .. } if r == "assistant"), "{err:?}");
    let g2 = template(by_name(&f, "gemma2"));
    let err = g2.render(&messages(case(by_name(&f, "gemma2"), "system_prompt")), true).unwrap_err();
    assert_eq!(err.to_string(), "message 0 (`system`): chat template: System role not supported");

    // A dataset row: a row error naming the file and line, skippable with skip_bad_rows.
    let enc = encoder(256, true).with_chat_template(Some(g3));
    let msgs = vec![Message::new("user", "a"), Message::new("user", "b")];
    let e = enc.encode(&Sample::Messages(msgs), &Location::line("c.jsonl".as_ref(), 9)).unwrap_err();
    assert!(e.is_row_error());
    assert_eq!(
        e.to_string(),
        "c.jsonl:9: field `messages`: message 1 (`user`): chat template: Conversation roles must alternate \
         user/assistant/user/assistant/..."
    );
}

fn text(pieces: &[Piece]) -> String {
    pieces.iter().map(|p| p.text.as_str()).collect()
}

/// For every conversation the hand-written Gemma template renders, Gemma 3's own template gives the same pieces
/// (text and trained flags), with and without the generation prompt; where the hand-written one refuses, so
/// does the template (except a `tool` turn, which the template renders and the hand-written one rejects).
#[test]
fn gemma3_template_pieces_equal_the_hand_written_ones() {
    let f = fixture();
    let t = by_name(&f, "gemma3");
    let tpl = template(t);
    let mut compared = 0;
    for c in &t.cases {
        let m = messages(c);
        for gen in [false, true] {
            let ours = chat_pieces(&m, gen);
            let theirs = tpl.pieces(&m, gen);
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "{} gen={gen}", c.name);
                    compared += 1;
                }
                (Err(_), Err(_)) => {}
                (Err(ChatError::Role { role, .. }), Ok(_)) if role == "tool" => {}
                _ => panic!("{} gen={gen}: hand-written {ours:?}, template {theirs:?}", c.name),
            }
        }
    }
    assert!(compared >= 24, "only {compared} conversations compared");
}

/// Gemma 4's pieces, read off its template by hand: the header `<|turn>model\n` is not trained, the content and
/// `<turn|>` are, the newline after it is not; its generation prompt (with the empty thought channel the rendered
/// model turn lacks) is not trained either; thinking the template strips out of a model turn is not trained.
#[test]
fn gemma4_pieces_train_the_model_turns() {
    let f = fixture();
    let t = by_name(&f, "gemma4");
    let tpl = template(t);
    let piece = |text: &str, trained| Piece { text: text.into(), trained };

    let p = tpl.pieces(&messages(case(t, "system_multi_turn")), false).unwrap();
    assert_eq!(
        p,
        vec![
            piece("<|turn>system\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n", false),
            piece("Hello.<turn|>", true),
            piece("\n<|turn>user\nBye<turn|>\n<|turn>model\n", false),
            piece("Bye.<turn|>", true),
            piece("\n", false),
        ]
    );
    let p = tpl.pieces(&messages(case(t, "multi_turn_generation_prompt")), true).unwrap();
    assert_eq!(p[1], piece("4.<turn|>", true));
    assert_eq!(p[2], piece("\n<|turn>user\nAnd 3+3?<turn|>\n<|turn>model\n<|channel>thought\n<channel|>", false));
    assert_eq!(p.len(), 3);
    let p = tpl.pieces(&messages(case(t, "thinking_in_model_turn")), false).unwrap();
    assert_eq!(p[1], piece("4<turn|>", true));
    let p = tpl.pieces(&messages(case(t, "empty_model_turn")), false).unwrap();
    assert_eq!(p[1], piece("<turn|>", true));
}

/// For every template and every case it renders, the pieces put together are the rendering without `<bos>`,
/// and each model turn contributes exactly one trained piece.
#[test]
fn pieces_reassemble_the_rendering() {
    let f = fixture();
    for t in f.templates.iter().filter(|t| t.dir.is_some()) {
        let tpl = template(t);
        for c in t.cases.iter().filter(|c| c.rendered.is_some()) {
            let m = messages(c);
            let Ok(p) = tpl.pieces(&m, c.add_generation_prompt) else {
                // Only a model turn with nothing before it cannot be located: `messages[..0]` renders nothing.
                assert_eq!((t.name.as_str(), c.name.as_str()), ("gemma4", "model_first"));
                continue;
            };
            let want = c.rendered.as_deref().unwrap().strip_prefix("<bos>").unwrap();
            assert_eq!(text(&p), want, "{} / {}", t.name, c.name);
            let model_turns = m.iter().filter(|m| m.role == "assistant" || m.role == "model").count();
            assert_eq!(p.iter().filter(|p| p.trained).count(), model_turns, "{} / {}", t.name, c.name);
        }
    }
}

#[test]
fn model_first_is_a_clear_error_where_the_template_allows_it() {
    let f = fixture();
    let t = by_name(&f, "gemma4");
    let err = template(t).pieces(&messages(case(t, "model_first")), false).unwrap_err();
    assert!(matches!(&err, ChatError::TemplateMask { index: 0, role, .. } if role == "assistant"), "{err:?}");
    assert!(err.to_string().starts_with("message 0 (`assistant`): cannot find this model turn"), "{err}");
}

/// A template whose earlier text depends on later turns (here: the message count up front) cannot be masked by
/// prefixes; the error says so. Training on everything still works, from the whole rendering.
#[test]
fn a_template_that_is_not_prefix_stable_is_an_error() {
    let tpl: ChatTemplate =
        "{{ bos_token }}{{ messages | length }}:{% for m in messages %}[{{ m.content }}]{% endfor %}".parse().unwrap();
    let m = vec![Message::new("user", "a"), Message::new("assistant", "b")];
    assert_eq!(tpl.render(&m, false).unwrap(), "<bos>2:[a][b]");
    let err = tpl.pieces(&m, false).unwrap_err();
    assert!(matches!(&err, ChatError::TemplateMask { index: 1, .. }), "{err:?}");
    assert!(err.to_string().contains("not prefix-stable"), "{err}");

    let loc = Location::line("t.jsonl".as_ref(), 1);
    assert!(encoder(64, true)
        .with_chat_template(Some(tpl.clone()))
        .encode(&Sample::Messages(m.clone()), &loc)
        .is_err());
    let all = encoder(64, false).with_chat_template(Some(tpl)).encode(&Sample::Messages(m), &loc).unwrap();
    assert_eq!(all.input_ids, [vec![2], common::ids("2:[a][b]")].concat());
}

/// With Gemma 3's template the encoder gives the ids and labels of the hand-written template, for training
/// (answers only, and everything) and for generation prompts.
#[test]
fn encoder_with_gemma3_template_matches_the_built_in() {
    let f = fixture();
    let t = by_name(&f, "gemma3");
    let tpl = template(t);
    let loc = Location::line("t.jsonl".as_ref(), 1);
    let mut compared = 0;
    for completion_only in [true, false] {
        let (plain, templated) =
            (encoder(4096, completion_only), encoder(4096, completion_only).with_chat_template(Some(tpl.clone())));
        assert!(templated.chat_template().is_some());
        for c in t.cases.iter().filter(|c| c.rendered.is_some() && c.name != "tool_role") {
            let m = messages(c);
            let a = plain.encode(&Sample::Messages(m.clone()), &loc).unwrap();
            let b = templated.encode(&Sample::Messages(m.clone()), &loc).unwrap();
            assert_eq!(a, b, "{} completion_only={completion_only}", c.name);
            assert_eq!(plain.encode_chat_prompt(&m).unwrap(), templated.encode_chat_prompt(&m).unwrap(), "{}", c.name);
            compared += 1;
        }
    }
    assert!(compared >= 30);
}

/// A fresh, empty directory under the system's temporary directory.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lapidary-template-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn where_a_checkpoint_keeps_its_template() {
    // The tiny checkpoints ship none: the hand-written template stays.
    assert!(ChatTemplate::from_dir(&fixtures().join("tiny/gemma3")).unwrap().is_none());
    assert!(ChatTemplate::for_model(&fixtures().join("tiny/gemma3")).unwrap().is_none());
    // A file (a .gguf) has no directory to look in.
    assert!(ChatTemplate::for_model(&data("rows.jsonl")).unwrap().is_none());

    let g3 = ChatTemplate::from_dir(&data("chat/gemma3")).unwrap().unwrap();
    assert!(g3.origin().ends_with("chat_template.jinja"), "{}", g3.origin());
    assert_eq!(g3.bos_token(), Some("<bos>"));
    let named = ChatTemplate::from_dir(&data("chat/gemma3_named")).unwrap().unwrap();
    assert!(named.origin().ends_with("tokenizer_config.json: key `chat_template`"), "{}", named.origin());

    // chat_template.jinja wins over tokenizer_config.json's key, as in transformers.
    let dir = scratch("both");
    write(&dir, "tokenizer_config.json", r#"{"bos_token": {"content": "<s>"}, "chat_template": "config"}"#);
    write(&dir, "chat_template.jinja", "{{ bos_token }}file");
    let m = [Message::new("user", "x")];
    let t = ChatTemplate::from_dir(&dir).unwrap().unwrap();
    assert_eq!(t.render(&m, false).unwrap(), "<s>file");
    // special_tokens_map.json fills in what tokenizer_config.json lacks.
    std::fs::remove_file(dir.join("chat_template.jinja")).unwrap();
    write(&dir, "special_tokens_map.json", r#"{"bos_token": "<ignored>", "eos_token": "</s>"}"#);
    write(&dir, "tokenizer_config.json", r#"{"bos_token": "<s>", "chat_template": "{{ bos_token }}{{ eos_token }}"}"#);
    assert_eq!(ChatTemplate::from_dir(&dir).unwrap().unwrap().render(&m, false).unwrap(), "<s></s>");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_template_files_are_errors_naming_the_file_and_key() {
    let dir = scratch("bad");
    let config = dir.join("tokenizer_config.json").display().to_string();
    let err = |json: &str| {
        write(&dir, "tokenizer_config.json", json);
        ChatTemplate::from_dir(&dir).unwrap_err().to_string()
    };
    assert!(err("{not json").starts_with(&format!("{config}: invalid json")));
    assert_eq!(err("[1]"), format!("{config}: expected a json object, found an array"));
    assert_eq!(
        err(r#"{"chat_template": 3}"#),
        format!("{config}: key `chat_template`: chat template: expected a string or a list of {{name, template}}, found a number")
    );
    assert_eq!(
        err(r#"{"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "rag", "template": "y"}]}"#),
        format!("{config}: key `chat_template`: chat template: no template named `default` among [tool_use, rag]")
    );
    assert_eq!(
        err(r#"{"chat_template": [{"name": "default"}]}"#),
        format!("{config}: key `chat_template`: chat template: entry 0 should be {{\"name\": string, \"template\": string}}")
    );
    let e = err(r#"{"chat_template": "{% for m in messages %}"}"#);
    assert!(e.starts_with(&format!("{config}: key `chat_template`: chat template: syntax error")), "{e}");
    write(&dir, "chat_template.jinja", "{{ unclosed");
    let e = ChatTemplate::from_dir(&dir).unwrap_err();
    assert!(matches!(&e, DataError::Template { origin, .. } if origin.ends_with("chat_template.jinja")), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What this renderer does not imitate is an error, not a different rendering: printing a list (jinja2 writes its
/// Python repr), e.g. Gemma 4's template given a system message as content parts.
#[test]
fn printing_a_list_is_an_error_not_a_guess() {
    let f = fixture();
    let g4 = template(by_name(&f, "gemma4"));
    let m = vec![
        Message { role: "system".into(), content: lapidary_data::Content::Parts(vec!["Be kind.".into()]) },
        Message::new("user", "Hi"),
    ];
    let err = g4.render(&m, true).unwrap_err();
    assert!(err.to_string().contains("Python's repr"), "{err}");
    let tpl: ChatTemplate = "{{ messages }}".parse().unwrap();
    assert!(tpl.render(&[Message::new("user", "x")], false).is_err());
}

/// The pipeline renders `messages` rows with the template it is given: Gemma 3's gives the built-in batches,
/// Gemma 4's its own turns.
#[test]
fn batches_use_the_chat_template() {
    let f = fixture();
    let config = DataConfig { batch_size: 1, shuffle_buffer: 0, ..DataConfig::default() };
    let batches = |t: Option<ChatTemplate>| -> Vec<Batch> {
        let b = Batches::new(data("rows.jsonl"), common::tokenizer(), config.clone()).unwrap().with_chat_template(t);
        b.map(|b| b.unwrap()).collect()
    };
    let built_in = batches(None);
    assert_eq!(batches(Some(template(by_name(&f, "gemma3")))), built_in);
    let g4 = batches(Some(template(by_name(&f, "gemma4"))));
    assert_eq!(g4.len(), built_in.len());
    let decoded: Vec<String> = g4.iter().map(|b| common::tokenizer().decode(&b.input_ids, false).unwrap()).collect();
    let chats = decoded.iter().filter(|d| d.contains("<|turn>model\n")).count();
    assert_eq!(chats, 3, "rows.jsonl has three messages rows: {decoded:#?}");
}
