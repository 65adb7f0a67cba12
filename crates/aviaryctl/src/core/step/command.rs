//! Operator commands (pause, resume, promote, abort) and the confirmation webhooks' answers.

use super::{Action, Command, DecisionKind, Driver, Evidence, Outcome, Phase};
use crate::core::spec::Event;

impl Driver<'_> {
    pub(super) fn command(&mut self, c: &Command) {
        match c {
            Command::Abort { reason } => self.abort(reason.as_deref()),
            Command::Pause => self.pause(),
            Command::Resume => self.resume(),
            Command::Promote { to_full } => self.manual_promote(*to_full),
        }
    }

    fn abort(&mut self, reason: Option<&str>) {
        if self.s.phase.is_terminal() {
            let why = format!("the rollout already ended ({})", self.s.stage_label());
            return self.reject(why);
        }
        let why = format!(
            "aborted by operator{}",
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        );
        let ev = Evidence::default();
        self.rollback(DecisionKind::Abort, Outcome::Aborted, &why, &ev);
    }

    fn pause(&mut self) {
        if self.s.phase.is_terminal() {
            return self.reject("the rollout already ended");
        }
        if self.s.paused {
            return self.reject("already paused");
        }
        self.s.paused = true;
        self.note(DecisionKind::Pause, "paused by operator");
        self.actions.push(Action::Persist);
        self.notify(Event::Pause, "paused by operator", &Evidence::default());
    }

    fn resume(&mut self) {
        if !self.s.paused {
            return self.reject("not paused");
        }
        self.s.paused = false;
        self.s.breach_alerted = false;
        self.s.hold_since_ms = None;
        self.note(DecisionKind::Resume, "resumed by operator");
        self.actions.push(Action::Persist);
        self.notify(Event::Resume, "resumed by operator", &Evidence::default());
    }

    fn manual_promote(&mut self, to_full: bool) {
        let target = match self.s.phase {
            Phase::Pending if self.s.started_ms.is_some() => Some(0),
            Phase::Pending => return self.reject("the rollout has not started; run it first"),
            Phase::Shadow => Some(0),
            Phase::Canary { step } => Some(step + 1),
            _ => return self.reject("the rollout already ended"),
        };
        let target = if to_full { None } else { target };
        self.s.awaiting = None;
        let ev = Evidence::default();
        self.advance(
            target,
            DecisionKind::ManualPromote,
            "promoted by operator",
            ev,
        );
    }

    pub(super) fn confirmation(&mut self, approved: bool, detail: Option<&str>) {
        let Some(p) = self.s.awaiting else {
            return self.reject("no confirmation was pending");
        };
        let detail = detail.map(|d| format!(" ({d})")).unwrap_or_default();
        if !approved {
            self.s.awaiting = None;
            let why = format!(
                "{} denied{detail}; holding, will ask again after the next passing check",
                p.event
            );
            self.note(DecisionKind::Denied, why);
            self.actions.push(Action::Persist);
            return;
        }
        if self.s.phase.is_terminal() {
            self.s.awaiting = None;
            return self.reject("the rollout already ended");
        }
        self.s.awaiting = None;
        if self.s.paused {
            let why = format!(
                "{} approved{detail} but paused; will ask again after resume",
                p.event
            );
            self.note(DecisionKind::Denied, why);
            self.actions.push(Action::Persist);
            return;
        }
        self.note(
            DecisionKind::Confirmed,
            format!("{} approved{detail}", p.event),
        );
        let ev = Evidence::default();
        self.advance(
            p.target_step,
            DecisionKind::Advance,
            "gates pass and confirmed",
            ev,
        );
    }
}
