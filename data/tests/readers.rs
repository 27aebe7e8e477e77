//! Readers: the reference rows written as JSONL, Parquet (file and shards), Arrow IPC (file, stream,
//! save_to_disk) by scripts/make_data_fixtures.py must read back as the same samples; errors name the
//! file, line and field.

mod common;

use common::{data, SOURCES};
use lapidary_data::{open_dataset, parse_row, DataError, RowFormat, Sample, Unit};

fn samples(name: &str) -> Vec<Sample> {
    open_dataset(data(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .map(|r| {
            let row = r.unwrap_or_else(|e| panic!("{name}: {e}"));
            parse_row(&row, RowFormat::Auto).unwrap_or_else(|e| panic!("{name}: {e}"))
        })
        .collect()
}

#[test]
fn every_source_gives_the_same_samples() {
    let reference = samples("rows.jsonl");
    assert_eq!(reference.len(), 12);
    for name in SOURCES {
        assert_eq!(samples(name), reference, "{name}");
    }
}

#[test]
fn detects_every_format() {
    let s = samples("rows.jsonl");
    assert!(matches!(&s[0], Sample::Text(t) if t == "The river ran quietly past the old mill."));
    assert!(matches!(&s[1], Sample::PromptCompletion { completion, .. } if completion == " The water."));
    assert!(matches!(&s[2], Sample::Messages(m) if m.len() == 2 && m[1].role == "assistant"));
    assert!(matches!(&s[3], Sample::Alpaca { input: Some(i), .. } if i.is_empty()));
    assert!(matches!(&s[4], Sample::Alpaca { input: Some(i), output, .. } if i == "2 and 3" && output == "5"));
    assert_eq!(s[5], Sample::Tokens { input_ids: vec![2, 40, 41, 42, 1], labels: None });
    assert_eq!(s[6], Sample::Tokens { input_ids: vec![2, 50, 51, 52, 53], labels: Some(vec![-100, -100, 51, 52, 53]) });
}

#[test]
fn locations_are_lines_for_jsonl_and_rows_for_columnar_files() {
    let rows: Vec<_> = open_dataset(data("rows.jsonl")).unwrap().map(Result::unwrap).collect();
    assert_eq!(rows[3].loc.unit, Unit::Line(4));
    assert!(rows[3].loc.to_string().ends_with("rows.jsonl:4"), "{}", rows[3].loc);

    let rows: Vec<_> = open_dataset(data("rows_shards")).unwrap().map(Result::unwrap).collect();
    assert_eq!(rows[7].loc.unit, Unit::Row(0), "row index restarts per shard");
    assert!(rows[7].loc.file.ends_with("part-00001.parquet"));
    assert!(rows[6].loc.to_string().ends_with("part-00000.parquet row 6"), "{}", rows[6].loc);

    // Row groups of 4 and Arrow batches of 5: the indices run on across batches.
    for name in ["rows.parquet", "rows.arrow"] {
        let rows: Vec<_> = open_dataset(data(name)).unwrap().map(Result::unwrap).collect();
        assert_eq!(rows[9].loc.unit, Unit::Row(9), "{name}");
    }
}

#[test]
fn malformed_jsonl_names_file_and_line_and_goes_on() {
    let out: Vec<_> = open_dataset(data("bad.jsonl")).unwrap().collect();
    assert_eq!(out.len(), 3, "the blank line 2 is not a row");
    assert!(out[0].is_ok());
    let e = out[1].as_ref().unwrap_err();
    assert!(matches!(e, DataError::Json { .. }) && e.is_row_error());
    let msg = e.to_string();
    assert!(msg.contains("bad.jsonl:3: invalid json"), "{msg}");
    assert_eq!(out[2].as_ref().unwrap().loc.unit, Unit::Line(4));

    let out: Vec<_> = open_dataset(data("notobject.jsonl")).unwrap().collect();
    let msg = out[1].as_ref().unwrap_err().to_string();
    assert!(msg.contains("notobject.jsonl:2: invalid json: expected an object, found an array"), "{msg}");
}

#[test]
fn missing_field_names_file_line_and_field() {
    let rows: Vec<_> = open_dataset(data("missing.jsonl")).unwrap().map(Result::unwrap).collect();
    assert!(parse_row(&rows[0], RowFormat::Auto).is_ok());
    let msg = parse_row(&rows[1], RowFormat::Auto).unwrap_err().to_string();
    assert!(msg.ends_with("missing.jsonl:2: missing field `completion` (prompt_completion row)"), "{msg}");
    // A forced format reports its own field.
    let msg = parse_row(&rows[0], RowFormat::Messages).unwrap_err().to_string();
    assert!(msg.ends_with("missing.jsonl:1: missing field `messages` (messages row)"), "{msg}");
    // Arrow nulls are absent fields too.
    let rows: Vec<_> = open_dataset(data("rows.parquet")).unwrap().map(Result::unwrap).collect();
    let msg = parse_row(&rows[0], RowFormat::Alpaca).unwrap_err().to_string();
    assert!(msg.ends_with("rows.parquet row 0: missing field `instruction` (alpaca row)"), "{msg}");
}

#[test]
fn bad_field_types_are_row_errors() {
    let row = |json: &str| lapidary_data::Row {
        fields: serde_json::from_str(json).unwrap(),
        loc: lapidary_data::Location::line("x.jsonl".as_ref(), 7),
    };
    let cases = [
        (r#"{"text": 3}"#, "x.jsonl:7: field `text`: expected a string, found a number"),
        (r#"{"input_ids": [1, -2]}"#, "x.jsonl:7: field `input_ids`: entry 1 is -2, not a token id (0..2^32)"),
        (r#"{"input_ids": [1, 2], "labels": [1]}"#, "x.jsonl:7: field `labels`: has 1 entries but `input_ids` has 2"),
        (r#"{"messages": [{"role": "user"}]}"#, "x.jsonl:7: field `messages`: message 0: missing `content`"),
        (
            r#"{"messages": [{"role": "user", "content": [{"type": "image"}]}]}"#,
            "x.jsonl:7: field `messages`: message 0: content part 0 has type `image`; only text parts are supported",
        ),
        (r#"{"foo": 1, "bar": null}"#, "x.jsonl:7: cannot tell the row format from fields [foo]"),
    ];
    for (json, want) in cases {
        let e = parse_row(&row(json), RowFormat::Auto).unwrap_err();
        assert!(e.is_row_error());
        assert!(e.to_string().starts_with(want), "{json}: {e}");
    }
}

#[test]
fn dataset_level_errors_are_clear() {
    let msg = open_dataset(data("nope.jsonl")).err().unwrap().to_string();
    assert!(msg.ends_with("nope.jsonl: no such file or directory"), "{msg}");
    // `.json` is read as JSON lines: a pretty-printed file gives a row error, not a panic.
    let msg = open_dataset(common::fixtures().join("tiny/tokenizer_config.json"))
        .unwrap()
        .find_map(Result::err)
        .unwrap()
        .to_string();
    assert!(msg.contains("tokenizer_config.json:1: invalid json"), "{msg}");
    let msg = open_dataset(data("rows_dict")).err().unwrap().to_string();
    assert!(msg.contains("DatasetDict; point at one split directory instead (found train)"), "{msg}");
    assert_eq!(samples("rows_dict/train"), samples("rows.jsonl"));
    let dir = std::env::temp_dir().join(format!("lapidary-data-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "x").unwrap();
    let msg = open_dataset(&dir).err().unwrap().to_string();
    assert!(msg.contains("unknown dataset format"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}
