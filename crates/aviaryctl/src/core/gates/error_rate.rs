//! The error-rate gate: sequential tests of the canary's error rate, absolute and against the
//! baseline's, fed by every read and judged at every look.

use serde::{Deserialize, Serialize};

use super::window::{errors, responses};
use super::{unproven, GateResult, Verdict, Window};
use crate::core::spec::{AlphaBudget, ErrorRateGate};
use crate::core::stats::{self, MixtureSprt};

/// The sequential error-rate tests, accumulated over the whole rollout, and the cumulative
/// counts they rest on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorTests {
    /// `H0: canary error rate ≤ max`.
    pub absolute: MixtureSprt,
    /// `H0: canary error rate ≤ maxRelative × baseline error rate`.
    pub relative: MixtureSprt,
    /// Canary (errors, responses) since the rollout began.
    #[serde(default)]
    pub canary: (u64, u64),
    /// Baseline (errors, responses) since the rollout began.
    #[serde(default)]
    pub baseline: (u64, u64),
}

impl ErrorTests {
    /// Feeds the responses of one incremental window (disjoint from all earlier ones).
    pub fn observe(&mut self, gate: &ErrorRateGate, increment: &Window) {
        let c = (errors(&increment.canary), responses(&increment.canary));
        let b = (errors(&increment.baseline), responses(&increment.baseline));
        self.observe_counts(gate, c, b);
    }

    /// Feeds one increment as (errors, responses) for the canary and the baseline.
    pub fn observe_counts(&mut self, gate: &ErrorRateGate, c: (u64, u64), b: (u64, u64)) {
        self.canary = (self.canary.0 + c.0, self.canary.1 + c.1);
        self.baseline = (self.baseline.0 + b.0, self.baseline.1 + b.1);
        if let Some(max) = gate.max {
            self.absolute.update(c.0, c.1, max);
        }
        if let Some(r) = gate.max_relative {
            self.relative.update_two_sample(c, b, r);
        }
    }
}

fn rate((e, n): (u64, u64)) -> f64 {
    if n > 0 {
        e as f64 / n as f64
    } else {
        f64::NAN
    }
}

/// The strength of evidence in words, from a sequential test's e-value against its
/// threshold `1/α` (the e-value bounds the p-value: `p ≤ 1/e`); `over`: the estimate is over
/// the limit.
pub fn evidence_words(t: &MixtureSprt, alpha: f64, over: bool) -> String {
    let e = t.peak_log_e.exp();
    let level = (alpha * 1e6).round() / 1e6;
    let p = (1.0 / e).min(1.0);
    let p_text = if p < 0.001 {
        "p < 0.001".to_string()
    } else {
        format!("p ≤ {p:.3}")
    };
    if t.rejected(alpha) {
        format!("strong evidence of a breach ({p_text}; the test's level is {level})")
    } else if over {
        format!("over the limit ({p_text}; a breach needs p ≤ {level})")
    } else {
        "no evidence of a breach".to_string()
    }
}

/// The error-rate tests' verdicts: fail when a sequential test has rejected; inconclusive
/// with too few samples in the step window, or while the cumulative estimate is over the
/// limit without significance; pass otherwise. The counts are the rollout's cumulative ones
/// (what the sequential tests rest on).
pub fn error_rate_gate(
    gate: &ErrorRateGate,
    window: &Window,
    tests: &ErrorTests,
    budget: &AlphaBudget,
    min_samples: u64,
) -> Vec<GateResult> {
    let wn = (responses(&window.canary), responses(&window.baseline));
    let (c, b) = (tests.canary, tests.baseline);
    let (c_rate, b_rate) = (rate(c), rate(b));
    let counts = format!(
        "canary errors {}/{} = {} vs baseline {}/{} = {}",
        c.0,
        c.1,
        pct_text(c_rate),
        b.0,
        b.1,
        pct_text(b_rate)
    );
    let base = |name: &str, v: Verdict, reason: String, t: &MixtureSprt, alpha: f64| {
        GateResult::new(name, v, reason)
            .with("canary", c_rate)
            .with("baseline", b_rate)
            .with("canaryErrors", c.0 as f64)
            .with("canaryN", c.1 as f64)
            .with("baselineErrors", b.0 as f64)
            .with("baselineN", b.1 as f64)
            .with("windowCanaryN", wn.0 as f64)
            .with("windowBaselineN", wn.1 as f64)
            .with("logE", t.log_e_value())
            .with("pValueBound", (-t.peak_log_e).exp().min(1.0))
            .with("alpha", alpha)
            .stat(t.peak_log_e, stats::log_threshold(alpha))
    };
    let mut out = Vec::new();
    if let Some(max) = gate.max {
        let t = &tests.absolute;
        let a = budget.error_absolute;
        let words = evidence_words(t, a, t.point_over_null());
        let limit = format!("limit {}", pct_text(max));
        let (v, reason) = if t.rejected(a) {
            (Verdict::Fail, format!("{counts}; {limit}; {words}"))
        } else if wn.0 < min_samples {
            (
                Verdict::Inconclusive,
                format!("{} canary responses this step; need {min_samples}", wn.0),
            )
        } else if t.point_over_null() {
            unproven(format!("{counts}; {limit}; {words}"))
        } else {
            (Verdict::Pass, format!("{counts}; {limit}; {words}"))
        };
        out.push(base("errorRate.max", v, reason, t, a).with("max", max));
    }
    if let Some(r) = gate.max_relative {
        let t = &tests.relative;
        let a = budget.error_relative;
        let words = evidence_words(t, a, t.over_null());
        let limit = format!("limit {r}× baseline");
        let (v, reason) = if t.rejected(a) {
            (Verdict::Fail, format!("{counts}; {limit}; {words}"))
        } else if wn.0 < min_samples || wn.1 < min_samples {
            (
                Verdict::Inconclusive,
                format!(
                    "{} canary and {} baseline responses this step; need {min_samples} each",
                    wn.0, wn.1
                ),
            )
        } else if t.over_null() {
            unproven(format!("{counts}; {limit}; {words}"))
        } else {
            (Verdict::Pass, format!("{counts}; {limit}; {words}"))
        };
        out.push(
            base("errorRate.relative", v, reason, t, a)
                .with("ratio", c_rate / b_rate)
                .with("maxRelative", r),
        );
    }
    out
}

/// A rate as a percentage with enough digits for small rates.
pub fn pct_text(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let p = x * 100.0;
    if p == 0.0 || p >= 1.0 {
        format!("{p:.1}%")
    } else if p >= 0.1 {
        format!("{p:.2}%")
    } else {
        format!("{p:.3}%")
    }
}

/// Fast-track: the error tests that have rejected, if any (each a `Fail`).
pub fn fast_error_breach(
    gate: &ErrorRateGate,
    window: &Window,
    tests: &ErrorTests,
    budget: &AlphaBudget,
) -> Vec<GateResult> {
    let breached = (gate.max.is_some() && tests.absolute.rejected(budget.error_absolute))
        || (gate.max_relative.is_some() && tests.relative.rejected(budget.error_relative));
    if !breached {
        return Vec::new();
    }
    error_rate_gate(gate, window, tests, budget, 0)
        .into_iter()
        .filter(|r| r.verdict == Verdict::Fail)
        .collect()
}
