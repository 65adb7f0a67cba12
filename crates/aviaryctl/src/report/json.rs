//! The JSON report: every decision with the values and test statistics seen, the weight
//! timeline (with when each write took effect) and the stage timings.

use serde_json::{json, Value};

use super::origin;
use crate::core::spec::RolloutSpec;
use crate::core::step::{pct, History, RolloutState};

/// The full JSON report.
pub fn render_json(spec: &RolloutSpec, state: &RolloutState, history: &History) -> Value {
    let origin = origin(state);
    let stages: Vec<Value> = history
        .stages
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "canaryBps": s.canary_bps,
                "canaryWeight": pct(s.canary_bps),
                "startedMs": s.started_ms,
                "endedMs": s.ended_ms,
                "durationMs": s.ended_ms.map(|e| e.saturating_sub(s.started_ms)),
                "result": s.result,
                "write": s.write,
                "appliedMs": s.applied_ms,
                "applyLagMs": s.applied_ms.map(|a| a.saturating_sub(s.started_ms)),
            })
        })
        .collect();
    json!({
        "rollout": spec.metadata.name,
        "service": spec.service(),
        "baseline": spec.spec.baseline,
        "canary": spec.spec.canary,
        "outcome": state.outcome,
        "phase": state.phase,
        "stage": state.stage_label(),
        "paused": state.paused,
        "canaryBps": state.canary_bps,
        "schedule": state.schedule.iter().map(|&b| pct(b)).collect::<Vec<_>>(),
        "createdMs": state.created_ms,
        "startedMs": state.started_ms,
        "finishedMs": state.finished_ms,
        "durationMs": state.finished_ms.map(|f| f.saturating_sub(origin)),
        "analysis": {
            "interval": spec.spec.analysis.interval,
            "fastInterval": spec.spec.analysis.fast_interval,
            "threshold": spec.spec.analysis.threshold,
            "maxHold": spec.spec.analysis.max_hold,
            "onMaxHold": spec.spec.analysis.on_max_hold,
            "minSamples": spec.spec.analysis.min_samples,
            "alpha": spec.spec.analysis.alpha,
            "gates": spec.spec.analysis.gates,
        },
        "stages": stages,
        "timeline": history.timeline,
        "decisions": history.decisions,
        "sequentialTests": state.error_tests,
        "sourceErrors": state.source_errors,
    })
}
