//! The I/O loop around the pure decision step.
//!
//! Every tick (20 ms by default) the runner drains operator commands, takes any metrics read
//! the background reader finished (one every `poll_interval`), feeds each input to [`step`]
//! and carries out the returned actions in order: config writes go to every sink before
//! anything else happens, the state is persisted whenever the step asks (with fsync whenever
//! the batch changes traffic), notifications and confirmation requests run on background
//! threads so a slow webhook never delays a rollback. After each write a watcher polls the
//! proxies (admin endpoints, or Prometheus) until they report the new config digest, and the
//! runner records the latencies (evaluation to file in place and to durable, write to
//! applied) in the event log next to the state file.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use aviary_contract::config::PluginConfig;
use aviary_contract::units::micros;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::clock::{system_now_ms, Clock};
use crate::core::spec::{Event, RolloutSpec};
use crate::core::step::{
    pct, step, Action, Command, ConfigWrite, Decision, Input, Notification, Observation, Outcome,
    RolloutState,
};
use crate::edges::sink::{sinks_for, ConfigSink, WriteReceipt};
use crate::edges::source::{
    prometheus_selector, source_for, ApplyProbe, EnvoyAdminSource, MetricsSource, PrometheusSource,
};
use crate::edges::store::{CommandAck, QueuedCommand, StateLock, StateStore};
use crate::edges::webhook::{
    Approval, Approver, BackgroundNotifier, FanoutNotifier, Notifier, WebhookNotifier,
};
use crate::error::Error;
use crate::report;

mod output;
mod pump;
mod watcher;

pub use output::LogMode;
pub use watcher::ApplyRecord;

use output::{emit, progress_line};
use pump::{spawn_pump, Pump};
use watcher::{spawn_watcher, weights_of, ApplyJob, Expect};

/// How often an unchanged metrics read error is logged again.
const SOURCE_ERROR_EVERY: Duration = Duration::from_secs(10);

/// Backoff bounds of write and persist retries.
const RETRY_MIN_MS: u64 = 50;
const RETRY_MAX_MS: u64 = 2_000;

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

/// The edges a runner drives.
pub struct Components {
    pub source: Box<dyn MetricsSource + Send>,
    pub sinks: Vec<Box<dyn ConfigSink + Send>>,
    /// Receives every notification (filtering by event is the notifier's business).
    pub notifier: Option<Box<dyn Notifier>>,
    /// Asked on confirmation gates; all that answer for the event must approve.
    pub approvers: Vec<Arc<dyn Approver>>,
    /// Confirms that proxies applied a write.
    pub probe: Option<Box<dyn ApplyProbe + Send>>,
}

impl Components {
    /// The source, sinks, webhooks and apply probe a spec declares.
    pub fn from_spec(spec: &RolloutSpec) -> Result<Components, Error> {
        let hooks: Vec<WebhookNotifier> = spec
            .spec
            .webhooks
            .iter()
            .map(WebhookNotifier::from_spec)
            .collect();
        let approvers: Vec<Arc<dyn Approver>> = hooks
            .iter()
            .filter(|h| {
                h.listens(Event::ConfirmPromotion) || h.listens(Event::ConfirmTrafficIncrease)
            })
            .map(|h| Arc::new(h.clone()) as Arc<dyn Approver>)
            .collect();
        let notifier: Option<Box<dyn Notifier>> = if hooks.is_empty() {
            None
        } else {
            let all: Vec<Box<dyn Notifier>> = hooks
                .into_iter()
                .map(|h| Box::new(h) as Box<dyn Notifier>)
                .collect();
            Some(Box::new(FanoutNotifier(all)))
        };
        let m = &spec.spec.metrics;
        // Admin endpoints answer within milliseconds of an update; Prometheus only after its
        // next scrape, but still tells whether every proxy took the config.
        let probe: Option<Box<dyn ApplyProbe + Send>> = if !m.envoy_admin.is_empty() {
            Some(Box::new(EnvoyAdminSource::with_timeout(
                m.envoy_admin.iter().cloned(),
                m.timeout
                    .as_std()
                    .clamp(Duration::from_millis(50), Duration::from_millis(500)),
            )))
        } else {
            m.prometheus.as_ref().map(|p| {
                Box::new(
                    PrometheusSource::new(&p.url)
                        .timeout(m.timeout.as_std())
                        .selector(prometheus_selector(&p.labels)),
                ) as Box<dyn ApplyProbe + Send>
            })
        };
        Ok(Components {
            source: source_for(spec)?,
            sinks: sinks_for(spec)?,
            notifier,
            approvers,
            probe,
        })
    }
}

