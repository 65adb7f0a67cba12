//! The runner with a simulated clock and a simulated proxy that routes by whatever config the
//! JSON sink last wrote: whole rollouts run in milliseconds, deterministically. Covers action
//! order, persistence, the records log (its crash leftovers and failed appends: no record lost
//! or repeated), commands and acks, restart without a weight jump, the lock, sink failure
//! retries, notifications, confirmation gates, and the proxies' confirmations as inputs.

mod edges_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aviary_contract::config::{digest, PluginConfig};
use aviary_contract::units::DIGEST48_MASK;
use aviaryctl::clock::{Clock, ManualClock};
use aviaryctl::core::observe::{Snapshot, VersionMetrics};
use aviaryctl::core::spec::{Event, RolloutSpec};
use aviaryctl::core::step::{
    Command, DecisionKind, Entry, History, Notification, Outcome, Phase, Record, RolloutState,
};
use aviaryctl::edges::records::RecordLog;
use aviaryctl::edges::sink::{ConfigSink, JsonFileSink};
use aviaryctl::edges::source::{AppliedConfig, ApplyProbe, MetricsSource};
use aviaryctl::edges::store::StateStore;
use aviaryctl::edges::webhook::{Approval, Approver, Notifier};
use aviaryctl::error::Error;
use aviaryctl::runner::{Components, LogMode, Runner, RunnerEvent, RunnerOptions};
use edges_support::TempDir;

const RPS: u64 = 2000;

fn spec_text(dir: &Path, extra_webhooks: &str) -> String {
    format!(
        r#"
apiVersion: aviary.dev/v1
kind: Rollout
metadata: {{name: recsys-v2}}
spec:
  baseline: stable
  canary: canary
  config:
    jsonFile: {dir}/plugin.json
    pluginConfig:
      service: recsys
      versions: [{{name: stable, weight: 10000}}, {{name: canary, weight: 0}}]
  metrics: {{envoyAdmin: ["http://127.0.0.1:9"]}}
  analysis:
    interval: 10s
    fastInterval: 1s
    threshold: 2
    minSamples: 100
    stepWeights: [10, 50]
    gates:
      errorRate: {{max: 0.05, maxRelative: 3}}
{extra_webhooks}"#,
        dir = dir.display()
    )
}

fn spec(dir: &Path, hooks: &str) -> RolloutSpec {
    RolloutSpec::parse(&spec_text(dir, hooks)).unwrap_or_else(|e| panic!("spec: {e}"))
}

/// A proxy that serves `RPS` requests per simulated second, split by the weights (and kill
/// switch) of the config file, with a settable canary error rate (per million).
struct SimProxy {
    clock: ManualClock,
    config: PathBuf,
    canary_errors_ppm: Arc<AtomicU64>,
    inner: Mutex<(u64, Snapshot)>,
}

impl SimProxy {
    fn new(clock: ManualClock, config: PathBuf, errors: Arc<AtomicU64>) -> Self {
        let now = clock.now_ms();
        SimProxy {
            clock,
            config,
            canary_errors_ppm: errors,
            inner: Mutex::new((now, Snapshot::default())),
        }
    }
}

impl MetricsSource for SimProxy {
    fn snapshot(&self, _service: &str) -> Result<Snapshot, Error> {
        let now = self.clock.now_ms();
        let mut guard = self.inner.lock().expect("lock");
        let (last, snap) = &mut *guard;
        let elapsed = now.saturating_sub(*last);
        *last = now;
        let cfg = std::fs::read(&self.config)
            .ok()
            .and_then(|b| PluginConfig::from_json(&b).ok());
        let canary_bps = match &cfg {
            Some(c) if c.kill_switch.is_none() => c.weight_bps(1).unwrap_or(0),
            _ => 0,
        };
        let total = RPS * elapsed / 1000;
        let canary = total * u64::from(canary_bps) / 10_000;
        let ppm = self.canary_errors_ppm.load(Ordering::SeqCst);
        for (name, n, ppm) in [("stable", total - canary, 1_000), ("canary", canary, ppm)] {
            let v = snap
                .versions
                .entry(name.into())
                .or_insert_with(VersionMetrics::default);
            let before = v.requests;
            v.requests += n;
            // Deterministic: errors so far = floor(requests * rate).
            let err_before = before * ppm / 1_000_000;
            let err_after = v.requests * ppm / 1_000_000;
            *v.responses.entry("5xx".into()).or_insert(0) += err_after - err_before;
            *v.responses.entry("2xx".into()).or_insert(0) += n - (err_after - err_before);
            v.weight_bps = Some(if name == "canary" {
                u64::from(canary_bps)
            } else {
                10_000 - u64::from(canary_bps)
            });
        }
        snap.at_ms = now;
        Ok(snap.clone())
    }

