//! The `aviaryctl status` view.

use std::fmt;

use serde::Serialize;

use crate::core::spec::{HumanDuration, RolloutSpec};
use crate::core::step::{pct, Decision, History, Outcome, Phase, RolloutState};

/// What `aviaryctl status` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub rollout: String,
    pub service: String,
    pub baseline: String,
    pub canary: String,
    pub phase: Phase,
    pub stage: String,
    pub paused: bool,
    pub canary_bps: u32,
    pub canary_weight: String,
    pub schedule: Vec<String>,
    pub failed_checks: u32,
    pub threshold: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_stage_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holding_ms: Option<u64>,
    pub awaiting_confirmation: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<Decision>,
    pub source_errors: u64,
}

/// The status view of `state` (and its `history`) at `now_ms`.
pub fn status(spec: &RolloutSpec, state: &RolloutState, history: &History, now_ms: u64) -> Status {
    let running = !state.phase.is_terminal() && state.phase != Phase::Pending;
    Status {
        rollout: spec.metadata.name.clone(),
        service: spec.service().to_string(),
        baseline: spec.spec.baseline.clone(),
        canary: spec.spec.canary.clone(),
        phase: state.phase,
        stage: state.stage_label(),
        paused: state.paused,
        canary_bps: state.canary_bps,
        canary_weight: pct(state.canary_bps),
        schedule: state.schedule.iter().map(|&b| pct(b)).collect(),
        failed_checks: state.failed_checks,
        threshold: spec.spec.analysis.threshold,
        in_stage_ms: running.then(|| now_ms.saturating_sub(state.stage_started_ms)),
        holding_ms: state.hold_since_ms.map(|h| now_ms.saturating_sub(h)),
        awaiting_confirmation: state.awaiting.is_some(),
        outcome: state.outcome,
        last_decision: history.last_decision().cloned(),
        source_errors: state.source_errors,
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "rollout   {} ({} → {}, service {})",
            self.rollout, self.baseline, self.canary, self.service
        )?;
        writeln!(
            f,
            "stage     {}{}{}",
            self.stage,
            if self.paused { " [paused]" } else { "" },
            if self.awaiting_confirmation {
                " [awaiting confirmation]"
            } else {
                ""
            }
        )?;
        writeln!(f, "canary    {} of traffic", self.canary_weight)?;
        writeln!(f, "schedule  {} → 100%", self.schedule.join(" → "))?;
        writeln!(
            f,
            "checks    {}/{} failed",
            self.failed_checks, self.threshold
        )?;
        if let Some(t) = self.in_stage_ms {
            writeln!(f, "in stage  {}", HumanDuration(t - t % 1000))?;
        }
        if let Some(h) = self.holding_ms {
            writeln!(
                f,
                "holding   {} (inconclusive)",
                HumanDuration(h - h % 1000)
            )?;
        }
        if let Some(o) = self.outcome {
            writeln!(f, "outcome   {o:?}")?;
        }
        if self.source_errors > 0 {
            writeln!(f, "read errors {}", self.source_errors)?;
        }
        if let Some(d) = &self.last_decision {
            writeln!(f, "last      {:?}: {}", d.kind, d.reason)?;
            for g in &d.gates {
                writeln!(
                    f,
                    "  {:<28} {:<12} {}",
                    g.gate,
                    format!("{:?}", g.verdict).to_lowercase(),
                    g.reason
                )?;
            }
        }
        Ok(())
    }
}
