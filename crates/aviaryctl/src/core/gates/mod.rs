//! The gates: each judges a [`Window`] (the difference of two snapshots) for the canary
//! against the baseline and returns a [`GateResult`] with verdict pass, fail or inconclusive,
//! the values it saw and its test statistic. Missing or insufficient data is inconclusive;
//! nothing here ever passes without samples.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::spec::{AlphaBudget, DriftMetric, RolloutSpec};
use crate::core::stats;

mod custom;
mod drift;
mod error_rate;
mod fast;
mod latency;
mod shadow;
mod window;

pub use custom::custom;
pub use drift::{aligned_bins, divergence, drift};
pub use error_rate::{error_rate_gate, evidence_words, fast_error_breach, pct_text, ErrorTests};
pub use fast::{above, FastTests, ShareTest};
pub use latency::{latency_regression, latency_slo};
pub use shadow::shadow_agreement;
pub use window::{delta, error_delta, error_rate, errors, responses, Window};

/// A gate's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    /// Not enough (or no) data to tell; holds the step.
    Inconclusive,
}

/// What one gate (one test) saw and decided, as recorded in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateResult {
    /// Test name, e.g. `errorRate.relative`, `latency.p95.regression`, `drift`, `custom.ctr`.
    pub gate: String,
    pub verdict: Verdict,
    /// Observed values (finite only), e.g. `canary`, `baseline`, `ratio`, `canaryN`.
    pub observed: BTreeMap<String, f64>,
    /// The test statistic compared with `threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistic: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// One sentence a person can read.
    pub reason: String,
    /// The look index whose alpha share this evaluation spent, for alpha-spending tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub look: Option<u32>,
}

impl GateResult {
    fn new(gate: impl Into<String>, verdict: Verdict, reason: impl Into<String>) -> Self {
        GateResult {
            gate: gate.into(),
            verdict,
            observed: BTreeMap::new(),
            statistic: None,
            threshold: None,
            reason: reason.into(),
            look: None,
        }
    }

    fn with(mut self, key: &str, value: f64) -> Self {
        if value.is_finite() {
            self.observed.insert(key.to_string(), value);
        }
        self
    }

    fn stat(mut self, statistic: f64, threshold: f64) -> Self {
        self.statistic = statistic.is_finite().then_some(statistic);
        self.threshold = threshold.is_finite().then_some(threshold);
        self
    }

    fn look(mut self, look: u32) -> Self {
        self.look = Some(look);
        self
    }

    /// An inconclusive result for missing data.
    pub fn missing(gate: impl Into<String>, why: impl Into<String>) -> Self {
        GateResult::new(gate, Verdict::Inconclusive, why)
    }
}

/// Everything a regular evaluation needs besides the window.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub spec: &'a RolloutSpec,
    pub budget: AlphaBudget,
    /// Minimum samples per version.
    pub min_samples: u64,
}

impl<'a> Context<'a> {
    /// The parameters of look `index` of a test with budget `alpha`.
    pub fn look(&self, alpha: f64, index: u32) -> Look {
        Look {
            alpha,
            index,
            min_samples: self.min_samples,
        }
    }

    /// The context for `spec`.
    pub fn new(spec: &'a RolloutSpec) -> Self {
        Context {
            spec,
            budget: spec.alpha_budget(),
            min_samples: spec.spec.analysis.min_samples,
        }
    }
}

/// How one alpha-spending test is run at this look.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Look {
    /// The test's share of the false-fail budget.
    pub alpha: f64,
    /// 1-based look index; look `k` spends `α·6/(π²k²)`.
    pub index: u32,
    /// Minimum samples per version.
    pub min_samples: u64,
}

fn next_look(looks: &BTreeMap<String, u32>, gate: &str) -> u32 {
    looks.get(gate).copied().unwrap_or(0) + 1
}

/// Records the looks spent by `results` into `looks`.
pub fn spend_looks(looks: &mut BTreeMap<String, u32>, results: &[GateResult]) {
    for r in results {
        if let Some(k) = r.look {
            looks.insert(r.gate.clone(), k);
        }
    }
}