    fn describe(&self) -> String {
        "sim".into()
    }
}

#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<Vec<Notification>>>);

impl Recorder {
    fn events(&self) -> Vec<Event> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .map(|n| n.event)
            .collect()
    }
}

impl Notifier for Recorder {
    fn notify(&self, event: &Notification) -> Result<(), Error> {
        self.0.lock().expect("lock").push(event.clone());
        Ok(())
    }
}

struct FixedApprover(Approval, Arc<AtomicU64>);

impl Approver for FixedApprover {
    fn confirm(&self, _: &Notification) -> Result<Approval, Error> {
        self.1.fetch_add(1, Ordering::SeqCst);
        Ok(self.0.clone())
    }
    fn answers(&self, event: Event) -> bool {
        event.is_confirmation()
    }
}

struct Setup {
    dir: TempDir,
    clock: ManualClock,
    errors: Arc<AtomicU64>,
    recorder: Recorder,
    /// A history file shared with other setups (default: in the state directory).
    history: Option<PathBuf>,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            dir: TempDir::new("runner"),
            clock: ManualClock::new(1_800_000_000_000),
            errors: Arc::new(AtomicU64::new(1_000)),
            recorder: Recorder::default(),
            history: None,
        }
    }

    fn store(&self) -> StateStore {
        StateStore::in_dir(self.dir.join("state")).expect("store")
    }

    fn plugin_path(&self) -> PathBuf {
        self.dir.join("plugin.json")
    }

    fn runner_with(
        &self,
        spec: RolloutSpec,
        approvers: Vec<Arc<dyn Approver>>,
    ) -> Result<Runner, Error> {
        self.runner_full(spec, approvers, None)
    }

    fn runner_full(
        &self,
        spec: RolloutSpec,
        approvers: Vec<Arc<dyn Approver>>,
        probe: Option<Box<dyn ApplyProbe + Send>>,
    ) -> Result<Runner, Error> {
        let components = Components {
            source: Box::new(SimProxy::new(
                self.clock.clone(),
                self.plugin_path(),
                self.errors.clone(),
            )),
            sinks: vec![
                Box::new(JsonFileSink::new(self.plugin_path())) as Box<dyn ConfigSink + Send>
            ],
            notifier: Some(Box::new(self.recorder.clone())),
            approvers,
            probe,
        };
        let opts = RunnerOptions {
            inline_source: true,
            log: LogMode::Quiet,
            report_dir: Some(self.dir.join("report")),
            history: self.history.clone(),
            ..RunnerOptions::default()
        };
        Runner::new(
            spec,
            self.store(),
            components,
            Arc::new(self.clock.clone()),
            opts,
        )
    }

    fn runner(&self) -> Runner {
        self.runner_with(spec(self.dir.path(), ""), Vec::new())
            .expect("runner")
    }

    fn written(&self) -> PluginConfig {
        PluginConfig::from_json(&std::fs::read(self.plugin_path()).expect("plugin.json"))
            .expect("valid")
    }

    fn events(&self) -> Vec<RunnerEvent> {
        self.store().read_events().expect("events")
    }

    fn log(&self) -> RecordLog {
        RecordLog::beside(&self.store())
    }

    /// The saved state and the history its records log tells.
    fn saved(&self) -> (RolloutState, History) {
        let state: RolloutState = self.store().load().expect("load").expect("saved");
        let history = self.log().history(state.records).expect("records");
        (state, history)
    }

    /// Every line of the records log, each of which must be a whole record, numbered 0, 1,
    /// 2, … with no gap and none twice, as many as the saved state counts.
    fn check_log(&self) -> Vec<Record> {
        let text = std::fs::read_to_string(self.log().path()).expect("records log");
        assert!(text.ends_with('\n'), "torn last line");
        let records: Vec<Record> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        let (state, _) = self.saved();
        assert_eq!(seqs, (0..state.records).collect::<Vec<_>>());
        records
    }
}

