//! Dependencies between modules point one way: in each crate (model/, data/, trainer/), no file-module reaches
//! itself through the paths it uses (`use`, and paths in code: `crate::…`, `super::…`, `self::…`, `child::…`).
//! A file is one module (`a/b.rs` and `a/b/mod.rs` are `a::b`; `lib.rs` and `main.rs` are the crate root).
//! Inline `#[cfg(test)] mod … { }` blocks (any `cfg` naming `test`) are modules of their own that nothing
//! imports, so their paths are not the file's; comments are not code. A path counts as a dependency on the deepest module it names: a
//! re-export in `a/mod.rs` is an edge `a → a::b`, so a child must name its siblings (`super::b::X`), not the
//! parent's re-export (`super::X`).
//!
//! Run alone: `cargo test --release -p lapidary --test module_graph`. On failure it prints each cycle as a
//! chain of modules with the file and line of every edge.
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A crate's modules: module path (`crate`, `crate::ops::kernels`) → file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            let last = parts.pop().unwrap();
            let stem = last.trim_end_matches(".rs").to_string();
            if !(parts.is_empty() && (stem == "lib" || stem == "main")) && stem != "mod" {
                parts.push(stem);
            }
            let name = std::iter::once("crate".to_string()).chain(parts).collect::<Vec<_>>().join("::");
            out.insert(name, path);
        }
    }
    out
}

/// The source with comments blanked out (line structure kept) and the bodies of inline
/// `#[cfg(test)] mod name { … }` blocks removed.
fn code_of(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if b[i] == b'\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if b[i] == b'"' {
            // String literals: skipped (they may hold `::` in messages).
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                if i < b.len() && b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
        } else {
            let ch = text[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    strip_test_modules(&out)
}

fn strip_test_modules(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(") {
        // The attribute, `#[cfg(...)]`, and whether it names `test` (`test`, `all(test, ...)`).
        let attr_end = rest[at..].find(")]").map_or(rest.len(), |e| at + e + 2);
        let attr = &rest[at..attr_end];
        let names_test = attr.split(|c: char| !c.is_alphanumeric() && c != '_').any(|w| w == "test");
        let after = &rest[attr_end..];
        let trimmed = after.trim_start();
        let is_inline_mod = names_test
            && (trimmed.starts_with("mod ") || trimmed.starts_with("pub mod "))
            && trimmed.find('{').is_some_and(|brace| trimmed.find(';').is_none_or(|semi| brace < semi));
        if !is_inline_mod {
            out.push_str(&rest[..attr_end]);
            rest = after;
            continue;
        }
        out.push_str(&rest[..at]);
        let start = after.len() - trimmed.len();
        let open = start + trimmed.find('{').unwrap();
        let (mut depth, mut end) = (0usize, after.len());
        for (k, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.extend(after[..end].chars().filter(|c| *c == '\n'));
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Every path a file names, as segments, with the line it starts on: each leaf of a `use` tree, and each
/// `a::b` chain elsewhere (`$crate` read as `crate`).
fn paths_of(code: &str) -> Vec<(Vec<String>, usize)> {
    let mut out = Vec::new();
    let b = code.as_bytes();
    let line_at = |pos: usize| code[..pos].matches('\n').count() + 1;
    let mut i = 0;
    while i < b.len() {
        let word_start = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b':');
        if word_start && code[i..].starts_with("use ") && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
            let end = i + code[i..].find(';').unwrap_or(code.len() - i);
            let tree = without_renames(&code[i + 4..end]);
            for leaf in expand_use(&tree) {
                out.push((leaf, line_at(i)));
            }
            i = end;
            continue;
        }
        if word_start && (b[i].is_ascii_alphabetic() || b[i] == b'$') {
            let mut j = i;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b':' || b[j] == b'$') {
                j += 1;
            }
            let chain = &code[i..j];
            // Any path: `resolve` keeps those that start at `crate`, `super`, `self` or a child module.
            if chain.contains("::") {
                let segs = chain.split("::").filter(|s| !s.is_empty()).map(|s| s.replace("$crate", "crate"));
                out.push((segs.collect(), line_at(i)));
            }
            i = j.max(i + 1);
            continue;
        }
        i += 1;
    }
    out
}

/// A use tree with `as name` renames dropped and no white space.
fn without_renames(tree: &str) -> String {
    let mut out = String::new();
    let mut tokens = tree.split_whitespace();
    while let Some(tok) = tokens.next() {
        if tok == "as" {
            // The new name, and whatever punctuation follows it (`}`, `,`).
            let next = tokens.next().unwrap_or("");
            out.push_str(next.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_'));
        } else {
            out.push_str(tok);
        }
    }
    out
}

/// `a::{b, c::{d, e}}` → `[a::b, a::c::d, a::c::e]` (`self` in a group is its prefix).
fn expand_use(tree: &str) -> Vec<Vec<String>> {
    fn split_top(s: &str) -> Vec<&str> {
        let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
        for (k, c) in s.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&s[start..k]);
                    start = k + 1;
                }
                _ => {}
            }
        }
        parts.push(&s[start..]);
        parts.into_iter().filter(|p| !p.is_empty()).collect()
    }
    let tree = tree.trim_start_matches("::");
    match tree.find('{') {
        None => vec![tree.split("::").filter(|s| !s.is_empty() && *s != "*").map(String::from).collect()],
        Some(open) => {
            let prefix: Vec<String> = tree[..open].split("::").filter(|s| !s.is_empty()).map(String::from).collect();
            let inner = &tree[open + 1..tree.len() - 1];
            split_top(inner)
                .into_iter()
                .flat_map(|part| {
                    if part == "self" {
                        return vec![prefix.clone()];
                    }
                    expand_use(part).into_iter().map(|tail| prefix.iter().cloned().chain(tail).collect()).collect()
                })
                .collect()
        }
    }
}

