//! The latency gates: a percentile against its SLO, and against the baseline's.

use super::{unproven, GateResult, Look, Verdict, Window};
use crate::core::spec::PercentileGate;
use crate::core::stats;

/// Latency SLO: fails when even the lower confidence bound of the canary's percentile is
/// above `maxMs`.
pub fn latency_slo(
    name: &str,
    q: f64,
    gate: &PercentileGate,
    window: &Window,
    look: Look,
) -> GateResult {
    let Look {
        alpha,
        index: look,
        min_samples,
    } = look;
    let max = gate.max_ms.unwrap_or(f64::INFINITY);
    let n = stats::histogram_total(&window.canary.latency_buckets);
    if n < min_samples {
        return GateResult::missing(
            name,
            format!("{n} canary latency samples; need {min_samples}"),
        )
        .with("canaryN", n as f64);
    }
    let z = stats::look_z(alpha, look);
    let Some(c) = stats::quantile_bounds(q, &window.canary.latency_buckets, z) else {
        return GateResult::missing(name, "no canary latency histogram");
    };
    let b = stats::histogram_quantile(q, &window.baseline.latency_buckets).unwrap_or(f64::NAN);
    let numbers = format!(
        "canary p{} {} (CI {}–{}, n {n}) vs baseline {}; limit {max} ms",
        q * 100.0,
        ms(c.point),
        ms(c.lower),
        ms(c.upper),
        ms(b)
    );
    // A fixed ceiling: the point estimate over it holds.
    let (v, reason) = if c.lower > max {
        (
            Verdict::Fail,
            format!("{numbers}; strong evidence of a breach (the lower bound is over the SLO)"),
        )
    } else if c.point <= max {
        (Verdict::Pass, format!("{numbers}; within the SLO"))
    } else {
        unproven(format!("{numbers}; over the SLO"))
    };
    GateResult::new(name, v, reason)
        .with("canary", c.point)
        .with("canaryLower", c.lower)
        .with("canaryUpper", c.upper)
        .with("baseline", b)
        .with("canaryN", n as f64)
        .with("z", z)
        .stat(c.lower, max)
        .look(look)
}

/// Latency regression: fails when the canary's lower bound exceeds `maxRegression` times the
/// baseline's upper bound (each bound at half the look's alpha).
pub fn latency_regression(
    name: &str,
    q: f64,
    gate: &PercentileGate,
    window: &Window,
    look: Look,
) -> GateResult {
    let Look {
        alpha,
        index: look,
        min_samples,
    } = look;
    let r = gate.max_regression.unwrap_or(f64::INFINITY);
    let cn = stats::histogram_total(&window.canary.latency_buckets);
    let bn = stats::histogram_total(&window.baseline.latency_buckets);
    if cn < min_samples || bn < min_samples {
        return GateResult::missing(
            name,
            format!("{cn} canary and {bn} baseline latency samples; need {min_samples} each"),
        )
        .with("canaryN", cn as f64)
        .with("baselineN", bn as f64);
    }
    let z = stats::look_z(alpha / 2.0, look);
    let (Some(c), Some(b)) = (
        stats::quantile_bounds(q, &window.canary.latency_buckets, z),
        stats::quantile_bounds(q, &window.baseline.latency_buckets, z),
    ) else {
        return GateResult::missing(name, "latency histogram missing");
    };
    let ratio = if b.point > 0.0 {
        c.point / b.point
    } else if c.point <= 0.0 {
        1.0
    } else {
        f64::INFINITY
    };
    let conservative = if b.upper > 0.0 {
        c.lower / b.upper
    } else {
        f64::INFINITY
    };
    let p = q * 100.0;
    // Over the limit on the evidence: the canary's lower bound at the lenient level is above
    // `r ×` the baseline's estimate.
    let over = stats::quantile_bounds(q, &window.canary.latency_buckets, stats::over_limit_z())
        .is_some_and(|w| w.lower > r * b.point);
    let numbers = format!(
        "canary p{p} {} (CI {}–{}, n {cn}) vs baseline {} (CI {}–{}, n {bn}) = {ratio:.2}×; limit {r}×",
        ms(c.point),
        ms(c.lower),
        ms(c.upper),
        ms(b.point),
        ms(b.lower),
        ms(b.upper),
    );
    let (v, reason) = if b.upper.is_finite() && c.lower > r * b.upper {
        (
            Verdict::Fail,
            format!(
                "{numbers}; strong evidence of a breach (at least {conservative:.2}× at the bounds)"
            ),
        )
    } else if !over {
        (Verdict::Pass, format!("{numbers}; within the limit"))
    } else {
        unproven(format!("{numbers}; over the limit"))
    };
    GateResult::new(name, v, reason)
        .with("canary", c.point)
        .with("baseline", b.point)
        .with("ratio", ratio)
        .with("canaryLower", c.lower)
        .with("baselineUpper", b.upper)
        .with("canaryN", cn as f64)
        .with("baselineN", bn as f64)
        .with("z", z)
        .stat(conservative, r)
        .look(look)
}

/// Milliseconds for a sentence: `12.3 ms`, `∞` for an unbounded upper bound.
fn ms(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1} ms")
    } else if x > 0.0 {
        "∞".to_string()
    } else {
        "n/a".to_string()
    }
}
