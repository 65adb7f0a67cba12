//! CI smoke check: the quick benchmark (about a second per variant) runs every variant in the
//! real Envoy and must see no errors. It asserts nothing about speed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use aviary_bench::variants::Variant;
use aviary_bench::{report, run, Options};

/// `make test` builds aviary.wasm but not the no-op module; build it if it is missing.
fn ensure_noop(opts: &Options) {
    if opts.wasms.noop.is_file() {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "-p",
            "aviary-noop",
        ])
        .current_dir(&opts.root)
        .status()
        .expect("running cargo");
    assert!(status.success(), "building aviary-noop failed");
}

#[test]
fn quick_bench_runs_every_variant_without_errors() {
    let root = aviary_sim::workspace_root().expect("workspace root");
    let opts = Options::quick(root);
    assert!(
        Path::new(&opts.wasms.aviary).is_file(),
        "{} is missing: run `make build` first",
        opts.wasms.aviary.display()
    );
    ensure_noop(&opts);
    let r = run(opts).unwrap();
    let problems = r.problems();
    assert!(
        problems.is_empty(),
        "problems:\n  {}",
        problems.join("\n  ")
    );
    for v in Variant::ALL {
        let runs = &r.throughput.runs[v.key()];
        assert!(
            runs.iter().all(|x| x.wrk.requests > 0),
            "{}: no requests completed",
            v.key()
        );
    }
    for v in Variant::LATENCY {
        assert!(
            !r.throughput.latency[v.key()].is_empty(),
            "{}: no fixed-rate run",
            v.key()
        );
    }
    assert!(!r.control.ecds_ms.is_empty() && !r.control.rollbacks.is_empty());
    assert!(r.host.requests.iter().all(|c| c.ns.total() > 0.0));
    let md = report::markdown(&r);
    for section in [
        "## Machine",
        "## Goals",
        "## 1–3.",
        "## 4.",
        "## 5.",
        "## 6.",
    ] {
        assert!(md.contains(section), "the report lacks {section}");
    }
}
