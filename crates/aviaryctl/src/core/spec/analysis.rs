//! `spec.analysis`: the schedule, the timing and the gates, and how the false-rollback budget
//! is split among the statistical tests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{HumanDuration, RolloutSpec};

/// Schedule, timing and gates (Flagger's `analysis`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Analysis {
    /// Bake time of each step before its gates can promote it.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Cadence of the fast-track checks (error spikes); absent disables fast-track.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_interval: Option<HumanDuration>,
    /// Consecutive failed checks before rollback.
    #[serde(default = "default_threshold")]
    pub threshold: u32,
    /// Longest a step may stay inconclusive before `onMaxHold` applies.
    #[serde(default = "default_max_hold")]
    pub max_hold: HumanDuration,
    #[serde(default)]
    pub on_max_hold: OnMaxHold,
    /// Minimum samples per version per step before any gate may pass.
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
    /// Canary weights in percent, increasing; a final 100 (implied if absent) is the promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_weights: Option<Vec<f64>>,
    /// Linear schedule: `stepWeight`, 2×`stepWeight`, … up to `maxWeight`, then promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_weight: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_weight: Option<f64>,
    /// Family-wise bound on the probability that the statistical gates fail a canary that is
    /// as good as the baseline, over the whole rollout. Split evenly among the tests.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Shadow phase before any live traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowPhase>,
    #[serde(default)]
    pub gates: Gates,
}

fn default_interval() -> HumanDuration {
    HumanDuration(30_000)
}
fn default_threshold() -> u32 {
    2
}
fn default_max_hold() -> HumanDuration {
    HumanDuration(30 * 60_000)
}
fn default_min_samples() -> u64 {
    200
}
fn default_alpha() -> f64 {
    0.01
}

impl Default for Analysis {
    fn default() -> Self {
        Analysis {
            interval: default_interval(),
            fast_interval: None,
            threshold: default_threshold(),
            max_hold: default_max_hold(),
            on_max_hold: OnMaxHold::default(),
            min_samples: default_min_samples(),
            step_weights: None,
            step_weight: None,
            max_weight: None,
            alpha: default_alpha(),
            shadow: None,
            gates: Gates::default(),
        }
    }
}

/// What happens when a step stays inconclusive for `maxHold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnMaxHold {
    /// Roll back to the baseline.
    #[default]
    Rollback,
    /// Keep holding and send an `alert` notification every `maxHold`.
    Alert,
}

/// Shadow phase: the canary gets mirrored traffic only (weight 0) until agreement is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShadowPhase {
    /// Minimum time in the shadow phase.
    pub duration: HumanDuration,
    /// Minimum compared responses before the phase can pass.
    #[serde(default = "default_min_comparisons")]
    pub min_comparisons: u64,
    /// Agreement floor; `gates.shadowAgreement.min` overrides it.
    #[serde(default = "default_min_agreement")]
    pub min_agreement: f64,
}

fn default_min_comparisons() -> u64 {
    500
}
fn default_min_agreement() -> f64 {
    0.98
}

/// The gates judged at every interval. `errorRate` is on unless set to `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gates {
    #[serde(default = "default_error_gate")]
    pub error_rate: Option<ErrorRateGate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyGate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftGate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_agreement: Option<ShadowAgreementGate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom: Vec<CustomGate>,
}

fn default_error_gate() -> Option<ErrorRateGate> {
    Some(ErrorRateGate::default())
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            error_rate: default_error_gate(),
            latency: None,
            drift: None,
            shadow_agreement: None,
            custom: Vec::new(),
        }
    }
}

/// Error rate (5xx + local replies + resets over responses), canary against baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErrorRateGate {
    /// Absolute ceiling on the canary's error rate (0–1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Ceiling on canary rate / baseline rate (e.g. 2 = at most twice the baseline's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_relative: Option<f64>,
    /// This gate's share of the false-rollback budget (defaults to an even split of `alpha`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Judge at every `fastInterval` and roll back at once on a breach.
    #[serde(default = "yes")]
    pub fast_track: bool,
}

fn yes() -> bool {
    true
}

impl Default for ErrorRateGate {
    fn default() -> Self {
        ErrorRateGate {
            max: None,
            max_relative: Some(2.0),
            alpha: None,
            fast_track: true,
        }
    }
}

/// Latency percentiles from the plugin's duration histograms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LatencyGate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50: Option<PercentileGate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95: Option<PercentileGate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99: Option<PercentileGate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Also judge the share of canary requests over each limit at every `fastInterval` with
    /// a sequential test, and roll back at once when it proves a breach.
    #[serde(default = "yes")]
    pub fast_track: bool,
}