/// Reports the digest of whatever config the JSON sink last wrote, as Envoy's
/// `aviary_config_digest` gauge would.
struct SimProbe(PathBuf);

impl ApplyProbe for SimProbe {
    fn applied(&self, _service: &str) -> Result<Vec<AppliedConfig>, Error> {
        let bytes = std::fs::read(&self.0).map_err(|e| Error::io(self.0.display(), e))?;
        Ok(vec![AppliedConfig {
            endpoint: "sim".into(),
            digest48: Some(digest(&bytes) & DIGEST48_MASK),
            weights: BTreeMap::new(),
        }])
    }
}

/// Ticks until `pred` holds, bounded in simulated time.
fn tick_until(
    r: &mut Runner,
    clock: &ManualClock,
    limit: Duration,
    pred: impl Fn(&RolloutState) -> bool,
) {
    let end = clock.now_ms() + limit.as_millis() as u64;
    while !pred(r.state()) {
        assert!(
            clock.now_ms() < end,
            "condition not reached; state {:?}",
            r.state().phase
        );
        r.tick().expect("tick");
    }
}

#[test]
fn healthy_canary_is_promoted_through_every_step() {
    let s = Setup::new();
    let outcome = s.runner().run().expect("runs");
    assert_eq!(outcome, Some(Outcome::Promoted));
    let cfg = s.written();
    assert_eq!(cfg.weight_bps(1), Some(10_000));
    assert_eq!(cfg.kill_switch, None);

    let (state, history) = s.saved();
    assert_eq!(state.phase, Phase::Promoted);
    let bps: Vec<u32> = history.timeline.iter().map(|p| p.canary_bps).collect();
    assert_eq!(bps, vec![1000, 5000, 10_000]);
    s.check_log();

    let writes: Vec<_> = s
        .events()
        .into_iter()
        .filter_map(|e| match e {
            RunnerEvent::Write(w) => Some(w),
            _ => None,
        })
        .collect();
    assert_eq!(
        writes.iter().map(|w| w.canary_bps).collect::<Vec<_>>(),
        vec![1000, 5000, 10_000]
    );
    assert!(writes[1..].iter().all(|w| w.trigger == "observation"));
    assert!(writes
        .iter()
        .all(|w| w.errors.is_empty() && w.digest48.is_some()));
    assert!(
        writes[1..]
            .iter()
            .all(|w| w.trigger_to_visible_us.is_some_and(|us| us < 100_000)),
        "{writes:?}"
    );
    assert_eq!(
        s.recorder.events(),
        vec![Event::Start, Event::Step, Event::Step, Event::Promote]
    );
    assert!(s.dir.join("report/report.json").exists());
}

#[test]
fn failing_canary_is_rolled_back_first_thing() {
    let s = Setup::new();
    s.errors.store(300_000, Ordering::SeqCst);
    let outcome = s.runner().run().expect("runs");
    assert_eq!(outcome, Some(Outcome::RolledBack));
    let cfg = s.written();
    assert_eq!(cfg.kill_switch.as_deref(), Some("stable"));
    assert_eq!(cfg.weight_bps(1), Some(0));
    let events = s.events();
    let rollback = events
        .iter()
        .find_map(|e| match e {
            RunnerEvent::Write(w) if w.rollback => Some(w.clone()),
            _ => None,
        })
        .expect("rollback write");
    assert_eq!(rollback.trigger, "observation");
    let evaluation_to_write = rollback.trigger_to_visible_us.expect("timed");
    assert!(evaluation_to_write < 100_000, "{evaluation_to_write} us");
    println!(
        "rollback: decide {} us, sink {} us, evaluation→file in place {} us",
        rollback.decide_us, rollback.write_us, evaluation_to_write
    );
    let state: RolloutState = s.store().load().expect("load").expect("saved");
    assert_eq!(state.phase, Phase::RolledBack);
    assert_eq!(s.recorder.events().last(), Some(&Event::Rollback));
}

