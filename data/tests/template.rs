//! Checkpoint chat templates against transformers: every case of tests/fixtures/data/chat_templates.json (made by
//! scripts/make_chat_fixtures.py) is what `apply_chat_template(tokenize=False)` renders from the checkpoint
//! directory beside it, or the error it raises.

mod common;

use std::path::{Path, PathBuf};

use common::{data, fixtures};
use lapidary_data::{parse_row, ChatError, ChatTemplate, DataError, Location, Message, Row, RowFormat, Sample};
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
