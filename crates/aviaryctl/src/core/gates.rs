//! The gates: each judges a [`Window`] (the difference of two snapshots) for the canary
//! against the baseline and returns a [`GateResult`] with verdict pass, fail or inconclusive,
//! the values it saw and its test statistic. Missing or insufficient data is inconclusive;
//! nothing here ever passes without samples.

use std::collections::BTreeMap;

use aviary_contract::metrics::ResponseClass;
use serde::{Deserialize, Serialize};

use crate::core::observe::{Snapshot, VersionMetrics};
use crate::core::spec::{
    AlphaBudget, CustomGate, DriftGate, DriftMetric, ErrorRateGate, PercentileGate, RolloutSpec,
};
use crate::core::stats::{self, MixtureSprt};
use crate::error::CounterReset;

/// Whether responses of class `label` count as errors (5xx, local replies, resets).
fn is_error_class(label: &str) -> bool {
    ResponseClass::from_label(label).is_some_and(ResponseClass::is_error)
}

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

/// Baseline and canary metrics accumulated between two snapshots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub from_ms: u64,
    pub to_ms: u64,
    pub baseline: VersionMetrics,
    pub canary: VersionMetrics,
    /// Custom query values at the end of the window.
    pub custom: BTreeMap<String, f64>,
}

impl Window {
    /// The metrics between `start` and `end`. A version absent from `start` counts from
    /// zero (Envoy creates stats on first use); any counter that went down (Envoy restarted,
    /// stats were reset) or a version that disappeared is an error: the window is unusable.
    pub fn between(
        start: &Snapshot,
        end: &Snapshot,
        baseline: &str,
        canary: &str,
    ) -> Result<Window, CounterReset> {
        Ok(Window {
            from_ms: start.at_ms,
            to_ms: end.at_ms,
            baseline: delta(start.versions.get(baseline), end.versions.get(baseline))
                .map_err(|e| e.within("baseline", baseline))?,
            canary: delta(start.versions.get(canary), end.versions.get(canary))
                .map_err(|e| e.within("canary", canary))?,
            custom: end.custom.clone(),
        })
    }

    /// Window length in ms.
    pub fn duration_ms(&self) -> u64 {
        self.to_ms.saturating_sub(self.from_ms)
    }
}

/// Responses of any class.
pub fn responses(v: &VersionMetrics) -> u64 {
    v.responses.values().sum()
}

/// Error responses (5xx, local replies, resets).
pub fn errors(v: &VersionMetrics) -> u64 {
    v.responses
        .iter()
        .filter(|(class, _)| is_error_class(class))
        .map(|(_, n)| n)
        .sum()
}

/// Error rate, `None` without responses.
pub fn error_rate(v: &VersionMetrics) -> Option<f64> {
    let n = responses(v);
    (n > 0).then(|| errors(v) as f64 / n as f64)
}

fn sub(end: u64, start: u64, what: impl Fn() -> String) -> Result<u64, CounterReset> {
    end.checked_sub(start)
        .ok_or_else(|| CounterReset::WentDown {
            counter: what(),
            from: start,
            to: end,
        })
}

fn sub_map(
    end: &BTreeMap<String, u64>,
    start: &BTreeMap<String, u64>,
    what: &str,
) -> Result<BTreeMap<String, u64>, CounterReset> {
    if let Some(k) = start.keys().find(|k| !end.contains_key(*k)) {
        return Err(CounterReset::Disappeared {
            counter: format!("{what}{{{k}}}"),
        });
    }
    end.iter()
        .map(|(k, &v)| {
            let s = start.get(k).copied().unwrap_or(0);
            sub(v, s, || format!("{what}{{{k}}}")).map(|d| (k.clone(), d))
        })
        .collect()
}

