//! One line of the rollout history: how a finished rollout went, the gate that decided it
//! with its numbers, and how often each gate passed, held or failed at each stage. The
//! `history` command lists these and a per-gate view across runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::core::gates::{MetricPoint, Verdict};
use crate::core::spec::{HumanDuration, RolloutSpec};
use crate::core::step::{DecisionKind, History, Outcome, RolloutState};

/// How often one gate answered what at one stage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateCount {
    pub gate: String,
    pub stage: String,
    pub pass: u64,
    pub hold: u64,
    pub fail: u64,
}

/// A finished rollout, as the history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// `name@startedMs`: one entry per rollout run, however often the driver restarted.
    pub id: String,
    pub rollout: String,
    pub service: String,
    pub baseline: String,
    pub canary: String,
    pub outcome: Option<Outcome>,
    pub started_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    pub duration_ms: u64,
    /// The last stage the rollout reached before it ended, and its canary weight.
    pub stage_reached: String,
    pub canary_bps_reached: u32,
    /// The final decision's reason (its headline).
    pub reason: String,
    /// The gate that decided a rollback (the first failing one, or the inconclusive one on
    /// `maxHold`), if a gate did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deciding_gate: Option<String>,
    /// That gate's own sentence, with its numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deciding_evidence: Option<String>,
    /// The numbers the final decision rests on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricPoint>,
    /// Where the reports were written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    pub gates: Vec<GateCount>,
}

/// The summary of a finished rollout.
pub fn summarize(
    spec: &RolloutSpec,
    state: &RolloutState,
    history: &History,
    report: Option<String>,
) -> RunSummary {
    let started = state.started_ms.unwrap_or(state.created_ms);
    let last = history.decisions.iter().rev().find(|d| {
        matches!(
            d.kind,
            DecisionKind::Rollback
                | DecisionKind::FastRollback
                | DecisionKind::Abort
                | DecisionKind::Promote
                | DecisionKind::ManualPromote
        )
    });
    // The stage reached: the last stage opened before the end.
    let reached = history
        .stages
        .iter()
        .rev()
        .find(|s| s.canary_bps > 0 || s.name == "shadow");
    let decider = last.and_then(|d| {
        d.gates
            .iter()
            .find(|g| g.verdict == Verdict::Fail)
            .or_else(|| {
                (d.kind == DecisionKind::Rollback)
                    .then(|| d.gates.iter().find(|g| g.verdict == Verdict::Inconclusive))
                    .flatten()
            })
    });
    let promoted = state.outcome == Some(Outcome::Promoted);
    let mut counts: BTreeMap<(String, String), GateCount> = BTreeMap::new();
    for d in &history.decisions {
        for g in &d.gates {
            let c = counts
                .entry((g.gate.clone(), d.stage.clone()))
                .or_insert_with(|| GateCount {
                    gate: g.gate.clone(),
                    stage: d.stage.clone(),
                    ..GateCount::default()
                });
            match g.verdict {
                Verdict::Pass => c.pass += 1,
                Verdict::Inconclusive => c.hold += 1,
                Verdict::Fail => c.fail += 1,
            }
        }
    }
    RunSummary {
        id: format!("{}@{started}", spec.metadata.name),
        rollout: spec.metadata.name.clone(),
        service: spec.service().to_string(),
        baseline: spec.spec.baseline.clone(),
        canary: spec.spec.canary.clone(),
        outcome: state.outcome,
        started_ms: started,
        finished_ms: state.finished_ms,
        duration_ms: state.finished_ms.unwrap_or(started).saturating_sub(started),
        stage_reached: if promoted {
            "promoted (100%)".to_string()
        } else {
            reached.map_or_else(|| state.stage_label(), |s| s.name.clone())
        },
        canary_bps_reached: if promoted {
            10_000
        } else {
            reached.map_or(state.canary_bps, |s| s.canary_bps)
        },
        reason: last.map(|d| d.reason.clone()).unwrap_or_default(),
        deciding_gate: decider.map(|g| g.gate.clone()),
        deciding_evidence: decider.map(|g| g.reason.clone()),
        metrics: last.and_then(|d| d.metrics.clone()),
        report,
        gates: counts.into_values().collect(),
    }
}

/// The history as text: one block per run, newest last.
pub fn render_history(runs: &[RunSummary]) -> String {
    let mut out = String::new();
    if runs.is_empty() {
        out.push_str("no finished rollouts in the history\n");
    }
    for r in runs {
        let outcome = match r.outcome {
            Some(Outcome::Promoted) => "promoted",
            Some(Outcome::RolledBack) => "rolled back",
            Some(Outcome::Aborted) => "aborted",
            None => "unfinished",
        };
        let _ = writeln!(
            out,
            "{} ({} → {}): {outcome} after {} at {}",
            r.rollout,
            r.baseline,
            r.canary,
            HumanDuration(r.duration_ms - r.duration_ms % 1000),
            r.stage_reached,
        );
        if let (Some(g), Some(e)) = (&r.deciding_gate, &r.deciding_evidence) {
            let _ = writeln!(out, "  decided by {g}: {e}");
        } else if !r.reason.is_empty() {
            let _ = writeln!(out, "  {}", r.reason);
        }
        if let Some(p) = &r.report {
            let _ = writeln!(out, "  report {p}");
        }
    }
    out
}

/// How often each gate failed, held or passed, per stage, across `runs`.
pub fn gate_view(runs: &[RunSummary]) -> Vec<GateCount> {
    let mut all: BTreeMap<(String, String), GateCount> = BTreeMap::new();
    for r in runs {
        for g in &r.gates {
            let c = all
                .entry((g.gate.clone(), g.stage.clone()))
                .or_insert_with(|| GateCount {
                    gate: g.gate.clone(),
                    stage: g.stage.clone(),
                    ..GateCount::default()
                });
            c.pass += g.pass;
            c.hold += g.hold;
            c.fail += g.fail;
        }
    }
    all.into_values().collect()
}

/// The per-gate view as a table.
pub fn render_gate_view(counts: &[GateCount]) -> String {
    let mut out = format!(
        "{:<28} {:<16} {:>6} {:>6} {:>6}\n",
        "gate", "stage", "fail", "hold", "pass"
    );
    for c in counts {
        let _ = writeln!(
            out,
            "{:<28} {:<16} {:>6} {:>6} {:>6}",
            c.gate, c.stage, c.fail, c.hold, c.pass
        );
    }
    out
}
