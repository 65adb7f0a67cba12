//! The SVG chart: canary weight over time, then error rate, p95 latency and drift for the
//! baseline and the canary.

use std::fmt::Write as _;

use super::{origin, outcome_text, rel};
use crate::core::gates::{MetricPoint, Verdict};
use crate::core::spec::{DriftMetric, RolloutSpec};
use crate::core::step::{Decision, DecisionKind, History, RolloutState};

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
/// each evaluation. Rollbacks are marked with a dashed red line, failed checks with red dots,
/// and the metric a rollback rests on with a red ring and its numbers on its panel.
pub fn render_svg(spec: &RolloutSpec, state: &RolloutState, history: &History) -> String {
    let origin = origin(state);
    let last = state
        .finished_ms
        .into_iter()
        .chain(history.decisions.iter().map(|d| d.at_ms))
        .chain(history.timeline.iter().map(|t| t.at_ms))
        .max()
        .unwrap_or(origin)
        .max(origin + 1_000);
    // A little room after the last event so it does not sit on the frame.
    let end = last + (last - origin) / 20;
    let span = (end - origin) as f64;
    let plot_w = W - LEFT - RIGHT;
    let x = |ms: u64| LEFT + plot_w * (ms.saturating_sub(origin) as f64 / span);
    let points: Vec<&Decision> = history
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
    for t in &history.timeline {
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
    for d in history
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
    // At the rollback, the metric that caused it: a red ring on its panel with the numbers.
    let rollback = history.decisions.iter().rev().find(|d| {
        matches!(d.kind, DecisionKind::Rollback | DecisionKind::FastRollback)
            && d.gates.iter().any(|g| g.verdict == Verdict::Fail)
    });
    if let Some(d) = rollback {
        let m = d.metrics.clone().unwrap_or_default();
        let mut seen = Vec::new();
        for g in d.gates.iter().filter(|g| g.verdict == Verdict::Fail) {
            let (panel, value, text) = if g.gate.starts_with("errorRate") {
                let v = m
                    .canary_error_rate
                    .or_else(|| g.observed.get("canary").copied())
                    .map(|v| v * 100.0);
                let counts = match (m.canary_errors, m.canary_responses) {
                    (Some(e), Some(n)) => format!(" ({e}/{n})"),
                    _ => String::new(),
                };
                (0, v, v.map(|v| format!("{v:.2}%{counts}")))
            } else if g.gate.starts_with("latency") {
                let v = m.canary_p95_ms;
                let over = match (g.observed.get("canaryOver"), g.observed.get("canaryN")) {
                    (Some(k), Some(n)) => format!(
                        ", {k:.0}/{n:.0} over {:.0} ms",
                        g.observed.get("boundMs").copied().unwrap_or(0.0)
                    ),
                    _ => String::new(),
                };
                (1, v, v.map(|v| format!("p95 {v:.0} ms{over}")))
            } else if g.gate == "drift" {
                let v = m.drift.or_else(|| g.observed.get("divergence").copied());
                (2, v, v.map(|v| format!("{v:.3}")))
            } else {
                continue;
            };
            let Some(v) = value.filter(|v| v.is_finite()) else {
                continue;
            };
            if seen.contains(&panel) {
                continue;
            }
            seen.push(panel);
            let p = &panels[panel];
            let (cx, cy) = (x(d.at_ms), p.y(v));
            let (tx, anchor) = if cx > W - RIGHT - 220.0 {
                (cx - 8.0, "end")
            } else {
                (cx + 8.0, "start")
            };
            let label = format!("{}: {}", g.gate, text.unwrap_or_default());
            let _ = writeln!(
                svg,
                r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="6" fill="none" stroke="red" stroke-width="2"><title>{}</title></circle><text x="{tx:.1}" y="{:.1}" fill="red" text-anchor="{anchor}">{}</text>"#,
                xml_escape(&g.reason),
                cy - 8.0,
                xml_escape(&label)
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}
