//! The rollout declaration: one YAML document (`kind: Rollout`) naming the baseline and canary,
//! where the plugin config is written, where metrics come from, the schedule, the gates and
//! the webhooks. Field names follow Flagger's `Canary.spec.analysis` where they fit
//! (`interval`, `threshold`, `stepWeights`, `stepWeight`, `maxWeight`, `webhooks`).
//!
//! Parsing rejects unknown fields; [`RolloutSpec::validate`] then reports every semantic
//! problem at once, each with its field path.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use aviary_contract::config::{PluginConfig, BUCKETS};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, SpecError};

pub mod istio;

use istio::TrafficMode;

/// `apiVersion` accepted by this driver.
pub const API_VERSION: &str = "aviary.dev/v1";
/// `kind` accepted by this driver.
pub const KIND: &str = "Rollout";
/// Step weights (percent) used when neither `stepWeights` nor `stepWeight` is given.
pub const DEFAULT_STEP_WEIGHTS: [f64; 6] = [1.0, 5.0, 10.0, 25.0, 50.0, 100.0];

/// A whole rollout document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutSpec {
    /// Must be [`API_VERSION`].
    pub api_version: String,
    /// Must be [`KIND`].
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Rollout,
}

/// Identifies the rollout in reports, notifications and state files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What to roll out, where, and how it is judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rollout {
    /// The `service` label of the plugin's metrics; defaults to `pluginConfig.service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Version name of the current production model (normally the first in `pluginConfig`).
    pub baseline: String,
    /// Version name being rolled out.
    pub canary: String,
    pub config: ConfigTarget,
    pub metrics: MetricsSpec,
    #[serde(default)]
    pub analysis: Analysis,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookSpec>,
    /// Where the driver persists its state; the runner chooses a default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<String>,
    /// Directory for the JSON, Markdown and SVG reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_dir: Option<String>,
}

/// Where the plugin config lives. At least one sink is required; all given sinks are written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigTarget {
    /// An Envoy ECDS (`TypedExtensionConfig`) file watched by Envoy's path config source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecds_file: Option<String>,
    /// Name of the extension config in the ECDS file.
    #[serde(default = "default_filter_name")]
    pub filter_name: String,
    /// Path of the compiled plugin (`aviary.wasm`) referenced from the ECDS file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm_file: Option<String>,
    /// An Istio `WasmPlugin` manifest to rewrite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio_wasm_plugin: Option<IstioWasmPlugin>,
    /// A plain JSON file that receives the plugin config alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_file: Option<String>,
    /// The plugin config the rollout starts from; the driver only changes weights, the kill
    /// switch and the canary's shadow target.
    pub plugin_config: PluginConfig,
}

fn default_filter_name() -> String {
    "aviary".into()
}

/// An Istio `WasmPlugin` resource written to a file (applied by GitOps or `kubectl apply`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioWasmPlugin {
    pub path: String,
    #[serde(default = "default_filter_name")]
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// `spec.url` of the WasmPlugin, e.g. `oci://registry/aviary:1.0`.
    pub image: String,
    /// `spec.selector.matchLabels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// `spec.match[].mode`: `CLIENT` (default: callers' sidecars and gateways, where Istio picks
    /// the subset), `SERVER` or `CLIENT_AND_SERVER`.
    #[serde(default)]
    pub mode: TrafficMode,
}

fn default_namespace() -> String {
    "default".into()
}

/// Where metrics are read from: Envoy admin endpoints (summed) or Prometheus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsSpec {
    /// Envoy admin base URLs, e.g. `http://127.0.0.1:9901`; counters are summed over all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub envoy_admin: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSpec>,
    /// Timeout of one read.
    #[serde(default = "default_metrics_timeout")]
    pub timeout: HumanDuration,
}

fn default_metrics_timeout() -> HumanDuration {
    HumanDuration(2_000)
}

