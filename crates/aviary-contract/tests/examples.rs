//! Aviary configs shown in other crates' documentation are valid Aviary configs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use aviary_contract::config::parse_and_compile;

/// The raw-string arguments of `configure(` calls in a file's `//!` documentation.
fn configured_in_docs(file: &str) -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("//!"))
        .collect();
    let doc = doc.join("\n");
    doc.match_indices("configure(")
        .filter_map(|(i, _)| {
            let rest = doc[i..].split_once("r#\"")?.1;
            Some(rest.split_once("\"#")?.0.to_string())
        })
        .collect()
}

#[test]
fn the_test_host_example_config_is_valid() {
    let configs = configured_in_docs("../aviary-testhost/src/lib.rs");
    assert!(!configs.is_empty(), "the example configures the plugin");
    for raw in configs {
        if let Err(e) = parse_and_compile(raw.as_bytes()) {
            panic!("{e}\n{raw}");
        }
    }
}
