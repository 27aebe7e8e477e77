//! `lapidary eval --metric choice | exact_match`, `--predictions`, `--compare`: against references computed with
//! transformers by `scripts/make_eval_fixtures.py` (tests/fixtures/eval/), and the input errors.
mod common;

use common::{fixture, lapidary_fails, lapidary_json, read_json};

fn tiny() -> String {
    fixture("tiny/gemma3").to_str().unwrap().to_string()
}

fn read_jsonl(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn choice_matches_lm_eval_loglikelihoods() {
    let dir = tempfile::tempdir().unwrap();
    let preds = dir.path().join("p.jsonl");
    let data = fixture("eval/choice.jsonl");
    let got = lapidary_json(&[
        "eval",
        "--model",
        &tiny(),
        "--data",
        data.to_str().unwrap(),
        "--metric",
        "choice",
        "--json",
        "--predictions",
        preds.to_str().unwrap(),
    ]);
    let want = read_json(&fixture("eval/choice_reference.json"));
    assert_eq!(got["metric"], "choice");
    assert_eq!(got["examples"], 5);
    assert_eq!(got["acc"].as_f64().unwrap(), want["acc"].as_f64().unwrap());
    assert_eq!(got["acc_norm"].as_f64().unwrap(), want["acc_norm"].as_f64().unwrap());
    let rows = read_jsonl(&preds);
    let refs = want["rows"].as_array().unwrap();
    assert_eq!(rows.len(), refs.len());
    for (i, (g, w)) in rows.iter().zip(refs).enumerate() {
        assert_eq!(g["index"], i);
        let (gl, wl) = (g["loglikelihoods"].as_array().unwrap(), w["lls"].as_array().unwrap());
        assert_eq!(gl.len(), wl.len());
        for (j, (a, b)) in gl.iter().zip(wl).enumerate() {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!((a - b).abs() < 1e-4, "row {i} choice {j}: ll {a} vs transformers {b}");
        }
        // Same split: as many continuation tokens as lm-eval's `_encode_pair` gives.
        let ntok: Vec<usize> =
            w["continuation_ids"].as_array().unwrap().iter().map(|c| c.as_array().unwrap().len()).collect();
        assert_eq!(g["continuation_tokens"], serde_json::json!(ntok), "row {i}");
        assert_eq!(g["pred"], w["pred"], "row {i}");
        assert_eq!(g["pred_norm"], w["pred_norm"], "row {i}");
        assert_eq!(g["correct"].as_bool().unwrap(), w["acc"].as_f64().unwrap() == 1.0);
        assert_eq!(g["correct_norm"].as_bool().unwrap(), w["acc_norm"].as_f64().unwrap() == 1.0);
    }
}

#[test]
fn acc_norm_divides_by_characters() {
    // Row 4 of the fixture: a 1-character wrong choice against a 42-character right one. The long one has the
    // lower total log-likelihood (acc = 0) but the higher per character (acc_norm = 1).
    let want = read_json(&fixture("eval/choice_reference.json"));
    let k = want["norm_row"].as_u64().unwrap() as usize;
    let line = std::fs::read_to_string(fixture("eval/choice.jsonl")).unwrap().lines().nth(k).unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = write(&dir, "one.jsonl", &line);
    let preds = dir.path().join("p.jsonl");
    let got = lapidary_json(&[
        "eval",
        "--model",
        &tiny(),
        "--data",
        &data,
        "--metric",
        "choice",
        "--json",
        "--predictions",
        preds.to_str().unwrap(),
    ]);
    assert_eq!((got["acc"].as_f64().unwrap(), got["acc_norm"].as_f64().unwrap()), (0.0, 1.0));
    let row = &read_jsonl(&preds)[0];
    let ll: Vec<f64> = row["loglikelihoods"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let choices: serde_json::Value = serde_json::from_str(&line).unwrap();
    let len: Vec<f64> =
        choices["choices"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().chars().count() as f64).collect();
    assert_eq!(row["lengths"], serde_json::json!(len.iter().map(|&x| x as usize).collect::<Vec<_>>()));
    assert!(ll[0] > ll[1], "the short choice wins on total log-likelihood: {ll:?}");
    assert!(ll[1] / len[1] > ll[0] / len[0], "the long choice wins per character: {ll:?} / {len:?}");
    // Per token it would lose too (16 tokens vs 1), so this is the character rule at work.
    let ntok: Vec<f64> = row["continuation_tokens"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(ll[0] / ntok[0] > ll[1] / ntok[1], "per token the short one would still win: {ll:?} / {ntok:?}");
}

#[test]
fn exact_match_greedy_against_transformers() {
    let want = read_json(&fixture("eval/exact_match_reference.json"));
    let n = want["max_new_tokens"].as_u64().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let preds = dir.path().join("p.jsonl");
    let data = fixture("eval/exact_match.jsonl");
    let got = lapidary_json(&[
        "eval",
        "--model",
        &tiny(),
        "--data",
        data.to_str().unwrap(),
        "--metric",
        "exact-match",
        "--max-new-tokens",
        &n,
        "--json",
        "--predictions",
        preds.to_str().unwrap(),
    ]);
    assert_eq!(got["metric"], "exact_match");
    assert_eq!(got["accuracy"].as_f64().unwrap(), 0.5);
    assert_eq!(got["correct"], 1);
    assert_eq!(got["examples"], 2);
    assert_eq!(got["match"], "equal");
    let rows = read_jsonl(&preds);
    // Both rows generate transformers' greedy text; the first answer differs only in case, spacing and a period.
    for r in &rows {
        assert_eq!(r["prediction"], want["text"]);
    }
    assert_eq!((rows[0]["correct"].as_bool(), rows[1]["correct"].as_bool()), (Some(true), Some(false)));
}

#[test]
fn exact_match_chat_rows_use_the_template() {
    let want = read_json(&fixture("eval/exact_match_reference.json"));
    let chat = &want["chat"];
    let text = chat["text"].as_str().unwrap();
    let n = want["max_new_tokens"].as_u64().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let content = chat["content"].as_str().unwrap();
    let row = serde_json::json!({"messages": [{"role": "user", "content": content}], "answer": text});
    let data = write(&dir, "chat.jsonl", &format!("{row}\n"));
    let got = lapidary_json(&[
        "eval",
        "--model",
        &tiny(),
        "--data",
        &data,
        "--metric",
        "exact-match",
        "--max-new-tokens",
        &n,
        "--json",
    ]);
    assert_eq!(got["accuracy"].as_f64().unwrap(), 1.0, "{got}");
    // The same through --chat with a plain prompt.
    let row = serde_json::json!({"prompt": content, "answer": text});
    let data = write(&dir, "plain.jsonl", &format!("{row}\n"));
    let got = lapidary_json(&[
        "eval",
        "--model",
        &tiny(),
        "--data",
        &data,
        "--metric",
        "exact-match",
        "--max-new-tokens",
        &n,
        "--chat",
        "--json",
    ]);
    assert_eq!(got["accuracy"].as_f64().unwrap(), 1.0, "{got}");
    assert_eq!(got["chat"], true);
}

#[test]
fn compare_reports_base_adapter_and_difference() {
    let adapter = fixture("tiny/gemma3/adapter");
    let data = fixture("eval/choice.jsonl");
    let got = lapidary_json(&[
        "eval",
        "--model",
        &tiny(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--metric",
        "choice",
        "--compare",
        "--json",
    ]);
    let want = read_json(&fixture("eval/choice_reference.json"));
    assert_eq!(got["metric"], "choice");
    assert_eq!(got["base"]["acc"].as_f64().unwrap(), want["acc"].as_f64().unwrap());
    for k in ["acc", "acc_norm"] {
        let d = got["adapter"][k].as_f64().unwrap() - got["base"][k].as_f64().unwrap();
        assert_eq!(got["difference"][k].as_f64().unwrap(), d);
    }
    // Loss keeps its contract inside each side.
    let loss = fixture("tiny/gemma3/eval.jsonl");
    let got = lapidary_json(&[
        "eval",
        "--model",
        &tiny(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--data",
        loss.to_str().unwrap(),
        "--compare",
        "--json",
    ]);
    let r = read_json(&fixture("tiny/gemma3/reference.json"));
    let base = got["base"]["loss"].as_f64().unwrap();
    assert!((base - r["eval_loss"].as_f64().unwrap()).abs() < 1e-4);
    let tuned = got["adapter"]["loss"].as_f64().unwrap();
    assert!((tuned - r["eval_loss_adapter"].as_f64().unwrap()).abs() < 1e-4);
    assert!((got["difference"]["loss"].as_f64().unwrap() - (tuned - base)).abs() < 1e-12);
}

#[test]
fn bad_rows_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let ok = r#"{"prompt": "The cat", "choices": ["a", "b"], "answer": 0}"#;
    let cases = [
        (r#"{"prompt": "The cat", "answer": 0}"#, "missing `choices`"),
        (r#"{"prompt": "The cat", "choices": ["a", "b"], "answer": 2}"#, "`answer` is 2 but there are 2 choices"),
        (r#"{"prompt": "The cat", "choices": ["a", "b"], "answer": "a"}"#, "`answer` must be an integer index"),
        (r#"{"prompt": "The cat", "choices": ["a", "b"], "answer": 1.5}"#, "must be a non-negative integer"),
        (r#"{"choices": ["a", "b"], "answer": 0}"#, "missing `prompt`"),
        (r#"{"prompt": "The cat", "choices": [], "answer": 0}"#, "`choices` is empty"),
        (r#"{"prompt": "The cat", "choices": ["a", 3], "answer": 0}"#, "choice 1 must be a string"),
    ];
    for (bad, msg) in cases {
        let data = write(&dir, "bad.jsonl", &format!("{ok}\n\n{bad}\n"));
        let err = lapidary_fails(&["eval", "--model", &tiny(), "--data", &data, "--metric", "choice"]);
        assert!(err.contains(&format!("{data}:3:")), "no file:line in {err:?}");
        assert!(err.contains(msg), "expected {msg:?} in {err:?}");
    }
    let exact = [
        (r#"{"answer": "x"}"#, "missing `prompt`"),
        (r#"{"prompt": "The cat"}"#, "missing `answer`"),
        (r#"{"prompt": "The cat", "answer": 3}"#, "`answer` must be a string"),
    ];
    for (bad, msg) in exact {
        let data = write(&dir, "bad.jsonl", &format!("{bad}\n"));
        let err = lapidary_fails(&["eval", "--model", &tiny(), "--data", &data, "--metric", "exact-match"]);
        assert!(err.contains(&format!("{data}:1:")), "no file:line in {err:?}");
        assert!(err.contains(msg), "expected {msg:?} in {err:?}");
    }
    let data = fixture("eval/choice.jsonl");
    let err = lapidary_fails(&[
        "eval",
        "--model",
        &tiny(),
        "--data",
        data.to_str().unwrap(),
        "--metric",
        "choice",
        "--compare",
    ]);
    assert!(err.contains("--compare needs --adapter"), "{err}");
}

/// `--metric loss` rows with `labels` (transformers' convention, -100 = no loss): labels equal to the tokens
/// give the unlabelled row's loss, and the summed NLL splits exactly over complementary masks (the mean of
/// the whole = the two halves' means weighted by their target counts), so each mask scores exactly its
/// targets. Ids or labels outside the vocabulary and misaligned labels are errors naming the line.
#[test]
fn loss_rows_take_transformers_labels() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<u32> = vec![2, 17, 301, 45, 9, 77, 120, 5, 66, 300, 12, 8];
    let half = ids.len() / 2;
    let masked = |keep: &dyn Fn(usize) -> bool| -> Vec<i64> {
        ids.iter().enumerate().map(|(t, &id)| if keep(t) { id as i64 } else { -100 }).collect()
    };
    let rows = [
        ("plain", serde_json::json!({ "input_ids": ids })),
        ("same", serde_json::json!({ "input_ids": ids, "labels": masked(&|_| true) })),
        ("first", serde_json::json!({ "input_ids": ids, "labels": masked(&|t| t <= half) })),
        ("second", serde_json::json!({ "input_ids": ids, "labels": masked(&|t| t > half) })),
    ];
    let eval = |row: &serde_json::Value| {
        let data = write(&dir, "row.jsonl", &format!("{row}\n"));
        let v = lapidary_json(&["eval", "--model", &tiny(), "--data", &data, "--json"]);
        (v["loss"].as_f64().unwrap(), v["tokens"].as_u64().unwrap() as f64)
    };
    let got: Vec<(f64, f64)> = rows.iter().map(|(_, r)| eval(r)).collect();
    assert_eq!(got[0], got[1], "labels equal to the tokens");
    assert_eq!((got[2].1, got[3].1), (half as f64, (ids.len() - 1 - half) as f64));
    let split = (got[2].0 * got[2].1 + got[3].0 * got[3].1) / (got[2].1 + got[3].1);
    assert!((split - got[0].0).abs() < 1e-5 * got[0].0, "{split} vs {}", got[0].0);
    assert!((got[2].0 - got[3].0).abs() > 1e-3, "the two halves score different tokens");

    for (row, want) in [
        (r#"{"input_ids": [2, 999999]}"#, "outside the model's vocabulary"),
        (r#"{"input_ids": [2, 5], "labels": [-100]}"#, "1 labels for 2 tokens"),
        (r#"{"input_ids": [2, 5], "labels": [-100, 999999]}"#, "or -100"),
        (r#"{"input_ids": [2, 5], "labels": "x"}"#, "`labels` must be a list"),
    ] {
        let data = write(&dir, "bad.jsonl", &format!("{{}}\n{row}\n").replacen("{}\n", "{\"text\": \"a b\"}\n", 1));
        let err = lapidary_fails(&["eval", "--model", &tiny(), "--data", &data]);
        assert!(err.contains("bad.jsonl:2") && err.contains(want), "{row}: {err}");
    }
}
