//! Our reading of the cache against huggingface_hub's, on the cache its own helpers wrote
//! (tests/fixtures/hub/, scripts/make_hub_fixtures.py): every `snapshot_download(local_files_only=True)` and
//! `try_to_load_from_cache` answer, `scan_cache_dir`'s refs and files per revision, and `validate_repo_id`.
use std::path::{Path, PathBuf};

use lapidary_hub::cache::files_under;
use lapidary_hub::repo::valid_repo_id;
use lapidary_hub::{Cache, Hub, HubError, Repo, RepoType};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hub")
}

fn answers() -> Value {
    let p = fixtures().join("answers.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn cache() -> Cache {
    Cache::new(fixtures().join("cache"))
}

fn repo(q: &Value) -> Repo {
    let kind = match q["repo_type"].as_str().unwrap() {
        "model" => RepoType::Model,
        "dataset" => RepoType::Dataset,
        other => panic!("repo_type {other}"),
    };
    Repo::new(kind, q["repo_id"].as_str().unwrap(), q["revision"].as_str())
}

/// A path under the cache root as huggingface_hub's answers write it (relative, `/`-separated).
fn rel(p: &Path) -> String {
    p.strip_prefix(cache().root()).unwrap().to_string_lossy().replace('\\', "/")
}

#[test]
fn snapshots_as_snapshot_download_finds_them() {
    let a = answers();
    let cases = a["snapshot_download"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for q in cases {
        let ours = cache().snapshot(&repo(q));
        match q["path"].as_str() {
            Some(want) => assert_eq!(ours.as_deref().map(rel).ok(), Some(want.to_string()), "{q}"),
            None => assert!(ours.is_err(), "{q}: huggingface_hub raises {}, we found {ours:?}", q["error"]),
        }
    }
}

#[test]
fn files_as_try_to_load_from_cache_finds_them() {
    let a = answers();
    let cases = a["try_to_load_from_cache"].as_array().unwrap();
    assert!(cases.len() >= 40);
    for q in cases {
        let ours = cache().file(&repo(q), q["filename"].as_str().unwrap());
        let want = q["path"].as_str();
        assert_eq!(ours.as_deref().map(rel).ok().as_deref(), want, "{q}: {ours:?}");
    }
}

#[test]
fn refs_and_files_as_scan_cache_dir_lists_them() {
    let a = answers();
    for r in a["scan_cache_dir"].as_array().unwrap() {
        for (name, commit) in r["refs"].as_object().unwrap() {
            let q = serde_json::json!({"repo_type": r["repo_type"], "repo_id": r["repo_id"], "revision": name});
            assert_eq!(cache().commit(&repo(&q)).ok().as_deref(), commit.as_str(), "{q}");
        }
        for (commit, files) in r["revisions"].as_object().unwrap() {
            let q = serde_json::json!({"repo_type": r["repo_type"], "repo_id": r["repo_id"], "revision": commit});
            let snap = cache().snapshot(&repo(&q)).unwrap();
            let want: Vec<String> = files.as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect();
            assert_eq!(files_under(&snap), want, "{q}");
        }
    }
    // The repository scan_cache_dir refuses is the one we cannot resolve either.
    let w = &a["scan_cache_dir_warnings"][0]["message"];
    assert!(w.as_str().unwrap().contains("models--lapidary-test--broken"), "{w}");
    assert!(cache().snapshot(&Repo::new(RepoType::Model, "lapidary-test/broken", None)).is_err());
}

#[test]
fn repo_ids_as_validate_repo_id_judges_them() {
    let a = answers();
    let ids = a["validate_repo_id"].as_object().unwrap();
    assert!(ids.values().any(|v| v == true) && ids.values().any(|v| v == false));
    for (id, ok) in ids {
        assert_eq!(valid_repo_id(id), ok.as_bool().unwrap(), "{id}");
    }
}

/// Offline, a miss names the folder looked at, why, and the command that fetches it; nothing is created.
#[test]
fn offline_misses_name_the_cache_and_the_command() {
    let hub = Hub::new(cache(), true);
    let check = |e: HubError, parts: &[&str]| {
        let msg = e.to_string();
        assert!(matches!(e, HubError::NotCached { .. }), "{msg}");
        for p in parts {
            assert!(msg.contains(p), "{msg}\nlacks {p}");
        }
        assert!(msg.contains("HF_HUB_OFFLINE"), "{msg}");
    };
    let absent = Repo::new(RepoType::Model, "lapidary-test/absent", None);
    check(
        hub.file(&absent, "config.json").unwrap_err(),
        &["models--lapidary-test--absent", "no such folder", "hf download lapidary-test/absent config.json"],
    );
    let broken = Repo::new(RepoType::Model, "lapidary-test/broken", None);
    let e = hub.snapshot(&broken, &|_| vec![], &|_| Ok(vec![])).unwrap_err();
    check(
        e,
        &["models--lapidary-test--broken", "refs/main names commit", "is missing", "hf download lapidary-test/broken"],
    );
    let nope = Repo::new(RepoType::Model, "lapidary-test/tiny-gemma", Some("nope"));
    let e = hub.snapshot(&nope, &|_| vec![], &|_| Ok(vec![])).unwrap_err();
    check(e, &["no ref `nope`", "main, v1.0", "--revision nope"]);
    let rows = Repo::new(RepoType::Dataset, "lapidary-test/tiny-rows", None);
    check(
        hub.file(&rows, "data/absent.parquet").unwrap_err(),
        &["not in this snapshot", "hf download lapidary-test/tiny-rows data/absent.parquet --repo-type dataset"],
    );
    assert!(!cache().root().join("models--lapidary-test--absent").exists());
}
