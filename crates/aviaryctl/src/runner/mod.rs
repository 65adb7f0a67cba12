//! The I/O loop around the pure decision step.
//!
//! Every tick (20 ms by default) the runner drains operator commands, takes any metrics read
//! the background reader finished (one every `poll_interval`) and any confirmation of a
//! config write the apply watcher got from the proxies, feeds each as an input to [`step`]
//! and carries out the returned actions in order: config writes go to every sink before
//! anything else happens; on `Persist` the step's records are appended to the records log
//! and then the state is saved (both fsynced whenever the batch changes traffic);
//! notifications and confirmation requests run on background threads so a slow webhook never
//! delays a rollback. After each write the watcher polls the proxies (admin endpoints, or
//! Prometheus) until they report the new config digest; the runner feeds that back as
//! [`Input::Applied`] and logs the latencies (evaluation to file in place and to durable,
//! write to applied) in the event log next to the state file.
//!
//! [`step`]: crate::core::step::step

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::clock::Clock;
use crate::core::spec::RolloutSpec;
use crate::core::step::{
    ConfigWrite, History, Input, Notification, Observation, Outcome, RolloutState,
};
use crate::edges::history::HistoryLog;
use crate::edges::sink::ConfigSink;
use crate::edges::store::{CommandAck, QueuedCommand, StateLock, StateStore};
use crate::edges::webhook::{Approver, BackgroundNotifier};
use crate::error::Error;
use crate::report;

mod act;
mod components;
mod events;
mod inputs;
mod journal;
mod legacy;
mod output;
mod pump;
mod watcher;

pub use components::Components;
pub use events::{RunnerEvent, WriteRecord};
pub use output::{console, diag_writer, Console, DiagWriter, LogMode, CLEAR_LINE};
pub use watcher::ApplyRecord;

use events::Trigger;
use journal::Journal;
use output::emit;
use pump::{spawn_pump, Pump};
use watcher::{spawn_watcher, Answer, ApplyJob};

/// Runner tuning.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Longest time between two reads of the command queue. Bounds how long an `abort` waits.
    pub tick: Duration,
    /// Read metrics on the runner's own thread, paced by its clock, instead of a background
    /// thread paced by real time. For deterministic runs with a simulated clock.
    pub inline_source: bool,
    /// How long the watcher waits for the proxies to report a write as applied.
    pub apply_timeout: Duration,
    pub log: LogMode,
    /// Where reports go when the rollout ends; `None` uses the spec's `reportDir` (or none).
    pub report_dir: Option<PathBuf>,
    /// Longest wait for queued notifications when the rollout ends.
    pub notify_flush: Duration,
    /// The history file a finished rollout's summary is appended to; `None` uses
    /// `history.jsonl` in the state directory.
    pub history: Option<PathBuf>,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            tick: Duration::from_millis(20),
            inline_source: false,
            apply_timeout: Duration::from_secs(30),
            log: LogMode::detect(),
            report_dir: None,
            notify_flush: Duration::from_secs(10),
            history: None,
        }
    }
}

/// Drives one rollout until it ends.
pub struct Runner {
    spec: RolloutSpec,
    store: StateStore,
    _lock: StateLock,
    state: RolloutState,
    /// The records log and the records waiting to be appended to it.
    journal: Journal,
    clock: Arc<dyn Clock>,
    opts: RunnerOptions,
    sinks: Vec<Box<dyn ConfigSink + Send>>,
    notifier: Option<BackgroundNotifier>,
    approvers: Vec<Arc<dyn Approver>>,
    pump: Pump,
    confirm_tx: Sender<(Input, Instant)>,
    confirm_rx: Receiver<(Input, Instant)>,
    apply_tx: Option<Sender<ApplyJob>>,
    apply_rx: Option<Receiver<Answer>>,
    pending_applies: usize,
    write_seq: u64,
    /// A write or persist failed; retried every tick until it succeeds.
    write_pending: bool,
    persist_pending: bool,
    next_retry_ms: u64,
    retry_backoff_ms: u64,
    outcome: Option<Outcome>,
    stop: Arc<AtomicBool>,
    last_progress: Option<Instant>,
    progress_shown: bool,
    /// Last logged source error, when, and how many identical ones were not logged since.
    last_source_error: Option<(String, Instant, u64)>,
}

