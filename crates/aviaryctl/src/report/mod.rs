//! Reports rendered from a rollout's state and its [`History`] (folded from the records
//! log): JSON (every decision with the values and test statistics seen, the weight timeline
//! with when each write took effect at the proxies, stage timings), a Markdown summary for
//! people, an SVG chart (weight over time; error rate, p95 and drift for baseline vs canary),
//! and the `status` view.

use std::path::{Path, PathBuf};

use crate::core::spec::{HumanDuration, RolloutSpec};
use crate::core::step::{History, Outcome, RolloutState};
use crate::error::Error;

mod json;
mod markdown;
mod status;
mod summary;
mod svg;

pub use json::render_json;
pub use markdown::render_markdown;
pub use status::{status, Status};
pub use summary::{gate_view, render_gate_view, render_history, summarize, GateCount, RunSummary};
pub use svg::render_svg;

/// When the rollout began, the origin of every relative time.
fn origin(state: &RolloutState) -> u64 {
    state.started_ms.unwrap_or(state.created_ms)
}

/// `ms` as a time since `origin`, to the second.
fn rel(ms: u64, origin: u64) -> String {
    let d = ms.saturating_sub(origin);
    format!("+{}", HumanDuration(d - d % 1000))
}

/// How the rollout ended, in words.
fn outcome_text(state: &RolloutState) -> &'static str {
    match state.outcome {
        Some(Outcome::Promoted) => "promoted",
        Some(Outcome::RolledBack) => "rolled back",
        Some(Outcome::Aborted) => "aborted",
        None => "in progress",
    }
}

/// How long after `issued_ms` a write took effect at the proxies, or a dash when unconfirmed.
fn lag(issued_ms: u64, applied_ms: Option<u64>) -> String {
    applied_ms.map_or_else(
        || "–".to_string(),
        |a| format!("+{}", HumanDuration(a.saturating_sub(issued_ms))),
    )
}

/// A table cell: the value with `digits` decimals and its unit, or a dash.
fn cell(v: Option<f64>, digits: usize, unit: &str) -> String {
    v.map_or_else(|| "–".to_string(), |x| format!("{x:.digits$}{unit}"))
}

/// Writes `report.json`, `report.md` and `report.svg` into `dir`; returns the paths.
pub fn write_reports(
    spec: &RolloutSpec,
    state: &RolloutState,
    history: &History,
    dir: &Path,
) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    let json = serde_json::to_string_pretty(&render_json(spec, state, history))?;
    let files = [
        ("report.json", json),
        ("report.md", render_markdown(spec, state, history)),
        ("report.svg", render_svg(spec, state, history)),
    ];
    let mut out = Vec::new();
    for (name, body) in files {
        let path = dir.join(name);
        std::fs::write(&path, body).map_err(|e| Error::io(path.display(), e))?;
        out.push(path);
    }
    Ok(out)
}