/// Evaluates every live-traffic gate on the step window. `looks` holds the looks spent so far
/// per test; apply [`spend_looks`] to the results to advance it.
pub fn evaluate(
    ctx: &Context<'_>,
    window: &Window,
    tests: &ErrorTests,
    looks: &BTreeMap<String, u32>,
) -> Vec<GateResult> {
    let g = &ctx.spec.spec.analysis.gates;
    let mut out = Vec::new();
    if let Some(e) = &g.error_rate {
        out.extend(error_rate_gate(
            e,
            window,
            tests,
            &ctx.budget,
            ctx.min_samples,
        ));
    }
    if let Some(l) = &g.latency {
        for (label, q, p) in l.percentiles() {
            let (a_slo, a_reg) = ctx.budget.latency.get(label).copied().unwrap_or((0.0, 0.0));
            if p.max_ms.is_some() {
                let name = format!("latency.{label}.slo");
                let look = ctx.look(a_slo, next_look(looks, &name));
                out.push(latency_slo(&name, q, p, window, look));
            }
            if p.max_regression.is_some() {
                let name = format!("latency.{label}.regression");
                let look = ctx.look(a_reg, next_look(looks, &name));
                out.push(latency_regression(&name, q, p, window, look));
            }
        }
    }
    if let Some(d) = &g.drift {
        let look = ctx.look(ctx.budget.drift, next_look(looks, "drift"));
        out.push(drift(d, window, look));
    }
    for c in &g.custom {
        out.push(custom(c, window));
    }
    out
}

/// A limit exceeded by the point estimate without significance: inconclusive at every step.
/// The step holds and its window keeps growing until the test decides either way (or
/// `maxHold` runs out); an estimate over a limit never advances.
fn unproven(what: String) -> (Verdict, String) {
    (
        Verdict::Inconclusive,
        format!("{what}, not yet significant; holding for more data"),
    )
}

/// The numbers a decision rests on, charted in the report and sent with its webhook. Error
/// counts and rates are the rollout's cumulative ones (what the error tests judge);
/// percentiles and drift are the step window's, the canary's p95 with a 95% interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricPoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_error_rate: Option<f64>,
    /// Cumulative canary errors and responses since the rollout began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_errors: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_responses: Option<u64>,
    /// Cumulative baseline errors and responses since the rollout began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_errors: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_responses: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_p95_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_p95_ms: Option<f64>,
    /// 95% rank interval of the canary's p95.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_p95_lower_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_p95_upper_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<f64>,
    /// Responses in the step window.
    pub baseline_n: u64,
    pub canary_n: u64,
}

/// The numbers of a decision on `window`, with the cumulative error counts of `tests` (drift
/// with the spec's metric, PSI by default).
pub fn metric_point(spec: &RolloutSpec, window: &Window, tests: &ErrorTests) -> MetricPoint {
    let finite = |x: Option<f64>| x.filter(|v| v.is_finite());
    let metric = spec
        .spec
        .analysis
        .gates
        .drift
        .as_ref()
        .map_or(DriftMetric::Psi, |d| d.metric);
    let cumulative = tests.canary.1 > 0 || tests.baseline.1 > 0;
    let rate = |(e, n): (u64, u64)| (n > 0).then(|| e as f64 / n as f64);
    let (c_err, b_err) = if cumulative {
        (rate(tests.canary), rate(tests.baseline))
    } else {
        (error_rate(&window.canary), error_rate(&window.baseline))
    };
    let (c, b) = if cumulative {
        (tests.canary, tests.baseline)
    } else {
        (
            (errors(&window.canary), responses(&window.canary)),
            (errors(&window.baseline), responses(&window.baseline)),
        )
    };
    let ci = stats::quantile_bounds(
        0.95,
        &window.canary.latency_buckets,
        stats::normal_quantile(0.975),
    );
    MetricPoint {
        baseline_error_rate: finite(b_err),
        canary_error_rate: finite(c_err),
        canary_errors: Some(c.0),
        canary_responses: Some(c.1),
        baseline_errors: Some(b.0),
        baseline_responses: Some(b.1),
        baseline_p95_ms: finite(stats::histogram_quantile(
            0.95,
            &window.baseline.latency_buckets,
        )),
        canary_p95_ms: finite(stats::histogram_quantile(
            0.95,
            &window.canary.latency_buckets,
        )),
        canary_p95_lower_ms: finite(ci.map(|q| q.lower)),
        canary_p95_upper_ms: finite(ci.map(|q| q.upper)),
        drift: finite(divergence(metric, window)),
        baseline_n: responses(&window.baseline),
        canary_n: responses(&window.canary),
    }
}