fn sub_bins(
    end: &[(f64, u64)],
    start: &[(f64, u64)],
    what: &str,
) -> Result<Vec<(f64, u64)>, CounterReset> {
    // Bucket layouts are normally identical, so match by position and fall back to search.
    let same_layout = start.len() == end.len() && start.iter().zip(end).all(|(a, b)| a.0 == b.0);
    if !same_layout {
        if let Some((b, _)) = start.iter().find(|(b, _)| !end.iter().any(|(e, _)| e == b)) {
            return Err(CounterReset::Disappeared {
                counter: format!("{what} bucket {b}"),
            });
        }
    }
    end.iter()
        .enumerate()
        .map(|(i, &(b, v))| {
            let s = if same_layout {
                start[i].1
            } else {
                start.iter().find(|(x, _)| *x == b).map_or(0, |&(_, c)| c)
            };
            sub(v, s, || format!("{what}{{le={b}}}")).map(|d| (b, d))
        })
        .collect()
}

/// `end − start` for one version's counters.
pub fn delta(
    start: Option<&VersionMetrics>,
    end: Option<&VersionMetrics>,
) -> Result<VersionMetrics, CounterReset> {
    let zero = VersionMetrics::default();
    let end = match (start, end) {
        (_, Some(e)) => e,
        (None, None) => return Ok(zero),
        (Some(s), None) if *s == zero || (s.requests == 0 && responses(s) == 0) => return Ok(zero),
        (Some(_), None) => return Err(CounterReset::NoLongerReported),
    };
    let start = start.unwrap_or(&zero);
    Ok(VersionMetrics {
        requests: sub(end.requests, start.requests, || "requests".into())?,
        responses: sub_map(&end.responses, &start.responses, "responses")?,
        latency_buckets: sub_bins(&end.latency_buckets, &start.latency_buckets, "latency")?,
        latency_count: sub(end.latency_count, start.latency_count, || {
            "latency count".into()
        })?,
        latency_sum: (end.latency_sum - start.latency_sum).max(0.0),
        score_bins: sub_bins(&end.score_bins, &start.score_bins, "score")?,
        shadow_agree: sub(end.shadow_agree, start.shadow_agree, || {
            "shadow agree".into()
        })?,
        shadow_disagree: sub(end.shadow_disagree, start.shadow_disagree, || {
            "shadow disagree".into()
        })?,
        shadow_uncompared: sub_map(
            &end.shadow_uncompared,
            &start.shadow_uncompared,
            "shadow uncompared",
        )?,
        weight_bps: end.weight_bps,
    })
}

/// Errors and responses of one version between two snapshots, without building a full
/// [`Window`]: the fast path run at every read. `Err` on a counter reset.
pub fn error_delta(
    start: &Snapshot,
    end: &Snapshot,
    version: &str,
) -> Result<(u64, u64), CounterReset> {
    let (s, e) = (start.versions.get(version), end.versions.get(version));
    let Some(e) = e else {
        return match s {
            Some(s) if s.requests > 0 || responses(s) > 0 => Err(CounterReset::VersionGone {
                version: version.to_string(),
            }),
            _ => Ok((0, 0)),
        };
    };
    let Some(s) = s else {
        return Ok((errors(e), responses(e)));
    };
    let mut n = 0;
    let mut err = 0;
    for (class, &v) in &e.responses {
        let before = s.responses.get(class).copied().unwrap_or(0);
        let d = sub(v, before, || format!("`{version}` responses{{{class}}}"))?;
        n += d;
        if is_error_class(class) {
            err += d;
        }
    }
    if s.responses.len() > e.responses.len() || e.requests < s.requests {
        return Err(CounterReset::VersionWentDown {
            version: version.to_string(),
        });
    }
    Ok((err, n))
}

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

/// Everything a regular evaluation needs besides the window.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub spec: &'a RolloutSpec,
    pub budget: AlphaBudget,
    /// Minimum samples per version.
    pub min_samples: u64,
    /// The last step before full promotion: a point estimate beyond a limit holds even when
    /// it is not significant. Earlier steps pass it on to the next step, which has more
    /// traffic to judge it.
    pub strict: bool,
}

impl<'a> Context<'a> {
    /// The parameters of look `index` of a test with budget `alpha`.
    pub fn look(&self, alpha: f64, index: u32) -> Look {
        Look {
            alpha,
            index,
            min_samples: self.min_samples,
            strict: self.strict,
        }
    }

