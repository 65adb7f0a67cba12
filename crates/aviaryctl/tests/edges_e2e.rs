//! End to end with a real Envoy, the release plugin over ECDS, simulated model servers and
//! live load: the canary starts failing and the runner's fast track sends every request back
//! to the baseline within a second; `aviaryctl abort` against a running driver (a child
//! process) does the same within a tick.
//!
//! The two tests share the two CPU cores with Envoy and the load, so they run one at a time.

mod edges_support;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use aviary_sim::{run_load, LoadConfig};
use aviaryctl::clock::SystemClock;
use aviaryctl::core::spec::RolloutSpec;
use aviaryctl::core::step::{Outcome, Phase, RolloutState};
use aviaryctl::edges::source::{ApplyProbe, EnvoyAdminSource};
use aviaryctl::edges::store::StateStore;
use aviaryctl::runner::{Components, LogMode, Runner, RunnerEvent, RunnerOptions};
use edges_support::{plugin_config, poll, rollout_yaml, user_on, ChildGuard, Probe, Rig, TempDir};

static SERIAL: Mutex<()> = Mutex::new(());

const ANALYSIS: &str = "    interval: 2s
    fastInterval: 100ms
    threshold: 2
    maxHold: 1m
    minSamples: 50
    stepWeights: [20, 40, 60, 80]
    gates:
      errorRate: {max: 0.05, maxRelative: 3}";

/// Background load for the statistics, until `stop`.
fn background_load(url: String, seconds: u64) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let cfg = LoadConfig {
            rate: Some(400.0),
            connections: 4,
            users: 2000,
            ..LoadConfig::duration(url, Duration::from_secs(seconds))
        };
        let _ = run_load(&cfg);
    })
}

fn canary_weight(src: &EnvoyAdminSource) -> Option<u64> {
    src.applied("recsys")
        .ok()?
        .first()
        .and_then(|a| a.weights.get("canary").copied())
}

#[test]
fn canary_failure_is_rolled_back_at_envoy_within_a_second() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rig = Rig::start(1, &plugin_config(0));
    let dir = TempDir::new("e2e");
    let spec = RolloutSpec::parse(&rollout_yaml(&rig, "fast-rollback", ANALYSIS)).expect("spec");
    let store = StateStore::in_dir(dir.join("state")).expect("store");
    let admin = EnvoyAdminSource::new(rig.admin_urls());
    let load = background_load(rig.urls[0].clone(), 8);

    let components = Components::from_spec(&spec).expect("components");
    let opts = RunnerOptions {
        log: LogMode::Quiet,
        ..RunnerOptions::default()
    };
    let runner =
        Runner::new(spec, store.clone(), components, Arc::new(SystemClock), opts).expect("runner");
    let stop = runner.stop_handle();
    let run = thread::spawn(move || runner.run());

    // Step 1 (20 %) is applied at Envoy.
    poll(Duration::from_secs(10), Duration::from_millis(10), || {
        (canary_weight(&admin) == Some(2000)).then_some(())
    })
    .expect("canary at 20 %");
    let user = user_on(&rig.urls[0], "canary");
    let probe = Probe::start(&rig.urls[0], &user);
    thread::sleep(Duration::from_millis(300));

    let breach = Instant::now();
    rig.canary
        .update(|c| c.error_rate = 1.0)
        .expect("canary starts failing");
    let finished = poll(Duration::from_secs(10), Duration::from_millis(5), || {
        run.is_finished().then_some(())
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let outcome = run.join().expect("runner thread").expect("runner");
    assert!(finished.is_some(), "no rollback within 10 s");
    let samples = probe.finish();
    assert_eq!(outcome, Some(Outcome::RolledBack));

    let settled = Probe::settled(&samples, breach, "stable").expect("probe saw the baseline");
    let events: Vec<RunnerEvent> = store.read_events().expect("events");
    let write = events
        .iter()
        .find_map(|e| match e {
            RunnerEvent::Write(w) if w.rollback => Some(w.clone()),
            _ => None,
        })
        .expect("rollback write");
    let applied = events
        .iter()
        .find_map(|e| match e {
            RunnerEvent::Applied(a) if a.seq == write.seq => Some(a.clone()),
            _ => None,
        })
        .expect("apply confirmation of the rollback");
    println!(
        "breach → 100% baseline at Envoy: {:.1} ms (probe); evaluation → file in place {:.2} ms, \
         → durable {:.2} ms (decide {} us); write → digest gauge {:.1} ms",
        settled.as_secs_f64() * 1e3,
        write.trigger_to_visible_us.unwrap_or(0) as f64 / 1e3,
        write.trigger_to_write_us.unwrap_or(0) as f64 / 1e3,
        write.decide_us,
        applied.apply_ms
    );
    assert!(settled <= Duration::from_secs(1), "{settled:?}");
    assert!(
        write.trigger_to_visible_us.unwrap_or(u64::MAX) <= 100_000,
        "{write:?}"
    );
    assert!(applied.applied, "{applied:?}");
    assert_eq!(canary_weight(&admin), Some(0));
    let state: RolloutState = store.load().expect("load").expect("state");
    assert_eq!(state.phase, Phase::RolledBack);
    let _ = load.join();
}

#[test]
fn cli_abort_reaches_envoy_within_a_tick() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rig = Rig::start(1, &plugin_config(0));
    let dir = TempDir::new("e2e-cli");
    let spec_path = dir.join("rollout.yaml");
    std::fs::write(&spec_path, rollout_yaml(&rig, "cli-abort", ANALYSIS)).expect("spec");
    let state_dir = dir.join("state");
    let bin = env!("CARGO_BIN_EXE_aviaryctl");
    let load = background_load(rig.urls[0].clone(), 8);

    let log = std::fs::File::create(dir.join("run.log")).expect("log");
    let mut child = ChildGuard(Some(
        Command::new(bin)
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("run")
            .arg(&spec_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("aviaryctl run"),
    ));
    let admin = EnvoyAdminSource::new(rig.admin_urls());
    let reached = poll(Duration::from_secs(10), Duration::from_millis(10), || {
        (canary_weight(&admin) == Some(2000)).then_some(())
    });
    if reached.is_none() {
        panic!(
            "canary never reached 20 %:\n{}",
            std::fs::read_to_string(dir.join("run.log")).unwrap_or_default()
        );
    }
    let user = user_on(&rig.urls[0], "canary");
    let probe = Probe::start(&rig.urls[0], &user);
    thread::sleep(Duration::from_millis(200));

    let issued = Instant::now();
    let out = Command::new(bin)
        .arg("--state-dir")
        .arg(&state_dir)
        .args(["abort", "--reason", "e2e test"])
        .output()
        .expect("aviaryctl abort");
    let cli = issued.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("aborted by operator: e2e test"), "{stdout}");

    let status = child
        .wait_timeout(Duration::from_secs(10))
        .expect("driver exits after the abort");
    assert_eq!(status.code(), Some(3), "exit code 3 = aborted");
    thread::sleep(Duration::from_millis(50));
    let samples = probe.finish();
    let settled = Probe::settled(&samples, issued, "stable").expect("probe saw the baseline");
    println!(
        "aviaryctl abort: CLI round trip {:.1} ms ({}), command → 100% baseline at Envoy {:.1} ms",
        cli.as_secs_f64() * 1e3,
        stdout.trim(),
        settled.as_secs_f64() * 1e3
    );
    assert!(settled < Duration::from_millis(500), "{settled:?}");

    let st = Command::new(bin)
        .arg("--state-dir")
        .arg(&state_dir)
        .args(["status", "--output", "json"])
        .output()
        .expect("status");
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).expect("status json");
    assert_eq!(v["outcome"], "aborted");
    assert_eq!(v["driverRunning"], false);
    assert_eq!(v["lastWrite"]["rollback"], true);
    let _ = load.join();
}

