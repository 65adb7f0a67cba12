//! The rollout declaration: one YAML document (`kind: Rollout`) naming the baseline and canary,
//! where the plugin config is written, where metrics come from, the schedule, the gates and
//! the webhooks. Field names follow Flagger's `Canary.spec.analysis` where they fit
//! (`interval`, `threshold`, `stepWeights`, `stepWeight`, `maxWeight`, `webhooks`).
//!
//! Parsing rejects unknown fields; [`RolloutSpec::validate`] then reports every semantic
//! problem at once, each with its field path.

use std::collections::BTreeMap;

use aviary_contract::config::PluginConfig;
use aviary_contract::units::{percent_to_bps, BUCKETS};
use serde::{Deserialize, Serialize};

use crate::error::{Error, SpecError};

mod analysis;
mod duration;
pub mod istio;
mod validate;
mod webhook;

pub use analysis::{
    AlphaBudget, Analysis, CustomGate, DriftGate, DriftMetric, ErrorRateGate, Gates, LatencyGate,
    OnMaxHold, PercentileGate, ShadowAgreementGate, ShadowPhase,
};
pub use duration::HumanDuration;
pub use istio::IstioWasmPlugin;
pub use webhook::{Event, HeaderValue, SecretRef, WebhookFormat, WebhookSpec};

/// Where in a spec the plugin config sits, as serde_path_to_error names it.
const PLUGIN_CONFIG_PATH: &str = "spec.config.pluginConfig";

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
            // The plugin's own reader rejected its config: ask it again, on the same JSON, for
            // the error as a struct (serde only carries its text), and locate its field.
            let plugin_error = (path == PLUGIN_CONFIG_PATH)
                .then(|| tree.pointer("/spec/config/pluginConfig"))
                .flatten()
                .and_then(|v| PluginConfig::from_value(v).err());
            let error = match plugin_error {
                Some(c) => SpecError::plugin(&path, c),
                None if path == "." => SpecError::new("", e.inner().to_string()),
                None => SpecError::new(path, e.inner().to_string()),
            };
            Error::from(vec![error])
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
}
