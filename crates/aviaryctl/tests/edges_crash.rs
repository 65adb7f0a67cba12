//! Crash safety with a real Envoy: `aviaryctl run` is SIGKILLed mid-rollout and started
//! again. The restarted driver resumes at the persisted step, Envoy's canary weight never
//! goes down or skips a step, a second concurrent driver is refused by the lock, and the
//! records log loses and repeats nothing: the killed driver's saved state never counts a
//! record the log lacks, and after the restart the log holds every record exactly once.

mod edges_support;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use aviary_contract::config::PluginConfig;
use aviary_sim::{run_load, LoadConfig};
use aviaryctl::edges::source::{ApplyProbe, EnvoyAdminSource};
use edges_support::{plugin_config, poll, rollout_yaml, ChildGuard, Rig, TempDir};
use serde_json::Value;

const ANALYSIS: &str = "    interval: 1s
    fastInterval: 200ms
    threshold: 2
    maxHold: 1m
    minSamples: 30
    stepWeights: [10, 20, 30, 40, 50]
    gates:
      errorRate: {max: 0.05, maxRelative: 3}";

fn start_driver(bin: &str, dir: &TempDir, log: &str) -> ChildGuard {
    let log = std::fs::File::create(dir.join(log)).expect("log");
    ChildGuard(Some(
        Command::new(bin)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("run")
            .arg(dir.join("rollout.yaml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("aviaryctl run"),
    ))
}

/// The persisted state as raw JSON (readable whatever the typed state looks like).
fn raw_state(dir: &TempDir) -> Option<Value> {
    let bytes = std::fs::read(dir.join("state/state.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The records log as raw JSON lines: each whole line parsed (`None` for one that is not),
/// and whether the file ends with a newline.
fn raw_records(dir: &TempDir) -> (Vec<Option<Value>>, bool) {
    let text = std::fs::read_to_string(dir.join("state/state.records.jsonl")).unwrap_or_default();
    let lines = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    (lines, text.is_empty() || text.ends_with('\n'))
}

/// The records the state `v` counts, in order, as the report reads them.
fn counted_records(dir: &TempDir, v: &Value) -> Vec<Value> {
    let count = v["records"].as_u64().unwrap_or(0);
    raw_records(dir)
        .0
        .into_iter()
        .flatten()
        .filter(|r| r["seq"].as_u64().is_some_and(|s| s < count))
        .collect()
}

/// The canary weights of the timeline the records tell.
fn timeline(records: &[Value]) -> Vec<u64> {
    records
        .iter()
        .filter(|r| r["type"] == "weight")
        .filter_map(|r| r["canaryBps"].as_u64())
        .collect()
}

fn step_of(v: &Value) -> Option<u64> {
    v["phase"]["canary"]["step"].as_u64()
}

fn ecds_canary_bps(rig: &Rig) -> Option<u32> {
    let doc: Value = serde_json::from_slice(&std::fs::read(&rig.ecds).ok()?).ok()?;
    let raw = doc["resources"][0]["typed_config"]["config"]["configuration"]["value"].as_str()?;
    let cfg = PluginConfig::from_json(raw.as_bytes()).ok()?;
    if cfg.kill_switch.is_some() {
        return Some(0);
    }
    cfg.weight_bps(1)
}

#[test]
fn sigkill_mid_rollout_then_restart_resumes_without_a_weight_jump() {
    let rig = Rig::start(1, &plugin_config(0));
    let dir = TempDir::new("crash");
    std::fs::write(
        dir.join("rollout.yaml"),
        rollout_yaml(&rig, "crash-test", ANALYSIS),
    )
    .expect("spec");
    let bin = env!("CARGO_BIN_EXE_aviaryctl");
    let url = rig.urls[0].clone();
    let load = thread::spawn(move || {
        let _ = run_load(&LoadConfig {
            rate: Some(400.0),
            connections: 4,
            users: 2000,
            ..LoadConfig::duration(url, Duration::from_secs(15))
        });
    });

    // Watch Envoy's applied canary weight for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let admin = EnvoyAdminSource::new(rig.admin_urls());
        let stop = stop.clone();
        thread::spawn(move || {
            let mut seen: Vec<(Instant, u64)> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                if let Some(w) = admin
                    .applied("recsys")
                    .ok()
                    .and_then(|a| a.first().and_then(|a| a.weights.get("canary").copied()))
                {
                    if seen.last().map(|s| s.1) != Some(w) {
                        seen.push((Instant::now(), w));
                    }
                }
                thread::sleep(Duration::from_millis(5));
            }
            seen
        })
    };

    let mut first = start_driver(bin, &dir, "run1.log");
    let at_step = poll(Duration::from_secs(20), Duration::from_millis(5), || {
        raw_state(&dir).filter(|v| step_of(v) >= Some(1))
    });
    if at_step.is_none() {
        panic!(
            "no progress:\n{}",
            std::fs::read_to_string(dir.join("run1.log")).unwrap_or_default()
        );
    }
    // Kill it at an arbitrary point of the bake.
    thread::sleep(Duration::from_millis(370));
    // std's kill() is SIGKILL on Unix: no chance to clean up.
    first.child().kill().expect("SIGKILL");
    first.child().wait().expect("reaped");

    let killed = raw_state(&dir).expect("state survives SIGKILL intact");
    let step = step_of(&killed).expect("mid-rollout");
    let bps = killed["canaryBps"].as_u64().expect("weight");
    let on_disk = ecds_canary_bps(&rig).expect("ECDS file intact");
    // Records are appended before the state that counts them is saved: every record the
    // killed driver's state counts is in the log, once.
    let killed_records = counted_records(&dir, &killed);
    let seqs: Vec<u64> = killed_records
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    let count = killed["records"].as_u64().expect("records counted");
    assert_eq!(
        seqs,
        (0..count).collect::<Vec<_>>(),
        "records lost or repeated"
    );
    // The state is saved before a weight increase is written, so Envoy may lag by one step.
    let t = timeline(&killed_records);
    assert!(
        u64::from(on_disk) == bps || (t.len() >= 2 && t[t.len() - 2] == u64::from(on_disk)),
        "state {bps} vs ECDS {on_disk}"
    );
    println!("killed at step {} ({} bps)", step + 1, bps);
    thread::sleep(Duration::from_millis(300));

    let mut second = start_driver(bin, &dir, "run2.log");
    // The restart is recorded at the same step, and re-asserts its weight.
    let restarted = poll(Duration::from_secs(10), Duration::from_millis(5), || {
        raw_state(&dir).filter(|v| {
            counted_records(&dir, v)
                .iter()
                .any(|r| r["type"] == "decision" && r["kind"] == "restart")
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "no restart:\n{}",
            std::fs::read_to_string(dir.join("run2.log")).unwrap_or_default()
        )
    });
    let restart = counted_records(&dir, &restarted)
        .into_iter()
        .find(|r| r["kind"] == "restart")
        .expect("restart decision");
    assert_eq!(restart["canaryBps"].as_u64(), Some(bps), "{restart}");
    // It continues the numbering of the state the killed driver saved.
    assert_eq!(restart["seq"].as_u64(), Some(count), "{restart}");
    assert!(step_of(&restarted) >= Some(step), "never goes back a step");

    // A second concurrent driver is refused.
    let third = Command::new(bin)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("run")
        .arg(dir.join("rollout.yaml"))
        .output()
        .expect("third driver");
    assert!(!third.status.success());
    assert!(
        String::from_utf8_lossy(&third.stderr).contains("another driver"),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );

    let Some(status) = second.wait_timeout(Duration::from_secs(30)) else {
        panic!(
            "not finished:\n{}",
            std::fs::read_to_string(dir.join("run2.log")).unwrap_or_default()
        );
    };
    assert_eq!(
        status.code(),
        Some(0),
        "promoted:\n{}",
        std::fs::read_to_string(dir.join("run2.log")).unwrap_or_default()
    );
    thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    let seen = watcher.join().expect("watcher");
    let weights: Vec<u64> = seen.iter().map(|s| s.1).collect();
    println!("canary weights applied at Envoy: {weights:?}");
    assert!(
        weights.windows(2).all(|w| w[0] < w[1]),
        "monotonic: {weights:?}"
    );
    let allowed = [0, 1000, 2000, 3000, 4000, 5000, 10_000];
    assert!(weights.iter().all(|w| allowed.contains(w)), "{weights:?}");
    assert_eq!(weights.last(), Some(&10_000));

    let fin = raw_state(&dir).expect("final state");
    assert!(fin.get("timeline").is_none() && fin.get("decisions").is_none());
    // The whole log: whole lines only, numbered 0, 1, 2, … once each, as many as the final
    // state counts (whatever the kill left behind was cut on restart).
    let (lines, whole) = raw_records(&dir);
    assert!(whole, "torn last line");
    let seqs: Vec<Option<u64>> = lines
        .iter()
        .map(|l| l.as_ref().and_then(|r| r["seq"].as_u64()))
        .collect();
    let count = fin["records"].as_u64().expect("records counted");
    assert_eq!(seqs, (0..count).map(Some).collect::<Vec<_>>());
    let records: Vec<Value> = lines.into_iter().flatten().collect();
    assert_eq!(
        timeline(&records),
        vec![1000, 2000, 3000, 4000, 5000, 10_000],
        "no step repeated or skipped"
    );
    // The proxies confirmed the promotion: the records say when it took effect.
    let promoted = records.iter().rev().find(|r| r["type"] == "weight");
    let applied = records
        .iter()
        .filter(|r| r["type"] == "applied")
        .any(|a| promoted.is_some_and(|p| a["write"] == p["write"]));
    assert!(applied, "the promotion's write is confirmed in the records");
    let _ = load.join();
}