/// What caused an input, for latency accounting.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    Start,
    Observation(Instant),
    Command(Instant),
    Confirmation(Instant),
    Retry,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Observation(_) => "observation",
            Trigger::Command(_) => "command",
            Trigger::Confirmation(_) => "confirmation",
            Trigger::Retry => "retry",
        }
    }

    fn at(self) -> Option<Instant> {
        match self {
            Trigger::Observation(t) | Trigger::Command(t) | Trigger::Confirmation(t) => Some(t),
            Trigger::Start | Trigger::Retry => None,
        }
    }
}

/// One config write as recorded in the event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteRecord {
    /// Sequence number within this runner process.
    pub seq: u64,
    pub at_ms: u64,
    /// What caused it: `start`, `observation`, `command`, `confirmation` or `retry`.
    pub trigger: String,
    pub reason: String,
    pub canary_bps: u32,
    pub rollback: bool,
    /// Time in the decision step, microseconds.
    pub decide_us: u64,
    /// Time writing all sinks durably, microseconds.
    pub write_us: u64,
    /// From the trigger (metrics read returned, command read) to the last sink write durable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_to_write_us: Option<u64>,
    /// From the trigger to the first sink's new file being in place (what the proxy acts on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_to_visible_us: Option<u64>,
    /// Low 48 bits of the written config's digest, when a sink knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest48: Option<u64>,
    pub receipts: Vec<WriteReceipt>,
    /// Sink errors; a failed write is retried every tick.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Lines of the event log (`<stem>.events.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum RunnerEvent {
    Write(WriteRecord),
    Applied(ApplyRecord),
    Command(CommandAck),
}

/// The per-input result the command acks need.
#[derive(Default)]
struct Handled {
    rejected: Option<String>,
    write_us: Option<u64>,
}

