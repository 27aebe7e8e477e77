//! Every recipe shipped in configs/ parses and validates (`lapidary train --check`: nothing is loaded).
mod common;

use common::*;

#[test]
fn every_shipped_recipe_validates() {
    let dir = repo_root().join("configs");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let out = lapidary(&["train", p.to_str().unwrap(), "--check"]);
            assert!(out.status.success(), "{}: {}", p.display(), String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("[model]") && text.contains("[output]"), "{}: {text}", p.display());
            n += 1;
        }
    }
    assert!(n >= 10, "expected the tiny recipe and nine model recipes, found {n}");
}
