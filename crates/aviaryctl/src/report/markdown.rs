//! The Markdown summary for people.

use std::fmt::Write as _;

use super::{cell, lag, origin, outcome_text, rel};
use crate::core::gates::{pct_text, MetricPoint, Verdict};
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
        if let Some(m) = &last.metrics {
            let _ = writeln!(md, "\nThe numbers it rests on: {}.", numbers(m));
        }
        if !failing.is_empty() {
            let _ = writeln!(md, "\n| Gate | Evidence |\n|---|---|");
            for g in failing {
                let _ = writeln!(md, "| {} | {} |", g.gate, md_escape(&g.reason));
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
            m.map_or_else(
                || "–".to_string(),
                |m| errors_cell(m.canary_errors, m.canary_responses, m.canary_error_rate)
            ),
            m.map_or_else(
                || "–".to_string(),
                |m| errors_cell(
                    m.baseline_errors,
                    m.baseline_responses,
                    m.baseline_error_rate
                )
            ),
            m.map_or_else(|| "–".to_string(), p95_cell),
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

/// `6.1% (8/132)`, or the rate alone without counts, or a dash.
fn errors_cell(errors: Option<u64>, n: Option<u64>, rate: Option<f64>) -> String {
    match (errors, n, rate) {
        (Some(e), Some(n), Some(r)) => format!("{} ({e}/{n})", pct_text(r)),
        (_, _, Some(r)) => pct_text(r),
        _ => "–".to_string(),
    }
}

/// The canary's p95 with its 95% interval.
fn p95_cell(m: &MetricPoint) -> String {
    match (
        m.canary_p95_ms,
        m.canary_p95_lower_ms,
        m.canary_p95_upper_ms,
    ) {
        (Some(p), Some(lo), Some(hi)) if hi.is_finite() => {
            format!("{p:.1} ms ({lo:.0}–{hi:.0})")
        }
        (Some(p), Some(lo), _) => format!("{p:.1} ms (≥ {lo:.0})"),
        (p, _, _) => cell(p, 1, " ms"),
    }
}

/// One sentence of the numbers a decision rests on, as the webhook and JSON carry them.
pub(super) fn numbers(m: &MetricPoint) -> String {
    let mut parts = vec![format!(
        "canary errors {} vs baseline {}",
        errors_cell(m.canary_errors, m.canary_responses, m.canary_error_rate),
        errors_cell(
            m.baseline_errors,
            m.baseline_responses,
            m.baseline_error_rate
        )
    )];
    if m.canary_p95_ms.is_some() || m.baseline_p95_ms.is_some() {
        parts.push(format!(
            "canary p95 {} vs baseline {}",
            p95_cell(m),
            cell(m.baseline_p95_ms, 1, " ms")
        ));
    }
    if let Some(d) = m.drift {
        parts.push(format!("drift {d:.3}"));
    }
    parts.push(format!(
        "step window {} canary / {} baseline responses",
        m.canary_n, m.baseline_n
    ));
    parts.join("; ")
}
