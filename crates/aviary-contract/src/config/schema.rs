//! The plugin configuration as users write it: one JSON document, the same as Envoy's
//! `StringValue` and Istio's `pluginConfig`. The rollout driver writes configs with these types.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::units::percent_to_bps;

pub const DEFAULT_ROUTING_HEADER: &str = "x-aviary-version";
pub const DEFAULT_STAMP_HEADER: &str = "x-aviary-served-by";
pub const DEFAULT_SHADOW_HEADER: &str = "x-aviary-shadow";
pub const DEFAULT_SHADOW_AUTHORITY_SUFFIX: &str = "-shadow";

/// The whole plugin configuration, as JSON in Envoy's `StringValue` or Istio's `pluginConfig`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginConfig {
    #[serde(default = "default_service")]
    pub service: String,
    pub versions: Vec<VersionConfig>,
    #[serde(default = "default_routing_header")]
    pub routing_header: String,
    #[serde(default = "default_stamp_header")]
    pub stamp_header: String,
    /// Only requests matching all of these are Aviary's; others pass untouched and uncounted
    /// (e.g. `:authority`, where one proxy carries several services).
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<ConditionConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyConfig>,
    /// Peers trusted to make identity claims: rules with `trustedOnly` apply only to them, and
    /// the override takes its trusted ranges from here unless it lists its own (CIDR). Checked
    /// against Envoy's `source.address`, the connection's peer only with `use_remote_address`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_cidrs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleConfig>,
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub override_: Option<OverrideConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_switch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<ScoresConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
}

pub(crate) fn default_service() -> String {
    "default".into()
}
pub(crate) fn default_routing_header() -> String {
    DEFAULT_ROUTING_HEADER.into()
}
pub(crate) fn default_stamp_header() -> String {
    DEFAULT_STAMP_HEADER.into()
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VersionConfig {
    pub name: String,
    /// Share of traffic in basis points (0–10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// The same share as a percentage with at most two decimals (e.g. 12.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Value written to the routing header; defaults to `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_value: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub request_headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub response_headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StickyConfig {
    /// Where the user/session key comes from, tried in order.
    pub keys: Vec<KeySource>,
    #[serde(default)]
    pub seed: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeySource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// All conditions must hold.
    #[serde(rename = "match")]
    pub conditions: Vec<ConditionConfig>,
    pub version: String,
    /// Share of matching requests the rule applies to, in basis points (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<u32>,
    /// The rule applies only to requests from a peer in the top-level `trustedCidrs`, for
    /// rules that force a version on a header any client could send.
    #[serde(default, skip_serializing_if = "is_false")]
    pub trusted_only: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConditionConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OverrideConfig {
    /// Request header naming the version to force.
    pub header: String,
    /// Downstream source addresses allowed to use it (CIDR); empty means the top-level
    /// `trustedCidrs`, one of which must be given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_cidrs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShadowConfig {
    pub targets: Vec<ShadowTarget>,
    /// Share of requests mirrored, in basis points.
    pub share: u32,
    /// Only mirror requests that match all of these.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<ConditionConfig>,
    /// Only mirror requests matching the conditions of one of these segment rules (by name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    // These five are written only when not at their defaults: with `via: "envoy"` the reader
    // rejects them even at their defaults, so writing them would make the driver's own configs
    // (and any `to_json` of a config that was read) unreadable.
    #[serde(
        default = "default_shadow_timeout",
        skip_serializing_if = "is_default_shadow_timeout"
    )]
    pub timeout_ms: u32,
    #[serde(
        default = "default_body_limit",
        skip_serializing_if = "is_default_body_limit"
    )]
    pub max_body_bytes: u32,
    #[serde(
        default = "default_max_in_flight",
        skip_serializing_if = "is_default_max_in_flight"
    )]
    pub max_in_flight: u32,
    #[serde(
        default = "default_shadow_header",
        skip_serializing_if = "is_default_shadow_header"
    )]
    pub mark_header: String,
    #[serde(
        default = "default_shadow_suffix",
        skip_serializing_if = "is_default_shadow_suffix"
    )]
    pub authority_suffix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<CompareConfig>,
    /// Who sends the copies: the plugin (needed to compare answers) or Envoy's own mirror.
    #[serde(default, skip_serializing_if = "ShadowVia::is_plugin")]
    pub via: ShadowVia,
}

