//! Hub ids end to end, on the Hugging Face cache huggingface_hub's own helpers wrote
//! (tests/fixtures/hub/cache, scripts/make_hub_fixtures.py), with `HF_HUB_OFFLINE=1`: `inspect`, `eval` and
//! `train` given `ORG/NAME[@REVISION]`, `ORG/NAME/FILE.gguf` and `hf://datasets/…` do exactly what they do
//! given the local files the cache was built from; ids the cache cannot serve fail naming the cache folder and
//! the `hf download` command, and write nothing.
mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};

const GEMMA: &str = "lapidary-test/tiny-gemma";

fn hub_cache() -> std::path::PathBuf {
    fixture("hub/cache")
}

/// The CLI with the fixture cache (or `cache`) as `HF_HUB_CACHE`, from the repository root.
fn run_in(cache: &Path, offline: bool, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lapidary"));
    cmd.current_dir(repo_root()).args(args).env("HF_HUB_CACHE", cache);
    for v in ["HF_HOME", "HF_TOKEN", "HF_ENDPOINT", "TRANSFORMERS_OFFLINE"] {
        cmd.env_remove(v);
    }
    if offline {
        cmd.env("HF_HUB_OFFLINE", "1");
    } else {
        cmd.env_remove("HF_HUB_OFFLINE");
    }
    cmd.output().expect("run lapidary")
}

fn json_of(o: &Output, what: &str) -> serde_json::Value {
    assert!(o.status.success(), "{what} failed: {}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(out.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{what}: {e}: {out}"))
}

fn fails(o: &Output, what: &str, parts: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "{what} should fail");
    assert!(!err.contains("panicked"), "{what} panicked: {err}");
    for p in parts {
        assert!(err.contains(p), "{what}: the message lacks `{p}`:\n{err}");
    }
    err
}

fn inspect(model: &str) -> serde_json::Value {
    json_of(&run_in(&hub_cache(), true, &["inspect", "--model", model, "--json"]), model)
}