/// The module a path depends on: resolved against `from` (for `super`/`self`, and for a first segment naming
/// one of `from`'s children), the deepest known module it names; `None` for external crates.
fn resolve(from: &str, path: &[String], known: &BTreeMap<String, PathBuf>) -> Option<String> {
    let mut cur: Vec<String> = from.split("::").map(String::from).collect();
    let mut segs = path.iter().peekable();
    match segs.peek().map(|s| s.as_str()) {
        Some("crate") => {
            cur = vec!["crate".into()];
            segs.next();
        }
        Some("self") => {
            segs.next();
        }
        Some("super") => {
            while segs.peek().map(|s| s.as_str()) == Some("super") {
                segs.next();
                cur.pop();
            }
        }
        Some(first) => {
            let child = format!("{from}::{first}");
            if !known.contains_key(&child) {
                return None;
            }
        }
        None => return None,
    }
    let mut best = cur.join("::");
    for s in segs {
        cur.push(s.clone());
        let name = cur.join("::");
        if known.contains_key(&name) {
            best = name;
        } else {
            break;
        }
    }
    Some(best)
}

/// module → (module it depends on → where, `file:line`).
type Edges = BTreeMap<String, BTreeMap<String, String>>;
/// A strongly connected component's modules, and one cycle through them as (`a -> b`, where) edges.
type Cycle = (Vec<String>, Vec<(String, String)>);

/// Each non-trivial strongly connected component, as one cycle through it with the edges' locations.
fn cycles(edges: &Edges) -> Vec<Cycle> {
    // Tarjan's algorithm, recursive: module graphs are small.
    struct T<'a> {
        edges: &'a Edges,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        sccs: Vec<Vec<&'a str>>,
    }
    impl<'a> T<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on.insert(v);
            for w in self.edges.get(v).into_iter().flat_map(|m| m.keys()) {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let l = self.low[w].min(self.low[v]);
                    self.low.insert(v, l);
                } else if self.on.contains(w) {
                    let l = self.index[w].min(self.low[v]);
                    self.low.insert(v, l);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    scc.push(w);
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    self.sccs.push(scc);
                }
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        sccs: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    // One cycle per component: a shortest way back from its first module to itself (breadth-first).
    t.sccs
        .iter()
        .map(|scc| {
            let members: BTreeSet<&str> = scc.iter().copied().collect();
            let start = *members.iter().next().unwrap();
            let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
            let mut queue = std::collections::VecDeque::from([start]);
            let mut closing = None;
            while let Some(v) = queue.pop_front() {
                for w in edges[v].keys().map(String::as_str).filter(|w| members.contains(w)) {
                    if w == start {
                        closing = Some(v);
                        break;
                    }
                    if !prev.contains_key(w) {
                        prev.insert(w, v);
                        queue.push_back(w);
                    }
                }
                if closing.is_some() {
                    break;
                }
            }
            let mut chain = vec![start];
            let mut v = closing.unwrap();
            while v != start {
                chain.push(v);
                v = prev[v];
            }
            chain.push(start);
            chain.reverse();
            let edges = chain.windows(2).map(|w| (format!("{} -> {}", w[0], w[1]), edges[w[0]][w[1]].clone()));
            (members.iter().map(|m| m.to_string()).collect(), edges.collect())
        })
        .collect()
}

