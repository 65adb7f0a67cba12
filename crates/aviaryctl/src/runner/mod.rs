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

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::clock::{system_now_ms, Clock};
use crate::core::spec::RolloutSpec;
use crate::core::step::{
    Applied, Command, ConfigWrite, History, Input, Notification, Observation, Outcome, RolloutState,
};
use crate::edges::sink::ConfigSink;
use crate::edges::store::{CommandAck, QueuedCommand, StateLock, StateStore};
use crate::edges::webhook::{Approver, BackgroundNotifier};
use crate::error::Error;
use crate::report;

mod act;
mod components;
mod events;
mod journal;
mod legacy;
mod output;
mod pump;
mod watcher;

pub use components::Components;
pub use events::{RunnerEvent, WriteRecord};
pub use output::LogMode;
pub use watcher::ApplyRecord;

use events::Trigger;
use journal::Journal;
use output::{emit, progress_line};
use pump::{spawn_pump, Pump};
use watcher::{spawn_watcher, Answer, ApplyJob};

/// How often an unchanged metrics read error is logged again.
const SOURCE_ERROR_EVERY: Duration = Duration::from_secs(10);

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

    /// The next metrics read, if one is due (inline) or arrived within a tick (background).
    #[allow(clippy::type_complexity)]
    fn read_metrics(
        &mut self,
    ) -> Result<Option<(Result<crate::core::observe::Snapshot, String>, Instant)>, Error> {
        let poll_ms = self.spec.poll_interval_ms();
        let now = self.clock.now_ms();
        let service = self.spec.service().to_string();
        match &mut self.pump {
            Pump::Inline {
                source,
                next_due_ms,
            } => {
                if now >= *next_due_ms {
                    *next_due_ms = now + poll_ms;
                    let r = source.snapshot(&service).map_err(|e| e.to_string());
                    return Ok(Some((r, Instant::now())));
                }
                self.clock.sleep(self.opts.tick);
                Ok(None)
            }
            Pump::Background { rx, .. } => match rx.recv_timeout(self.opts.tick) {
                // Counters are cumulative, so if reads queued up while the loop was busy only
                // the newest matters: the step sees the same totals, sooner.
                Ok(mut r) => {
                    while let Ok(newer) = rx.try_recv() {
                        if newer.0.is_ok() || r.0.is_err() {
                            r = newer;
                        }
                    }
                    Ok(Some(r))
                }
                Err(RecvTimeoutError::Timeout) => Ok(None),
                Err(RecvTimeoutError::Disconnected) => {
                    Err(Error::Invalid("the metrics reader thread stopped".into()))
                }
            },
        }
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
            self.write_reports()?;
            self.log(
                "info",
                "runner_done",
                &format!("rollout {} ended: {outcome:?}", self.spec.metadata.name),
                json!({"outcome": outcome}),
            );
        }
        Ok(self.outcome)
    }

    fn write_reports(&self) -> Result<(), Error> {
        let dir = self
            .opts
            .report_dir
            .clone()
            .or_else(|| self.spec.spec.report_dir.as_ref().map(PathBuf::from));
        let Some(dir) = dir else {
            return Ok(());
        };
        let history = self.history()?;
        let paths = report::write_reports(&self.spec, &self.state, &history, &dir)?;
        self.log(
            "info",
            "report",
            &format!("reports written to {}", dir.display()),
            json!({"paths": paths}),
        );
        Ok(())
    }

    fn drain_commands(&mut self) -> Result<(), Error> {
        for item in self.store.drain_commands()? {
            match item {
                Ok(q) => {
                    self.command(&q)?;
                }
                Err(e) => {
                    let msg = e.to_string();
                    self.log("warn", "bad_command", &msg, json!({"error": msg}))
                }
            }
        }
        Ok(())
    }

    fn command(&mut self, q: &QueuedCommand) -> Result<CommandAck, Error> {
        let received = Instant::now();
        let received_ms = system_now_ms();
        self.log(
            "info",
            "command",
            &format!("command {}", command_name(&q.command)),
            json!({"id": q.id, "command": q.command}),
        );
        let h = self.handle(
            Input::Command(q.command.clone()),
            Trigger::Command(received),
        )?;
        let ack = CommandAck {
            id: q.id.clone(),
            received_at_ms: received_ms,
            done_at_ms: system_now_ms(),
            accepted: h.rejected.is_none(),
            message: h.rejected.or(h.decided).unwrap_or_default(),
            phase: Some(self.state.stage_label()),
            write_us: h.write_us,
        };
        if let Err(e) = self.store.ack(&ack) {
            self.log(
                "error",
                "ack_failed",
                &e.to_string(),
                json!({"error": e.to_string()}),
            );
        }
        self.record_event(&RunnerEvent::Command(ack.clone()));
        Ok(ack)
    }

    /// Logs the watcher's answers; each confirmed write goes to the step as an input.
    fn drain_applies(&mut self) -> Result<(), Error> {
        let mut answers = Vec::new();
        if let Some(rx) = &self.apply_rx {
            while let Ok(r) = rx.try_recv() {
                answers.push(r);
            }
        }
        for answer in answers {
            let r = &answer.record;
            self.pending_applies = self.pending_applies.saturating_sub(1);
            let level = if r.applied { "info" } else { "warn" };
            let msg = if r.applied {
                format!("proxies applied write #{} in {:.1} ms", r.seq, r.apply_ms)
            } else {
                format!("write #{} not confirmed: {}", r.seq, r.detail)
            };
            self.log(
                level,
                "applied",
                &msg,
                serde_json::to_value(r).unwrap_or(Value::Null),
            );
            self.record_event(&RunnerEvent::Applied(r.clone()));
            if r.applied && r.write > 0 {
                let at_ms = answer.applied_ms(self.clock.now_ms());
                let input = Applied::input(r.write, at_ms, r.digest48);
                self.handle(input, Trigger::Applied(answer.confirmed))?;
            }
        }
        Ok(())
    }

    fn record_event(&self, event: &RunnerEvent) {
        if let Err(e) = self.store.append_event(event) {
            self.log(
                "error",
                "event_log",
                &e.to_string(),
                json!({"error": e.to_string()}),
            );
        }
    }

    /// Logs a failed read, but the same error again only every 10 s (with a count), so a
    /// source that is down does not flood the log at the fast-track cadence.
    fn log_source_error(&mut self, e: &str) {
        let now = Instant::now();
        let repeat = self
            .last_source_error
            .as_ref()
            .is_some_and(|(last, at, _)| last == e && now.duration_since(*at) < SOURCE_ERROR_EVERY);
        if repeat {
            if let Some((_, _, n)) = &mut self.last_source_error {
                *n += 1;
            }
            return;
        }
        let suppressed = match &self.last_source_error {
            Some((last, _, n)) if last == e => *n,
            _ => 0,
        };
        let msg = if suppressed > 0 {
            format!("metrics read failed ({suppressed} more since): {e}")
        } else {
            format!("metrics read failed: {e}")
        };
        self.log(
            "warn",
            "source_error",
            &msg,
            json!({"error": e, "repeated": suppressed}),
        );
        self.last_source_error = Some((e.to_string(), now, 0));
    }

    fn log(&self, level: &str, event: &str, msg: &str, fields: Value) {
        if self.progress_shown && self.opts.log == LogMode::Human {
            print!("\r\x1b[2K");
        }
        emit(self.opts.log, level, event, msg, fields);
    }

    fn clear_progress(&mut self) {
        if self.progress_shown {
            print!("\r\x1b[2K");
            let _ = std::io::stdout().flush();
            self.progress_shown = false;
        }
    }

    /// Redraws the live progress line (terminal only), at most 4 times a second.
    fn progress(&mut self) {
        if self.opts.log != LogMode::Human {
            return;
        }
        if self
            .last_progress
            .is_some_and(|t| t.elapsed() < Duration::from_millis(250))
        {
            return;
        }
        self.last_progress = Some(Instant::now());
        let now = self.clock.now_ms();
        let line = progress_line(&self.spec, &self.state, self.journal.last_judged(), now);
        let width = 160;
        let line: String = line.chars().take(width).collect();
        print!("\r\x1b[2K{line}");
        let _ = std::io::stdout().flush();
        self.progress_shown = true;
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

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Pause => "pause",
        Command::Resume => "resume",
        Command::Promote { to_full: false } => "promote",
        Command::Promote { to_full: true } => "promote --full",
        Command::Abort { .. } => "abort",
    }
}

/// The config a rollout state wants in place, as `aviaryctl render-istio` and the offline
/// commands render it.
pub fn desired_config(spec: &RolloutSpec, state: Option<&RolloutState>) -> ConfigWrite {
    match state {
        Some(s) => {
            let config = s.desired_config(spec);
            let rollback = config.kill_switch.is_some();
            ConfigWrite {
                write: s.writes,
                config,
                canary_bps: if rollback { 0 } else { s.canary_bps },
                rollback,
                reason: format!("state: {}", s.stage_label()),
            }
        }
        None => ConfigWrite {
            write: 0,
            config: spec.spec.config.plugin_config.clone(),
            canary_bps: 0,
            rollback: false,
            reason: "initial plugin config from the spec".into(),
        },
    }
}
