//! The driver's layers, checked on its source: `core` (pure) imports nothing from `edges`,
//! `runner` or `report`; `edges` import only `core`; `report` imports only `core`; `runner`
//! sits on top. `clock` and `error` are shared and import nothing. No module imports another
//! that (directly or through others) imports it back, and `core` does no I/O.
//!
//! A module here is a file or directory directly under a layer (`core::spec` covers
//! `core/spec/*.rs`; `runner::pump` is `runner/pump.rs`); its dependencies are the `crate::`,
//! `aviaryctl::` (in the binary's `cmd/`) and `super::` paths in its code (comments and unit tests excluded; `super` is read as the
//! file's parent module, so inline modules other than tests should use `crate::` paths).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers each layer may import (besides itself).
const ALLOWED: &[(&str, &[&str])] = &[
    ("clock", &[]),
    ("error", &[]),
    ("core", &["error"]),
    ("edges", &["core", "error", "clock"]),
    ("report", &["core", "error"]),
    ("runner", &["core", "edges", "report", "error", "clock"]),
    // The binary's subcommands (`main.rs` and `cmd/`) sit on top of everything.
    (
        "cmd",
        &["core", "edges", "report", "runner", "error", "clock"],
    ),
];

/// Paths that would mean I/O, threads or wall-clock time in `core`.
const IMPURE: &[&str] = &[
    "std::fs",
    "std::net",
    "std::thread",
    "std::process",
    "std::env",
    "std::io::stdout",
    "std::io::stderr",
    "SystemTime",
    "Instant::now",
    "ureq::",
    "println!",
    "eprintln!",
];

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `core/spec/mod.rs` → `[core, spec]`.
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts
}

/// The checked unit a module path belongs to: the layer and at most one level below it.
fn unit(path: &[String]) -> String {
    path.iter().take(2).cloned().collect::<Vec<_>>().join("::")
}

/// Code without comments (line comments, doc comments, and block comments).
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut in_block = false;
    for line in text.lines() {
        let mut l = line;
        if in_block {
            match l.find("*/") {
                Some(i) => {
                    in_block = false;
                    l = &l[i + 2..];
                }
                None => continue,
            }
        }
        if let Some(i) = l.find("/*") {
            in_block = !l[i..].contains("*/");
            l = &l[..i];
        }
        let l = match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        };
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Identifiers following `prefix` in paths such as `prefix::a::{b, c}::d` (only the leading
/// segments matter here).
fn path_segments(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let mut segs = Vec::new();
        let mut s = rest;
        loop {
            let n = s
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(s.len());
            if n == 0 {
                break;
            }
            segs.push(s[..n].to_string());
            s = &s[n..];
            match s.strip_prefix("::") {
                Some(after) => s = after,
                None => break,
            }
        }
        out.push(segs);
    }
    out
}

/// The units this module refers to, resolved against the known units.
fn dependencies(path: &[String], code: &str, units: &BTreeSet<String>) -> BTreeSet<String> {
    // The binary's modules name the library's by the crate name.
    let mut targets: Vec<Vec<String>> = path_segments(code, "crate::");
    targets.extend(path_segments(code, "aviaryctl::"));
    for segs in path_segments(code, "super::") {
        // `super` of a `mod.rs` or of a file is its parent module.
        let mut base: Vec<String> = path[..path.len().saturating_sub(1)].to_vec();
        let mut segs = segs.as_slice();
        while segs.first().is_some_and(|s| s == "super") {
            base.pop();
            segs = &segs[1..];
        }
        base.extend(segs.iter().cloned());
        targets.push(base);
    }
    let mut out = BTreeSet::new();
    for t in targets {
        for n in (1..=t.len().min(2)).rev() {
            let u = t[..n].join("::");
            if units.contains(&u) {
                out.insert(u);
                break;
            }
        }
    }
    out
}

/// A file's code without comments and without its unit tests (a trailing `#[cfg(test)]`
/// module, which may import what it likes).
fn non_test_code(file: &Path) -> String {
    let code = code_of(&std::fs::read_to_string(file).unwrap());
    code.split("#[cfg(test)]").next().unwrap_or("").to_string()
}