#[test]
fn commands_are_acknowledged_and_abort_writes_the_kill_switch() {
    let s = Setup::new();
    let mut r = s.runner();
    r.start().expect("start");
    tick_until(&mut r, &s.clock, Duration::from_secs(30), |st| {
        matches!(st.phase, Phase::Canary { .. })
    });
    let store = s.store();

    let pause = store.submit(Command::Pause).expect("submit");
    r.tick().expect("tick");
    let ack = store
        .wait_ack(&pause.id, Duration::ZERO)
        .expect("read")
        .expect("acked");
    assert!(ack.accepted, "{ack:?}");
    assert!(r.state().paused);
    // Paused: a full interval of passing gates does not promote.
    let step_before = r.state().phase;
    s.clock.advance(Duration::from_secs(25));
    r.tick().expect("tick");
    assert_eq!(r.state().phase, step_before);

    let again = store.submit(Command::Pause).expect("submit");
    r.tick().expect("tick");
    let ack = store
        .wait_ack(&again.id, Duration::ZERO)
        .expect("read")
        .expect("acked");
    assert!(
        !ack.accepted && ack.message.contains("already paused"),
        "{ack:?}"
    );

    let abort = store
        .submit(Command::Abort {
            reason: Some("bad business KPIs".into()),
        })
        .expect("submit");
    r.tick().expect("tick");
    let ack = store
        .wait_ack(&abort.id, Duration::ZERO)
        .expect("read")
        .expect("acked");
    assert!(ack.accepted, "{ack:?}");
    assert!(ack.write_us.is_some(), "abort wrote the config");
    assert!(ack.message.contains("bad business KPIs"), "{ack:?}");
    assert_eq!(s.written().kill_switch.as_deref(), Some("stable"));
    assert_eq!(r.finish().expect("finish"), Some(Outcome::Aborted));
    let state: RolloutState = store.load().expect("load").expect("saved");
    assert_eq!(state.phase, Phase::Aborted);
}

#[test]
fn restart_resumes_the_same_step_without_a_weight_jump() {
    let s = Setup::new();
    {
        let mut r = s.runner();
        r.start().expect("start");
        tick_until(&mut r, &s.clock, Duration::from_secs(60), |st| {
            st.phase == Phase::Canary { step: 1 }
        });
        // Dropped without finish(), like a crash: only what was persisted survives.
    }
    let before: RolloutState = s.store().load().expect("load").expect("saved");
    assert_eq!(before.phase, Phase::Canary { step: 1 });
    let written_before = s.written();
    assert_eq!(written_before.weight_bps(1), Some(5000));

    let mut r = s.runner();
    assert_eq!(r.state().phase, Phase::Canary { step: 1 });
    r.start().expect("restart");
    assert_eq!(
        s.written(),
        written_before,
        "the restart re-asserts the same config"
    );
    assert_eq!(r.state().canary_bps, 5000);
    let history = r.history().expect("history");
    let restart = history.decisions.last().expect("decision");
    assert!(restart.reason.contains("restarted"), "{restart:?}");
    tick_until(&mut r, &s.clock, Duration::from_secs(60), |st| {
        st.phase.is_terminal()
    });
    assert_eq!(r.state().phase, Phase::Promoted);
    let bps: Vec<u32> = r
        .history()
        .expect("history")
        .timeline
        .iter()
        .map(|p| p.canary_bps)
        .collect();
    assert_eq!(bps, vec![1000, 5000, 10_000], "no step repeated or skipped");
    s.check_log();
}

#[test]
fn a_second_driver_is_refused() {
    let s = Setup::new();
    let _first = s.runner();
    let err = s
        .runner_with(spec(s.dir.path(), ""), Vec::new())
        .err()
        .expect("second driver refused");
    assert!(err.to_string().contains("another driver"), "{err}");
    assert!(s.store().is_locked());
}

#[test]
fn state_of_another_rollout_is_refused() {
    let s = Setup::new();
    s.runner().start().expect("start");
    let other = RolloutSpec::parse(&spec_text(s.dir.path(), "").replace("recsys-v2", "other"))
        .expect("spec");
    let err = s.runner_with(other, Vec::new()).err().expect("refused");
    assert!(err.to_string().contains("recsys-v2"), "{err}");
}