/// Drives one rollout until it ends.
pub struct Runner {
    spec: RolloutSpec,
    store: StateStore,
    _lock: StateLock,
    state: RolloutState,
    clock: Arc<dyn Clock>,
    opts: RunnerOptions,
    sinks: Vec<Box<dyn ConfigSink + Send>>,
    notifier: Option<BackgroundNotifier>,
    approvers: Vec<Arc<dyn Approver>>,
    pump: Pump,
    confirm_tx: Sender<(Input, Instant)>,
    confirm_rx: Receiver<(Input, Instant)>,
    apply_tx: Option<Sender<ApplyJob>>,
    apply_rx: Option<Receiver<ApplyRecord>>,
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
    /// Takes the rollout lock, loads (or creates) the state and starts the background
    /// threads. Fails if another driver holds the lock or the state belongs to another rollout.
    pub fn new(
        spec: RolloutSpec,
        store: StateStore,
        components: Components,
        clock: Arc<dyn Clock>,
        opts: RunnerOptions,
    ) -> Result<Runner, Error> {
        let lock = store.lock()?;
        let now = clock.now_ms();
        let state = match store.load::<RolloutState>()? {
            Some(s) if s.name != spec.metadata.name => {
                return Err(Error::State {
                    path: store.state_path().display().to_string(),
                    message: format!(
                        "holds rollout {:?}, not {:?}; use another --state-dir",
                        s.name, spec.metadata.name
                    ),
                })
            }
            Some(s) => s,
            None => {
                let s = RolloutState::new(&spec, now);
                store.save(&s)?;
                s
            }
        };
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
        self.drain_applies();
        let poll_ms = self.spec.poll_interval_ms();
        let now = self.clock.now_ms();
        let service = self.spec.service().to_string();
        let observed = match &mut self.pump {
            Pump::Inline {
                source,
                next_due_ms,
            } => {
                if now >= *next_due_ms {
                    *next_due_ms = now + poll_ms;
                    let r = source.snapshot(&service).map_err(|e| e.to_string());
                    Some((r, Instant::now()))
                } else {
                    self.clock.sleep(self.opts.tick);
                    None
                }
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
                    Some(r)
                }
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Invalid("the metrics reader thread stopped".into()))
                }
            },
        };
        if let Some((result, at)) = observed {
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
    /// confirmation, and writes the reports. Returns the outcome.
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
            self.drain_applies();
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
            let dir = self
                .opts
                .report_dir
                .clone()
                .or_else(|| self.spec.spec.report_dir.as_ref().map(PathBuf::from));
            if let Some(dir) = dir {
                let paths = report::write_reports(&self.spec, &self.state, &dir)?;
                self.log(
                    "info",
                    "report",
                    &format!("reports written to {}", dir.display()),
                    json!({"paths": paths}),
                );
            }
            self.log(
                "info",
                "runner_done",
                &format!("rollout {} ended: {outcome:?}", self.spec.metadata.name),
                json!({"outcome": outcome}),
            );
        }
        Ok(self.outcome)
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
        let before = self.state.decisions.len();
        let h = self.handle(
            Input::Command(q.command.clone()),
            Trigger::Command(received),
        )?;
        let message = h.rejected.clone().unwrap_or_else(|| {
            self.state.decisions[before.min(self.state.decisions.len())..]
                .last()
                .map(|d| d.reason.clone())
                .unwrap_or_default()
        });
        let ack = CommandAck {
            id: q.id.clone(),
            received_at_ms: received_ms,
            done_at_ms: system_now_ms(),
            accepted: h.rejected.is_none(),
            message,
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
        self.record(&RunnerEvent::Command(ack.clone()));
        Ok(ack)
    }

    /// Feeds one input to the step and carries out its actions in order.
    fn handle(&mut self, input: Input, trigger: Trigger) -> Result<Handled, Error> {
        let now = self.clock.now_ms();
        let t0 = Instant::now();
        let before = self.state.decisions.len();
        let (state, actions) = step(&self.spec, self.state.clone(), &input, now);
        let decide_us = micros(t0.elapsed());
        self.state = state;
        let new: Vec<Decision> =
            self.state.decisions[before.min(self.state.decisions.len())..].to_vec();
        for d in &new {
            self.log_decision(d);
        }
        let mut handled = Handled::default();
        let mut persist_failed = false;
        // A batch that only records an observation need not reach the platter; anything that
        // changes traffic, ends the rollout or talks to people does.
        let durable = actions.iter().any(|a| !matches!(a, Action::Persist));
        for action in actions {
            match action {
                Action::WriteConfig(w) => {
                    if persist_failed && !w.rollback {
                        // Never raise traffic that the state cannot record: the retry
                        // writes it once the state is saved.
                        self.write_pending = true;
                        continue;
                    }
                    let rec = self.write(
                        &w.config,
                        &w.reason,
                        w.canary_bps,
                        w.rollback,
                        decide_us,
                        trigger,
                    );
                    handled.write_us = Some(rec.write_us);
                }
                Action::Persist => {
                    if let Err(e) = self.store.save_with(&self.state, durable) {
                        persist_failed = true;
                        self.persist_pending = true;
                        self.log(
                            "error",
                            "persist_failed",
                            &e.to_string(),
                            json!({"error": e.to_string()}),
                        );
                    } else {
                        self.persist_pending = false;
                    }
                }
                Action::Notify(n) => {
                    if let Some(bg) = &self.notifier {
                        self.log(
                            "info",
                            "notify",
                            &format!("notify {}", n.event),
                            json!({"webhookEvent": n.event}),
                        );
                        bg.send(n);
                    }
                }
                Action::AskConfirmation(n) => self.ask(n),
                Action::Done(o) => self.outcome = Some(o),
                Action::Rejected { reason } => {
                    self.log("warn", "rejected", &reason, json!({"reason": reason}));
                    handled.rejected = Some(reason);
                }
            }
        }
        Ok(handled)
    }

    fn write(
        &mut self,
        config: &PluginConfig,
        reason: &str,
        canary_bps: u32,
        rollback: bool,
        decide_us: u64,
        trigger: Trigger,
    ) -> WriteRecord {
        let w0 = Instant::now();
        let mut receipts = Vec::new();
        let mut errors = Vec::new();
        for sink in &self.sinks {
            match sink.write(config) {
                Ok(r) => receipts.push(r),
                Err(e) => errors.push(e.to_string()),
            }
        }
        let done = Instant::now();
        self.write_seq += 1;
        let digest48 = receipts.iter().find_map(WriteReceipt::digest48);
        let rec = WriteRecord {
            seq: self.write_seq,
            at_ms: system_now_ms(),
            trigger: trigger.name().into(),
            reason: reason.to_string(),
            canary_bps,
            rollback,
            decide_us,
            write_us: micros(done - w0),
            trigger_to_write_us: trigger
                .at()
                .map(|t| micros(done.saturating_duration_since(t))),
            trigger_to_visible_us: trigger.at().and_then(|t| {
                let first = receipts.first()?;
                let visible = w0 + Duration::from_micros(first.visible_us);
                Some(micros(visible.saturating_duration_since(t)))
            }),
            digest48,
            receipts,
            errors,
        };
        self.write_pending = !rec.errors.is_empty();
        let level = if rec.errors.is_empty() {
            "info"
        } else {
            "error"
        };
        self.log(
            level,
            "write",
            &format!(
                "wrote canary {}{} in {:.2} ms{}",
                pct(canary_bps),
                if rollback {
                    " (kill switch → baseline)"
                } else {
                    ""
                },
                rec.write_us as f64 / 1e3,
                if rec.errors.is_empty() {
                    String::new()
                } else {
                    format!("; FAILED: {}", rec.errors.join("; "))
                }
            ),
            serde_json::to_value(&rec).unwrap_or(Value::Null),
        );
        self.record(&RunnerEvent::Write(rec.clone()));
        if rec.errors.is_empty() {
            if let Some(tx) = &self.apply_tx {
                let expect = match digest48 {
                    Some(d) => Expect::Digest(d),
                    None => Expect::Weights(weights_of(config)),
                };
                let job = ApplyJob {
                    seq: rec.seq,
                    expect,
                    written: done,
                    trigger: trigger.at(),
                };
                if tx.send(job).is_ok() {
                    self.pending_applies += 1;
                }
            }
        }
        rec
    }

    fn retry_pending(&mut self) {
        if !self.persist_pending && !self.write_pending {
            self.retry_backoff_ms = 0;
            return;
        }
        let now = self.clock.now_ms();
        if now < self.next_retry_ms {
            return;
        }
        self.retry_backoff_ms = (self.retry_backoff_ms * 2).clamp(RETRY_MIN_MS, RETRY_MAX_MS);
        self.next_retry_ms = now + self.retry_backoff_ms;
        if self.persist_pending {
            match self.store.save(&self.state) {
                Ok(()) => self.persist_pending = false,
                Err(_) => return,
            }
        }
        if self.write_pending {
            let config = self.state.desired_config(&self.spec);
            let rollback = config.kill_switch.is_some();
            let bps = if rollback { 0 } else { self.state.canary_bps };
            self.write(
                &config,
                "retrying a failed write",
                bps,
                rollback,
                0,
                Trigger::Retry,
            );
        }
    }

    fn ask(&mut self, n: Notification) {
        let approvers: Vec<Arc<dyn Approver>> = self
            .approvers
            .iter()
            .filter(|a| a.answers(n.event))
            .cloned()
            .collect();
        self.log(
            "info",
            "confirm",
            &format!("asking {} webhook(s): {}", approvers.len(), n.event),
            json!({"webhookEvent": n.event, "approvers": approvers.len()}),
        );
        let tx = self.confirm_tx.clone();
        thread::spawn(move || {
            let mut approved = !approvers.is_empty();
            let mut details = Vec::new();
            for a in &approvers {
                match a.confirm(&n) {
                    Ok(Approval::Approved) => {}
                    Ok(Approval::Rejected { reason }) => {
                        approved = false;
                        details.push(format!("rejected: {reason}"));
                    }
                    Ok(Approval::Pending) => {
                        approved = false;
                        details.push("no decision yet".into());
                    }
                    Err(e) => {
                        approved = false;
                        details.push(e.to_string());
                    }
                }
            }
            if approvers.is_empty() {
                details.push("no webhook answers this event".into());
            }
            let detail = (!details.is_empty()).then(|| details.join("; "));
            let _ = tx.send((Input::Confirmation { approved, detail }, Instant::now()));
        });
    }

    fn drain_applies(&mut self) {
        let mut records = Vec::new();
        if let Some(rx) = &self.apply_rx {
            while let Ok(r) = rx.try_recv() {
                records.push(r);
            }
        }
        for r in records {
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
                serde_json::to_value(&r).unwrap_or(Value::Null),
            );
            self.record(&RunnerEvent::Applied(r));
        }
    }

    fn record(&self, event: &RunnerEvent) {
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

    fn log_decision(&mut self, d: &Decision) {
        let gates: Vec<Value> = d
            .gates
            .iter()
            .map(|g| json!({"gate": g.gate, "verdict": g.verdict, "reason": g.reason}))
            .collect();
        self.log(
            "info",
            "decision",
            &format!("{:<14} {:?}: {}", d.stage, d.kind, d.reason),
            json!({
                "kind": d.kind,
                "stage": d.stage,
                "canaryBps": d.canary_bps,
                "reason": d.reason,
                "failedChecks": d.failed_checks,
                "gates": gates,
            }),
        );
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
        let line = progress_line(&self.spec, &self.state, self.clock.now_ms());
        let width = 160;
        let line: String = line.chars().take(width).collect();
        print!("\r\x1b[2K{line}");
        let _ = std::io::stdout().flush();
        self.progress_shown = true;
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
                config,
                canary_bps: if rollback { 0 } else { s.canary_bps },
                rollback,
                reason: format!("state: {}", s.stage_label()),
            }
        }
        None => ConfigWrite {
            config: spec.spec.config.plugin_config.clone(),
            canary_bps: 0,
            rollback: false,
            reason: "initial plugin config from the spec".into(),
        },
    }
}
