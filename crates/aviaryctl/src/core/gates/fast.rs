//! Fast track for latency and drift, beside the error tests: judged at every read, a proven
//! breach rolls back at once instead of after `threshold × interval`.
//!
//! *Latency* is tested as a binomial proportion with the same mixture SPRT as the error
//! rate. "The canary's q-quantile is at most `L`" means "at most `1 − q` of its requests take
//! longer than `L`", and the plugin's `le`-bucketed histogram counts the requests above any
//! bucket bound exactly. Each test fixes a bound `B` (a bucket bound) once and feeds every
//! read's increment: requests above `B` out of requests, against the null share `1 − q`.
//! - SLO: `B` is the smallest bucket bound ≥ `maxMs` (so `p_q ≤ maxMs` implies a share above
//!   `B` of at most `1 − q`).
//! - Regression: `B` is the smallest bucket bound ≥ `maxRegression ×` the baseline's upper
//!   confidence bound on its q-quantile (at half the test's fast alpha), fixed from the first
//!   stage window with `minSamples` baseline latencies. Under "no regression" the canary's
//!   q-quantile is below `B`, so its share above `B` is at most `1 − q`.
//!
//! *Drift* is judged on the step window with the regular drift test, at looks spaced by
//! sample size (each when the canary has 1.5× the scores of the last), each spending its
//! alpha share `α·6/(π²k²)` of the drift fast-track budget.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{drift, pct_text, GateResult, Look, Verdict, Window};
use crate::core::observe::VersionMetrics;
use crate::core::spec::{AlphaBudget, RolloutSpec};
use crate::core::stats::{self, MixtureSprt};

/// One latency share test.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShareTest {
    /// The bucket bound (ms) whose exceedances are counted, once fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_ms: Option<f64>,
    /// The sequential test of the canary's share above the bound (successes: requests above).
    pub sprt: MixtureSprt,
}

/// The fast-track tests of latency and drift, accumulated over the rollout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FastTests {
    /// By test name (`latency.p95.slo`, `latency.p95.regression`).
    #[serde(default)]
    pub latency: BTreeMap<String, ShareTest>,
    /// Drift fast-track looks spent.
    #[serde(default)]
    pub drift_looks: u32,
    /// Canary scores in the window at the last drift look (0: a new window).
    #[serde(default)]
    pub drift_last_n: u64,
}

/// Requests above `bound` and in total in a cumulative histogram.
pub fn above(buckets: &[(f64, u64)], bound: f64) -> (u64, u64) {
    let total = stats::histogram_total(buckets);
    let at = buckets
        .iter()
        .find(|(b, _)| *b == bound)
        .map_or(total, |&(_, c)| c);
    (total.saturating_sub(at), total)
}

/// The smallest finite bucket bound ≥ `x`.
fn bound_at_or_above(buckets: &[(f64, u64)], x: f64) -> Option<f64> {
    buckets
        .iter()
        .map(|&(b, _)| b)
        .filter(|b| b.is_finite() && *b >= x)
        .min_by(f64::total_cmp)
}

impl FastTests {
    /// Feeds the canary's latency increment since the last read; `window` (the step window
    /// so far) fixes the regression tests' bounds once the baseline has enough samples.
    pub fn observe_latency(
        &mut self,
        spec: &RolloutSpec,
        budget: &AlphaBudget,
        increment: &VersionMetrics,
        window: Option<&Window>,
    ) {
        let Some(l) = &spec.spec.analysis.gates.latency else {
            return;
        };
        let min = spec.spec.analysis.min_samples.max(1);
        for (label, q, p) in l.percentiles() {
            let Some(&(_, a_reg)) = budget.latency_fast.get(label) else {
                continue;
            };
            if let Some(max) = p.max_ms {
                let name = format!("latency.{label}.slo");
                let t = self.latency.entry(name).or_default();
                if t.bound_ms.is_none() {
                    t.bound_ms = bound_at_or_above(&increment.latency_buckets, max);
                }
            }
            if let Some(r) = p.max_regression {
                let name = format!("latency.{label}.regression");
                let t = self.latency.entry(name).or_default();
                if t.bound_ms.is_none() {
                    let b = window.map(|w| &w.baseline.latency_buckets);
                    if let Some(b) = b.filter(|b| stats::histogram_total(b) >= min) {
                        let z = stats::normal_quantile(1.0 - a_reg / 2.0);
                        t.bound_ms = stats::quantile_bounds(q, b, z)
                            .filter(|qb| qb.upper.is_finite())
                            .and_then(|qb| bound_at_or_above(b, r * qb.upper));
                    }
                }
            }
            for name in [
                format!("latency.{label}.slo"),
                format!("latency.{label}.regression"),
            ] {
                if let Some(t) = self.latency.get_mut(&name) {
                    if let Some(bound) = t.bound_ms {
                        let (k, n) = above(&increment.latency_buckets, bound);
                        t.sprt.update(k, n, 1.0 - q);
                    }
                }
            }
        }
    }

