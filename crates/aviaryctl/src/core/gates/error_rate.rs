//! The error-rate gate: sequential tests of the canary's error rate, absolute and against the
//! baseline's, fed by every read and judged at every look.

use serde::{Deserialize, Serialize};

use super::window::{errors, responses};
use super::{unproven, GateResult, Verdict, Window};
use crate::core::spec::{AlphaBudget, ErrorRateGate};
use crate::core::stats::{self, MixtureSprt};

/// The sequential error-rate tests, accumulated over the whole rollout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorTests {
    /// `H0: canary error rate ≤ max`.
    pub absolute: MixtureSprt,
    /// `H0: canary error rate ≤ maxRelative × baseline error rate`.
    pub relative: MixtureSprt,
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
        if let Some(max) = gate.max {
            self.absolute.update(c.0, c.1, max);
        }
        if let Some(r) = gate.max_relative {
            self.relative.update_two_sample(c, b, r);
        }
    }
}

/// The error-rate tests' verdicts on the step window.
pub fn error_rate_gate(
    gate: &ErrorRateGate,
    window: &Window,
    tests: &ErrorTests,
    budget: &AlphaBudget,
    min_samples: u64,
    strict: bool,
) -> Vec<GateResult> {
    let (ce, cn) = (errors(&window.canary), responses(&window.canary));
    let (be, bn) = (errors(&window.baseline), responses(&window.baseline));
    let c_rate = if cn > 0 {
        ce as f64 / cn as f64
    } else {
        f64::NAN
    };
    let b_rate = if bn > 0 {
        be as f64 / bn as f64
    } else {
        f64::NAN
    };
    let base = |name: &str, v: Verdict, reason: String, t: &MixtureSprt, alpha: f64| {
        GateResult::new(name, v, reason)
            .with("canary", c_rate)
            .with("baseline", b_rate)
            .with("canaryErrors", ce as f64)
            .with("canaryN", cn as f64)
            .with("baselineErrors", be as f64)
            .with("baselineN", bn as f64)
            .with("logE", t.log_e_value())
            .with("alpha", alpha)
            .stat(t.peak_log_e, stats::log_threshold(alpha))
    };
    let mut out = Vec::new();
    if let Some(max) = gate.max {
        let t = &tests.absolute;
        let a = budget.error_absolute;
        let (v, reason) = if t.rejected(a) {
            (
                Verdict::Fail,
                format!(
                    "canary error rate is above {max} (sequential test, e-value {:.1} ≥ {:.1})",
                    t.peak_log_e.exp(),
                    1.0 / a
                ),
            )
        } else if cn < min_samples {
            (
                Verdict::Inconclusive,
                format!("{cn} canary responses this step; need {min_samples}"),
            )
        } else if c_rate > max {
            unproven(
                strict,
                format!("canary error rate {c_rate:.4} is above {max}"),
            )
        } else {
            (
                Verdict::Pass,
                format!("canary error rate {c_rate:.4} ≤ {max}"),
            )
        };
        out.push(base("errorRate.max", v, reason, t, a).with("max", max));
    }
    if let Some(r) = gate.max_relative {
        let t = &tests.relative;
        let a = budget.error_relative;
        let ratio = c_rate / b_rate;
        let (v, reason) = if t.rejected(a) {
            (
                Verdict::Fail,
                format!(
                    "canary error rate exceeds {r}× the baseline's (sequential test, e-value {:.1} ≥ {:.1})",
                    t.peak_log_e.exp(),
                    1.0 / a
                ),
            )
        } else if cn < min_samples || bn < min_samples {
            (
                Verdict::Inconclusive,
                format!(
                    "{cn} canary and {bn} baseline responses this step; need {min_samples} each"
                ),
            )
        } else {
            (
                Verdict::Pass,
                format!(
                    "no evidence the canary errs more than {r}× the baseline ({c_rate:.4} vs {b_rate:.4})"
                ),
            )
        };
        out.push(
            base("errorRate.relative", v, reason, t, a)
                .with("ratio", ratio)
                .with("maxRelative", r),
        );
    }
    out
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
    error_rate_gate(gate, window, tests, budget, 0, false)
        .into_iter()
        .filter(|r| r.verdict == Verdict::Fail)
        .collect()
}
