//! The decision step: a pure function from (spec, state, input, time) to the next state and
//! the actions the runner must carry out, in order. No I/O, no clock: the same inputs always
//! give the same outputs, so a driver restarted from its persisted state decides exactly as
//! the one that was killed.
//!
//! The runner feeds an [`Input::Observation`] every [`RolloutSpec::poll_interval_ms`]; the
//! step decides whether it is only a fast-track check or also a regular (bake-interval)
//! evaluation. Action order matters: on rollback `WriteConfig` comes first so the sink is
//! written before anything else; on a weight increase `Persist` comes first so a crash between
//! the two re-asserts the new weight rather than jumping back.

use std::collections::BTreeMap;

use aviary_contract::config::PluginConfig;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::core::gates::{self, Context, ErrorTests, GateResult, MetricPoint, Verdict, Window};
use crate::core::observe::Snapshot;
use crate::core::spec::{Event, OnMaxHold, RolloutSpec};

/// Something that happened: the step's only way to learn about the world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Input {
    /// Begin the rollout, or resume it after a driver restart (re-asserts the current config).
    Start,
    /// A metrics read (or its failure).
    Observation(Observation),
    /// Time passed without a read; lets time-based rules (bake, max hold) run.
    Tick,
    /// An operator command.
    Command(Command),
    /// The confirmation webhooks' answer to an [`Action::AskConfirmation`].
    Confirmation {
        approved: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
}

/// One read of the metrics source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_error: Option<String>,
}

impl Observation {
    /// A successful read.
    pub fn of(snapshot: Snapshot) -> Input {
        Input::Observation(Observation {
            snapshot: Some(snapshot),
            source_error: None,
        })
    }

    /// A failed read.
    pub fn failed(error: impl Into<String>) -> Input {
        Input::Observation(Observation {
            snapshot: None,
            source_error: Some(error.into()),
        })
    }
}

/// Operator commands (`aviaryctl pause|resume|promote|abort`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Command {
    /// Stop automatic weight changes; keep observing and recording.
    Pause,
    Resume,
    /// Manual gate: go to the next step now, or straight to 100% with `to_full`.
    Promote {
        to_full: bool,
    },
    /// Instant manual rollback.
    Abort {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// What the runner must do, in the order given.
// A step returns a handful of actions and they are consumed at once; boxing the config
// would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// Write this plugin config to every sink.
    WriteConfig(ConfigWrite),
    /// Persist the returned state atomically.
    Persist,
    /// Send a notification to the webhooks subscribed to `event`.
    Notify(Notification),
    /// Call the webhooks subscribed to `event` and answer with [`Input::Confirmation`]
    /// (approved only if all of them answer yes).
    AskConfirmation(Notification),
    /// The rollout is over; write the report and exit.
    Done(Outcome),
    /// The input was not applicable (e.g. `promote` after the end); tell the operator.
    Rejected { reason: String },
}

/// A config to write, with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigWrite {
    /// The full plugin config (same type and validation as the plugin).
    pub config: PluginConfig,
    /// Canary weight in basis points of all traffic.
    pub canary_bps: u32,
    /// True when this pins all traffic to the baseline (kill switch set).
    pub rollback: bool,
    pub reason: String,
}

/// A webhook event and its JSON payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub event: Event,
    pub payload: Value,
}

/// How a rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    Promoted,
    RolledBack,
    Aborted,
}

/// Where the rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// Not started.
    Pending,
    /// Mirrored traffic only.
    Shadow,
    /// Live traffic at `schedule[step]`.
    Canary {
        step: usize,
    },
    Promoted,
    RolledBack,
    Aborted,
}

impl Phase {
    /// Whether the rollout is over.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack | Phase::Aborted)
    }
}

/// Kinds of recorded decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DecisionKind {
    Start,
    Restart,
    /// Gates passed; moved to the next step.
    Advance,
    /// Canary at 100%; done.
    Promote,
    /// Inconclusive (or still baking): stay.
    Hold,
    /// A gate failed, below the threshold.
    Fail,
    Rollback,
    /// Fast-track breach: immediate rollback.
    FastRollback,
    /// Something needs attention (max hold with `alert`, breach while paused).
    Alert,
    Pause,
    Resume,
    ManualPromote,
    Abort,
    AwaitConfirmation,
    Confirmed,
    Denied,
    /// Counters went down: the window restarted.
    CounterReset,
    Rejected,
}

