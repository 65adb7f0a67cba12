//! Moves between stages: start and restart, entering a stage, advancing (after a
//! confirmation when one is configured), promotion, rollback, alerts.

use super::{
    pct, Action, DecisionKind, Driver, Entry, Evidence, Notification, Outcome, PendingConfirmation,
    Phase, Stage,
};
use crate::core::observe::Snapshot;
use crate::core::spec::Event;

impl Driver<'_> {
    pub(super) fn reset_window(&mut self, from: Option<Snapshot>) {
        self.s.window_started_ms = self.now;
        self.s.window_start = from;
        self.s.last_check_ms = self.now;
    }

    /// Enters a live or shadow stage: new window, counters cleared; the state is saved,
    /// then the stage's config written.
    fn enter(&mut self, phase: Phase, canary_bps: u32, why: &str) {
        self.s.phase = phase;
        self.s.canary_bps = canary_bps;
        self.s.stage_started_ms = self.now;
        self.s.failed_checks = 0;
        self.s.hold_since_ms = None;
        self.s.awaiting = None;
        self.s.breach_alerted = false;
        // The first read after the write starts the window, so traffic at the old weight
        // does not count toward the new step (and once the proxies confirm the write, the
        // first read after that: see `Driver::applied`).
        self.reset_window(None);
        self.actions.push(Action::Persist);
        let write = self.write(why);
        self.s.stage_write = write;
        self.s.stage_applied_ms = None;
        self.emit(Entry::StageStarted(Stage {
            name: self.s.stage_label(),
            canary_bps,
            started_ms: self.now,
            ended_ms: None,
            result: None,
            write,
            applied_ms: None,
        }));
    }

    /// Records the summary of the open stage, if any.
    fn end_stage(&mut self, result: &str) {
        if !self.s.in_stage() {
            return;
        }
        self.emit(Entry::StageEnded(Stage {
            name: self.s.stage_label(),
            canary_bps: self.s.canary_bps,
            started_ms: self.s.stage_started_ms,
            ended_ms: Some(self.now),
            result: Some(result.to_string()),
            write: self.s.stage_write,
            applied_ms: self.s.stage_applied_ms,
        }));
    }

    pub(super) fn start(&mut self) {
        if self.s.phase != Phase::Pending || self.s.started_ms.is_some() {
            return self.restart();
        }
        self.s.started_ms = Some(self.now);
        if self.s.schedule.is_empty() {
            self.s.schedule = self.spec.schedule_bps();
        }
        if self.spec.spec.analysis.shadow.is_some() {
            let reason = "rollout started: shadow phase (mirrored traffic only)";
            self.enter(Phase::Shadow, 0, reason);
            self.note(DecisionKind::Start, reason);
            self.notify(Event::Start, reason, &Evidence::default());
            return;
        }
        let reason = "rollout started";
        self.note(DecisionKind::Start, reason);
        self.request_advance(Some(0), reason, Evidence::default());
        // `start` goes out before the first step's (or the confirmation request).
        let at = self
            .actions
            .iter()
            .position(|a| matches!(a, Action::Notify(_) | Action::AskConfirmation(_)))
            .unwrap_or(self.actions.len());
        let payload = self.payload(Event::Start, reason, &Evidence::default());
        self.actions.insert(
            at,
            Action::Notify(Notification {
                event: Event::Start,
                payload,
            }),
        );
    }

    /// A driver restarted: re-asserts the config of where the rollout is (and asks again
    /// for a pending confirmation).
    fn restart(&mut self) {
        let reason = format!("driver restarted: re-asserting {}", self.s.stage_label());
        self.note(DecisionKind::Restart, reason.clone());
        self.actions.push(Action::Persist);
        self.reassert(&reason);
        if self.s.phase.is_terminal() {
            if let Some(o) = self.s.outcome {
                self.actions.push(Action::Done(o));
            }
            return;
        }
        self.notify(Event::Start, &reason, &Evidence::default());
        if let Some(p) = self.s.awaiting {
            let payload = self.payload(p.event, &reason, &Evidence::default());
            self.actions.push(Action::AskConfirmation(Notification {
                event: p.event,
                payload,
            }));
        }
    }

    /// Moves to `target` (a step index, or `None` for full promotion) after the gates passed,
    /// asking the confirmation webhooks first when configured.
    pub(super) fn request_advance(&mut self, target: Option<usize>, reason: &str, ev: Evidence) {
        let target = target.filter(|&i| i < self.s.schedule.len());
        let event = if target.is_some() {
            Event::ConfirmTrafficIncrease
        } else {
            Event::ConfirmPromotion
        };
        if !self.spec.has_webhook(event) {
            return self.advance(target, DecisionKind::Advance, reason, ev);
        }
        if self.s.awaiting.is_some() {
            return;
        }
        self.s.awaiting = Some(PendingConfirmation {
            event,
            target_step: target,
            asked_ms: self.now,
        });
        let why = format!("{reason}; waiting for {event}");
        self.decide(DecisionKind::AwaitConfirmation, why.clone(), &ev);
        self.actions.push(Action::Persist);
        let payload = self.payload(event, &why, &ev);
        self.actions
            .push(Action::AskConfirmation(Notification { event, payload }));
    }

    /// Moves to step `target`, or promotes fully when it is `None` (or past the schedule).
    pub(super) fn advance(
        &mut self,
        target: Option<usize>,
        kind: DecisionKind,
        reason: &str,
        ev: Evidence,
    ) {
        let Some(i) = target.filter(|&i| i < self.s.schedule.len()) else {
            return self.promote(kind, reason, ev);
        };
        let bps = self.s.schedule[i];
        let why = format!(
            "{} → step {} ({}): {reason}",
            self.s.stage_label(),
            i + 1,
            pct(bps)
        );
        self.decide(kind, why.clone(), &ev);
        self.end_stage(&format!("advanced: {reason}"));
        self.enter(Phase::Canary { step: i }, bps, &why);
        self.notify(Event::Step, &why, &ev);
    }

    /// Canary to 100%: the rollout is done.
    fn promote(&mut self, kind: DecisionKind, reason: &str, ev: Evidence) {
        let why = format!("{} → 100%: {reason}", self.s.stage_label());
        let kind = if kind == DecisionKind::Advance {
            DecisionKind::Promote
        } else {
            kind
        };
        self.decide(kind, why.clone(), &ev);
        self.end_stage(&format!("promoted: {reason}"));
        self.s.phase = Phase::Promoted;
        self.s.canary_bps = self.spec.pool_bps();
        self.s.awaiting = None;
        self.s.finished_ms = Some(self.now);
        self.s.outcome = Some(Outcome::Promoted);
        self.actions.push(Action::Persist);
        self.write(&why);
        self.notify(Event::Promote, &why, &ev);
        self.actions.push(Action::Done(Outcome::Promoted));
    }

    /// Rolls back: the config write is the first action.
    pub(super) fn rollback(
        &mut self,
        kind: DecisionKind,
        outcome: Outcome,
        reason: &str,
        ev: &Evidence,
    ) {
        let why = format!("{}: {reason}", self.s.stage_label());
        self.decide(kind, why.clone(), ev);
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
        self.write(&why);
        self.actions.push(Action::Persist);
        self.notify(Event::Rollback, &why, ev);
        self.actions.push(Action::Done(outcome));
    }

    pub(super) fn alert(&mut self, reason: &str, ev: &Evidence) {
        self.decide(DecisionKind::Alert, reason, ev);
        self.actions.push(Action::Persist);
        self.notify(Event::Alert, reason, ev);
    }
}