/// A Prometheus server holding the plugin's metrics (and the custom gates' queries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusSpec {
    pub url: String,
    /// Extra label matchers added to every Aviary query, e.g. `{namespace: prod}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

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

/// A webhook called with a JSON POST on the listed events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSpec {
    pub name: String,
    pub url: String,
    /// Events sent to this hook; defaults to every notification (not the confirm gates).
    #[serde(default = "default_events")]
    pub events: Vec<Event>,
    #[serde(default = "default_webhook_timeout")]
    pub timeout: HumanDuration,
    /// Retries after the first attempt.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Extra fields copied into every payload (Flagger's `metadata`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

fn default_events() -> Vec<Event> {
    Event::NOTIFICATIONS.to_vec()
}
fn default_webhook_timeout() -> HumanDuration {
    HumanDuration(5_000)
}
fn default_retries() -> u32 {
    3
}

/// Rollout events, as named in webhook `events` and in notification payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// The rollout started (or the driver resumed it after a restart).
    Start,
    /// The canary moved to a new weight.
    Step,
    /// The canary got all traffic; the rollout succeeded.
    Promote,
    /// Traffic went back to the baseline (gate failure, max hold, or abort).
    Rollback,
    /// Something needs a person: max hold reached with `onMaxHold: alert`, or a breach while
    /// paused.
    Alert,
    Pause,
    Resume,
    /// Gate: must answer yes before each weight increase.
    ConfirmTrafficIncrease,
    /// Gate: must answer yes before the final promotion to 100%.
    ConfirmPromotion,
}

impl Event {
    /// Events that are notifications (fire and forget), as opposed to confirmation gates.
    pub const NOTIFICATIONS: [Event; 7] = [
        Event::Start,
        Event::Step,
        Event::Promote,
        Event::Rollback,
        Event::Alert,
        Event::Pause,
        Event::Resume,
    ];

    /// Whether this event is a confirmation gate.
    pub fn is_confirmation(self) -> bool {
        matches!(
            self,
            Event::ConfirmTrafficIncrease | Event::ConfirmPromotion
        )
    }

    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Start => "start",
            Event::Step => "step",
            Event::Promote => "promote",
            Event::Rollback => "rollback",
            Event::Alert => "alert",
            Event::Pause => "pause",
            Event::Resume => "resume",
            Event::ConfirmTrafficIncrease => "confirm-traffic-increase",
            Event::ConfirmPromotion => "confirm-promotion",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A duration written as `500ms`, `30s`, `1m`, `2h` or combined (`1m30s`); kept in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub u64);

impl HumanDuration {
    /// Milliseconds.
    pub fn ms(self) -> u64 {
        self.0
    }

    /// As a `std::time::Duration`.
    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }

    /// Parses `500ms`, `30s`, `1m30s`, `2h`, `1d`.
    pub fn parse(s: &str) -> Result<HumanDuration, String> {
        let bad = || format!("`{s}` is not a duration; write e.g. 500ms, 30s, 1m, 1m30s or 2h");
        let t = s.trim();
        if t.is_empty() {
            return Err(bad());
        }
        let mut total: u64 = 0;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
            let unit_ms: u64 = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(bad()),
            };
            rest = &rest[unit_len..];
            total = n
                .checked_mul(unit_ms)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(bad)?;
        }
        Ok(HumanDuration(total))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms == 0 {
            return f.write_str("0s");
        }
        if !ms.is_multiple_of(1_000) {
            return write!(f, "{ms}ms");
        }
        let mut s = ms / 1_000;
        let h = s / 3_600;
        s %= 3_600;
        let m = s / 60;
        s %= 60;
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(f64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => HumanDuration::parse(&s).map_err(serde::de::Error::custom),
            Raw::Number(n) => Err(serde::de::Error::custom(format!(
                "`{n}` has no unit; write e.g. \"{n}s\" or \"{n}ms\""
            ))),
        }
    }
}

