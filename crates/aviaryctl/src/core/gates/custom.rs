//! Custom gates: a business KPI from a Prometheus query, within bounds.

use super::{GateResult, Verdict, Window};
use crate::core::spec::CustomGate;

/// A custom KPI from the snapshot's `custom` values.
pub fn custom(gate: &CustomGate, window: &Window) -> GateResult {
    let name = format!("custom.{}", gate.name);
    let Some(&value) = window.custom.get(&gate.name) else {
        return GateResult::missing(name, "query returned no value");
    };
    if !value.is_finite() {
        return GateResult::missing(name, "query returned a non-finite value");
    }
    let (v, reason, threshold) = match (gate.min, gate.max) {
        (Some(lo), _) if value < lo => (Verdict::Fail, format!("{value} < min {lo}"), lo),
        (_, Some(hi)) if value > hi => (Verdict::Fail, format!("{value} > max {hi}"), hi),
        (lo, hi) => (
            Verdict::Pass,
            format!("{value} within [{}, {}]", fmt_opt(lo), fmt_opt(hi)),
            hi.or(lo).unwrap_or(f64::NAN),
        ),
    };
    GateResult::new(name, v, reason)
        .with("value", value)
        .stat(value, threshold)
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| x.to_string())
}