    /// The context for `spec`.
    pub fn new(spec: &'a RolloutSpec) -> Self {
        Context {
            spec,
            budget: spec.alpha_budget(),
            min_samples: spec.spec.analysis.min_samples,
            strict: false,
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
    /// See [`Context::strict`].
    pub strict: bool,
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
            ctx.strict,
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

/// A limit exceeded by the point estimate without significance: holds at the last step,
/// passes earlier (see [`Context::strict`]).
fn unproven(strict: bool, what: String) -> (Verdict, String) {
    if strict {
        (
            Verdict::Inconclusive,
            format!("{what}, not yet significantly; holding before promotion"),
        )
    } else {
        (
            Verdict::Pass,
            format!("{what}, not significantly; the next step judges it on more traffic"),
        )
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
    error_rate_gate(gate, window, tests, budget, 0, false)
        .into_iter()
        .filter(|r| r.verdict == Verdict::Fail)
        .collect()
}

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
        strict,
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
    let (v, reason) = if c.lower > max {
        (
            Verdict::Fail,
            format!(
                "canary p{} ≥ {:.1} ms with confidence, above the {max} ms SLO",
                q * 100.0,
                c.lower
            ),
        )
    } else if c.point <= max {
        (
            Verdict::Pass,
            format!("canary p{} {:.1} ms ≤ {max} ms", q * 100.0, c.point),
        )
    } else {
        unproven(
            strict,
            format!("canary p{} {:.1} ms is above {max} ms", q * 100.0, c.point),
        )
    };
    let b = stats::histogram_quantile(q, &window.baseline.latency_buckets).unwrap_or(f64::NAN);
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
        strict,
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
    let (v, reason) = if b.upper.is_finite() && c.lower > r * b.upper {
        (
            Verdict::Fail,
            format!(
                "canary p{p} is at least {conservative:.2}× the baseline's with confidence (limit {r}×)"
            ),
        )
    } else if ratio <= r {
        (
            Verdict::Pass,
            format!(
                "canary p{p} {:.1} ms is {ratio:.2}× the baseline's {:.1} ms (limit {r}×)",
                c.point, b.point
            ),
        )
    } else {
        unproven(
            strict,
            format!("canary p{p} is {ratio:.2}× the baseline's (limit {r}×)"),
        )
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

/// Canary and baseline score-bin counts aligned on the union of their bin bounds.
pub fn aligned_bins(a: &[(f64, u64)], b: &[(f64, u64)]) -> (Vec<u64>, Vec<u64>) {
    let mut bounds: Vec<f64> = a.iter().chain(b).map(|&(x, _)| x).collect();
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    let get = |s: &[(f64, u64)], x: f64| s.iter().find(|(y, _)| *y == x).map_or(0, |&(_, c)| c);
    (
        bounds.iter().map(|&x| get(a, x)).collect(),
        bounds.iter().map(|&x| get(b, x)).collect(),
    )
}

/// The configured divergence between canary and baseline scores, `None` without data.
pub fn divergence(metric: DriftMetric, window: &Window) -> Option<f64> {
    let (c, b) = aligned_bins(&window.canary.score_bins, &window.baseline.score_bins);
    match metric {
        DriftMetric::Psi => stats::psi(&c, &b),
        DriftMetric::Js => stats::js_divergence(&c, &b),
    }
}

/// Prediction drift: fails when the divergence is above `max` and the difference between the
/// two histograms is significant (chi-square test of homogeneity at the look's alpha).
pub fn drift(gate: &DriftGate, window: &Window, look: Look) -> GateResult {
    let Look {
        alpha,
        index: look,
        min_samples,
        strict,
    } = look;
    let (c, b) = aligned_bins(&window.canary.score_bins, &window.baseline.score_bins);
    let cn: u64 = c.iter().sum();
    let bn: u64 = b.iter().sum();
    let name = "drift";
    if cn < min_samples || bn < min_samples {
        return GateResult::missing(
            name,
            format!("{cn} canary and {bn} baseline scores; need {min_samples} each"),
        )
        .with("canaryN", cn as f64)
        .with("baselineN", bn as f64);
    }
    let div = match gate.metric {
        DriftMetric::Psi => stats::psi(&c, &b),
        DriftMetric::Js => stats::js_divergence(&c, &b),
    };
    let (Some(div), Some((chi, df))) = (div, stats::chi_square_homogeneity(&c, &b)) else {
        return GateResult::missing(name, "score histograms have fewer than two bins with data");
    };
    let crit = stats::chi_square_critical(stats::spent_alpha(alpha, look), df);
    let label = match gate.metric {
        DriftMetric::Psi => "PSI",
        DriftMetric::Js => "JS",
    };
    let max = gate.max;
    let (v, reason) = if div <= max {
        (Verdict::Pass, format!("{label} {div:.4} ≤ {max}"))
    } else if chi > crit {
        (
            Verdict::Fail,
            format!("{label} {div:.4} > {max} and the shift is significant (χ² {chi:.1} > {crit:.1}, df {df})"),
        )
    } else {
        unproven(
            strict,
            format!("{label} {div:.4} > {max} (χ² {chi:.1} ≤ {crit:.1})"),
        )
    };
    GateResult::new(name, v, reason)
        .with("divergence", div)
        .with("chiSquare", chi)
        .with("chiSquareCritical", crit)
        .with("df", f64::from(df))
        .with("canaryN", cn as f64)
        .with("baselineN", bn as f64)
        .stat(div, max)
        .look(look)
}

/// Shadow agreement: passes when the Wilson lower bound is at or above the floor, fails when
/// the upper bound is below it, else inconclusive.
pub fn shadow_agreement(
    floor: f64,
    min_comparisons: u64,
    window: &Window,
    alpha: f64,
    look: u32,
) -> GateResult {
    let name = "shadowAgreement";
    let agree = window.canary.shadow_agree;
    let n = agree + window.canary.shadow_disagree;
    let uncompared: u64 = window.canary.shadow_uncompared.values().sum();
    if n < min_comparisons {
        return GateResult::missing(
            name,
            format!("{n} shadow comparisons; need {min_comparisons}"),
        )
        .with("comparisons", n as f64)
        .with("uncompared", uncompared as f64);
    }
    let z = stats::look_z(alpha, look);
    let (lo, hi) = stats::wilson(agree, n, z);
    let rate = agree as f64 / n as f64;
    let (v, reason) = if lo >= floor {
        (
            Verdict::Pass,
            format!("agreement {rate:.4} (lower bound {lo:.4}) ≥ {floor}"),
        )
    } else if hi < floor {
        (
            Verdict::Fail,
            format!("agreement {rate:.4} (upper bound {hi:.4}) < {floor}"),
        )
    } else {
        (
            Verdict::Inconclusive,
            format!(
                "agreement {rate:.4} in [{lo:.4}, {hi:.4}] does not settle the {floor} floor yet"
            ),
        )
    };
    GateResult::new(name, v, reason)
        .with("agreement", rate)
        .with("lower", lo)
        .with("upper", hi)
        .with("comparisons", n as f64)
        .with("uncompared", uncompared as f64)
        .with("z", z)
        .stat(lo, floor)
        .look(look)
}

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

/// Values charted in the report for one evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricPoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_p95_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_p95_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<f64>,
    pub baseline_n: u64,
    pub canary_n: u64,
}

/// The charted values of a window (drift with the spec's metric, PSI by default).
pub fn metric_point(spec: &RolloutSpec, window: &Window) -> MetricPoint {
    let finite = |x: Option<f64>| x.filter(|v| v.is_finite());
    let metric = spec
        .spec
        .analysis
        .gates
        .drift
        .as_ref()
        .map_or(DriftMetric::Psi, |d| d.metric);
    MetricPoint {
        baseline_error_rate: finite(error_rate(&window.baseline)),
        canary_error_rate: finite(error_rate(&window.canary)),
        baseline_p95_ms: finite(stats::histogram_quantile(
            0.95,
            &window.baseline.latency_buckets,
        )),
        canary_p95_ms: finite(stats::histogram_quantile(
            0.95,
            &window.canary.latency_buckets,
        )),
        drift: finite(divergence(metric, window)),
        baseline_n: responses(&window.baseline),
        canary_n: responses(&window.canary),
    }
}
