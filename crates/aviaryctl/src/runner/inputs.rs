//! Where inputs come from: operator commands (each answered with an ack), the metrics reads,
//! and the apply watcher's confirmations of config writes.

use std::sync::mpsc::RecvTimeoutError;
use std::time::Instant;

use serde_json::{json, Value};

use super::events::Trigger;
use super::pump::Pump;
use super::{Runner, RunnerEvent};
use crate::clock::system_now_ms;
use crate::core::observe::Snapshot;
use crate::core::step::{Applied, Command, Input};
use crate::edges::store::{CommandAck, QueuedCommand};
use crate::error::Error;

/// A metrics read (or why it failed) and when it returned.
type Read = (Result<Snapshot, String>, Instant);

impl Runner {
    /// The next metrics read, if one is due (inline) or arrived within a tick (background).
    pub(super) fn read_metrics(&mut self) -> Result<Option<Read>, Error> {
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

    pub(super) fn drain_commands(&mut self) -> Result<(), Error> {
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

    pub(super) fn command(&mut self, q: &QueuedCommand) -> Result<CommandAck, Error> {
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
    pub(super) fn drain_applies(&mut self) -> Result<(), Error> {
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