/// main (sharded, Gemma 3), the tag v1.0 (one file, Gemma 2), a commit hash, and a GGUF file of a repository:
/// each inspects as the local files it was made from.
#[test]
fn inspect_reads_the_snapshot_a_revision_names() {
    let local_gemma3 = inspect(fixture("tiny/gemma3").to_str().unwrap());
    assert_eq!(inspect(GEMMA), local_gemma3);
    assert_eq!(inspect(&format!("{GEMMA}@main")), local_gemma3);
    let local_gemma2 = inspect(fixture("tiny/gemma2").to_str().unwrap());
    assert_ne!(local_gemma2, local_gemma3);
    assert_eq!(inspect(&format!("{GEMMA}@v1.0")), local_gemma2);
    let answers = read_json(&fixture("hub/answers.json"));
    let v1 = answers["snapshot_download"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["repo_id"] == GEMMA && q["revision"] == "v1.0" && q["repo_type"] == "model")
        .unwrap()["path"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(inspect(&format!("{GEMMA}@{v1}")), local_gemma2);

    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("tiny_gemma3.gguf");
    std::fs::copy(fixture("gguf/tiny_gemma3.gguf.bin"), &gguf).unwrap();
    assert_eq!(inspect("lapidary-test/tiny-gguf/tiny-gemma3.gguf"), inspect(gguf.to_str().unwrap()));
}

/// `eval` (loss) and `tokenize` through a Hub id equal the local checkpoint's.
#[test]
fn eval_and_tokenize_through_a_hub_id() {
    let data = fixture("train/eval.jsonl");
    let eval = |model: &str| {
        let o = run_in(&hub_cache(), true, &["eval", "--model", model, "--data", data.to_str().unwrap(), "--json"]);
        json_of(&o, model)
    };
    let local = eval(fixture("tiny/gemma3").to_str().unwrap());
    assert!(local["loss"].as_f64().is_some(), "{local}");
    assert_eq!(eval(GEMMA)["loss"], local["loss"]);
    let tok = |model: &str| {
        let o = run_in(&hub_cache(), true, &["tokenize", "--model", model, "--text", "The red owl sat."]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    assert_eq!(tok(GEMMA), tok(fixture("tiny/gemma3").to_str().unwrap()));
}

/// `lapidary train` with the recipe's model.path a Hub id and data.train / data.eval `hf://datasets/…` files,
/// or a folder of Parquet shards, logs the losses of the same recipe on the local files.
#[test]
fn train_from_a_hub_model_and_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let train = |out: &Path, sets: &[&str]| {
        let mut args = vec!["train".to_string(), "configs/tiny-test.toml".to_string()];
        for s in [format!("output.dir={}", out.display()), "train.max_steps=3".into(), "train.eval_every=3".into()]
            .iter()
            .map(String::as_str)
            .chain(sets.iter().copied())
        {
            args.extend(["--set".to_string(), s.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run_in(&hub_cache(), true, &args);
        assert!(o.status.success(), "train {sets:?}: {}", String::from_utf8_lossy(&o.stderr));
        let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| (v["loss"].clone(), v["eval_loss"].clone()))
            .collect::<Vec<_>>()
    };
    let local = train(&tmp.path().join("local"), &[]);
    let hub = train(
        &tmp.path().join("hub"),
        &[
            "model.path=lapidary-test/tiny-gemma",
            "data.train=hf://datasets/lapidary-test/tiny-rows/sft/train.jsonl",
            "data.eval=hf://datasets/lapidary-test/tiny-rows/sft/eval.jsonl",
        ],
    );
    assert!(local.iter().any(|(l, _)| l.is_number()) && local.iter().any(|(_, e)| e.is_number()), "{local:?}");
    assert_eq!(hub, local);
    // A folder of the dataset repository: its Parquet shards, as the local folder they were copied from.
    let shards = fixture("data/rows_shards");
    let local = train(&tmp.path().join("local_shards"), &[&format!("data.train={}", shards.display())]);
    let hub = train(&tmp.path().join("hub_shards"), &["data.train=hf://datasets/lapidary-test/tiny-rows/data"]);
    assert!(local.iter().filter(|(l, _)| l.is_number()).count() == 3, "{local:?}");
    assert_eq!(hub, local);
}

/// Ids the cache cannot serve, offline: the message names the cache folder and the command that fetches it.
#[test]
fn ids_the_cache_cannot_serve() {
    let cache = hub_cache();
    let inspect_fails = |model: &str, parts: &[&str]| {
        fails(&run_in(&cache, true, &["inspect", "--model", model]), model, parts);
    };
    inspect_fails(
        "lapidary-test/absent",
        &[
            "no such file or folder here",
            "models--lapidary-test--absent",
            "not in the Hugging Face cache",
            "HF_HUB_OFFLINE",
            "hf download lapidary-test/absent",
        ],
    );
    inspect_fails(
        "lapidary-test/broken",
        &["models--lapidary-test--broken", "refs/main names commit", "is missing", "hf download lapidary-test/broken"],
    );
    inspect_fails(
        &format!("{GEMMA}@no-such-branch"),
        &[
            "models--lapidary-test--tiny-gemma",
            "no ref `no-such-branch`",
            "main, v1.0",
            "hf download lapidary-test/tiny-gemma --revision no-such-branch",
        ],
    );
    inspect_fails("lapidary-test/tiny-gguf", &["GGUF", "lapidary-test/tiny-gguf/", "tiny-gemma3.gguf", "other.gguf"]);
    inspect_fails(
        "lapidary-test/tiny-gguf/absent.gguf",
        &["absent.gguf", "not in this snapshot", "hf download lapidary-test/tiny-gguf absent.gguf"],
    );
    // A path that is not shaped like an id is still reported as a path.
    fails(&run_in(&cache, true, &["inspect", "--model", "no/such/dir"]), "a path", &["no/such/dir", "no such file"]);
}

/// Not offline, with the Hub unreachable (a closed local port as HF_ENDPOINT): the same kind of message,
/// saying the Hub could not be reached, and nothing is written to the cache.
#[test]
fn unreachable_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let cmd_env = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lapidary"));
        c.current_dir(repo_root()).args(args).env("HF_HUB_CACHE", tmp.path()).env("HF_ENDPOINT", "http://127.0.0.1:9");
        for v in ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HOME"] {
            c.env_remove(v);
        }
        c.output().unwrap()
    };
    let o = cmd_env(&["inspect", "--model", "lapidary-test/absent"]);
    fails(
        &o,
        "unreachable",
        &[
            "models--lapidary-test--absent",
            "could not be reached",
            "http://127.0.0.1:9",
            "hf download lapidary-test/absent",
        ],
    );
    let o = cmd_env(&["inspect", "--model", "lapidary-test/absent/x.gguf"]);
    fails(&o, "unreachable gguf", &["could not be reached", "hf download lapidary-test/absent x.gguf"]);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "the cache was written to");
}

/// Recipe keys: an unknown model id and a dataset folder without data files fail before training, naming them.
#[test]
fn recipe_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let train = |sets: &[&str]| {
        let mut args = vec!["train", "configs/tiny-test.toml"];
        let o = format!("output.dir={}", out.display());
        args.extend(["--set", &o]);
        for s in sets {
            args.extend(["--set", s]);
        }
        run_in(&hub_cache(), true, &args)
    };
    fails(
        &train(&["model.path=lapidary-test/absent"]),
        "model.path",
        &["model.path", "models--lapidary-test--absent", "hf download lapidary-test/absent"],
    );
    fails(
        &train(&["data.train=hf://datasets/lapidary-test/tiny-rows"]),
        "dataset root",
        &[
            "hf://datasets/lapidary-test/tiny-rows",
            "name a folder",
            "hf://datasets/lapidary-test/tiny-rows/data",
            "hf://datasets/lapidary-test/tiny-rows/sft",
        ],
    );
    fails(
        &train(&["data.train=hf://datasets/lapidary-test/tiny-rows/sft/absent.jsonl"]),
        "dataset file",
        &[
            "datasets--lapidary-test--tiny-rows",
            "hf download lapidary-test/tiny-rows sft/absent.jsonl --repo-type dataset",
        ],
    );
    assert!(!out.exists(), "a failed recipe wrote {}", out.display());
}