#[test]
fn failed_sink_writes_are_retried_until_they_land() {
    let s = Setup::new();
    let mut r = s.runner();
    r.start().expect("start");
    tick_until(&mut r, &s.clock, Duration::from_secs(30), |st| {
        matches!(st.phase, Phase::Canary { .. })
    });
    // Make the sink fail: its path becomes a directory.
    std::fs::remove_file(s.plugin_path()).expect("rm");
    std::fs::create_dir(s.plugin_path()).expect("mkdir");
    let abort = s
        .store()
        .submit(Command::Abort { reason: None })
        .expect("submit");
    r.tick().expect("tick");
    let ack = s
        .store()
        .wait_ack(&abort.id, Duration::ZERO)
        .expect("read")
        .expect("ack");
    assert!(ack.accepted);
    for _ in 0..5 {
        r.tick().expect("tick");
    }
    assert!(s.plugin_path().is_dir(), "still failing");
    std::fs::remove_dir(s.plugin_path()).expect("rmdir");
    // The rollout has ended, but the runner keeps retrying the rollback write.
    for _ in 0..200 {
        if s.plugin_path().is_file() {
            break;
        }
        r.tick().expect("tick");
    }
    assert_eq!(s.written().kill_switch.as_deref(), Some("stable"));
    let writes: Vec<_> = s
        .events()
        .into_iter()
        .filter_map(|e| match e {
            RunnerEvent::Write(w) => Some(w),
            _ => None,
        })
        .collect();
    assert!(writes.iter().any(|w| !w.errors.is_empty()));
    assert!(writes
        .iter()
        .any(|w| w.trigger == "retry" && w.errors.is_empty()));
}

