//! The decision step: a pure function from (spec, state, input, time) to the next state, the
//! actions the runner must carry out, in order, and the records of what was decided. No I/O,
//! no clock: the same inputs always give the same outputs, so a driver restarted from its
//! persisted state decides exactly as the one that was killed.
//!
//! The runner feeds an [`Input::Observation`] every [`RolloutSpec::poll_interval_ms`]; the
//! step decides whether it is only a fast-track check or also a regular (bake-interval)
//! evaluation. It feeds an [`Input::Applied`] when the proxies confirm a config write: the
//! bake window of a stage then counts from when its config took effect, and the records say
//! when each write did. Action order matters: on rollback `WriteConfig` comes first so the
//! sink is written before anything else; on a weight increase `Persist` comes first so a
//! crash between the two re-asserts the new weight rather than jumping back.
//!
//! The state holds only what decides the next step. Decisions, the weight timeline and stage
//! summaries leave as numbered [`Record`]s, which the runner appends to the records log on
//! `Persist` (before saving the state, whose [`RolloutState::records`] counts them).
//!
//! Files: [`input`], [`action`], [`state`], [`record`] hold the types; `transition` the
//! moves between stages; `check` observations and the fast track; `regular` the bake-interval
//! check and its pass, fail and inconclusive handlers; `evaluate` and `shadow` the gates of
//! a phase; `command` operator commands and confirmations.

use serde_json::{json, Value};

use crate::core::gates::{GateResult, MetricPoint, Verdict};
use crate::core::spec::{Event, RolloutSpec};

pub mod action;
mod check;
mod command;
mod evaluate;
pub mod input;
pub mod record;
mod regular;
mod shadow;
pub mod state;
mod transition;

pub use action::{Action, ConfigWrite, Notification, Outcome};
pub use input::{Applied, Command, Input, Observation};
pub use record::{Decision, DecisionKind, Entry, History, Record, Stage, WeightPoint};
pub use state::{pct, PendingConfirmation, Phase, RolloutState};

/// What one step produced.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    /// The next state.
    pub state: RolloutState,
    /// What the runner must do, in order.
    pub actions: Vec<Action>,
    /// What happened, numbered from the input state's [`RolloutState::records`]; appended
    /// to the records log at the first [`Action::Persist`].
    pub records: Vec<Record>,
}

/// Advances the rollout by one input. Pure: no I/O, no clock.
pub fn step(spec: &RolloutSpec, state: RolloutState, input: &Input, now_ms: u64) -> StepOutput {
    let mut d = Driver {
        spec,
        s: state,
        now: now_ms,
        actions: Vec::new(),
        records: Vec::new(),
    };
    match input {
        Input::Start => d.start(),
        Input::Observation(o) => d.observe(o),
        Input::Tick => d.observe(&Observation::default()),
        Input::Applied(a) => d.applied(a),
        Input::Command(c) => d.command(c),
        Input::Confirmation { approved, detail } => d.confirmation(*approved, detail.as_deref()),
    }
    // Records reach the log only through a persist.
    if !d.records.is_empty() && !d.actions.iter().any(|a| matches!(a, Action::Persist)) {
        d.actions.push(Action::Persist);
    }
    StepOutput {
        state: d.s,
        actions: d.actions,
        records: d.records,
    }
}

/// What a decision was based on: the gates judged and, for a regular check, the window's
/// charted values and length.
#[derive(Debug, Clone, Default)]
struct Evidence {
    gates: Vec<GateResult>,
    metrics: Option<MetricPoint>,
    window_ms: Option<u64>,
}

impl Evidence {
    /// Gates alone (fast track, no window values).
    fn gates(gates: Vec<GateResult>) -> Evidence {
        Evidence {
            gates,
            ..Evidence::default()
        }
    }

    /// Fail if any gate failed, else inconclusive if any was, else pass.
    fn verdict(&self) -> Verdict {
        let any = |v: Verdict| self.gates.iter().any(|g| g.verdict == v);
        if any(Verdict::Fail) {
            Verdict::Fail
        } else if any(Verdict::Inconclusive) {
            Verdict::Inconclusive
        } else {
            Verdict::Pass
        }
    }

    /// `gate: reason` of every gate with verdict `v`.
    fn summary(&self, v: Verdict) -> String {
        self.gates
            .iter()
            .filter(|g| g.verdict == v)
            .map(|g| format!("{}: {}", g.gate, g.reason))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

struct Driver<'a> {
    spec: &'a RolloutSpec,
    s: RolloutState,
    now: u64,
    actions: Vec<Action>,
    records: Vec<Record>,
}

impl Driver<'_> {
    /// Emits the next record.
    fn emit(&mut self, entry: Entry) {
        self.records.push(Record {
            seq: self.s.records,
            entry,
        });
        self.s.records += 1;
    }

    /// Records a decision on `ev`, in the current stage.
    fn decide(&mut self, kind: DecisionKind, reason: impl Into<String>, ev: &Evidence) {
        self.emit(Entry::Decision(Decision {
            at_ms: self.now,
            stage: self.s.stage_label(),
            canary_bps: self.s.canary_bps,
            kind,
            reason: reason.into(),
            gates: ev.gates.clone(),
            failed_checks: self.s.failed_checks,
            metrics: ev.metrics.clone(),
            window_ms: ev.window_ms,
        }));
    }

    /// Records a decision based on nothing measured (commands, restarts).
    fn note(&mut self, kind: DecisionKind, reason: impl Into<String>) {
        self.decide(kind, reason, &Evidence::default());
    }

    fn payload(&self, event: Event, reason: &str, ev: &Evidence) -> Value {
        let failing: Vec<&GateResult> = ev
            .gates
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
            "metrics": ev.metrics,
            "windowMs": ev.window_ms,
            "atMs": self.now,
        })
    }

    fn notify(&mut self, event: Event, reason: &str, ev: &Evidence) {
        let payload = self.payload(event, reason, ev);
        self.actions
            .push(Action::Notify(Notification { event, payload }));
    }

    fn reject(&mut self, reason: impl Into<String>) {
        let reason = reason.into();
        self.note(DecisionKind::Rejected, reason.clone());
        self.actions.push(Action::Persist);
        self.actions.push(Action::Rejected { reason });
    }

    /// Issues a new config write for the current phase and records it on the timeline.
    /// Returns its number.
    fn write(&mut self, reason: &str) -> u64 {
        self.s.writes += 1;
        let write = self.s.writes;
        let cw = self.s.config_write(self.spec, write, reason.to_string());
        self.emit(Entry::Weight(WeightPoint {
            at_ms: self.now,
            canary_bps: cw.canary_bps,
            kill_switch: cw.rollback,
            reason: reason.to_string(),
            write,
            applied_ms: None,
        }));
        self.actions.push(Action::WriteConfig(cw));
        write
    }

    /// Writes the current config again under its existing number (after a restart).
    fn reassert(&mut self, reason: &str) {
        let cw = self
            .s
            .config_write(self.spec, self.s.writes, reason.to_string());
        self.actions.push(Action::WriteConfig(cw));
    }
}