impl Runner {
    /// Takes the rollout lock, loads (or creates) the state, opens the records log (cut back
    /// to what the state counts), and starts the background threads. Fails if another driver holds the
    /// lock or the state belongs to another rollout.
    pub fn new(
        spec: RolloutSpec,
        store: StateStore,
        components: Components,
        clock: Arc<dyn Clock>,
        opts: RunnerOptions,
    ) -> Result<Runner, Error> {
        let lock = store.lock()?;
        let mut state = load_state(&spec, &store, clock.now_ms())?;
        let journal = Journal::open(&store, &mut state, opts.log)?;
        store.save_spec(&spec)?;
        let service = spec.service().to_string();
        let poll = Duration::from_millis(spec.poll_interval_ms());
        let pump = if opts.inline_source {
            Pump::Inline {
                source: components.source,
                next_due_ms: 0,
            }
        } else {
            spawn_pump(components.source, service.clone(), poll)
        };
        let (apply_tx, apply_rx) = match components.probe {
            Some(probe) => {
                let (tx, rx) = spawn_watcher(probe, service, opts.apply_timeout);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let log_mode = opts.log;
        let notifier = components.notifier.map(|n| {
            BackgroundNotifier::spawn(n, 256, move |ev: &Notification, err: &Error| {
                emit(
                    log_mode,
                    "warn",
                    "webhook_failed",
                    &format!("{} webhook failed: {err}", ev.event),
                    json!({"webhookEvent": ev.event, "error": err.to_string()}),
                );
            })
        });
        let (confirm_tx, confirm_rx) = mpsc::channel();
        Ok(Runner {
            spec,
            store,
            _lock: lock,
            state,
            journal,
            clock,
            opts,
            sinks: components.sinks,
            notifier,
            approvers: components.approvers,
            pump,
            confirm_tx,
            confirm_rx,
            apply_tx,
            apply_rx,
            pending_applies: 0,
            write_seq: 0,
            write_pending: false,
            persist_pending: false,
            next_retry_ms: 0,
            retry_backoff_ms: 0,
            outcome: None,
            stop: Arc::new(AtomicBool::new(false)),
            last_progress: None,
            progress_shown: false,
            last_source_error: None,
        })
    }

    /// The current state.
    pub fn state(&self) -> &RolloutState {
        &self.state
    }

    /// What happened so far: the records log of the current state, plus any records not yet
    /// appended to it.
    pub fn history(&self) -> Result<History, Error> {
        self.journal.history(&self.state)
    }

    /// A flag that makes [`run`](Self::run) return (without an outcome) at the next tick.
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Runs the rollout until it ends (or the stop flag is set) and writes the reports.
    /// Returns the outcome, `None` when stopped.
    pub fn run(mut self) -> Result<Option<Outcome>, Error> {
        self.start()?;
        // A rollout that ended with its final write failing keeps retrying: a rollback that
        // never reached the proxies is not a rollback.
        while (self.outcome.is_none() || self.write_pending) && !self.stop.load(Ordering::SeqCst) {
            self.tick()?;
        }
        self.finish()
    }

    /// Feeds the start (or restart) input.
    pub fn start(&mut self) -> Result<(), Error> {
        self.log(
            "info",
            "runner_start",
            &format!(
                "rollout {} ({} → {}), state {}",
                self.spec.metadata.name,
                self.spec.spec.baseline,
                self.spec.spec.canary,
                self.store.state_path().display()
            ),
            json!({
                "rollout": self.spec.metadata.name,
                "stage": self.state.stage_label(),
                "pid": std::process::id(),
                "sinks": self.sinks.iter().map(|s| s.describe()).collect::<Vec<_>>(),
            }),
        );
        self.handle(Input::Start, Trigger::Start).map(|_| ())
    }

    /// One iteration: commands, retries, confirmations, apply confirmations, metrics.
    pub fn tick(&mut self) -> Result<(), Error> {
        self.drain_commands()?;
        self.retry_pending();
        if self.outcome.is_some() {
            if self.write_pending {
                self.clock.sleep(self.opts.tick);
            }
            return Ok(());
        }
        while let Ok((input, at)) = self.confirm_rx.try_recv() {
            self.handle(input, Trigger::Confirmation(at))?;
            if self.outcome.is_some() {
                return Ok(());
            }
        }
        self.drain_applies()?;
        if let Some((result, at)) = self.read_metrics()? {
            let input = match result {
                Ok(s) => Observation::of(s),
                Err(e) => {
                    self.log_source_error(&e);
                    Observation::failed(e)
                }
            };
            self.handle(input, Trigger::Observation(at))?;
        }
        self.progress();
        Ok(())
    }

    /// Applies one command (used by the CLI when no driver is running) and returns its ack.
    pub fn apply_command(&mut self, q: &QueuedCommand) -> Result<CommandAck, Error> {
        self.command(q)
    }

    /// Stops the background threads, waits (bounded) for notifications and the last apply
    /// confirmation (which the step records), and writes the reports. Returns the outcome.
    pub fn finish(mut self) -> Result<Option<Outcome>, Error> {
        self.clear_progress();
        if self.write_pending {
            self.log(
                "error",
                "write_pending",
                "exiting with the last config write not applied; run again to retry it",
                json!({}),
            );
        }
        let deadline = Instant::now() + self.opts.apply_timeout.min(Duration::from_secs(2));
        while self.pending_applies > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
            self.drain_applies()?;
        }
        if let Some(n) = &self.notifier {
            if !n.flush(self.opts.notify_flush) {
                self.log(
                    "warn",
                    "webhook_flush",
                    "notifications still queued at exit",
                    json!({}),
                );
            }
        }
        if let Pump::Background { stop, handle, .. } = &mut self.pump {
            stop.store(true, Ordering::SeqCst);
            if let Some(h) = handle.take() {
                let _ = h.join();
            }
        }
        if let Some(outcome) = self.outcome {
            if let Some(d) = self.history()?.decisions.last() {
                self.log(
                    "info",
                    "evidence",
                    &format!("evidence: {} ({})", d.reason, d.stage),
                    json!({"reason": d.reason, "stage": d.stage}),
                );
            }
            let report = self.write_reports()?;
            self.record_history(report)?;
            self.log(
                "info",
                "runner_done",
                &format!("rollout {} ended: {outcome:?}", self.spec.metadata.name),
                json!({"outcome": outcome}),
            );
        }
        Ok(self.outcome)
    }

    /// Appends the finished rollout's summary to the history (once per rollout run, however
    /// often the driver is started again after the end).
    fn record_history(&self, report: Option<PathBuf>) -> Result<(), Error> {
        let log = self.history_log();
        let history = self.history()?;
        let report = report.map(|p| p.join("report.md").display().to_string());
        let summary = report::summarize(&self.spec, &self.state, &history, report);
        if log.append_once(&summary.id, &summary)? {
            self.log(
                "info",
                "history",
                &format!("history: {}", log.path().display()),
                json!({"path": log.path(), "id": summary.id}),
            );
        }
        Ok(())
    }

    /// Where finished rollouts are recorded.
    pub fn history_log(&self) -> HistoryLog {
        self.opts
            .history
            .clone()
            .map_or_else(|| HistoryLog::in_dir(self.store.dir()), HistoryLog::new)
    }

    fn write_reports(&self) -> Result<Option<PathBuf>, Error> {
        let dir = self
            .opts
            .report_dir
            .clone()
            .or_else(|| self.spec.spec.report_dir.as_ref().map(PathBuf::from));
        let Some(dir) = dir else {
            return Ok(None);
        };
        let history = self.history()?;
        let paths = report::write_reports(&self.spec, &self.state, &history, &dir)?;
        self.log(
            "info",
            "report",
            &format!(
                "reports: {}",
                paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            json!({"paths": paths}),
        );
        Ok(Some(dir))
    }
}

/// The saved state of `spec`'s rollout, or a new one (saved at once).
fn load_state(spec: &RolloutSpec, store: &StateStore, now: u64) -> Result<RolloutState, Error> {
    match store.load::<RolloutState>()? {
        Some(s) if s.name != spec.metadata.name => Err(Error::State {
            path: store.state_path().display().to_string(),
            message: format!(
                "holds rollout {:?}, not {:?}; use another --state-dir",
                s.name, spec.metadata.name
            ),
        }),
        Some(s) => Ok(s),
        None => {
            let s = RolloutState::new(spec, now);
            store.save(&s)?;
            Ok(s)
        }
    }
}

/// The config a rollout state wants in place, as `aviaryctl render-istio` and the offline
/// commands render it.
pub fn desired_config(spec: &RolloutSpec, state: Option<&RolloutState>) -> ConfigWrite {
    match state {
        Some(s) => s.config_write(spec, s.writes, format!("state: {}", s.stage_label())),
        None => ConfigWrite {
            write: 0,
            config: spec.spec.config.plugin_config.clone(),
            canary_bps: 0,
            rollback: false,
            reason: "initial plugin config from the spec".into(),
        },
    }
}
