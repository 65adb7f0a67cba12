//! No module import cycles, in this crate and in the filter (`../../src`): the modules can be
//! ordered so that each one imports only modules below it.
//!
//! A module is a file (`a/mod.rs` is `a`, `lib.rs` the crate root). Its imports are every path
//! in its code, tests included, that starts with `crate::`, `super::`, `self::` or the name of
//! one of its child modules, with `use` groups (`crate::a::{b::C, d}`) expanded; a path counts
//! as an import of the deepest module it names. Comments are skipped. `super::` after an inline
//! `mod name {` (unit tests) means the file's own module.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

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

/// `config/compile/mod.rs` → `[config, compile]`; `lib.rs` → `[]`.
fn module_of(rel: &Path) -> Module {
    let mut parts: Module = rel
        .iter()
        .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The crate's modules and their code, read from `src`.
fn read_crate(src: &Path) -> Vec<(Module, String)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(src).unwrap();
            (module_of(rel), std::fs::read_to_string(f).unwrap())
        })
        .collect()
}

/// Code with comments blanked out (string literals are kept; none here spell a path).
fn strip_comments(text: &str) -> String {
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
                None => {
                    out.push('\n');
                    continue;
                }
            }
        }
        if let Some(i) = l.find("/*") {
            in_block = !l[i..].contains("*/");
            l = &l[..i];
        }
        if let Some(i) = l.find("//") {
            l = &l[..i];
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The paths that continue after a `root::` at the start of `s`, e.g. `a::{b::C, d}` gives
/// `[a, b, C]` and `[a, d]` (segments only; `self` in a group is dropped).
fn paths_after(s: &str) -> Vec<Vec<String>> {
    let s = s.trim_start();
    if let Some(group) = s.strip_prefix('{') {
        let mut depth = 0;
        let mut items = Vec::new();
        let mut start = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    items.push(&group[start..i]);
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&group[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return items
            .into_iter()
            .filter(|i| !i.trim().is_empty())
            .flat_map(paths_after)
            .collect();
    }
    let n = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
    if n == 0 {
        return vec![Vec::new()];
    }
    let head = s[..n].to_string();
    let rest = &s[n..];
    match rest.strip_prefix("::") {
        Some(after)
            if after
                .trim_start()
                .starts_with(|c: char| c == '{' || is_ident(c)) =>
        {
            paths_after(after)
                .into_iter()
                .map(|mut p| {
                    p.insert(0, head.clone());
                    p
                })
                .collect()
        }
        _ if head == "self" => vec![Vec::new()],
        _ => vec![vec![head]],
    }
}

/// The modules `module` imports, resolved against `known`.
fn imports(module: &Module, code: &str, known: &BTreeSet<Module>) -> BTreeSet<Module> {
    let code = strip_comments(code);
    let inline_from = code
        .lines()
        .scan(0, |at, l| {
            let start = *at;
            *at += l.len() + 1;
            Some((start, l))
        })
        .find(|(_, l)| {
            let t = l.trim_start();
            let t = t.strip_prefix("pub ").unwrap_or(t);
            t.starts_with("mod ") && t.trim_end().ends_with('{')
        })
        .map_or(code.len(), |(at, _)| at);
    let children: BTreeSet<&str> = known
        .iter()
        .filter(|k| k.len() == module.len() + 1 && k.starts_with(module))
        .filter_map(|k| k.last().map(String::as_str))
        .collect();
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("::") {
        let before = &code[..i];
        let root_start = before.rfind(|c: char| !is_ident(c)).map_or(0, |j| {
            j + before[j..].chars().next().map_or(1, char::len_utf8)
        });
        let root = &before[root_start..];
        if root.is_empty() || before[..root_start].ends_with("::") {
            continue;
        }
        let base: Module = match root {
            "crate" => Vec::new(),
            "self" => module.clone(),
            "super" if root_start >= inline_from => module.clone(),
            "super" => module[..module.len().saturating_sub(1)].to_vec(),
            c if children.contains(c) => {
                let mut m = module.clone();
                m.push(c.to_string());
                m
            }
            _ => continue,
        };
        for tail in paths_after(&code[i + 2..]) {
            let mut base = base.clone();
            let mut tail = tail.as_slice();
            while tail.first().is_some_and(|s| s == "super") {
                base.pop();
                tail = &tail[1..];
            }
            base.extend(tail.iter().cloned());
            let target = (0..=base.len())
                .rev()
                .map(|n| base[..n].to_vec())
                .find(|m| known.contains(m));
            if let Some(t) = target.filter(|t| t != module) {
                out.insert(t);
            }
        }
    }
    out
}

fn graph(files: &[(Module, String)]) -> BTreeMap<Module, BTreeSet<Module>> {
    let known: BTreeSet<Module> = files.iter().map(|(m, _)| m.clone()).collect();
    files
        .iter()
        .map(|(m, code)| (m.clone(), imports(m, code, &known)))
        .collect()
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// The modules in layers, lowest first (each imports only from earlier layers), or a cycle.
fn layers(g: &BTreeMap<Module, BTreeSet<Module>>) -> Result<Vec<Vec<Module>>, Vec<Module>> {
    let mut placed: BTreeSet<Module> = BTreeSet::new();
    let mut out = Vec::new();
    while placed.len() < g.len() {
        let layer: Vec<Module> = g
            .iter()
            .filter(|(m, deps)| !placed.contains(*m) && deps.iter().all(|d| placed.contains(d)))
            .map(|(m, _)| m.clone())
            .collect();
        if layer.is_empty() {
            return Err(find_cycle(g, &placed));
        }
        placed.extend(layer.iter().cloned());
        out.push(layer);
    }
    Ok(out)
}

/// A cycle among the modules not yet placed: follow unplaced imports until one repeats.
fn find_cycle(g: &BTreeMap<Module, BTreeSet<Module>>, placed: &BTreeSet<Module>) -> Vec<Module> {
    let mut path: Vec<Module> = Vec::new();
    let mut at = g.keys().find(|m| !placed.contains(*m)).unwrap().clone();
    loop {
        if let Some(i) = path.iter().position(|m| *m == at) {
            let mut cycle = path[i..].to_vec();
            cycle.push(at);
            return cycle;
        }
        path.push(at.clone());
        at = g[&at]
            .iter()
            .find(|d| !placed.contains(*d))
            .unwrap()
            .clone();
    }
}

fn assert_layered(src: &Path) {
    let g = graph(&read_crate(src));
    match layers(&g) {
        Ok(layers) => {
            for (i, layer) in layers.iter().enumerate() {
                let names: Vec<String> = layer.iter().map(name).collect();
                println!("{}: layer {i}: {}", src.display(), names.join(", "));
            }
        }
        Err(cycle) => {
            let names: Vec<String> = cycle.iter().map(name).collect();
            panic!("import cycle in {}: {}", src.display(), names.join(" → "));
        }
    }
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn contract_modules_have_no_import_cycle() {
    assert_layered(&manifest_dir().join("src"));
}

#[test]
fn filter_modules_have_no_import_cycle() {
    assert_layered(&manifest_dir().join("../../src"));
}

fn m(s: &str) -> Module {
    s.split("::")
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

fn files(list: &[(&str, &str)]) -> Vec<(Module, String)> {
    list.iter().map(|(p, c)| (m(p), c.to_string())).collect()
}

#[test]
fn the_checker_resolves_groups_super_children_and_finds_cycles() {
    let g = graph(&files(&[
        ("", "pub mod a; pub mod b;"),
        (
            "a",
            "mod x;\nuse x::{X, self};\nuse crate::{b::{c::C, D}, a};",
        ),
        ("a::x", "use super::super::b::c::{E};\n// use crate::a;\n"),
        ("b", "pub mod c;\nfn f() { let _ = crate::b::c::F; }"),
        (
            "b::c",
            "pub struct C;\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
        ),
    ]));
    assert_eq!(g[&m("a")], [m("a::x"), m("b"), m("b::c")].into());
    assert_eq!(g[&m("a::x")], [m("b::c")].into());
    assert_eq!(g[&m("b")], [m("b::c")].into());
    assert!(g[&m("b::c")].is_empty());
    assert!(layers(&g).is_ok());

    let g = graph(&files(&[
        ("", ""),
        ("filter", "use crate::shadow::Shadows;"),
        ("shadow", "use crate::filter::Active;"),
    ]));
    assert_eq!(layers(&g), Err(vec![m("filter"), m("shadow"), m("filter")]));
}
