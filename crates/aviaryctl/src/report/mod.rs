//! Reports rendered from a rollout's state: JSON (every decision with the values and test
//! statistics seen, the weight timeline, stage timings), a Markdown summary for people, an SVG
//! chart (weight over time; error rate, p95 and drift for baseline vs canary), and the
//! `status` view.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Value};

use crate::core::gates::{MetricPoint, Verdict};
use crate::core::spec::{DriftMetric, HumanDuration, RolloutSpec};
use crate::core::step::{pct, Decision, DecisionKind, Outcome, Phase, RolloutState};
use crate::error::Error;

/// The full JSON report.
pub fn render_json(spec: &RolloutSpec, state: &RolloutState) -> Value {
    let origin = origin(state);
    let stages: Vec<Value> = state
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
        "timeline": state.timeline,
        "decisions": state.decisions,
        "sequentialTests": state.error_tests,
        "sourceErrors": state.source_errors,
    })
}

fn origin(state: &RolloutState) -> u64 {
    state.started_ms.unwrap_or(state.created_ms)
}

fn rel(ms: u64, origin: u64) -> String {
    let d = ms.saturating_sub(origin);
    format!("+{}", HumanDuration(d - d % 1000))
}

fn outcome_text(state: &RolloutState) -> &'static str {
    match state.outcome {
        Some(Outcome::Promoted) => "promoted",
        Some(Outcome::RolledBack) => "rolled back",
        Some(Outcome::Aborted) => "aborted",
        None => "in progress",
    }
}