/// A canary that is only slow (60 ms against the baseline's 2 ms; no errors) is rolled back by
/// the latency fast track within 2 s of its step starting (the step's config write), long
/// before the first bake interval (10 s) could judge it.
#[test]
fn latency_only_bad_canary_is_fast_tracked_within_two_seconds_of_the_step() {
    use aviaryctl::core::step::DecisionKind;
    use aviaryctl::edges::records::RecordLog;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rig = Rig::start(1, &plugin_config(0));
    rig.canary
        .update(|c| c.latency = aviary_sim::Latency::fixed_ms(60.0))
        .expect("slow canary");
    let dir = TempDir::new("e2e-latency");
    let analysis = "    interval: 10s
    fastInterval: 100ms
    threshold: 2
    maxHold: 1m
    minSamples: 50
    stepWeights: [20, 40, 60, 80]
    gates:
      errorRate: {max: 0.05, maxRelative: 3}
      latency: {p95: {maxMs: 25, maxRegression: 2}}";
    let spec = RolloutSpec::parse(&rollout_yaml(&rig, "slow-canary", analysis)).expect("spec");
    let store = StateStore::in_dir(dir.join("state")).expect("store");
    let load = background_load(rig.urls[0].clone(), 8);
    let components = Components::from_spec(&spec).expect("components");
    let opts = RunnerOptions {
        log: LogMode::Quiet,
        ..RunnerOptions::default()
    };
    let runner =
        Runner::new(spec, store.clone(), components, Arc::new(SystemClock), opts).expect("runner");
    let stop = runner.stop_handle();
    let run = thread::spawn(move || runner.run());
    let finished = poll(Duration::from_secs(15), Duration::from_millis(5), || {
        run.is_finished().then_some(())
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let outcome = run.join().expect("runner thread").expect("runner");
    assert!(finished.is_some(), "no rollback within 15 s");
    assert_eq!(outcome, Some(Outcome::RolledBack));

    let state: RolloutState = store.load().expect("load").expect("state");
    let history = RecordLog::beside(&store)
        .history(state.records)
        .expect("records");
    let decision = history.decisions.last().expect("a decision");
    assert_eq!(decision.kind, DecisionKind::FastRollback, "{decision:?}");
    assert!(
        decision
            .gates
            .iter()
            .all(|g| g.gate.starts_with("latency.")),
        "{decision:?}"
    );
    let stage = history
        .stages
        .iter()
        .find(|s| s.canary_bps == 2000)
        .expect("the 20% step");
    let from_write = decision.at_ms.saturating_sub(stage.started_ms);
    let from_applied = stage.applied_ms.map(|a| decision.at_ms.saturating_sub(a));
    println!(
        "latency-only bad canary: fast rollback {from_write} ms after the step's write \
         ({from_applied:?} ms after Envoy applied it); {}",
        decision.reason
    );
    assert!(from_write <= 2_000, "{from_write} ms");
    assert_eq!(
        canary_weight(&EnvoyAdminSource::new(rig.admin_urls())),
        Some(0)
    );
    let _ = load.join();
}