/// One recorded decision with what it was based on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub at_ms: u64,
    /// Stage label, e.g. `shadow`, `step 3 (10%)`.
    pub stage: String,
    pub canary_bps: u32,
    pub kind: DecisionKind,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateResult>,
    pub failed_checks: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricPoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// A point of the weight timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightPoint {
    pub at_ms: u64,
    pub canary_bps: u32,
    /// True when the kill switch pins traffic to the baseline.
    pub kill_switch: bool,
    pub reason: String,
}

/// Time spent in a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    pub name: String,
    pub canary_bps: u32,
    pub started_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

/// A pending confirmation: where the rollout goes when it is approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingConfirmation {
    pub event: Event,
    /// Target step index, or `None` for the final promotion.
    pub target_step: Option<usize>,
    pub asked_ms: u64,
}

/// Everything the driver knows; persisted after every decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutState {
    pub name: String,
    pub phase: Phase,
    pub paused: bool,
    /// Canary weight now applied, basis points of all traffic.
    pub canary_bps: u32,
    /// Baked step weights (bps), fixed at start so an edited spec cannot make a restart jump.
    pub schedule: Vec<u32>,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// When the current stage (shadow or step) began.
    pub stage_started_ms: u64,
    /// When the current bake window began.
    pub window_started_ms: u64,
    /// Snapshot at the start of the bake window (first read after it began).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "json_safe")]
    pub window_start: Option<Snapshot>,
    /// Last snapshot fed into the sequential tests.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "json_safe")]
    pub last: Option<Snapshot>,
    /// Time of the last regular evaluation (or the window start).
    pub last_check_ms: u64,
    pub failed_checks: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_since_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting: Option<PendingConfirmation>,
    /// Sequential error-rate tests over the whole rollout.
    pub error_tests: ErrorTests,
    /// Looks spent per alpha-spending test.
    pub looks: BTreeMap<String, u32>,
    /// A breach while paused has been alerted (not repeated).
    pub breach_alerted: bool,
    pub source_errors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_source_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    pub decisions: Vec<Decision>,
    pub timeline: Vec<WeightPoint>,
    pub stages: Vec<Stage>,
}

impl RolloutState {
    /// A rollout that has not started.
    pub fn new(spec: &RolloutSpec, now_ms: u64) -> RolloutState {
        RolloutState {
            name: spec.metadata.name.clone(),
            phase: Phase::Pending,
            paused: false,
            canary_bps: 0,
            schedule: spec.schedule_bps(),
            created_ms: now_ms,
            started_ms: None,
            finished_ms: None,
            stage_started_ms: now_ms,
            window_started_ms: now_ms,
            window_start: None,
            last: None,
            last_check_ms: now_ms,
            failed_checks: 0,
            hold_since_ms: None,
            awaiting: None,
            error_tests: ErrorTests::default(),
            looks: BTreeMap::new(),
            breach_alerted: false,
            source_errors: 0,
            last_source_error: None,
            outcome: None,
            decisions: Vec::new(),
            timeline: Vec::new(),
            stages: Vec::new(),
        }
    }

    /// The plugin config the current phase wants in place.
    pub fn desired_config(&self, spec: &RolloutSpec) -> PluginConfig {
        match self.phase {
            Phase::RolledBack | Phase::Aborted => spec.render_config(0, true, false),
            Phase::Shadow => spec.render_config(0, false, true),
            _ => spec.render_config(self.canary_bps, false, false),
        }
    }

    /// Label of the current stage.
    pub fn stage_label(&self) -> String {
        match self.phase {
            Phase::Pending => "pending".into(),
            Phase::Shadow => "shadow".into(),
            Phase::Canary { step } => format!("step {} ({})", step + 1, pct(self.canary_bps)),
            Phase::Promoted => "promoted".into(),
            Phase::RolledBack => "rolled back".into(),
            Phase::Aborted => "aborted".into(),
        }
    }
}

/// Formats basis points as a percentage (`12.5%`).
pub fn pct(bps: u32) -> String {
    let whole = bps / 100;
    let frac = bps % 100;
    if frac == 0 {
        format!("{whole}%")
    } else if frac.is_multiple_of(10) {
        format!("{whole}.{}%", frac / 10)
    } else {
        format!("{whole}.{frac:02}%")
    }
}

