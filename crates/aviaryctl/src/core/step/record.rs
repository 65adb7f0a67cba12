//! The audit trail the step emits: decisions, the weight timeline, stage summaries and the
//! proxies' confirmations, each numbered. The runner appends them to the records log; the
//! report and `status` fold them back into a [`History`].

use serde::{Deserialize, Serialize};

use super::input::Applied;
use crate::core::gates::{GateResult, MetricPoint};

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

/// A point of the weight timeline: a config write issued, and when it took effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightPoint {
    /// When the write was issued.
    pub at_ms: u64,
    pub canary_bps: u32,
    /// True when the kill switch pins traffic to the baseline.
    pub kill_switch: bool,
    pub reason: String,
    /// The config write number.
    #[serde(default)]
    pub write: u64,
    /// When the proxies confirmed the write (filled in by [`History`] from the
    /// [`Entry::Applied`] record; never set in the record itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_ms: Option<u64>,
}

/// Time spent in a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    pub name: String,
    pub canary_bps: u32,
    /// When the stage's config write was issued.
    pub started_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The write that put the stage's config in place.
    #[serde(default)]
    pub write: u64,
    /// When the proxies confirmed that write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_ms: Option<u64>,
}

/// One line of the records log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the log: 0, 1, 2, … with no gaps; [`RolloutState::records`] is the next.
    ///
    /// [`RolloutState::records`]: super::RolloutState::records
    pub seq: u64,
    #[serde(flatten)]
    pub entry: Entry,
}

/// What a record says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Entry {
    Decision(Decision),
    /// A config write that changes traffic was issued.
    Weight(WeightPoint),
    /// A stage began (not ended yet).
    StageStarted(Stage),
    /// A stage ended: its full summary.
    StageEnded(Stage),
    /// The proxies confirmed a config write.
    Applied(Applied),
}

/// The records folded into the views the report and `status` show.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    pub decisions: Vec<Decision>,
    /// Every traffic-changing write, with when it took effect when confirmed.
    pub timeline: Vec<WeightPoint>,
    pub stages: Vec<Stage>,
    /// Every confirmation, in order.
    pub applied: Vec<Applied>,
}

impl History {
    /// The history told by `records`, in order.
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a Record>) -> History {
        let mut h = History::default();
        h.extend(records);
        h
    }

    /// Folds more records in.
    pub fn extend<'a>(&mut self, records: impl IntoIterator<Item = &'a Record>) {
        for r in records {
            self.push(&r.entry);
        }
    }

    /// Folds one entry in.
    pub fn push(&mut self, entry: &Entry) {
        match entry {
            Entry::Decision(d) => self.decisions.push(d.clone()),
            Entry::Weight(p) => self.timeline.push(p.clone()),
            Entry::StageStarted(s) => self.stages.push(s.clone()),
            Entry::StageEnded(s) => self.end_stage(s),
            Entry::Applied(a) => self.applied(a),
        }
    }

    fn end_stage(&mut self, summary: &Stage) {
        let open = self.stages.iter_mut().rev().find(|s| {
            s.ended_ms.is_none() && s.started_ms == summary.started_ms && s.name == summary.name
        });
        match open {
            Some(s) => {
                let applied = s.applied_ms;
                *s = summary.clone();
                s.applied_ms = s.applied_ms.or(applied);
            }
            None => self.stages.push(summary.clone()),
        }
    }

    fn applied(&mut self, a: &Applied) {
        self.applied.push(*a);
        let points = self.timeline.iter_mut().filter(|p| p.write == a.write);
        for p in points.filter(|p| p.applied_ms.is_none()) {
            p.applied_ms = Some(a.at_ms);
        }
        let stages = self.stages.iter_mut().filter(|s| s.write == a.write);
        for s in stages.filter(|s| s.applied_ms.is_none()) {
            s.applied_ms = Some(a.at_ms);
        }
    }

    /// The last decision.
    pub fn last_decision(&self) -> Option<&Decision> {
        self.decisions.last()
    }

    /// The last decision that judged gates.
    pub fn last_judged(&self) -> Option<&Decision> {
        self.decisions.iter().rev().find(|d| !d.gates.is_empty())
    }
}