/// Converts a percentage with at most two decimals to basis points.
pub fn percent_to_bps(p: f64) -> Option<u32> {
    if !p.is_finite() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let bps = (p * 100.0).round();
    ((p * 100.0 - bps).abs() < 1e-6).then_some(bps as u32)
}

/// The statistical tests a spec configures, each with its share of the false-fail budget.
#[derive(Debug, Clone, PartialEq)]
pub struct AlphaBudget {
    pub error_absolute: f64,
    pub error_relative: f64,
    /// Per percentile label (`p95`): (SLO test, regression test).
    pub latency: BTreeMap<String, (f64, f64)>,
    pub drift: f64,
    pub shadow: f64,
}

impl RolloutSpec {
    /// Parses a YAML document. Structural errors (unknown fields, wrong types, bad durations)
    /// come back with their field path; run [`RolloutSpec::validate`] for the semantic checks.
    pub fn from_yaml(text: &str) -> Result<RolloutSpec, Error> {
        // Two stages: YAML syntax errors keep their line and column, and deserialising the
        // tree through serde_path_to_error names the exact field of every type error.
        let tree: serde_json::Value = serde_yaml::from_str(text)
            .map_err(|e| Error::from(vec![SpecError::new("", format!("not valid YAML: {e}"))]))?;
        serde_path_to_error::deserialize::<_, RolloutSpec>(&tree).map_err(|e| {
            let path = e.path().to_string();
            let message = e.inner().to_string();
            Error::from(vec![locate_plugin_error(path, message)])
        })
    }

    /// Parses and validates; the error lists every problem.
    pub fn parse(text: &str) -> Result<RolloutSpec, Error> {
        let spec = RolloutSpec::from_yaml(text)?;
        let errors = spec.validate();
        if errors.is_empty() {
            Ok(spec)
        } else {
            Err(Error::from(errors))
        }
    }

