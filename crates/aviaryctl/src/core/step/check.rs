//! Observations: each read feeds the sequential error tests and the fast track, and runs the
//! regular check when a bake interval has passed. The proxies' confirmations of config writes
//! move the start of the bake window to when the stage's config took effect.

use super::{Action, Applied, DecisionKind, Driver, Entry, Evidence, Observation, Outcome, Phase};
use crate::core::gates::{self, GateResult, Window};
use crate::core::observe::Snapshot;

impl Driver<'_> {
    pub(super) fn observe(&mut self, o: &Observation) {
        if !self.s.in_stage() {
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
                    self.observe_latency(last.clone(), snap);
                }
                Err(e) => {
                    self.s.last = Some(snap.clone());
                    self.reset_window(Some(snap.clone()));
                    self.note(
                        DecisionKind::CounterReset,
                        format!("{e}; the bake window restarts"),
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

    /// Feeds the canary's latency increment into the fast-track share tests (on a live step).
    fn observe_latency(&mut self, last: Snapshot, snap: &Snapshot) {
        let budget = self.spec.alpha_budget();
        if budget.latency_fast.is_empty() || !matches!(self.s.phase, Phase::Canary { .. }) {
            return;
        }
        let canary = &self.spec.spec.canary;
        let Ok(inc) = gates::delta(last.versions.get(canary), snap.versions.get(canary)) else {
            return;
        };
        let window = self.window_to(snap);
        self.s
            .fast_tests
            .observe_latency(self.spec, &budget, &inc, window.as_ref());
    }

    /// The step window from its start to `snap`, if it opened and the counters allow.
    fn window_to(&self, snap: &Snapshot) -> Option<Window> {
        let (base, canary) = (&self.spec.spec.baseline, &self.spec.spec.canary);
        let start = self.s.window_start.as_ref()?;
        Window::between(start, snap, base, canary).ok()
    }

    /// Fast-track: a sequential error test that has rejected rolls back at once (or alerts,
    /// once, while paused). Returns true when it acted.
    fn fast_track(&mut self, snap: &Snapshot) -> bool {
        let Some(breach) = self.fast_breach(snap) else {
            return false;
        };
        let reason = breach
            .iter()
            .map(|r| format!("{}: {}", r.gate, r.reason))
            .collect::<Vec<_>>()
            .join("; ");
        let window = self.window_to(snap);
        let ev = Evidence {
            gates: breach,
            metrics: window
                .as_ref()
                .map(|w| gates::metric_point(self.spec, w, &self.s.error_tests)),
            window_ms: window.as_ref().map(Window::duration_ms),
        };
        if !self.s.paused {
            let why = format!("fast-track: {reason}");
            self.rollback(DecisionKind::FastRollback, Outcome::RolledBack, &why, &ev);
            return true;
        }
        if self.s.breach_alerted {
            return false;
        }
        self.s.breach_alerted = true;
        let why = format!("fast-track breach while paused (no rollback): {reason}");
        self.alert(&why, &ev);
        true
    }

    /// The failing fast-track tests on a live step: the sequential error and latency tests
    /// that have rejected, and a drift look that found a significant shift.
    fn fast_breach(&mut self, snap: &Snapshot) -> Option<Vec<GateResult>> {
        if self.spec.fast_interval_ms().is_none() || !matches!(self.s.phase, Phase::Canary { .. }) {
            return None;
        }
        let budget = self.spec.alpha_budget();
        let window = self.window_to(snap);
        let mut breach = Vec::new();
        if let Some(g) = self.spec.spec.analysis.gates.error_rate.as_ref() {
            let t = &self.s.error_tests;
            let rejected = (g.max.is_some() && t.absolute.rejected(budget.error_absolute))
                || (g.max_relative.is_some() && t.relative.rejected(budget.error_relative));
            if g.fast_track && rejected {
                let w = window.clone().unwrap_or_default();
                breach.extend(gates::fast_error_breach(g, &w, t, &budget));
            }
        }
        if let Some(w) = &window {
            breach.extend(self.s.fast_tests.latency_breaches(self.spec, &budget, w));
            if breach.is_empty() {
                breach.extend(self.s.fast_tests.drift_look(self.spec, &budget, w));
            }
        }
        (!breach.is_empty()).then_some(breach)
    }

    /// The proxies confirmed config write `a.write`. The first confirmation of each write is
    /// recorded; the first covering the current stage's write starts its bake window over
    /// from when the config took effect (a read from before then no longer opens it).
    pub(super) fn applied(&mut self, a: &Applied) {
        if a.write == 0 || a.write > self.s.writes || a.write <= self.s.applied_write {
            return;
        }
        self.s.applied_write = a.write;
        self.emit(Entry::Applied(*a));
        let stage_write = a.write >= self.s.stage_write && self.s.stage_applied_ms.is_none();
        if self.s.in_stage() && stage_write {
            self.s.stage_applied_ms = Some(a.at_ms);
            self.bake_from(a.at_ms);
        }
        self.actions.push(Action::Persist);
    }

    /// The bake window counts from `t_ms`, and opens with the first read taken at or after it.
    fn bake_from(&mut self, t_ms: u64) {
        if self.s.window_start.as_ref().is_some_and(|w| w.at_ms < t_ms) {
            self.s.window_start = None;
        }
        self.s.window_started_ms = self.s.window_started_ms.max(t_ms);
        self.s.last_check_ms = self.s.last_check_ms.max(t_ms);
    }
}
