//! The demo, shortened: real Envoy, real plugin, two rollouts. Good v2 must be promoted and
//! bad v2 rolled back with a rollback webhook, and every report written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use aviary_demo::{self as demo, DemoOptions};

#[test]
fn demo_promotes_good_v2_and_rolls_back_bad_v2() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::env::temp_dir().join(format!("aviary-demo-test-{}", std::process::id()));
    let opts = DemoOptions::new(&root, out.clone()).quick();
    let results = demo::run(&opts).unwrap();
    assert_eq!(results.len(), 2);
    let (good, bad) = (&results[0], &results[1]);
    assert_eq!(good.outcome.as_deref(), Some("promoted"), "{good:#?}");
    assert_eq!(bad.outcome.as_deref(), Some("rolled back"), "{bad:#?}");
    assert!(bad.seconds < good.seconds, "the bad canary is caught early");
    for r in &results {
        assert_eq!(r.client_errors, 0, "{}: traffic kept flowing", r.name);
        assert!(r.client_requests > 100);
        for f in ["report.json", "report.md", "report.svg"] {
            let p = r.report_dir.join(f);
            assert!(p.is_file(), "{} missing", p.display());
        }
    }
    let events = |r: &demo::DemoRollout| -> Vec<String> {
        r.notifications
            .iter()
            .map(|n| {
                serde_json::from_str::<serde_json::Value>(n).unwrap()["event"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    let (ge, be) = (events(good), events(bad));
    assert!(ge.iter().any(|e| e == "promote"), "{ge:?}");
    assert!(
        be.iter().any(|e| e == "rollback"),
        "a human is told: {be:?}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bad.report_dir.join("report.json")).unwrap())
            .unwrap();
    assert!(
        report.to_string().contains("errorRate"),
        "the rollback decision records the gate values"
    );
    // The run's rollouts are in the history beside the output directory, kept across runs.
    let history = std::fs::read_to_string(&opts.history).unwrap();
    let runs: Vec<serde_json::Value> = history
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(runs.len(), 2, "{history}");
    assert_eq!(runs[0]["outcome"], "promoted");
    assert_eq!(runs[1]["outcome"], "rolledBack");
    assert!(runs[1]["decidingGate"].is_string(), "{}", runs[1]);
    std::fs::remove_dir_all(&out).ok();
    std::fs::remove_file(&opts.history).ok();
}