    /// The latency share tests that have proven a breach, as failing results with the
    /// cumulative counts they rest on and the baseline's share over the same bound in
    /// `window`.
    pub fn latency_breaches(
        &self,
        spec: &RolloutSpec,
        budget: &AlphaBudget,
        window: &Window,
    ) -> Vec<GateResult> {
        let Some(l) = &spec.spec.analysis.gates.latency else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (label, q, p) in l.percentiles() {
            let Some(&(a_slo, a_reg)) = budget.latency_fast.get(label) else {
                continue;
            };
            let kinds = [
                (
                    "slo",
                    a_slo,
                    p.max_ms.map(|m| format!("p{} ≤ {m} ms", q * 100.0)),
                ),
                (
                    "regression",
                    a_reg,
                    p.max_regression
                        .map(|r| format!("p{} ≤ {r}× the baseline's", q * 100.0)),
                ),
            ];
            for (kind, alpha, limit) in kinds {
                let Some(limit) = limit else { continue };
                let name = format!("latency.{label}.{kind}");
                let Some(t) = self.latency.get(&name) else {
                    continue;
                };
                let Some(bound) = t.bound_ms else { continue };
                if !t.sprt.rejected(alpha) {
                    continue;
                }
                out.push(share_result(
                    &name,
                    t,
                    bound,
                    1.0 - q,
                    alpha,
                    &limit,
                    window,
                ));
            }
        }
        out
    }

    /// A fast drift look when the window's canary scores have grown by half since the last
    /// one: the regular drift test at this look's alpha share. Returns it when it failed.
    pub fn drift_look(
        &mut self,
        spec: &RolloutSpec,
        budget: &AlphaBudget,
        window: &Window,
    ) -> Option<GateResult> {
        let d = spec.spec.analysis.gates.drift.as_ref()?;
        if budget.drift_fast <= 0.0 {
            return None;
        }
        let n: u64 = window.canary.score_bins.iter().map(|&(_, c)| c).sum();
        if n < self.drift_last_n {
            self.drift_last_n = 0;
        }
        let min = spec.spec.analysis.min_samples.max(1);
        if n < min || (self.drift_last_n > 0 && n * 2 < self.drift_last_n * 3) {
            return None;
        }
        self.drift_looks += 1;
        self.drift_last_n = n;
        let look = Look {
            alpha: budget.drift_fast,
            index: self.drift_looks,
            min_samples: min,
        };
        let r = drift(d, window, look);
        (r.verdict == Verdict::Fail).then_some(GateResult { look: None, ..r })
    }
}

fn share_result(
    name: &str,
    t: &ShareTest,
    bound: f64,
    null_share: f64,
    alpha: f64,
    limit: &str,
    window: &Window,
) -> GateResult {
    let (k, n) = (t.sprt.successes, t.sprt.trials);
    let share = if n > 0 { k as f64 / n as f64 } else { f64::NAN };
    let (bk, bn) = above(&window.baseline.latency_buckets, bound);
    let b_share = if bn > 0 {
        bk as f64 / bn as f64
    } else {
        f64::NAN
    };
    let lo = stats::wilson(k, n, stats::normal_quantile(0.975)).0;
    let c = stats::histogram_quantile(0.95, &window.canary.latency_buckets);
    let words = super::evidence_words(&t.sprt, alpha, t.sprt.point_over_null());
    let reason = format!(
        "canary requests over {bound} ms {k}/{n} = {} (at least {} with 95% confidence) vs baseline {bk}/{bn} = {}; limit {limit}: at most {} over {bound} ms; {words}",
        pct_text(share),
        pct_text(lo),
        pct_text(b_share),
        pct_text(null_share),
    );
    let mut r = GateResult::new(name, Verdict::Fail, reason)
        .with("canaryOver", k as f64)
        .with("canaryN", n as f64)
        .with("canary", share)
        .with("canaryLower", lo)
        .with("baselineOver", bk as f64)
        .with("baselineN", bn as f64)
        .with("baseline", b_share)
        .with("boundMs", bound)
        .with("maxShare", null_share)
        .with("logE", t.sprt.log_e_value())
        .with("pValueBound", (-t.sprt.peak_log_e).exp().min(1.0))
        .with("alpha", alpha)
        .stat(t.sprt.peak_log_e, stats::log_threshold(alpha));
    if let Some(p) = c {
        r = r.with("windowCanaryP95Ms", p);
    }
    r
}