struct Module {
    files: Vec<PathBuf>,
    deps: BTreeSet<String>,
}

fn modules() -> BTreeMap<String, Module> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let paths: Vec<(PathBuf, Vec<String>)> = files
        .into_iter()
        .map(|f| {
            let p = module_path(&f);
            (f, p)
        })
        .filter(|(_, p)| !matches!(p.as_slice(), [x] if x == "lib" || x == "main"))
        .collect();
    let units: BTreeSet<String> = paths.iter().map(|(_, p)| unit(p)).collect();
    let mut out: BTreeMap<String, Module> = BTreeMap::new();
    for (file, path) in &paths {
        let code = non_test_code(file);
        let u = unit(path);
        let deps = dependencies(path, &code, &units);
        let m = out.entry(u.clone()).or_insert(Module {
            files: Vec::new(),
            deps: BTreeSet::new(),
        });
        m.files.push(file.clone());
        m.deps.extend(deps.into_iter().filter(|d| *d != u));
    }
    out
}

fn layer(unit: &str) -> &str {
    unit.split("::").next().unwrap_or(unit)
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let mods = modules();
    assert!(mods.contains_key("core::step") && mods.contains_key("edges::source"));
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut problems = Vec::new();
    for (name, m) in &mods {
        let l = layer(name);
        let Some(ok) = allowed.get(l) else {
            problems.push(format!("{name}: not in a known layer ({:?})", m.files));
            continue;
        };
        for d in &m.deps {
            let dl = layer(d);
            if dl != l && !ok.contains(&dl) {
                problems.push(format!("{name} imports {d}: {l} may import only {ok:?}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "layer violations:\n{}",
        problems.join("\n")
    );
}

/// Every import cycle of a module graph (as `a → b → a`), by depth-first search.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        if done.contains(n) {
            return;
        }
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_string());
            out.push(c.join(" → "));
            return;
        }
        stack.push(n.to_string());
        for d in graph.get(n).into_iter().flatten() {
            visit(d, graph, stack, done, out);
        }
        stack.pop();
        done.insert(n.to_string());
    }
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        visit(n, graph, &mut Vec::new(), &mut done, &mut out);
    }
    out
}

#[test]
fn no_module_imports_itself_through_others() {
    let graph: BTreeMap<String, BTreeSet<String>> =
        modules().into_iter().map(|(n, m)| (n, m.deps)).collect();
    let found = cycles(&graph);
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

#[test]
fn core_does_no_io() {
    let mods = modules();
    let mut problems = Vec::new();
    for (name, m) in mods.iter().filter(|(n, _)| layer(n) == "core") {
        for f in &m.files {
            let code = non_test_code(f);
            for bad in IMPURE {
                if code.contains(bad) {
                    problems.push(format!("{name} ({}) uses {bad}", f.display()));
                }
            }
        }
    }
    assert!(problems.is_empty(), "I/O in core:\n{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_imports() {
    let units: BTreeSet<String> = ["core::spec", "edges::sink", "runner", "runner::pump"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let code = code_of(
        "use crate::edges::sink::{A, B};\n// use crate::runner::X;\nlet x = crate::core::spec::f();\nuse super::Y;\n",
    );
    let path: Vec<String> = vec!["runner".into(), "pump".into()];
    let deps = dependencies(&path, &code, &units);
    let want: BTreeSet<String> = ["core::spec", "edges::sink", "runner"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(deps, want);
}

#[test]
fn the_checker_finds_the_old_cycle() {
    // Before the layers: spec → sink (TrafficMode) → state (replace_file) → step (Command)
    // → gates → spec.
    let edges = [
        ("spec", "sink"),
        ("sink", "state"),
        ("state", "step"),
        ("step", "gates"),
        ("gates", "spec"),
        ("runner", "step"),
    ];
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in edges {
        graph.entry(a.into()).or_default().insert(b.into());
    }
    let found = cycles(&graph);
    assert_eq!(found, ["gates → spec → sink → state → step → gates"]);
    graph.entry("gates".into()).or_default().remove("spec");
    assert!(cycles(&graph).is_empty());
}
