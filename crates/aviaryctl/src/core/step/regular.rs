//! The regular check, once per bake interval: the gates judge the window since the stage (or
//! the last failed check) began, and one handler per verdict decides, recording the
//! window's values with its decision.

use super::{DecisionKind, Driver, Evidence, Outcome, Phase};
use crate::core::gates::{GateResult, Verdict, Window};
use crate::core::observe::Snapshot;
use crate::core::spec::{HumanDuration, OnMaxHold};

impl Driver<'_> {
    pub(super) fn regular(&mut self, snap: Option<&Snapshot>) {
        self.s.last_check_ms = self.now;
        let ev = self.judge(snap);
        match ev.verdict() {
            Verdict::Fail => self.on_fail(snap, ev),
            Verdict::Inconclusive => self.on_inconclusive(ev),
            Verdict::Pass => self.on_pass(ev),
        }
    }

    /// The gates on the window from its start to `snap`, or why there is no window.
    fn judge(&mut self, snap: Option<&Snapshot>) -> Evidence {
        let (base, canary) = (&self.spec.spec.baseline, &self.spec.spec.canary);
        let window = match (&self.s.window_start, snap) {
            (Some(start), Some(end)) => {
                Window::between(start, end, base, canary).map_err(|e| e.to_string())
            }
            (None, Some(_)) => Err("no read since the step began".to_string()),
            (_, None) => Err(self.s.last_source_error.as_ref().map_or_else(
                || "no metrics read this interval".into(),
                |e| format!("metrics source: {e}"),
            )),
        };
        match window {
            Ok(w) => {
                let (gates, metrics) = self.evaluate(&w);
                Evidence {
                    gates,
                    metrics: Some(metrics),
                    window_ms: Some(w.duration_ms()),
                }
            }
            Err(e) => Evidence::gates(vec![GateResult::missing("data", e)]),
        }
    }

    /// A gate failed: roll back at the threshold (alert instead while paused), else start
    /// a fresh window.
    fn on_fail(&mut self, snap: Option<&Snapshot>, ev: Evidence) {
        self.s.failed_checks += 1;
        self.s.hold_since_ms = None;
        let threshold = self.spec.spec.analysis.threshold;
        let why = format!(
            "failed check {}/{threshold}: {}",
            self.s.failed_checks,
            ev.summary(Verdict::Fail)
        );
        if self.s.failed_checks < threshold {
            // A fresh window, so the next check judges new data rather than the same
            // failing sample again.
            self.reset_window(snap.cloned());
            self.decide(DecisionKind::Fail, why, &ev);
        } else if self.s.paused {
            self.decide(DecisionKind::Fail, why.clone(), &ev);
            let alert = format!("threshold reached while paused (no rollback): {why}");
            self.alert(&alert, &Evidence::gates(ev.gates));
        } else {
            self.rollback(DecisionKind::Rollback, Outcome::RolledBack, &why, &ev);
        }
    }

    /// Not enough data: hold, up to `maxHold`; then roll back (or alert and hold again).
    fn on_inconclusive(&mut self, ev: Evidence) {
        let since = *self.s.hold_since_ms.get_or_insert(self.now);
        let held = self.now.saturating_sub(since);
        let analysis = &self.spec.spec.analysis;
        if held < analysis.max_hold.ms() {
            let why = format!("inconclusive: {}", ev.summary(Verdict::Inconclusive));
            return self.decide(DecisionKind::Hold, why, &ev);
        }
        let reason = format!(
            "inconclusive for {} (maxHold {}): {}",
            HumanDuration(held),
            analysis.max_hold,
            ev.summary(Verdict::Inconclusive)
        );
        match (analysis.on_max_hold, self.s.paused) {
            (OnMaxHold::Rollback, false) => {
                self.rollback(DecisionKind::Rollback, Outcome::RolledBack, &reason, &ev);
            }
            _ => {
                self.s.hold_since_ms = Some(self.now);
                self.alert(&reason, &ev);
            }
        }
    }

    /// Every gate passed: advance, unless the shadow phase is still running, the rollout is
    /// paused or a confirmation is pending.
    fn on_pass(&mut self, ev: Evidence) {
        self.s.failed_checks = 0;
        self.s.hold_since_ms = None;
        if let Some(why) = self.shadow_still_running() {
            return self.decide(DecisionKind::Hold, why, &ev);
        }
        if self.s.paused {
            let why = format!("gates pass but paused: {}", ev.summary(Verdict::Pass));
            return self.decide(DecisionKind::Hold, why, &ev);
        }
        if self.s.awaiting.is_some() {
            let why = "gates pass; waiting for confirmation";
            return self.decide(DecisionKind::Hold, why, &ev);
        }
        let target = match self.s.phase {
            Phase::Canary { step } => Some(step + 1),
            _ => Some(0),
        };
        self.request_advance(target, "all gates pass", ev);
    }
}