/// Advances the rollout by one input. Pure: no I/O, no clock.
pub fn step(
    spec: &RolloutSpec,
    state: RolloutState,
    input: &Input,
    now_ms: u64,
) -> (RolloutState, Vec<Action>) {
    let mut d = Driver {
        spec,
        s: state,
        now: now_ms,
        actions: Vec::new(),
    };
    match input {
        Input::Start => d.start(),
        Input::Observation(o) => d.observe(o),
        Input::Tick => d.observe(&Observation::default()),
        Input::Command(c) => d.command(c),
        Input::Confirmation { approved, detail } => d.confirmation(*approved, detail.as_deref()),
    }
    (d.s, d.actions)
}

struct Driver<'a> {
    spec: &'a RolloutSpec,
    s: RolloutState,
    now: u64,
    actions: Vec<Action>,
}

impl Driver<'_> {
    fn record(&mut self, kind: DecisionKind, reason: impl Into<String>, gates: Vec<GateResult>) {
        self.record_full(kind, reason, gates, None, None);
    }

    fn record_full(
        &mut self,
        kind: DecisionKind,
        reason: impl Into<String>,
        gates: Vec<GateResult>,
        metrics: Option<MetricPoint>,
        window_ms: Option<u64>,
    ) {
        self.s.decisions.push(Decision {
            at_ms: self.now,
            stage: self.s.stage_label(),
            canary_bps: self.s.canary_bps,
            kind,
            reason: reason.into(),
            gates,
            failed_checks: self.s.failed_checks,
            metrics,
            window_ms,
        });
    }

    fn payload(&self, event: Event, reason: &str, gates: &[GateResult]) -> Value {
        let failing: Vec<&GateResult> = gates
            .iter()
            .filter(|g| g.verdict != Verdict::Pass)
            .collect();
        json!({
            "event": event.as_str(),
            "rollout": self.spec.metadata.name,
            "service": self.spec.service(),
            "baseline": self.spec.spec.baseline,
            "canary": self.spec.spec.canary,
            "stage": self.s.stage_label(),
            "canaryWeightBps": self.s.canary_bps,
            "canaryWeight": pct(self.s.canary_bps),
            "paused": self.s.paused,
            "failedChecks": self.s.failed_checks,
            "reason": reason,
            "gates": failing,
            "atMs": self.now,
        })
    }

    fn notify(&mut self, event: Event, reason: &str, gates: &[GateResult]) {
        let payload = self.payload(event, reason, gates);
        self.actions
            .push(Action::Notify(Notification { event, payload }));
    }

    fn reject(&mut self, reason: impl Into<String>) {
        let reason = reason.into();
        self.record(DecisionKind::Rejected, reason.clone(), Vec::new());
        self.actions.push(Action::Persist);
        self.actions.push(Action::Rejected { reason });
    }

    fn write(&mut self, rollback: bool, reason: &str) {
        let config = self.s.desired_config(self.spec);
        self.actions.push(Action::WriteConfig(ConfigWrite {
            config,
            canary_bps: if rollback { 0 } else { self.s.canary_bps },
            rollback,
            reason: reason.to_string(),
        }));
    }

    fn timeline(&mut self, kill_switch: bool, reason: &str) {
        self.s.timeline.push(WeightPoint {
            at_ms: self.now,
            canary_bps: self.s.canary_bps,
            kill_switch,
            reason: reason.to_string(),
        });
    }

    fn end_stage(&mut self, result: &str) {
        if let Some(st) = self.s.stages.last_mut() {
            if st.ended_ms.is_none() {
                st.ended_ms = Some(self.now);
                st.result = Some(result.to_string());
            }
        }
    }

    fn begin_stage(&mut self) {
        self.s.stages.push(Stage {
            name: self.s.stage_label(),
            canary_bps: self.s.canary_bps,
            started_ms: self.now,
            ended_ms: None,
            result: None,
        });
    }

    fn reset_window(&mut self, from: Option<Snapshot>) {
        self.s.window_started_ms = self.now;
        self.s.window_start = from;
        self.s.last_check_ms = self.now;
    }

    /// Enters a live or shadow stage: new window, counters cleared.
    fn enter(&mut self, phase: Phase, canary_bps: u32) {
        self.s.phase = phase;
        self.s.canary_bps = canary_bps;
        self.s.stage_started_ms = self.now;
        self.s.failed_checks = 0;
        self.s.hold_since_ms = None;
        self.s.awaiting = None;
        self.s.breach_alerted = false;
        // The first read after the write starts the window, so traffic at the old weight
        // does not count toward the new step.
        self.reset_window(None);
        self.begin_stage();
    }

    fn start(&mut self) {
        if self.s.phase == Phase::Pending && self.s.started_ms.is_none() {
            self.s.started_ms = Some(self.now);
            if self.s.schedule.is_empty() {
                self.s.schedule = self.spec.schedule_bps();
            }
            if self.spec.spec.analysis.shadow.is_some() {
                self.enter(Phase::Shadow, 0);
                let reason = "rollout started: shadow phase (mirrored traffic only)";
                self.record(DecisionKind::Start, reason, Vec::new());
                self.timeline(false, reason);
                self.actions.push(Action::Persist);
                self.write(false, reason);
                self.notify(Event::Start, reason, &[]);
            } else {
                let reason = "rollout started";
                self.record(DecisionKind::Start, reason, Vec::new());
                self.request_advance(Some(0), reason, Vec::new());
                let at = self
                    .actions
                    .iter()
                    .position(|a| matches!(a, Action::Notify(_) | Action::AskConfirmation(_)))
                    .unwrap_or(self.actions.len());
                let payload = self.payload(Event::Start, reason, &[]);
                self.actions.insert(
                    at,
                    Action::Notify(Notification {
                        event: Event::Start,
                        payload,
                    }),
                );
            }
            return;
        }
        let reason = format!("driver restarted: re-asserting {}", self.s.stage_label());
        let terminal = self.s.phase.is_terminal();
        let rollback = matches!(self.s.phase, Phase::RolledBack | Phase::Aborted);
        self.record(DecisionKind::Restart, reason.clone(), Vec::new());
        self.actions.push(Action::Persist);
        self.write(rollback, &reason);
        if terminal {
            if let Some(o) = self.s.outcome {
                self.actions.push(Action::Done(o));
            }
            return;
        }
        self.notify(Event::Start, &reason, &[]);
        if let Some(p) = self.s.awaiting {
            let payload = self.payload(p.event, &reason, &[]);
            self.actions.push(Action::AskConfirmation(Notification {
                event: p.event,
                payload,
            }));
        }
    }

    /// Moves to `target` (a step index, or `None` for full promotion) after the gates passed,
    /// asking the confirmation webhooks first when configured.
    fn request_advance(&mut self, target: Option<usize>, reason: &str, gates: Vec<GateResult>) {
        let target = target.filter(|&i| i < self.s.schedule.len());
        let event = if target.is_some() {
            Event::ConfirmTrafficIncrease
        } else {
            Event::ConfirmPromotion
        };
        if self.spec.has_webhook(event) {
            if self.s.awaiting.is_some() {
                return;
            }
            self.s.awaiting = Some(PendingConfirmation {
                event,
                target_step: target,
                asked_ms: self.now,
            });
            let why = format!("{reason}; waiting for {event}");
            self.record(DecisionKind::AwaitConfirmation, why.clone(), gates.clone());
            self.actions.push(Action::Persist);
            let payload = self.payload(event, &why, &gates);
            self.actions
                .push(Action::AskConfirmation(Notification { event, payload }));
            return;
        }
        self.advance(target, DecisionKind::Advance, reason, gates);
    }

    fn advance(
        &mut self,
        target: Option<usize>,
        kind: DecisionKind,
        reason: &str,
        gates: Vec<GateResult>,
    ) {
        let target = target.filter(|&i| i < self.s.schedule.len());
        let from = self.s.stage_label();
        match target {
            Some(i) => {
                let bps = self.s.schedule[i];
                let why = format!("{from} → step {} ({}): {reason}", i + 1, pct(bps));
                self.record(kind, why.clone(), gates.clone());
                self.end_stage(&format!("advanced: {reason}"));
                self.enter(Phase::Canary { step: i }, bps);
                self.timeline(false, &why);
                self.actions.push(Action::Persist);
                self.write(false, &why);
                self.notify(Event::Step, &why, &gates);
            }
            None => {
                let why = format!("{from} → 100%: {reason}");
                let kind = if kind == DecisionKind::Advance {
                    DecisionKind::Promote
                } else {
                    kind
                };
                self.record(kind, why.clone(), gates.clone());
                self.end_stage(&format!("promoted: {reason}"));
                self.s.phase = Phase::Promoted;
                self.s.canary_bps = self.spec.pool_bps();
                self.s.awaiting = None;
                self.s.finished_ms = Some(self.now);
                self.s.outcome = Some(Outcome::Promoted);
                self.timeline(false, &why);
                self.actions.push(Action::Persist);
                self.write(false, &why);
                self.notify(Event::Promote, &why, &gates);
                self.actions.push(Action::Done(Outcome::Promoted));
            }
        }
    }

    /// Rolls back: the config write is the first action.
    fn rollback(
        &mut self,
        kind: DecisionKind,
        outcome: Outcome,
        reason: &str,
        gates: Vec<GateResult>,
    ) {
        let from = self.s.stage_label();
        let why = format!("{from}: {reason}");
        self.record(kind, why.clone(), gates.clone());
        self.end_stage(&format!("rolled back: {reason}"));
        self.s.phase = if outcome == Outcome::Aborted {
            Phase::Aborted
        } else {
            Phase::RolledBack
        };
        self.s.canary_bps = 0;
        self.s.awaiting = None;
        self.s.finished_ms = Some(self.now);
        self.s.outcome = Some(outcome);
        self.write(true, &why);
        self.timeline(true, &why);
        self.actions.push(Action::Persist);
        self.notify(Event::Rollback, &why, &gates);
        self.actions.push(Action::Done(outcome));
    }

    fn alert(&mut self, reason: &str, gates: Vec<GateResult>) {
        self.record(DecisionKind::Alert, reason, gates.clone());
        self.actions.push(Action::Persist);
        self.notify(Event::Alert, reason, &gates);
    }

    fn observe(&mut self, o: &Observation) {
        if !matches!(self.s.phase, Phase::Shadow | Phase::Canary { .. }) {
            return;
        }
        if let Some(e) = &o.source_error {
            self.s.source_errors += 1;
            self.s.last_source_error = Some(e.clone());
        }
        if let Some(snap) = &o.snapshot {
            if !self.ingest(snap) {
                self.actions.push(Action::Persist);
                return;
            }
            if self.fast_track(snap) {
                return;
            }
        }
        let interval = self.spec.interval_ms();
        if self.now.saturating_sub(self.s.last_check_ms) >= interval {
            self.regular(o.snapshot.as_ref());
        }
        if !self.actions.iter().any(|a| matches!(a, Action::Persist)) {
            self.actions.push(Action::Persist);
        }
    }

    /// Feeds the increment since the last read into the sequential tests. Returns false when
    /// the counters went down (the window restarts at this snapshot).
    fn ingest(&mut self, snap: &Snapshot) -> bool {
        let (base, canary) = (&self.spec.spec.baseline, &self.spec.spec.canary);
        if let Some(last) = &self.s.last {
            let inc = gates::error_delta(last, snap, canary)
                .and_then(|c| gates::error_delta(last, snap, base).map(|b| (c, b)));
            match inc {
                Ok((c, b)) => {
                    if let Some(g) = &self.spec.spec.analysis.gates.error_rate {
                        self.s.error_tests.observe_counts(g, c, b);
                    }
                }
                Err(e) => {
                    self.s.last = Some(snap.clone());
                    self.reset_window(Some(snap.clone()));
                    self.record(
                        DecisionKind::CounterReset,
                        format!("{e}; the bake window restarts"),
                        Vec::new(),
                    );
                    return false;
                }
            }
        }
        self.s.last = Some(snap.clone());
        self.s.last_source_error = None;
        if self.s.window_start.is_none() {
            self.s.window_start = Some(snap.clone());
        }
        true
    }

    /// Fast-track: a sequential error test that has rejected rolls back at once. Returns true
    /// when it acted.
    fn fast_track(&mut self, snap: &Snapshot) -> bool {
        let Some(g) = &self.spec.spec.analysis.gates.error_rate else {
            return false;
        };
        if !g.fast_track || self.spec.fast_interval_ms().is_none() {
            return false;
        }
        if !matches!(self.s.phase, Phase::Canary { .. }) {
            return false;
        }
        let budget = self.spec.alpha_budget();
        let t = &self.s.error_tests;
        let rejected = (g.max.is_some() && t.absolute.rejected(budget.error_absolute))
            || (g.max_relative.is_some() && t.relative.rejected(budget.error_relative));
        if !rejected {
            return false;
        }
        let window = self
            .s
            .window_start
            .as_ref()
            .and_then(|w| {
                Window::between(w, snap, &self.spec.spec.baseline, &self.spec.spec.canary).ok()
            })
            .unwrap_or_default();
        let breach = gates::fast_error_breach(g, &window, &self.s.error_tests, &budget);
        if breach.is_empty() {
            return false;
        }
        let reason = breach
            .iter()
            .map(|r| r.reason.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        if self.s.paused {
            if self.s.breach_alerted {
                return false;
            }
            self.s.breach_alerted = true;
            self.alert(
                &format!("fast-track breach while paused (no rollback): {reason}"),
                breach,
            );
            return true;
        }
        self.rollback(
            DecisionKind::FastRollback,
            Outcome::RolledBack,
            &format!("fast-track: {reason}"),
            breach,
        );
        true
    }

    fn regular(&mut self, snap: Option<&Snapshot>) {
        self.s.last_check_ms = self.now;
        let window = match (&self.s.window_start, snap) {
            (Some(start), Some(end)) => {
                Window::between(start, end, &self.spec.spec.baseline, &self.spec.spec.canary)
                    .map_err(|e| e.to_string())
            }
            (None, Some(_)) => Err("no read since the step began".to_string()),
            (_, None) => Err(self.s.last_source_error.clone().map_or_else(
                || "no metrics read this interval".into(),
                |e| format!("metrics source: {e}"),
            )),
        };
        let (results, metrics, window_ms) = match &window {
            Ok(w) => {
                let (r, m) = self.evaluate(w);
                (r, Some(m), Some(w.duration_ms()))
            }
            Err(e) => (vec![GateResult::missing("data", e.clone())], None, None),
        };
        let verdict = if results.iter().any(|r| r.verdict == Verdict::Fail) {
            Verdict::Fail
        } else if results.iter().any(|r| r.verdict == Verdict::Inconclusive) {
            Verdict::Inconclusive
        } else {
            Verdict::Pass
        };
        let summary = |v: Verdict| {
            results
                .iter()
                .filter(|r| r.verdict == v)
                .map(|r| format!("{}: {}", r.gate, r.reason))
                .collect::<Vec<_>>()
                .join("; ")
        };
        match verdict {
            Verdict::Fail => {
                self.s.failed_checks += 1;
                self.s.hold_since_ms = None;
                let threshold = self.spec.spec.analysis.threshold;
                let why = format!(
                    "failed check {}/{threshold}: {}",
                    self.s.failed_checks,
                    summary(Verdict::Fail)
                );
                if self.s.failed_checks >= threshold {
                    if self.s.paused {
                        self.record_full(
                            DecisionKind::Fail,
                            why.clone(),
                            results.clone(),
                            metrics,
                            window_ms,
                        );
                        self.alert(
                            &format!("threshold reached while paused (no rollback): {why}"),
                            results,
                        );
                    } else {
                        self.rollback(DecisionKind::Rollback, Outcome::RolledBack, &why, results);
                        if let Some(Decision {
                            metrics: m,
                            window_ms: w,
                            ..
                        }) = self.s.decisions.last_mut()
                        {
                            *m = metrics;
                            *w = window_ms;
                        }
                    }
                } else {
                    // A fresh window, so the next check judges new data rather than the
                    // same failing sample again.
                    self.reset_window(snap.cloned());
                    self.record_full(DecisionKind::Fail, why, results, metrics, window_ms);
                }
            }
            Verdict::Inconclusive => {
                let since = *self.s.hold_since_ms.get_or_insert(self.now);
                let held = self.now.saturating_sub(since);
                let max = self.spec.spec.analysis.max_hold.ms();
                let why = format!("inconclusive: {}", summary(Verdict::Inconclusive));
                if held >= max {
                    let reason = format!(
                        "inconclusive for {} (maxHold {}): {}",
                        crate::core::spec::HumanDuration(held),
                        self.spec.spec.analysis.max_hold,
                        summary(Verdict::Inconclusive)
                    );
                    match (self.spec.spec.analysis.on_max_hold, self.s.paused) {
                        (OnMaxHold::Rollback, false) => {
                            self.rollback(
                                DecisionKind::Rollback,
                                Outcome::RolledBack,
                                &reason,
                                results,
                            );
                        }
                        _ => {
                            self.s.hold_since_ms = Some(self.now);
                            self.alert(&reason, results);
                        }
                    }
                } else {
                    self.record_full(DecisionKind::Hold, why, results, metrics, window_ms);
                }
            }
            Verdict::Pass => {
                self.s.failed_checks = 0;
                self.s.hold_since_ms = None;
                let all = summary(Verdict::Pass);
                if let Phase::Shadow = self.s.phase {
                    let min = self
                        .spec
                        .spec
                        .analysis
                        .shadow
                        .as_ref()
                        .map_or(0, |s| s.duration.ms());
                    let in_stage = self.now.saturating_sub(self.s.stage_started_ms);
                    if in_stage < min {
                        let why = format!(
                            "shadow gates pass; the phase lasts {} ({} so far)",
                            crate::core::spec::HumanDuration(min),
                            crate::core::spec::HumanDuration(in_stage)
                        );
                        self.record_full(DecisionKind::Hold, why, results, metrics, window_ms);
                        return;
                    }
                }
                if self.s.paused {
                    self.record_full(
                        DecisionKind::Hold,
                        format!("gates pass but paused: {all}"),
                        results,
                        metrics,
                        window_ms,
                    );
                    return;
                }
                if self.s.awaiting.is_some() {
                    self.record_full(
                        DecisionKind::Hold,
                        "gates pass; waiting for confirmation",
                        results,
                        metrics,
                        window_ms,
                    );
                    return;
                }
                let target = match self.s.phase {
                    Phase::Canary { step } => Some(step + 1),
                    _ => Some(0),
                };
                let before = self.s.decisions.len();
                self.request_advance(target, "all gates pass", results);
                if let Some(dec) = self.s.decisions.get_mut(before) {
                    dec.metrics = metrics;
                    dec.window_ms = window_ms;
                }
            }
        }
    }

    /// The gates of the current phase on `window`, plus the charted values.
    fn evaluate(&mut self, w: &Window) -> (Vec<GateResult>, MetricPoint) {
        let mut ctx = Context::new(self.spec);
        ctx.strict =
            matches!(self.s.phase, Phase::Canary { step } if step + 1 >= self.s.schedule.len());
        let point = gates::metric_point(self.spec, w);
        let mut results = Vec::new();
        if self.s.phase == Phase::Shadow {
            let shadow = self.spec.spec.analysis.shadow.as_ref();
            let floor = self.spec.shadow_floor().unwrap_or(1.0);
            let min = shadow.map_or(1, |s| s.min_comparisons);
            let look = self.s.looks.get("shadowAgreement").copied().unwrap_or(0) + 1;
            results.push(gates::shadow_agreement(
                floor,
                min,
                w,
                ctx.budget.shadow,
                look,
            ));
        } else {
            let min = ctx.min_samples;
            let (bn, cn) = (gates::responses(&w.baseline), gates::responses(&w.canary));
            let samples = if bn >= min && cn >= min {
                GateResult {
                    gate: "samples".into(),
                    verdict: Verdict::Pass,
                    observed: BTreeMap::new(),
                    statistic: Some(cn.min(bn) as f64),
                    threshold: Some(min as f64),
                    reason: format!("{cn} canary and {bn} baseline responses ≥ {min}"),
                    look: None,
                }
            } else {
                GateResult {
                    statistic: Some(cn.min(bn) as f64),
                    threshold: Some(min as f64),
                    ..GateResult::missing(
                        "samples",
                        format!("{cn} canary and {bn} baseline responses; need {min} each"),
                    )
                }
            };
            results.push(samples);
            results.extend(gates::evaluate(&ctx, w, &self.s.error_tests, &self.s.looks));
        }
        gates::spend_looks(&mut self.s.looks, &results);
        (results, point)
    }

    fn command(&mut self, c: &Command) {
        let terminal = self.s.phase.is_terminal();
        match c {
            Command::Abort { reason } => {
                if terminal {
                    return self.reject(format!(
                        "the rollout already ended ({})",
                        self.s.stage_label()
                    ));
                }
                let why = format!(
                    "aborted by operator{}",
                    reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                );
                self.rollback(DecisionKind::Abort, Outcome::Aborted, &why, Vec::new());
            }
            Command::Pause => {
                if terminal {
                    return self.reject("the rollout already ended");
                }
                if self.s.paused {
                    return self.reject("already paused");
                }
                self.s.paused = true;
                self.record(DecisionKind::Pause, "paused by operator", Vec::new());
                self.actions.push(Action::Persist);
                self.notify(Event::Pause, "paused by operator", &[]);
            }
            Command::Resume => {
                if !self.s.paused {
                    return self.reject("not paused");
                }
                self.s.paused = false;
                self.s.breach_alerted = false;
                self.s.hold_since_ms = None;
                self.record(DecisionKind::Resume, "resumed by operator", Vec::new());
                self.actions.push(Action::Persist);
                self.notify(Event::Resume, "resumed by operator", &[]);
            }
            Command::Promote { to_full } => {
                let target = match self.s.phase {
                    Phase::Pending if self.s.started_ms.is_some() => Some(0),
                    Phase::Pending => {
                        return self.reject("the rollout has not started; run it first")
                    }
                    Phase::Shadow => Some(0),
                    Phase::Canary { step } => Some(step + 1),
                    _ => return self.reject("the rollout already ended"),
                };
                let target = if *to_full { None } else { target };
                self.s.awaiting = None;
                self.advance(
                    target,
                    DecisionKind::ManualPromote,
                    "promoted by operator",
                    Vec::new(),
                );
            }
        }
    }

    fn confirmation(&mut self, approved: bool, detail: Option<&str>) {
        let Some(p) = self.s.awaiting else {
            return self.reject("no confirmation was pending");
        };
        let detail = detail.map(|d| format!(" ({d})")).unwrap_or_default();
        if !approved {
            self.s.awaiting = None;
            self.record(
                DecisionKind::Denied,
                format!(
                    "{} denied{detail}; holding, will ask again after the next passing check",
                    p.event
                ),
                Vec::new(),
            );
            self.actions.push(Action::Persist);
            return;
        }
        if self.s.phase.is_terminal() {
            self.s.awaiting = None;
            return self.reject("the rollout already ended");
        }
        if self.s.paused {
            self.s.awaiting = None;
            self.record(
                DecisionKind::Denied,
                format!(
                    "{} approved{detail} but paused; will ask again after resume",
                    p.event
                ),
                Vec::new(),
            );
            self.actions.push(Action::Persist);
            return;
        }
        self.s.awaiting = None;
        self.record(
            DecisionKind::Confirmed,
            format!("{} approved{detail}", p.event),
            Vec::new(),
        );
        self.advance(
            p.target_step,
            DecisionKind::Advance,
            "gates pass and confirmed",
            Vec::new(),
        );
    }
}

/// JSON has no infinity (serde_json writes `null` and cannot read it back), but histogram
/// snapshots end with a `+Inf` bucket; persisted snapshots store it as `f64::MAX`.
mod json_safe {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::core::observe::Snapshot;

    fn map_bounds(snap: &mut Snapshot, f: impl Fn(f64) -> f64) {
        for v in snap.versions.values_mut() {
            for b in v.latency_buckets.iter_mut().chain(v.score_bins.iter_mut()) {
                b.0 = f(b.0);
            }
        }
    }

    pub fn serialize<S: Serializer>(snap: &Option<Snapshot>, s: S) -> Result<S::Ok, S::Error> {
        let safe = snap.clone().map(|mut snap| {
            map_bounds(&mut snap, |b| if b == f64::INFINITY { f64::MAX } else { b });
            snap
        });
        safe.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Snapshot>, D::Error> {
        Ok(Option::<Snapshot>::deserialize(d)?.map(|mut snap| {
            map_bounds(&mut snap, |b| if b == f64::MAX { f64::INFINITY } else { b });
            snap
        }))
    }
}