fn check_crate(root: &Path, src: &str) -> Vec<String> {
    let dir = root.join(src);
    let known = modules(&dir);
    let mut edges: Edges = BTreeMap::new();
    for (module, file) in &known {
        let code = code_of(&fs::read_to_string(file).unwrap());
        let entry = edges.entry(module.clone()).or_default();
        for (path, line) in paths_of(&code) {
            if let Some(to) = resolve(module, &path, &known) {
                if &to != module {
                    let at = format!("{}:{line}", file.strip_prefix(root).unwrap().display());
                    entry.entry(to).or_insert(at);
                }
            }
        }
    }
    cycles(&edges)
        .into_iter()
        .map(|(members, cycle)| {
            let lines: Vec<String> = cycle.iter().map(|(edge, at)| format!("    {edge}  ({at})")).collect();
            format!(
                "{src}: {} modules reach each other ({}); one cycle:\n{}",
                members.len(),
                members.join(", "),
                lines.join("\n")
            )
        })
        .collect()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn no_crate_has_an_import_cycle() {
    let root = repo_root();
    let mut found = Vec::new();
    for src in ["model/src", "data/src", "trainer/src", "hub/src"] {
        found.extend(check_crate(&root, src));
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

/// The checker itself on hand-made cases: a cycle through a parent's re-export, one through an inline path,
/// none through a test module or a comment.
#[test]
fn the_checker_sees_cycles_and_only_cycles() {
    let dir = std::env::temp_dir().join(format!("lapidary-module-graph-{}", std::process::id()));
    let write = |rel: &str, text: &str| {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    let _ = fs::remove_dir_all(&dir);
    write("a/src/lib.rs", "pub mod x;\npub mod y;\n");
    write("a/src/x/mod.rs", "mod inner;\npub use inner::Thing;\n");
    write("a/src/x/inner.rs", "use super::{Thing as T};\npub struct Thing;\n");
    write("a/src/y.rs", "// crate::x::inner is mentioned in a comment only\npub fn f() -> u8 { 1 }\n");
    write("b/src/lib.rs", "pub mod p;\npub mod q;\n");
    write("b/src/p.rs", "pub fn f() { let _ = crate::q::g(); }\n#[cfg(test)]\nmod tests {\n    use crate::q;\n}\n");
    write("b/src/q.rs", "pub fn g() {}\n#[cfg(all(test, feature = \"x\"))]\nmod tests {\n    use crate::p::f;\n}\n");
    write("c/src/lib.rs", "pub mod p;\npub mod q;\n");
    write("c/src/p.rs", "pub fn f() { crate::q::g() }\n");
    write("c/src/q.rs", "use crate::{p::{self}, z};\npub fn g() {}\n");
    let a = check_crate(&dir, "a/src");
    assert_eq!(a.len(), 1, "{a:?}");
    assert!(a[0].contains("crate::x -> crate::x::inner") && a[0].contains("crate::x::inner -> crate::x"), "{a:?}");
    assert!(check_crate(&dir, "b/src").is_empty());
    let c = check_crate(&dir, "c/src");
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(c[0].contains("c/src/p.rs:1") && c[0].contains("c/src/q.rs:1"), "{c:?}");
    let _ = fs::remove_dir_all(&dir);
}