impl LatencyGate {
    /// The configured percentiles as (label, quantile, gate).
    pub fn percentiles(&self) -> Vec<(&'static str, f64, &PercentileGate)> {
        [
            ("p50", 0.5, &self.p50),
            ("p95", 0.95, &self.p95),
            ("p99", 0.99, &self.p99),
        ]
        .into_iter()
        .filter_map(|(l, q, g)| g.as_ref().map(|g| (l, q, g)))
        .collect()
    }
}

/// Limits on one latency percentile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PercentileGate {
    /// SLO ceiling in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
    /// Ceiling on canary / baseline (e.g. 1.2 = at most 20% slower).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_regression: Option<f64>,
}

/// Prediction drift between the canary's and the baseline's score histograms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DriftGate {
    #[serde(default)]
    pub metric: DriftMetric,
    /// Ceiling on the divergence (PSI: 0.1 small, 0.25 large; JS in bits, 0–1).
    pub max: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Also judge the divergence at every `fastInterval` once the canary's scores have grown
    /// by half since the last such look, and roll back at once when it is significant.
    #[serde(default = "yes")]
    pub fast_track: bool,
}

/// Divergence used by the drift gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DriftMetric {
    /// Population stability index.
    #[default]
    Psi,
    /// Jensen-Shannon divergence in bits.
    Js,
}

/// Floor on the shadow agreement rate (canary as the shadow target).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShadowAgreementGate {
    pub min: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
}

/// A business KPI from a Prometheus query (one scalar), with a floor and/or a ceiling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomGate {
    pub name: String,
    /// PromQL returning one value; `$canary`, `$baseline`, `$service` and `$interval` are
    /// substituted by the source.
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// The statistical tests a spec configures, each with its share of the false-fail budget.
#[derive(Debug, Clone, PartialEq)]
pub struct AlphaBudget {
    pub error_absolute: f64,
    pub error_relative: f64,
    /// Per percentile label (`p95`): (SLO test, regression test), judged at each interval.
    pub latency: BTreeMap<String, (f64, f64)>,
    /// Per percentile label: the fast-track sequential tests' shares (half of each latency
    /// test's budget when its fast track is on, the other half staying with `latency`).
    pub latency_fast: BTreeMap<String, (f64, f64)>,
    pub drift: f64,
    /// The drift fast track's share (half the drift budget when on).
    pub drift_fast: f64,
    pub shadow: f64,
}

impl RolloutSpec {
    /// Splits `alpha` evenly among the configured statistical tests; a gate's own `alpha`
    /// replaces its share (and is split among its tests).
    pub fn alpha_budget(&self) -> AlphaBudget {
        let g = &self.spec.analysis.gates;
        let mut count = 0usize;
        if let Some(e) = &g.error_rate {
            count += usize::from(e.max.is_some()) + usize::from(e.max_relative.is_some());
        }
        if let Some(l) = &g.latency {
            for (_, _, p) in l.percentiles() {
                count += usize::from(p.max_ms.is_some()) + usize::from(p.max_regression.is_some());
            }
        }
        if g.drift.is_some() {
            count += 1;
        }
        if self.spec.analysis.shadow.is_some() {
            count += 1;
        }
        let share = self.spec.analysis.alpha / count.max(1) as f64;
        let error = g.error_rate.as_ref();
        let error_tests = error.map_or(1, |e| {
            usize::from(e.max.is_some()) + usize::from(e.max_relative.is_some())
        });
        let error_share = error
            .and_then(|e| e.alpha)
            .map_or(share, |a| a / error_tests.max(1) as f64);
        let mut latency = BTreeMap::new();
        let mut latency_fast = BTreeMap::new();
        let fast_on = self.spec.analysis.fast_interval.is_some();
        if let Some(l) = &g.latency {
            let tests: usize = l
                .percentiles()
                .iter()
                .map(|(_, _, p)| {
                    usize::from(p.max_ms.is_some()) + usize::from(p.max_regression.is_some())
                })
                .sum();
            let each = l.alpha.map_or(share, |a| a / tests.max(1) as f64);
            let fast = l.fast_track && fast_on;
            let regular = if fast { each / 2.0 } else { each };
            for (label, _, _) in l.percentiles() {
                latency.insert(label.to_string(), (regular, regular));
                if fast {
                    latency_fast.insert(label.to_string(), (each / 2.0, each / 2.0));
                }
            }
        }
        let drift = g.drift.as_ref().and_then(|d| d.alpha).unwrap_or(share);
        let drift_fast = if g.drift.as_ref().is_some_and(|d| d.fast_track && fast_on) {
            drift / 2.0
        } else {
            0.0
        };
        AlphaBudget {
            error_absolute: error_share,
            error_relative: error_share,
            latency,
            latency_fast,
            drift: drift - drift_fast,
            drift_fast,
            shadow: g
                .shadow_agreement
                .as_ref()
                .and_then(|s| s.alpha)
                .unwrap_or(share),
        }
    }
}
