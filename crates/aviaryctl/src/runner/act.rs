//! Carrying out a step: its actions in order (config writes, persisting records then state,
//! notifications, confirmation requests), and the retries of failed writes and persists.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use aviary_contract::units::micros;
use serde_json::{json, Value};

use super::events::{Trigger, WriteRecord};
use super::watcher::{weights_of, ApplyJob, Expect};
use super::{desired_config, Runner, RunnerEvent};
use crate::clock::system_now_ms;
use crate::core::step::{pct, step, Action, ConfigWrite, Decision, Entry, Input, Notification};
use crate::edges::sink::WriteReceipt;
use crate::edges::webhook::{Approval, Approver};
use crate::error::Error;

/// Backoff bounds of write and persist retries.
const RETRY_MIN_MS: u64 = 50;
const RETRY_MAX_MS: u64 = 2_000;

/// The per-input result the command acks need.
#[derive(Default)]
pub(super) struct Handled {
    pub(super) rejected: Option<String>,
    /// The reason of the last decision the input caused.
    pub(super) decided: Option<String>,
    pub(super) write_us: Option<u64>,
}

impl Runner {
    /// Feeds one input to the step and carries out its actions in order.
    pub(super) fn handle(&mut self, input: Input, trigger: Trigger) -> Result<Handled, Error> {
        let now = self.clock.now_ms();
        let t0 = Instant::now();
        let out = step(&self.spec, self.state.clone(), &input, now);
        let decide_us = micros(t0.elapsed());
        self.state = out.state;
        let mut handled = Handled::default();
        for r in &out.records {
            if let Entry::Decision(d) = &r.entry {
                self.log_decision(d);
                handled.decided = Some(d.reason.clone());
            }
        }
        self.journal.push(out.records);
        let mut persist_failed = false;
        // A batch that only records an observation need not reach the platter; anything that
        // changes traffic, ends the rollout or talks to people does.
        let durable = out.actions.iter().any(|a| !matches!(a, Action::Persist));
        for action in out.actions {
            match action {
                Action::WriteConfig(w) => {
                    if persist_failed && !w.rollback {
                        // Never raise traffic that the state cannot record: the retry
                        // writes it once the state is saved.
                        self.write_pending = true;
                        continue;
                    }
                    let rec = self.write(&w, decide_us, trigger);
                    handled.write_us = Some(rec.write_us);
                }
                Action::Persist => persist_failed |= !self.persist(durable),
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

    /// Appends the pending records, then saves the state that counts them. Returns false
    /// (and retries later) when either failed: the state is never saved ahead of the log.
    fn persist(&mut self, durable: bool) -> bool {
        let saved = self
            .journal
            .flush(durable)
            .and_then(|()| self.store.save_with(&self.state, durable));
        self.persist_pending = saved.is_err();
        if let Err(e) = saved {
            self.log(
                "error",
                "persist_failed",
                &e.to_string(),
                json!({"error": e.to_string()}),
            );
            return false;
        }
        true
    }

    /// Writes `w` to every sink, logs it, and hands it to the apply watcher.
    pub(super) fn write(
        &mut self,
        w: &ConfigWrite,
        decide_us: u64,
        trigger: Trigger,
    ) -> WriteRecord {
        let w0 = Instant::now();
        let mut receipts = Vec::new();
        let mut errors = Vec::new();
        for sink in &self.sinks {
            match sink.write(&w.config) {
                Ok(r) => receipts.push(r),
                Err(e) => errors.push(e.to_string()),
            }
        }
        let done = Instant::now();
        self.write_seq += 1;
        let digest48 = receipts.iter().find_map(WriteReceipt::digest48);
        let rec = WriteRecord {
            seq: self.write_seq,
            write: w.write,
            at_ms: system_now_ms(),
            trigger: trigger.name().into(),
            reason: w.reason.clone(),
            canary_bps: w.canary_bps,
            rollback: w.rollback,
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
        self.log_write(&rec);
        self.record_event(&RunnerEvent::Write(rec.clone()));
        if rec.errors.is_empty() {
            self.watch(w, &rec, done, trigger);
        }
        rec
    }

    fn log_write(&self, rec: &WriteRecord) {
        let level = if rec.errors.is_empty() {
            "info"
        } else {
            "error"
        };
        let kill = if rec.rollback {
            " (kill switch → baseline)"
        } else {
            ""
        };
        let failed = if rec.errors.is_empty() {
            String::new()
        } else {
            format!("; FAILED: {}", rec.errors.join("; "))
        };
        let msg = format!(
            "wrote canary {}{kill} in {:.2} ms{failed}",
            pct(rec.canary_bps),
            rec.write_us as f64 / 1e3,
        );
        let fields = serde_json::to_value(rec).unwrap_or(Value::Null);
        self.log(level, "write", &msg, fields);
    }

    /// Asks the apply watcher to confirm the write `rec` of `w`.
    fn watch(&mut self, w: &ConfigWrite, rec: &WriteRecord, done: Instant, trigger: Trigger) {
        let Some(tx) = &self.apply_tx else {
            return;
        };
        let expect = match rec.digest48 {
            Some(d) => Expect::Digest(d),
            None => Expect::Weights(weights_of(&w.config)),
        };
        let job = ApplyJob {
            seq: rec.seq,
            write: w.write,
            written_ms: self.clock.now_ms(),
            expect,
            written: done,
            trigger: trigger.at(),
        };
        if tx.send(job).is_ok() {
            self.pending_applies += 1;
        }
    }

    /// Retries a failed persist, then a failed write, with backoff.
    pub(super) fn retry_pending(&mut self) {
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
        if self.persist_pending || self.journal.has_pending() {
            let saved = self
                .journal
                .flush(true)
                .and_then(|()| self.store.save(&self.state));
            if saved.is_err() {
                return;
            }
            self.persist_pending = false;
        }
        if self.write_pending {
            // The write the state wants, under its number.
            let mut w = desired_config(&self.spec, Some(&self.state));
            w.reason = "retrying a failed write".into();
            self.write(&w, 0, Trigger::Retry);
        }
    }

    /// Asks the confirmation webhooks on a background thread; the answer comes back as an
    /// input.
    pub(super) fn ask(&mut self, n: Notification) {
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
                "metrics": d.metrics,
            }),
        );
    }
}
