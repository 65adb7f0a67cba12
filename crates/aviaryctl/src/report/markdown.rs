//! The Markdown summary for people.

use std::fmt::Write as _;

use super::{cell, lag, origin, outcome_text, rel};
use crate::core::gates::Verdict;
use crate::core::spec::{HumanDuration, RolloutSpec};
use crate::core::step::{pct, DecisionKind, History, RolloutState};

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// A Markdown summary: outcome, stage timings, and one row per evaluation.
pub fn render_markdown(spec: &RolloutSpec, state: &RolloutState, history: &History) -> String {
    let origin = origin(state);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Rollout `{}`: {} → {} ({})\n",
        spec.metadata.name,
        spec.spec.baseline,
        spec.spec.canary,
        outcome_text(state)
    );
    let _ = writeln!(md, "- Service: `{}`", spec.service());
    let _ = writeln!(
        md,
        "- Stage: {}{}",
        state.stage_label(),
        if state.paused { " (paused)" } else { "" }
    );
    let _ = writeln!(
        md,
        "- Schedule: {}",
        state
            .schedule
            .iter()
            .map(|&b| pct(b))
            .collect::<Vec<_>>()
            .join(" → ")
            + " → 100%"
    );
    let a = &spec.spec.analysis;
    let _ = writeln!(
        md,
        "- Analysis: interval {}, fast interval {}, threshold {}, min samples {}, max hold {} ({:?}), alpha {}",
        a.interval,
        a.fast_interval.map_or_else(|| "off".to_string(), |f| f.to_string()),
        a.threshold,
        a.min_samples,
        a.max_hold,
        a.on_max_hold,
        a.alpha
    );
    if let Some(f) = state.finished_ms {
        let _ = writeln!(
            md,
            "- Total time: {}",
            HumanDuration(f.saturating_sub(origin))
        );
    }
    if state.source_errors > 0 {
        let _ = writeln!(md, "- Metric read failures: {}", state.source_errors);
    }
    if let Some(last) = history.decisions.iter().rev().find(|d| {
        matches!(
            d.kind,
            DecisionKind::Rollback
                | DecisionKind::FastRollback
                | DecisionKind::Abort
                | DecisionKind::Promote
                | DecisionKind::ManualPromote
        )
    }) {
        let _ = writeln!(
            md,
            "\n**Final decision** ({}): {}",
            rel(last.at_ms, origin),
            md_escape(&last.reason)
        );
        let write = history
            .timeline
            .iter()
            .rev()
            .find(|p| p.at_ms == last.at_ms);
        if let Some(p) = write {
            let effect = p.applied_ms.map_or_else(
                || "was not confirmed by the proxies".to_string(),
                |a| {
                    let after = HumanDuration(a.saturating_sub(p.at_ms));
                    format!("took effect at the proxies {after} later")
                },
            );
            let _ = writeln!(md, "\nIts config write (#{}) {effect}.", p.write);
        }
        let failing: Vec<_> = last
            .gates
            .iter()
            .filter(|g| g.verdict == Verdict::Fail)
            .collect();
        if !failing.is_empty() {
            let _ = writeln!(
                md,
                "\n| Gate | Statistic | Threshold | Reason |\n|---|---|---|---|"
            );
            for g in failing {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    g.gate,
                    cell(g.statistic, 4, ""),
                    cell(g.threshold, 4, ""),
                    md_escape(&g.reason)
                );
            }
        }
    }
    let _ = writeln!(md, "\n## Stages\n\n| Stage | Canary weight | Started | Took effect | Time in stage | Result |\n|---|---|---|---|---|---|");
    for s in &history.stages {
        let took = s.ended_ms.map_or_else(
            || "(current)".to_string(),
            |e| HumanDuration(e.saturating_sub(s.started_ms)).to_string(),
        );
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            s.name,
            pct(s.canary_bps),
            rel(s.started_ms, origin),
            lag(s.started_ms, s.applied_ms),
            took,
            md_escape(s.result.as_deref().unwrap_or(""))
        );
    }
    let _ = writeln!(
        md,
        "\n## Decisions\n\n| Time | Stage | Decision | Canary err | Baseline err | Canary p95 | Baseline p95 | Drift | n (canary/baseline) | Reason |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for d in &history.decisions {
        let m = d.metrics.as_ref();
        let _ = writeln!(
            md,
            "| {} | {} | {:?} | {} | {} | {} | {} | {} | {} | {} |",
            rel(d.at_ms, origin),
            d.stage,
            d.kind,
            cell(
                m.and_then(|m| m.canary_error_rate.map(|x| x * 100.0)),
                2,
                "%"
            ),
            cell(
                m.and_then(|m| m.baseline_error_rate.map(|x| x * 100.0)),
                2,
                "%"
            ),
            cell(m.and_then(|m| m.canary_p95_ms), 1, " ms"),
            cell(m.and_then(|m| m.baseline_p95_ms), 1, " ms"),
            cell(m.and_then(|m| m.drift), 3, ""),
            m.map_or_else(
                || "–".to_string(),
                |m| format!("{}/{}", m.canary_n, m.baseline_n)
            ),
            md_escape(&d.reason)
        );
    }
    md
}