#[test]
fn confirmation_gates_wait_for_approval() {
    let s = Setup::new();
    let hooks = "  webhooks:\n  - {name: approve, url: \"http://127.0.0.1:9/\", events: [confirm-promotion]}\n";
    let asked = Arc::new(AtomicU64::new(0));
    let approver: Arc<dyn Approver> = Arc::new(FixedApprover(Approval::Pending, asked.clone()));
    let mut r = s
        .runner_with(spec(s.dir.path(), hooks), vec![approver])
        .expect("runner");
    r.start().expect("start");
    tick_until(&mut r, &s.clock, Duration::from_secs(60), |st| {
        st.awaiting.is_some()
    });
    // Pending answers keep the canary at the last step. (The approver runs on its own
    // thread, which the simulated clock does not wait for.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut ticks = 0;
    while ticks < 200 || asked.load(Ordering::SeqCst) == 0 {
        r.tick().expect("tick");
        ticks += 1;
        if ticks >= 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "the approver was never asked"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(r.state().phase, Phase::Canary { step: 1 });
    drop(r);

    let approver: Arc<dyn Approver> = Arc::new(FixedApprover(Approval::Approved, asked.clone()));
    let r = s
        .runner_with(spec(s.dir.path(), hooks), vec![approver])
        .expect("runner");
    assert_eq!(r.run().expect("run"), Some(Outcome::Promoted));
}

#[test]
fn the_proxies_confirmations_are_inputs_and_recorded() {
    let s = Setup::new();
    let probe = Box::new(SimProbe(s.plugin_path()));
    let r = s
        .runner_full(spec(s.dir.path(), ""), Vec::new(), Some(probe))
        .expect("runner");
    assert_eq!(r.run().expect("runs"), Some(Outcome::Promoted));
    let (state, history) = s.saved();
    // The runner waits for the last confirmation before it exits: the promotion's write is
    // recorded as in effect.
    assert_eq!(state.applied_write, state.writes);
    let applied: Vec<u64> = history.applied.iter().map(|a| a.write).collect();
    assert!(applied.windows(2).all(|w| w[0] < w[1]), "{applied:?}");
    assert_eq!(applied.last(), Some(&3));
    let last = history.timeline.last().expect("promotion");
    assert!(last.applied_ms.is_some_and(|a| a >= last.at_ms), "{last:?}");
    for a in &history.applied {
        let p = history.timeline.iter().find(|p| p.write == a.write);
        assert_eq!(p.and_then(|p| p.applied_ms), Some(a.at_ms));
        assert!(a.digest48.is_some());
    }
    // The event log's confirmations name the step's write numbers too.
    let confirmed: Vec<u64> = s
        .events()
        .into_iter()
        .filter_map(|e| match e {
            RunnerEvent::Applied(a) if a.applied => Some(a.write),
            _ => None,
        })
        .collect();
    assert!(confirmed.ends_with(&[3]), "{confirmed:?}");
    let report = std::fs::read_to_string(s.dir.join("report/report.json")).expect("report");
    assert!(report.contains("appliedMs"));
    s.check_log();
}

#[test]
fn crash_leftovers_in_the_records_log_are_cut_on_restart() {
    let s = Setup::new();
    {
        let mut r = s.runner();
        r.start().expect("start");
        tick_until(&mut r, &s.clock, Duration::from_secs(60), |st| {
            st.phase == Phase::Canary { step: 1 }
        });
        // Dropped: a crash.
    }
    let (before, _) = s.saved();
    // What a crash can leave behind: the records of a step whose state was never saved, and
    // half a line.
    let n = before.records;
    let orphan = |seq: u64| {
        format!(
            "{{\"seq\":{seq},\"type\":\"decision\",\"atMs\":0,\"stage\":\"x\",\"canaryBps\":0,\"kind\":\"hold\",\"reason\":\"never saved\",\"failedChecks\":0}}\n"
        )
    };
    let leftovers = format!("{}{}{{\"seq\":{},\"ty", orphan(n), orphan(n + 1), n + 2);
    let path = s.log().path().to_path_buf();
    let mut log = std::fs::read_to_string(&path).expect("log");
    log.push_str(&leftovers);
    std::fs::write(&path, log).expect("write");

    let mut r = s.runner();
    r.start().expect("restart");
    tick_until(&mut r, &s.clock, Duration::from_secs(60), |st| {
        st.phase.is_terminal()
    });
    drop(r);
    let records = s.check_log();
    // The restart's decision takes the first number the saved state had not used.
    let restart = records.iter().find(|r| r.seq == n).map(|r| &r.entry);
    assert!(
        matches!(restart, Some(Entry::Decision(d)) if d.kind == DecisionKind::Restart),
        "{restart:?}"
    );
    let (_, history) = s.saved();
    assert!(history.decisions.iter().all(|d| d.reason != "never saved"));
    let bps: Vec<u32> = history.timeline.iter().map(|p| p.canary_bps).collect();
    assert_eq!(bps, vec![1000, 5000, 10_000]);
}

#[test]
fn a_failed_records_append_loses_and_repeats_nothing() {
    let s = Setup::new();
    let mut r = s.runner();
    r.start().expect("start");
    let records = s.log().path().to_path_buf();
    let aside = records.with_extension("aside");
    // The log cannot be appended to: its path is a directory.
    std::fs::rename(&records, &aside).expect("move the log aside");
    std::fs::create_dir(&records).expect("mkdir");
    let saved_state = || -> RolloutState { s.store().load().expect("load").expect("saved") };
    let stuck = saved_state();
    // Past the first bake interval: the step advances, but neither its records nor its state
    // are saved, so the weight is not raised either.
    for _ in 0..700 {
        r.tick().expect("tick");
    }
    assert_eq!(r.state().phase, Phase::Canary { step: 1 });
    // Reads that record nothing still save the state; none that counts unwritten records.
    let saved = saved_state();
    assert_eq!((saved.records, saved.phase), (stuck.records, stuck.phase));
    assert_eq!(s.written().weight_bps(1), Some(1000));
    // The disk recovers: the retry appends the pending records once, saves the state, then
    // writes the weight.
    std::fs::remove_dir(&records).expect("rmdir");
    std::fs::rename(&aside, &records).expect("move the log back");
    tick_until(&mut r, &s.clock, Duration::from_secs(60), |st| {
        st.phase.is_terminal()
    });
    drop(r);
    s.check_log();
    let (_, history) = s.saved();
    let bps: Vec<u32> = history.timeline.iter().map(|p| p.canary_bps).collect();
    assert_eq!(bps, vec![1000, 5000, 10_000]);
    let advances = history
        .decisions
        .iter()
        .filter(|d| d.kind == DecisionKind::Advance)
        .count();
    assert_eq!(
        advances, 2,
        "into step 1 and into step 2, each recorded once"
    );
}

#[test]
fn a_state_saved_before_the_records_log_keeps_its_history() {
    let s = Setup::new();
    {
        let mut r = s.runner();
        r.start().expect("start");
        tick_until(&mut r, &s.clock, Duration::from_secs(60), |st| {
            st.phase == Phase::Canary { step: 1 }
        });
    }
    // The same rollout as the previous version saved it: history inside the state, no log.
    let (_, before) = s.saved();
    let path = s.store().state_path();
    let mut old: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("state")).expect("json");
    let obj = old.as_object_mut().expect("object");
    for key in ["records", "writes", "stageWrite", "appliedWrite"] {
        obj.remove(key);
    }
    obj.insert("decisions".into(), serde_json::json!(before.decisions));
    obj.insert("timeline".into(), serde_json::json!(before.timeline));
    obj.insert("stages".into(), serde_json::json!(before.stages));
    std::fs::write(&path, serde_json::to_vec(&old).expect("json")).expect("write");
    std::fs::remove_file(s.log().path()).expect("no log");

    let mut r = s.runner();
    r.start().expect("restart");
    tick_until(&mut r, &s.clock, Duration::from_secs(60), |st| {
        st.phase.is_terminal()
    });
    drop(r);
    s.check_log();
    let (state, after) = s.saved();
    assert_eq!(state.phase, Phase::Promoted);
    let n = before.decisions.len();
    assert_eq!(after.decisions[..n], before.decisions[..]);
    assert_eq!(after.decisions[n].kind, DecisionKind::Restart);
    let bps: Vec<u32> = after.timeline.iter().map(|p| p.canary_bps).collect();
    assert_eq!(bps, vec![1000, 5000, 10_000]);
    let stages: Vec<(&str, bool)> = after
        .stages
        .iter()
        .map(|st| (st.name.as_str(), st.ended_ms.is_some()))
        .collect();
    assert_eq!(stages, vec![("step 1 (10%)", true), ("step 2 (50%)", true)]);
}

