//! Crash safety with a real Envoy: `aviaryctl run` is SIGKILLed mid-rollout and started
//! again. The restarted driver resumes at the persisted step, Envoy's canary weight never
//! goes down or skips a step, and a second concurrent driver is refused by the lock.

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
    // The state is saved before a weight increase is written, so Envoy may lag by one step.
    assert!(
        u64::from(on_disk) == bps
            || killed["timeline"].as_array().is_some_and(|t| {
                t.len() >= 2 && t[t.len() - 2]["canaryBps"].as_u64() == Some(u64::from(on_disk))
            }),
        "state {bps} vs ECDS {on_disk}"
    );
    println!("killed at step {} ({} bps)", step + 1, bps);
    thread::sleep(Duration::from_millis(300));

    let mut second = start_driver(bin, &dir, "run2.log");
    // The restart is recorded at the same step, and re-asserts its weight.
    let restarted = poll(Duration::from_secs(10), Duration::from_millis(5), || {
        raw_state(&dir).filter(|v| {
            v["decisions"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["kind"] == "restart"))
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "no restart:\n{}",
            std::fs::read_to_string(dir.join("run2.log")).unwrap_or_default()
        )
    });
    let restart = restarted["decisions"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["kind"] == "restart").cloned())
        .expect("restart decision");
    assert_eq!(restart["canaryBps"].as_u64(), Some(bps), "{restart}");
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
    let timeline: Vec<u64> = fin["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|p| p["canaryBps"].as_u64())
        .collect();
    assert_eq!(
        timeline,
        vec![1000, 2000, 3000, 4000, 5000, 10_000],
        "no step repeated or skipped"
    );
    let _ = load.join();
}