fn cell(v: Option<f64>, digits: usize, unit: &str) -> String {
    v.map_or_else(|| "–".to_string(), |x| format!("{x:.digits$}{unit}"))
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// A Markdown summary: outcome, stage timings, and one row per evaluation.
pub fn render_markdown(spec: &RolloutSpec, state: &RolloutState) -> String {
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
    if let Some(last) = state.decisions.iter().rev().find(|d| {
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
    let _ = writeln!(md, "\n## Stages\n\n| Stage | Canary weight | Started | Time in stage | Result |\n|---|---|---|---|---|");
    for s in &state.stages {
        let took = s.ended_ms.map_or_else(
            || "(current)".to_string(),
            |e| HumanDuration(e.saturating_sub(s.started_ms)).to_string(),
        );
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            s.name,
            pct(s.canary_bps),
            rel(s.started_ms, origin),
            took,
            md_escape(s.result.as_deref().unwrap_or(""))
        );
    }
    let _ = writeln!(
        md,
        "\n## Decisions\n\n| Time | Stage | Decision | Canary err | Baseline err | Canary p95 | Baseline p95 | Drift | n (canary/baseline) | Reason |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for d in &state.decisions {
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

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

const W: f64 = 900.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 40.0;
const BASELINE_COLOUR: &str = "#1f77b4";
const CANARY_COLOUR: &str = "#ff7f0e";

struct Panel {
    title: String,
    top: f64,
    height: f64,
    /// Tick values on the y axis; the last is the top.
    ticks: Vec<f64>,
    /// Maps a value to 0..1 of the panel height.
    scale: Box<dyn Fn(f64) -> f64>,
    y_fmt: fn(f64) -> String,
}

impl Panel {
    fn linear(title: String, top: f64, max: f64, y_fmt: fn(f64) -> String) -> Panel {
        Panel {
            title,
            top,
            height: 110.0,
            ticks: vec![0.0, max / 2.0, max],
            scale: Box::new(move |v| v / max),
            y_fmt,
        }
    }

    fn y(&self, v: f64) -> f64 {
        self.top + self.height - self.height * (self.scale)(v).clamp(0.0, 1.0)
    }
}

/// An SVG chart: canary weight over time as a step line (square-root scale, so 1% is
/// visible next to 100%), then error rate, p95 latency and drift for baseline and canary at
/// each evaluation. Rollbacks are marked with a dashed red line, failed checks with red dots.
pub fn render_svg(spec: &RolloutSpec, state: &RolloutState) -> String {
    let origin = origin(state);
    let last = state
        .finished_ms
        .into_iter()
        .chain(state.decisions.iter().map(|d| d.at_ms))
        .chain(state.timeline.iter().map(|t| t.at_ms))
        .max()
        .unwrap_or(origin)
        .max(origin + 1_000);
    // A little room after the last event so it does not sit on the frame.
    let end = last + (last - origin) / 20;
    let span = (end - origin) as f64;
    let plot_w = W - LEFT - RIGHT;
    let x = |ms: u64| LEFT + plot_w * (ms.saturating_sub(origin) as f64 / span);
    let points: Vec<&Decision> = state
        .decisions
        .iter()
        .filter(|d| d.metrics.is_some())
        .collect();
    let series = |f: &dyn Fn(&MetricPoint) -> Option<f64>| -> Vec<(u64, f64)> {
        points
            .iter()
            .filter_map(|d| {
                d.metrics
                    .as_ref()
                    .and_then(f)
                    .filter(|v| v.is_finite())
                    .map(|v| (d.at_ms, v))
            })
            .collect()
    };
    let err_b = series(&|m| m.baseline_error_rate.map(|v| v * 100.0));
    let err_c = series(&|m| m.canary_error_rate.map(|v| v * 100.0));
    let p95_b = series(&|m| m.baseline_p95_ms);
    let p95_c = series(&|m| m.canary_p95_ms);
    let drift = series(&|m| m.drift);
    let max_of = |a: &[(u64, f64)], b: &[(u64, f64)], floor: f64| {
        a.iter().chain(b).map(|&(_, v)| v).fold(floor, f64::max) * 1.1
    };
    let drift_gate = spec.spec.analysis.gates.drift.as_ref();
    let drift_name = match drift_gate.map(|d| d.metric) {
        Some(DriftMetric::Js) => "JS divergence",
        _ => "PSI",
    };
    let weight = Panel {
        title: "Canary weight (%)".into(),
        top: 50.0,
        height: 170.0,
        ticks: vec![0.0, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0],
        scale: Box::new(|v| (v / 100.0).max(0.0).sqrt()),
        y_fmt: |v| format!("{v:.0}"),
    };
    let panels = [
        Panel::linear(
            "Error rate (%)".into(),
            270.0,
            max_of(&err_b, &err_c, 0.1),
            |v| format!("{v:.2}"),
        ),
        Panel::linear(
            "p95 latency (ms)".into(),
            430.0,
            max_of(&p95_b, &p95_c, 1.0),
            |v| format!("{v:.0}"),
        ),
        Panel::linear(
            format!("Drift: {drift_name}, canary vs baseline"),
            590.0,
            max_of(&drift, &[], drift_gate.map_or(0.01, |d| d.max)),
            |v| format!("{v:.3}"),
        ),
    ];
    let height = 760.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{W}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{}</text>"#,
        xml_escape(&format!(
            "{}: {} → {} ({})",
            spec.metadata.name,
            spec.spec.baseline,
            spec.spec.canary,
            outcome_text(state)
        ))
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" fill="{BASELINE_COLOUR}">■ baseline</text><text x="{}" y="24" fill="{CANARY_COLOUR}">■ canary</text>"#,
        W - RIGHT - 150.0,
        W - RIGHT - 70.0
    );
    for p in std::iter::once(&weight).chain(&panels) {
        let bottom = p.top + p.height;
        let _ = writeln!(
            svg,
            r##"<text x="{LEFT}" y="{}" font-weight="bold">{}</text><rect x="{LEFT}" y="{}" width="{plot_w}" height="{}" fill="none" stroke="#999"/>"##,
            p.top - 6.0,
            xml_escape(&p.title),
            p.top,
            p.height
        );
        for &v in &p.ticks {
            let y = p.y(v);
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                W - RIGHT,
                LEFT - 4.0,
                y + 4.0,
                xml_escape(&(p.y_fmt)(v))
            );
        }
        for i in 0..=4 {
            let t = origin + (span * f64::from(i) / 4.0) as u64;
            let anchor = match i {
                0 => "start",
                4 => "end",
                _ => "middle",
            };
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="{anchor}" fill="#666">{}</text>"##,
                x(t),
                bottom + 14.0,
                xml_escape(&rel(t, origin))
            );
        }
    }
    // Weight: a step line; the kill switch (rollback) is a dashed red line.
    let mut path = String::new();
    let mut prev_y: Option<f64> = None;
    for t in &state.timeline {
        let (px, py) = (x(t.at_ms), weight.y(f64::from(t.canary_bps) / 100.0));
        match prev_y {
            None => {
                let zero = weight.y(0.0);
                let _ = write!(
                    path,
                    "M{LEFT:.1},{zero:.1} L{px:.1},{zero:.1} L{px:.1},{py:.1} "
                );
            }
            Some(last_y) => {
                let _ = write!(path, "L{px:.1},{last_y:.1} L{px:.1},{py:.1} ");
            }
        }
        prev_y = Some(py);
        if t.kill_switch {
            let (tx, anchor) = if px > W - RIGHT - 80.0 {
                (px - 3.0, "end")
            } else {
                (px + 3.0, "start")
            };
            let _ = writeln!(
                svg,
                r#"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="red" stroke-dasharray="4 3"/><text x="{tx:.1}" y="{:.1}" fill="red" text-anchor="{anchor}">rollback</text>"#,
                weight.top,
                weight.top + weight.height,
                weight.top + 12.0
            );
        }
    }
    if let Some(last_y) = prev_y {
        let _ = write!(path, "L{:.1},{last_y:.1}", x(last));
        let _ = writeln!(
            svg,
            r#"<path d="{path}" fill="none" stroke="{CANARY_COLOUR}" stroke-width="2"/>"#
        );
    }
    for d in state
        .decisions
        .iter()
        .filter(|d| d.gates.iter().any(|g| g.verdict == Verdict::Fail))
    {
        let _ = writeln!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="red"><title>{}</title></circle>"#,
            x(d.at_ms),
            weight.y(f64::from(d.canary_bps) / 100.0),
            xml_escape(&d.reason)
        );
    }
    let line = |svg: &mut String, p: &Panel, data: &[(u64, f64)], colour: &str| {
        if data.is_empty() {
            return;
        }
        let pts: Vec<(f64, f64)> = data.iter().map(|&(t, v)| (x(t), p.y(v))).collect();
        let joined: Vec<String> = pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.5"/>"#,
            joined.join(" ")
        );
        for (cx, cy) in pts {
            let _ = writeln!(
                svg,
                r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="2" fill="{colour}"/>"#
            );
        }
    };
    line(&mut svg, &panels[0], &err_b, BASELINE_COLOUR);
    line(&mut svg, &panels[0], &err_c, CANARY_COLOUR);
    line(&mut svg, &panels[1], &p95_b, BASELINE_COLOUR);
    line(&mut svg, &panels[1], &p95_c, CANARY_COLOUR);
    line(&mut svg, &panels[2], &drift, CANARY_COLOUR);
    if let Some(d) = drift_gate {
        let y = panels[2].y(d.max);
        let _ = writeln!(
            svg,
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="red" stroke-dasharray="2 2"/><text x="{:.1}" y="{:.1}" fill="red" text-anchor="end">max {}</text>"#,
            W - RIGHT,
            W - RIGHT - 4.0,
            y - 3.0,
            d.max
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Writes `report.json`, `report.md` and `report.svg` into `dir`; returns the paths.
pub fn write_reports(
    spec: &RolloutSpec,
    state: &RolloutState,
    dir: &Path,
) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    let json = serde_json::to_string_pretty(&render_json(spec, state))?;
    let files = [
        ("report.json", json),
        ("report.md", render_markdown(spec, state)),
        ("report.svg", render_svg(spec, state)),
    ];
    let mut out = Vec::new();
    for (name, body) in files {
        let path = dir.join(name);
        std::fs::write(&path, body).map_err(|e| Error::io(path.display(), e))?;
        out.push(path);
    }
    Ok(out)
}

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

/// The status view of `state` at `now_ms`.
pub fn status(spec: &RolloutSpec, state: &RolloutState, now_ms: u64) -> Status {
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
        last_decision: state.decisions.last().cloned(),
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