/// The history of finished rollouts survives a driver crash and restart mid-rollout, a
/// restart after the end (which adds nothing), and a second rollout in another state
/// directory sharing the history file; the per-gate view counts across both.
#[test]
fn history_survives_a_driver_restart_and_a_second_rollout() {
    use aviaryctl::edges::history::HistoryLog;
    use aviaryctl::report::{gate_view, RunSummary};
    let shared = TempDir::new("history");
    let path = shared.join("history.jsonl");
    let s = Setup {
        history: Some(path.clone()),
        ..Setup::new()
    };
    {
        let mut r = s.runner();
        r.start().expect("start");
        tick_until(&mut r, &s.clock, Duration::from_secs(60), |st| {
            st.phase == Phase::Canary { step: 1 }
        });
        // Dropped without finish(), like a crash.
    }
    assert!(HistoryLog::new(&path)
        .read::<RunSummary>()
        .expect("read")
        .is_empty());
    assert_eq!(s.runner().run().expect("runs"), Some(Outcome::Promoted));
    // The driver started again after the end: the same rollout is not recorded twice.
    assert_eq!(s.runner().run().expect("runs"), Some(Outcome::Promoted));
    let runs: Vec<RunSummary> = HistoryLog::new(&path).read().expect("read");
    assert_eq!(runs.len(), 1, "{runs:?}");
    let first = &runs[0];
    assert_eq!(first.outcome, Some(Outcome::Promoted));
    assert_eq!(first.canary_bps_reached, 10_000, "{first:?}");
    assert!(first.duration_ms > 0);
    assert!(first
        .report
        .as_deref()
        .is_some_and(|p| p.ends_with("report.md") && Path::new(p).exists()));

    // A second rollout, another state directory, the same history file.
    let s2 = Setup {
        history: Some(path.clone()),
        ..Setup::new()
    };
    // An hour later: a run is known by its rollout name and start time.
    s2.clock.advance(Duration::from_secs(3600));
    s2.errors.store(300_000, Ordering::SeqCst);
    assert_eq!(s2.runner().run().expect("runs"), Some(Outcome::RolledBack));
    let runs: Vec<RunSummary> = HistoryLog::new(&path).read().expect("read");
    assert_eq!(runs.len(), 2);
    let second = &runs[1];
    assert_eq!(second.outcome, Some(Outcome::RolledBack));
    assert_eq!(second.stage_reached, "step 1 (10%)");
    let gate = second.deciding_gate.as_deref().unwrap_or("");
    assert!(gate.starts_with("errorRate."), "{second:?}");
    let evidence = second.deciding_evidence.as_deref().unwrap_or("");
    assert!(evidence.contains("canary errors"), "{evidence}");
    let m = second.metrics.as_ref().expect("numbers");
    assert!(m.canary_errors.is_some_and(|e| e > 0));
    assert!(evidence.contains(&format!(
        "{}/{}",
        m.canary_errors.unwrap_or(0),
        m.canary_responses.unwrap_or(0)
    )));
    let view = gate_view(&runs);
    assert!(view
        .iter()
        .any(|c| c.gate == gate && c.stage == "step 1 (10%)" && c.fail >= 1));
    assert!(view
        .iter()
        .any(|c| c.gate == "errorRate.max" && c.pass >= 1));
}
