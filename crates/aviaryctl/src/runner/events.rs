//! The event log's lines (`<stem>.events.jsonl`): config writes with their latencies, the
//! proxies' confirmations and command acks. Operational telemetry of one runner process; the
//! rollout's own history is the records log.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::ApplyRecord;
use crate::edges::sink::WriteReceipt;
use crate::edges::store::CommandAck;

/// What caused an input, for latency accounting.
#[derive(Debug, Clone, Copy)]
pub(super) enum Trigger {
    Start,
    Observation(Instant),
    Command(Instant),
    Confirmation(Instant),
    Applied(Instant),
    Retry,
}

impl Trigger {
    pub(super) fn name(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Observation(_) => "observation",
            Trigger::Command(_) => "command",
            Trigger::Confirmation(_) => "confirmation",
            Trigger::Applied(_) => "applied",
            Trigger::Retry => "retry",
        }
    }

    pub(super) fn at(self) -> Option<Instant> {
        match self {
            Trigger::Observation(t)
            | Trigger::Command(t)
            | Trigger::Confirmation(t)
            | Trigger::Applied(t) => Some(t),
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
    /// The step's number of the write within the rollout (repeated by a restart's
    /// re-assertion and by retries).
    #[serde(default)]
    pub write: u64,
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