    /// Reads, parses and validates a spec file.
    pub fn load(path: &std::path::Path) -> Result<RolloutSpec, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))?;
        RolloutSpec::parse(&text)
    }

    /// The `service` label of the metrics.
    pub fn service(&self) -> &str {
        self.spec
            .service
            .as_deref()
            .unwrap_or(&self.spec.config.plugin_config.service)
    }

    /// Bake interval in ms.
    pub fn interval_ms(&self) -> u64 {
        self.spec.analysis.interval.ms()
    }

    /// Fast-track interval in ms, when fast-track is on.
    pub fn fast_interval_ms(&self) -> Option<u64> {
        self.spec.analysis.fast_interval.map(HumanDuration::ms)
    }

    /// How often the runner should read metrics and call `step`.
    pub fn poll_interval_ms(&self) -> u64 {
        self.fast_interval_ms()
            .unwrap_or_else(|| self.interval_ms())
            .min(self.interval_ms())
            .max(1)
    }

    /// The step weights in percent as written (before validation removes nothing).
    pub fn step_weights_percent(&self) -> Vec<f64> {
        let a = &self.spec.analysis;
        if let Some(w) = &a.step_weights {
            return w.clone();
        }
        if let Some(step) = a.step_weight {
            let max = a.max_weight.unwrap_or(100.0);
            if step.is_finite() && step > 0.0 && max.is_finite() {
                let mut out = Vec::new();
                let mut i = 1.0;
                while step * i <= max + 1e-9 && out.len() < 1000 {
                    out.push(((step * i) * 100.0).round() / 100.0);
                    i += 1.0;
                }
                return out;
            }
            return Vec::new();
        }
        DEFAULT_STEP_WEIGHTS.to_vec()
    }

    /// The baked steps as canary basis points of the whole traffic, increasing, excluding the
    /// final promotion (100%). Each is capped at the pool the baseline and canary share.
    pub fn schedule_bps(&self) -> Vec<u32> {
        let pool = self.pool_bps();
        let mut out: Vec<u32> = Vec::new();
        for p in self.step_weights_percent() {
            if let Some(b) = percent_to_bps(p) {
                let b = b.min(pool);
                if b > 0 && b < pool && out.last().is_none_or(|&l| b > l) {
                    out.push(b);
                }
            }
        }
        out
    }

    /// Basis points the baseline and canary share; other versions keep their weights.
    pub fn pool_bps(&self) -> u32 {
        let pc = &self.spec.config.plugin_config;
        let w = |name: &str| {
            pc.version_index(name)
                .and_then(|i| pc.weight_bps(i))
                .unwrap_or(0)
        };
        let others: u32 = (0..pc.versions.len())
            .filter(|&i| {
                let n = &pc.versions[i].name;
                *n != self.spec.baseline && *n != self.spec.canary
            })
            .map(|i| pc.weight_bps(i).unwrap_or(0))
            .sum();
        let pool = w(&self.spec.baseline) + w(&self.spec.canary);
        if pool == 0 {
            BUCKETS.saturating_sub(others)
        } else {
            pool
        }
    }

    /// Whether any webhook listens for `event`.
    pub fn has_webhook(&self, event: Event) -> bool {
        self.spec.webhooks.iter().any(|w| w.events.contains(&event))
    }

    /// The shadow agreement floor used by the shadow phase.
    pub fn shadow_floor(&self) -> Option<f64> {
        let s = self.spec.analysis.shadow.as_ref()?;
        Some(
            self.spec
                .analysis
                .gates
                .shadow_agreement
                .as_ref()
                .map_or(s.min_agreement, |g| g.min),
        )
    }

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
        if let Some(l) = &g.latency {
            let tests: usize = l
                .percentiles()
                .iter()
                .map(|(_, _, p)| {
                    usize::from(p.max_ms.is_some()) + usize::from(p.max_regression.is_some())
                })
                .sum();
            let each = l.alpha.map_or(share, |a| a / tests.max(1) as f64);
            for (label, _, _) in l.percentiles() {
                latency.insert(label.to_string(), (each, each));
            }
        }
        AlphaBudget {
            error_absolute: error_share,
            error_relative: error_share,
            latency,
            drift: g.drift.as_ref().and_then(|d| d.alpha).unwrap_or(share),
            shadow: g
                .shadow_agreement
                .as_ref()
                .and_then(|s| s.alpha)
                .unwrap_or(share),
        }
    }

    /// The plugin config to write: the canary at `canary_bps` (of the pool), the baseline the
    /// rest; on `rollback` the kill switch pins everything to the baseline; the canary stays a
    /// shadow target only while `shadow` is true.
    pub fn render_config(&self, canary_bps: u32, rollback: bool, shadow: bool) -> PluginConfig {
        let mut pc = self.spec.config.plugin_config.clone();
        let pool = self.pool_bps();
        let canary = canary_bps.min(pool);
        let weights: Vec<u32> = (0..pc.versions.len())
            .map(|i| {
                let name = &pc.versions[i].name;
                if *name == self.spec.canary {
                    if rollback {
                        0
                    } else {
                        canary
                    }
                } else if *name == self.spec.baseline {
                    if rollback {
                        pool
                    } else {
                        pool - canary
                    }
                } else {
                    pc.weight_bps(i).unwrap_or(0)
                }
            })
            .collect();
        pc.set_weights(&weights);
        pc.kill_switch = rollback.then(|| self.spec.baseline.clone());
        if !shadow || rollback {
            if let Some(s) = &mut pc.shadow {
                s.targets.retain(|t| t.version != self.spec.canary);
                if s.targets.is_empty() {
                    pc.shadow = None;
                }
            }
        }
        pc
    }

    /// Every semantic problem, each with its field path. Empty means valid.
    pub fn validate(&self) -> Vec<SpecError> {
        let mut errs = Vec::new();
        let mut err = |path: &str, msg: String| errs.push(SpecError::new(path, msg));
        if self.api_version != API_VERSION {
            err(
                "apiVersion",
                format!("must be `{API_VERSION}`, found `{}`", self.api_version),
            );
        }
        if self.kind != KIND {
            err("kind", format!("must be `{KIND}`, found `{}`", self.kind));
        }
        if !valid_name(&self.metadata.name) {
            err(
                "metadata.name",
                "must be 1-63 characters of letters, digits, `-`, `_` or `.`".into(),
            );
        }
        let s = &self.spec;
        if let Some(svc) = &s.service {
            if *svc != s.config.plugin_config.service {
                err(
                    "spec.service",
                    format!(
                        "`{svc}` differs from pluginConfig.service `{}`; the plugin labels its metrics with the latter",
                        s.config.plugin_config.service
                    ),
                );
            }
        }
        self.validate_config(&mut err);
        if s.baseline == s.canary {
            err("spec.canary", "must differ from spec.baseline".into());
        }
        self.validate_metrics(&mut err);
        self.validate_analysis(&mut err);
        self.validate_webhooks(&mut err);
        errs
    }

    fn validate_config(&self, err: &mut impl FnMut(&str, String)) {
        let s = &self.spec;
        let c = &s.config;
        if c.ecds_file.is_none() && c.istio_wasm_plugin.is_none() && c.json_file.is_none() {
            err(
                "spec.config",
                "name at least one sink: `ecdsFile`, `istioWasmPlugin` or `jsonFile`".into(),
            );
        }
        if c.ecds_file.is_some() && c.wasm_file.is_none() {
            err(
                "spec.config.wasmFile",
                "required with `ecdsFile`: the path of aviary.wasm the ECDS config loads".into(),
            );
        }
        if c.filter_name.is_empty() {
            err("spec.config.filterName", "must not be empty".into());
        }
        if let Some(i) = &c.istio_wasm_plugin {
            if i.path.is_empty() {
                err(
                    "spec.config.istioWasmPlugin.path",
                    "must not be empty".into(),
                );
            }
            if !valid_name(&i.name) {
                err(
                    "spec.config.istioWasmPlugin.name",
                    "must be a Kubernetes resource name".into(),
                );
            }
            if !valid_name(&i.namespace) {
                err(
                    "spec.config.istioWasmPlugin.namespace",
                    "must be a Kubernetes namespace name".into(),
                );
            }
            if i.image.is_empty() {
                err(
                    "spec.config.istioWasmPlugin.image",
                    "give the plugin's image, e.g. oci://registry/aviary:1.0".into(),
                );
            }
        }
        let pc = &c.plugin_config;
        let at = "spec.config.pluginConfig";
        if let Err(e) = pc.compile(0) {
            let path = if e.field.is_empty() {
                at.to_string()
            } else {
                format!("{at}.{}", e.field)
            };
            err(&path, e.message);
        }
        if pc.kill_switch.is_some() {
            err(
                &format!("{at}.killSwitch"),
                "must be unset at the start of a rollout; the driver sets it on rollback".into(),
            );
        }
        let names: Vec<&str> = pc.versions.iter().map(|v| v.name.as_str()).collect();
        for (field, name) in [("baseline", &s.baseline), ("canary", &s.canary)] {
            if !names.contains(&name.as_str()) {
                err(
                    &format!("spec.{field}"),
                    format!(
                        "`{name}` is not a version in pluginConfig.versions ({})",
                        names.join(", ")
                    ),
                );
            }
        }
        if names.first().is_some_and(|f| *f != s.baseline) && names.contains(&s.baseline.as_str()) {
            err(
                "spec.baseline",
                format!(
                    "the baseline must be the first version in pluginConfig.versions (found `{}` first)",
                    names[0]
                ),
            );
        }
        // An empty list is reported by the schedule checks; here the list only held 100%.
        let listed = s
            .analysis
            .step_weights
            .as_ref()
            .is_none_or(|w| !w.is_empty());
        if self.schedule_bps().is_empty() && self.pool_bps() > 0 && listed {
            err(
                "spec.analysis.stepWeights",
                "the schedule has no step below 100%; list at least one weight to bake".into(),
            );
        }
        if s.analysis.shadow.is_some() {
            let has_target = pc
                .shadow
                .as_ref()
                .is_some_and(|x| x.targets.iter().any(|t| t.version == s.canary));
            if !has_target {
                err(
                    "spec.analysis.shadow",
                    format!(
                        "the shadow phase needs pluginConfig.shadow.targets to include version `{}` (with compare set)",
                        s.canary
                    ),
                );
            } else if pc.shadow.as_ref().is_some_and(|x| x.compare.is_none()) {
                err(
                    &format!("{at}.shadow.compare"),
                    "the shadow phase judges agreement; set compare.labelPointer or scorePointer"
                        .into(),
                );
            }
        }
        if s.analysis.gates.drift.is_some() && pc.scores.is_none() {
            err(
                "spec.analysis.gates.drift",
                "needs pluginConfig.scores so the plugin exports score histograms".into(),
            );
        }
    }

    fn validate_metrics(&self, err: &mut impl FnMut(&str, String)) {
        let m = &self.spec.metrics;
        // With both, Aviary's metrics come live from the admin endpoints and only the custom
        // KPI queries go to Prometheus, so fast-track checks never wait for a scrape.
        if m.envoy_admin.is_empty() && m.prometheus.is_none() {
            err(
                "spec.metrics",
                "give `envoyAdmin` (list of admin URLs) or `prometheus` (url)".into(),
            );
        }
        for (i, u) in m.envoy_admin.iter().enumerate() {
            if !is_http_url(u) {
                err(
                    &format!("spec.metrics.envoyAdmin[{i}]"),
                    format!("`{u}` is not an http(s) URL such as http://127.0.0.1:9901"),
                );
            }
        }
        if let Some(p) = &m.prometheus {
            if !is_http_url(&p.url) {
                err(
                    "spec.metrics.prometheus.url",
                    format!("`{}` is not an http(s) URL", p.url),
                );
            }
        }
        if m.timeout.ms() == 0 {
            err("spec.metrics.timeout", "must be positive".into());
        }
    }

    fn validate_analysis(&self, err: &mut impl FnMut(&str, String)) {
        let a = &self.spec.analysis;
        let at = |f: &str| format!("spec.analysis.{f}");
        if a.interval.ms() < 100 {
            err(&at("interval"), "must be at least 100ms".into());
        }
        if let Some(f) = a.fast_interval {
            if f.ms() < 100 {
                err(&at("fastInterval"), "must be at least 100ms".into());
            } else if f > a.interval {
                err(
                    &at("fastInterval"),
                    format!("must not exceed interval ({})", a.interval),
                );
            }
        }
        if a.threshold == 0 {
            err(&at("threshold"), "must be at least 1".into());
        }
        if a.max_hold < a.interval {
            err(
                &at("maxHold"),
                format!("must be at least one interval ({})", a.interval),
            );
        }
        if a.min_samples == 0 {
            err(
                &at("minSamples"),
                "must be at least 1; the driver never promotes without data".into(),
            );
        }
        if !(a.alpha > 0.0 && a.alpha < 0.5) {
            err(&at("alpha"), "must be between 0 and 0.5 (e.g. 0.01)".into());
        }
        match (&a.step_weights, a.step_weight, a.max_weight) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => err(
                &at("stepWeights"),
                "give either `stepWeights` or `stepWeight` (+ `maxWeight`), not both".into(),
            ),
            (Some(ws), None, None) => {
                if ws.is_empty() {
                    err(&at("stepWeights"), "list at least one weight".into());
                }
                let mut prev: Option<f64> = None;
                for (i, &w) in ws.iter().enumerate() {
                    let p = format!("spec.analysis.stepWeights[{i}]");
                    if percent_to_bps(w).is_none() || w <= 0.0 {
                        err(
                            &p,
                            format!(
                                "{w} is not a percentage in (0, 100] with at most two decimals"
                            ),
                        );
                    } else if prev.is_some_and(|p| w <= p) {
                        err(&p, "weights must increase".into());
                    }
                    prev = Some(w);
                }
            }
            (None, None, Some(_)) => {
                err(&at("maxWeight"), "only meaningful with `stepWeight`".into())
            }
            (None, Some(step), max) => {
                if percent_to_bps(step).is_none() || step <= 0.0 {
                    err(
                        &at("stepWeight"),
                        format!("{step} is not a percentage in (0, 100] with at most two decimals"),
                    );
                }
                if let Some(m) = max {
                    if percent_to_bps(m).is_none() || m <= 0.0 {
                        err(
                            &at("maxWeight"),
                            format!(
                                "{m} is not a percentage in (0, 100] with at most two decimals"
                            ),
                        );
                    } else if m < step {
                        err(&at("maxWeight"), "must be at least stepWeight".into());
                    }
                }
            }
            (None, None, None) => {}
        }
        if let Some(sh) = &a.shadow {
            if sh.duration.ms() == 0 {
                err(&at("shadow.duration"), "must be positive".into());
            }
            if sh.min_comparisons == 0 {
                err(&at("shadow.minComparisons"), "must be at least 1".into());
            }
            if !(sh.min_agreement > 0.0 && sh.min_agreement <= 1.0) {
                err(&at("shadow.minAgreement"), "must be in (0, 1]".into());
            }
        }
        self.validate_gates(err);
    }

    fn validate_gates(&self, err: &mut impl FnMut(&str, String)) {
        let g = &self.spec.analysis.gates;
        let at = |f: &str| format!("spec.analysis.gates.{f}");
        let alpha_ok = |a: Option<f64>| a.is_none_or(|a| a > 0.0 && a < 0.5);
        if let Some(e) = &g.error_rate {
            if e.max.is_none() && e.max_relative.is_none() {
                err(
                    &at("errorRate"),
                    "give `max` (absolute ceiling) and/or `maxRelative`; set `errorRate: null` to disable".into(),
                );
            }
            if let Some(m) = e.max {
                if !(m > 0.0 && m < 1.0) {
                    err(
                        &at("errorRate.max"),
                        "must be a rate in (0, 1), e.g. 0.01".into(),
                    );
                }
            }
            if let Some(r) = e.max_relative {
                if !(r.is_finite() && r >= 1.0) {
                    err(
                        &at("errorRate.maxRelative"),
                        "must be a ratio of at least 1 (canary rate / baseline rate), e.g. 2"
                            .into(),
                    );
                }
            }
            if !alpha_ok(e.alpha) {
                err(&at("errorRate.alpha"), "must be in (0, 0.5)".into());
            }
            if e.fast_track && self.spec.analysis.fast_interval.is_none() {
                err(
                    &at("errorRate.fastTrack"),
                    "needs spec.analysis.fastInterval (e.g. 1s), or set fastTrack: false".into(),
                );
            }
        }
        if let Some(l) = &g.latency {
            if l.percentiles().is_empty() {
                err(&at("latency"), "give at least one of p50, p95, p99".into());
            }
            for (label, _, p) in l.percentiles() {
                let base = format!("latency.{label}");
                if p.max_ms.is_none() && p.max_regression.is_none() {
                    err(&at(&base), "give `maxMs` and/or `maxRegression`".into());
                }
                if let Some(m) = p.max_ms {
                    if !(m.is_finite() && m > 0.0) {
                        err(&at(&format!("{base}.maxMs")), "must be positive".into());
                    }
                }
                if let Some(r) = p.max_regression {
                    if !(r.is_finite() && r >= 1.0) {
                        err(
                            &at(&format!("{base}.maxRegression")),
                            "must be a ratio of at least 1 (canary / baseline), e.g. 1.2".into(),
                        );
                    }
                }
            }
            if !alpha_ok(l.alpha) {
                err(&at("latency.alpha"), "must be in (0, 0.5)".into());
            }
        }
        if let Some(d) = &g.drift {
            let ok = match d.metric {
                DriftMetric::Psi => d.max.is_finite() && d.max > 0.0,
                DriftMetric::Js => d.max > 0.0 && d.max <= 1.0,
            };
            if !ok {
                err(
                    &at("drift.max"),
                    "must be positive (PSI, e.g. 0.2) or in (0, 1] (JS in bits, e.g. 0.1)".into(),
                );
            }
            if !alpha_ok(d.alpha) {
                err(&at("drift.alpha"), "must be in (0, 0.5)".into());
            }
        }
        if let Some(s) = &g.shadow_agreement {
            if !(s.min > 0.0 && s.min <= 1.0) {
                err(&at("shadowAgreement.min"), "must be in (0, 1]".into());
            }
            if self.spec.analysis.shadow.is_none() {
                err(
                    &at("shadowAgreement"),
                    "judged in the shadow phase; add spec.analysis.shadow".into(),
                );
            }
            if !alpha_ok(s.alpha) {
                err(&at("shadowAgreement.alpha"), "must be in (0, 0.5)".into());
            }
        }
        let mut seen = BTreeSet::new();
        for (i, c) in g.custom.iter().enumerate() {
            let p = |f: &str| format!("spec.analysis.gates.custom[{i}].{f}");
            if !valid_name(&c.name) {
                err(
                    &p("name"),
                    "must be 1-63 letters, digits, `-`, `_` or `.`".into(),
                );
            } else if !seen.insert(c.name.as_str()) {
                err(&p("name"), format!("`{}` is used twice", c.name));
            }
            if c.query.trim().is_empty() {
                err(&p("query"), "must be a PromQL expression".into());
            }
            if c.min.is_none() && c.max.is_none() {
                err(
                    &format!("spec.analysis.gates.custom[{i}]"),
                    "give `min` and/or `max`".into(),
                );
            }
            if let (Some(lo), Some(hi)) = (c.min, c.max) {
                if lo > hi {
                    err(&p("min"), "must not exceed max".into());
                }
            }
            if self.spec.metrics.prometheus.is_none() {
                err(
                    &p("query"),
                    "custom queries need spec.metrics.prometheus (Envoy admin cannot run PromQL)"
                        .into(),
                );
            }
        }
    }

    fn validate_webhooks(&self, err: &mut impl FnMut(&str, String)) {
        let mut seen = BTreeSet::new();
        for (i, w) in self.spec.webhooks.iter().enumerate() {
            let p = |f: &str| format!("spec.webhooks[{i}].{f}");
            if w.name.is_empty() {
                err(&p("name"), "must not be empty".into());
            } else if !seen.insert(w.name.as_str()) {
                err(&p("name"), format!("`{}` is used twice", w.name));
            }
            if !is_http_url(&w.url) {
                err(&p("url"), format!("`{}` is not an http(s) URL", w.url));
            }
            if w.events.is_empty() {
                err(&p("events"), "list at least one event".into());
            }
            if w.timeout.ms() == 0 {
                err(&p("timeout"), "must be positive".into());
            }
            if w.retries > 10 {
                err(&p("retries"), "at most 10".into());
            }
        }
    }
}

/// Moves the field named by a plugin `ConfigError` ("invalid config at `versions[1].x`: …")
/// into the path.
fn locate_plugin_error(path: String, message: String) -> SpecError {
    let path = if path == "." { String::new() } else { path };
    if let Some(rest) = message.strip_prefix("invalid config at `") {
        if let Some((field, msg)) = rest.split_once("`: ") {
            return SpecError::new(format!("{path}.{field}"), msg);
        }
    }
    if let Some(msg) = message.strip_prefix("invalid config: ") {
        return SpecError::new(path, msg);
    }
    SpecError::new(path, message)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn is_http_url(u: &str) -> bool {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
}