/// `plugin`: the plugin sends each copy with `dispatch_http_call` and compares the answers.
/// `envoy`: the plugin only decides; it names the target's cluster in a request header that a
/// route's `request_mirror_policies[].cluster_header` reads, and Envoy sends the copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShadowVia {
    #[default]
    Plugin,
    Envoy,
}

impl ShadowVia {
    pub fn is_plugin(&self) -> bool {
        *self == ShadowVia::Plugin
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShadowTarget {
    /// Version name used in metric labels.
    pub version: String,
    /// Envoy cluster the copy is sent to.
    pub cluster: String,
    /// With `via: envoy`, the request header that carries `cluster` to the mirror policy;
    /// default `x-aviary-mirror-<version>` (lowercase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_header: Option<String>,
}

impl ShadowTarget {
    pub fn mirror_header(&self) -> String {
        self.mirror_header
            .clone()
            .unwrap_or_else(|| format!("x-aviary-mirror-{}", self.version.to_ascii_lowercase()))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompareConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_pointer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_pointer: Option<String>,
    #[serde(default = "default_body_limit")]
    pub max_body_bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScoresConfig {
    pub pointer: String,
    /// Upper bounds of the score bins, strictly increasing; a final +Inf bin is implied.
    pub bounds: Vec<f64>,
    #[serde(default = "default_body_limit")]
    pub max_body_bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsConfig {
    /// Upper bounds of the latency histogram's buckets in milliseconds; `+Inf` is implied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_buckets_ms: Option<Vec<f64>>,
    /// How often counts gathered in the VM are sent to Envoy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_interval_ms: Option<u32>,
}

/// Envoy's default histogram bounds below 30 s, with finer steps where model latencies live.
pub const DEFAULT_LATENCY_BUCKETS_MS: [f64; 26] = [
    0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0,
    300.0, 500.0, 750.0, 1000.0, 1500.0, 2000.0, 3000.0, 5000.0, 10000.0, 30000.0,
];
pub const DEFAULT_FLUSH_INTERVAL_MS: u32 = 50;

pub(crate) fn default_shadow_timeout() -> u32 {
    1000
}
pub(crate) fn default_body_limit() -> u32 {
    64 * 1024
}
pub(crate) fn default_max_in_flight() -> u32 {
    256
}
pub(crate) fn default_shadow_header() -> String {
    DEFAULT_SHADOW_HEADER.into()
}
pub(crate) fn default_shadow_suffix() -> String {
    DEFAULT_SHADOW_AUTHORITY_SUFFIX.into()
}
fn is_default_shadow_timeout(v: &u32) -> bool {
    *v == default_shadow_timeout()
}
fn is_default_body_limit(v: &u32) -> bool {
    *v == default_body_limit()
}
fn is_default_max_in_flight(v: &u32) -> bool {
    *v == default_max_in_flight()
}
fn is_default_shadow_header(v: &str) -> bool {
    v == DEFAULT_SHADOW_HEADER
}
fn is_default_shadow_suffix(v: &str) -> bool {
    v == DEFAULT_SHADOW_AUTHORITY_SUFFIX
}

impl PluginConfig {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Index of the first version with this name.
    pub fn version_index(&self, name: &str) -> Option<usize> {
        self.versions.iter().position(|v| v.name == name)
    }

    /// The version's weight in basis points, whichever form it was written in.
    pub fn weight_bps(&self, index: usize) -> Option<u32> {
        let v = self.versions.get(index)?;
        match (v.weight, v.percent) {
            (Some(w), None) => Some(w),
            (None, Some(p)) => percent_to_bps(p),
            _ => None,
        }
    }

    /// Sets every version's weight (basis points, same order as `versions`), in the `weight` form.
    pub fn set_weights(&mut self, weights: &[u32]) {
        for (v, w) in self.versions.iter_mut().zip(weights) {
            v.weight = Some(*w);
            v.percent = None;
        }
    }
}
