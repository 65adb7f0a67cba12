//! The plugin configuration: the JSON users write (`PluginConfig`) and the immutable,
//! validated form the filter runs on (`Compiled`). The rollout driver writes configs with
//! these same types, so there is one source of truth for the schema.

mod read;

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::cidr::Cidr;
use crate::hash::fnv1a64;
use crate::matcher::{Matcher, Source};
pub use crate::units::{percent_to_bps, BUCKETS};

pub const DEFAULT_ROUTING_HEADER: &str = "x-aviary-version";
pub const DEFAULT_STAMP_HEADER: &str = "x-aviary-served-by";
pub const DEFAULT_SHADOW_HEADER: &str = "x-aviary-shadow";
pub const DEFAULT_SHADOW_AUTHORITY_SUFFIX: &str = "-shadow";
const MAX_VERSIONS: usize = 64;
const MAX_RULES: usize = 4096;
const MAX_NAME_LEN: usize = 63;

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
    /// Downstream source addresses allowed to use it (CIDR). Required, non-empty.
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
    #[serde(default = "default_shadow_timeout")]
    pub timeout_ms: u32,
    #[serde(default = "default_body_limit")]
    pub max_body_bytes: u32,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    #[serde(default = "default_shadow_header")]
    pub mark_header: String,
    #[serde(default = "default_shadow_suffix")]
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
const MAX_FLUSH_INTERVAL_MS: u32 = 10_000;

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

/// A configuration error, naming the field (as a JSON path) and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "invalid config: {}", self.message)
        } else {
            write!(f, "invalid config at `{}`: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

impl PluginConfig {
    /// Parses JSON, rejecting unknown fields, with the failing field's path in the error.
    pub fn from_json(bytes: &[u8]) -> Result<PluginConfig, ConfigError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| ConfigError::new("", format!("not valid JSON: {e}")))?;
        Self::from_value(&v)
    }

    /// Reads a config from a JSON value (e.g. Istio's `pluginConfig` converted from YAML).
    pub fn from_value(v: &Value) -> Result<PluginConfig, ConfigError> {
        read::plugin_config(v)
    }

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

    /// Validates and compiles; `digest` identifies the raw bytes it came from.
    pub fn compile(&self, digest: u64) -> Result<Compiled, ConfigError> {
        compile(self, digest)
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl<'de> serde::Deserialize<'de> for PluginConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        PluginConfig::from_value(&v).map_err(serde::de::Error::custom)
    }
}

/// Digest of a raw configuration: FNV-1a 64 of its bytes, as logged and exported by the plugin.
pub fn digest(raw: &[u8]) -> u64 {
    fnv1a64(raw)
}

/// Parses and compiles raw JSON, as the plugin does in `on_configure`.
pub fn parse_and_compile(raw: &[u8]) -> Result<Compiled, ConfigError> {
    PluginConfig::from_json(raw)?.compile(digest(raw))
}

/// The validated, immutable config the filter runs on. Shared by all HTTP contexts of a VM.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub service: String,
    pub routing_header: String,
    pub stamp_header: Option<String>,
    /// Conditions a request must meet to be handled at all (`match`).
    pub scope: Vec<Condition>,
    pub versions: Vec<CompiledVersion>,
    /// `upper[i]` is the exclusive upper bucket bound of version i's range; see `routing`.
    pub layout: Vec<(u32, u32)>,
    pub sticky: Option<StickyConfig>,
    pub rules: Vec<CompiledRule>,
    pub override_: Option<CompiledOverride>,
    pub kill_switch: Option<usize>,
    pub shadow: Option<CompiledShadow>,
    pub scores: Option<CompiledScores>,
    pub metrics: CompiledMetrics,
    pub digest: u64,
    /// True if any rule or key needs the request's headers.
    pub needs_headers: bool,
}

#[derive(Debug, Clone)]
pub struct CompiledVersion {
    pub name: String,
    pub route_value: String,
    pub weight_bps: u32,
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub name: String,
    pub conditions: Vec<Condition>,
    pub version: usize,
    pub share_bps: u32,
    /// Seed of the rule's own share hash, so a rule's share is independent of the weights.
    pub seed: u32,
}

#[derive(Debug, Clone)]
pub struct Condition {
    pub source: Source,
    pub matcher: Matcher,
}

#[derive(Debug, Clone)]
pub struct CompiledOverride {
    pub header: String,
    pub trusted: Vec<Cidr>,
}

#[derive(Debug, Clone)]
pub struct CompiledShadow {
    pub targets: Vec<ShadowTarget>,
    pub share_bps: u32,
    pub conditions: Vec<Condition>,
    /// Indices of the segment rules whose conditions select what is mirrored (any of them).
    pub rules: Vec<usize>,
    pub timeout_ms: u32,
    pub max_body_bytes: u32,
    pub max_in_flight: u32,
    pub mark_header: String,
    pub authority_suffix: String,
    pub compare: Option<CompareConfig>,
    pub seed: u32,
    /// `Some(header per target)` when Envoy sends the copies (`via: envoy`).
    pub envoy_mirror_headers: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct CompiledMetrics {
    pub latency_bounds_us: Vec<u64>,
    /// The `le` label of each bound.
    pub latency_labels: Vec<String>,
    pub flush_interval_ms: u32,
}

#[derive(Debug, Clone)]
pub struct CompiledScores {
    pub pointer: String,
    pub bounds: Vec<f64>,
    pub max_body_bytes: u32,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

const PSEUDO_HEADERS: [&str; 4] = [":authority", ":method", ":path", ":scheme"];

fn valid_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b)
        })
}

fn valid_header_value(s: &str) -> bool {
    s.len() <= 8192 && s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

fn check_header_name(field: String, name: &str) -> Result<(), ConfigError> {
    if valid_header_name(name) {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("`{name}` is not a valid header name; use lowercase letters, digits and `-`"),
        ))
    }
}

fn check_json_pointer(field: String, p: &str) -> Result<(), ConfigError> {
    if p.is_empty() || p.starts_with('/') {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!(
                "`{p}` is not a JSON pointer; it must start with `/`, e.g. `/prediction/score`"
            ),
        ))
    }
}

fn check_share(field: String, share: u32) -> Result<u32, ConfigError> {
    if share <= BUCKETS {
        Ok(share)
    } else {
        Err(ConfigError::new(
            field,
            format!("{share} is out of range; a share is in basis points, 0 to 10000"),
        ))
    }
}

fn compile(cfg: &PluginConfig, digest: u64) -> Result<Compiled, ConfigError> {
    if !valid_name(&cfg.service) {
        return Err(ConfigError::new(
            "service",
            "must be 1-63 characters of letters, digits, `-` or `_`",
        ));
    }
    check_header_name("routingHeader".into(), &cfg.routing_header)?;
    if !cfg.stamp_header.is_empty() {
        check_header_name("stampHeader".into(), &cfg.stamp_header)?;
    }
    if cfg.versions.len() < 2 {
        return Err(ConfigError::new(
            "versions",
            "list at least two versions: the baseline first, then the candidates",
        ));
    }
    if cfg.versions.len() > MAX_VERSIONS {
        return Err(ConfigError::new(
            "versions",
            format!("at most {MAX_VERSIONS} versions are supported"),
        ));
    }
    let mut versions = Vec::with_capacity(cfg.versions.len());
    let mut total: u64 = 0;
    for (i, v) in cfg.versions.iter().enumerate() {
        let at = |f: &str| format!("versions[{i}].{f}");
        if !valid_name(&v.name) {
            return Err(ConfigError::new(
                at("name"),
                format!(
                    "`{}` is not a valid version name; use 1-63 letters, digits, `-` or `_`",
                    v.name
                ),
            ));
        }
        if cfg.versions[..i].iter().any(|o| o.name == v.name) {
            return Err(ConfigError::new(
                at("name"),
                format!("version `{}` is listed twice", v.name),
            ));
        }
        let weight = match (v.weight, v.percent) {
            (Some(w), None) => {
                if w > BUCKETS {
                    return Err(ConfigError::new(
                        at("weight"),
                        format!("{w} is out of range; weights are basis points, 0 to 10000"),
                    ));
                }
                w
            }
            (None, Some(p)) => percent_to_bps(p).ok_or_else(|| {
                ConfigError::new(
                    at("percent"),
                    "not a percentage from 0 to 100 with at most two decimals".to_string(),
                )
            })?,
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    at("weight"),
                    "give either `weight` (basis points) or `percent`, not both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::new(
                    at("weight"),
                    "missing; give `weight` in basis points (0-10000) or `percent`",
                ))
            }
        };
        total += u64::from(weight);
        let route_value = v.route_value.clone().unwrap_or_else(|| v.name.clone());
        if route_value.is_empty() || !valid_header_value(&route_value) {
            return Err(ConfigError::new(
                at("routeValue"),
                "must be a non-empty printable ASCII header value",
            ));
        }
        let headers = |map: &BTreeMap<String, String>, f: &str| {
            map.iter()
                .map(|(k, val)| {
                    check_header_name(format!("versions[{i}].{f}.{k}"), k)?;
                    if k.starts_with(':') || !valid_header_value(val) {
                        return Err(ConfigError::new(
                            format!("versions[{i}].{f}.{k}"),
                            "must be a printable ASCII header value",
                        ));
                    }
                    Ok((k.clone(), val.clone()))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        versions.push(CompiledVersion {
            name: v.name.clone(),
            route_value,
            weight_bps: weight,
            request_headers: headers(&v.request_headers, "requestHeaders")?,
            response_headers: headers(&v.response_headers, "responseHeaders")?,
        });
    }
    if total != u64::from(BUCKETS) {
        return Err(ConfigError::new(
            "versions",
            format!(
                "weights add up to {total} basis points; they must add up to exactly 10000 (100%)"
            ),
        ));
    }
    let version_of = |field: String, name: &str| {
        cfg.version_index(name).ok_or_else(|| {
            let known: Vec<&str> = cfg.versions.iter().map(|v| v.name.as_str()).collect();
            ConfigError::new(
                field,
                format!(
                    "`{name}` is not a configured version; use one of: {}",
                    known.join(", ")
                ),
            )
        })
    };

    let mut needs_headers = false;
    if let Some(sticky) = &cfg.sticky {
        if sticky.keys.is_empty() {
            return Err(ConfigError::new(
                "sticky.keys",
                "list at least one key source, e.g. {\"header\": \"x-user-id\"}",
            ));
        }
        for (k, key) in sticky.keys.iter().enumerate() {
            let field = format!("sticky.keys[{k}]");
            match (&key.header, &key.cookie, &key.query) {
                (Some(h), None, None) => check_header_name(format!("{field}.header"), h)?,
                (None, Some(c), None) | (None, None, Some(c)) if !c.is_empty() => {}
                _ => {
                    return Err(ConfigError::new(
                        field,
                        "give exactly one of `header`, `cookie` or `query`, non-empty",
                    ))
                }
            }
        }
        needs_headers = true;
    }

    if cfg.rules.len() > MAX_RULES {
        return Err(ConfigError::new(
            "rules",
            format!("at most {MAX_RULES} rules are supported"),
        ));
    }
    let mut rules = Vec::with_capacity(cfg.rules.len());
    for (r, rule) in cfg.rules.iter().enumerate() {
        let at = |f: &str| format!("rules[{r}].{f}");
        if rule.name.is_empty() {
            return Err(ConfigError::new(
                at("name"),
                "give the rule a name; it appears in logs",
            ));
        }
        if rule.conditions.is_empty() {
            return Err(ConfigError::new(
                at("match"),
                "list at least one condition; to send everyone to a version, use weights or killSwitch",
            ));
        }
        let conditions = compile_conditions(&rule.conditions, &at("match"))?;
        needs_headers = true;
        rules.push(CompiledRule {
            name: rule.name.clone(),
            conditions,
            version: version_of(at("version"), &rule.version)?,
            share_bps: check_share(at("share"), rule.share.unwrap_or(BUCKETS))?,
            seed: sticky_seed(cfg) ^ 0x9e37_79b9_u32.wrapping_mul(r as u32 + 1),
        });
    }

    let override_ = match &cfg.override_ {
        None => None,
        Some(o) => {
            check_header_name("override.header".into(), &o.header)?;
            if o.header == cfg.routing_header {
                return Err(ConfigError::new(
                    "override.header",
                    "must differ from routingHeader, which clients may never set",
                ));
            }
            if o.trusted_cidrs.is_empty() {
                return Err(ConfigError::new(
                    "override.trustedCidrs",
                    "list the source ranges allowed to force a version, e.g. [\"10.0.0.0/8\"]",
                ));
            }
            let trusted = o
                .trusted_cidrs
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    Cidr::parse(c).ok_or_else(|| {
                        ConfigError::new(
                            format!("override.trustedCidrs[{i}]"),
                            format!("`{c}` is not a CIDR such as 10.0.0.0/8 or ::1/128"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            needs_headers = true;
            Some(CompiledOverride {
                header: o.header.clone(),
                trusted,
            })
        }
    };

    let kill_switch = match &cfg.kill_switch {
        None => None,
        Some(name) => Some(version_of("killSwitch".into(), name)?),
    };

    let shadow = match &cfg.shadow {
        None => None,
        Some(s) => Some(compile_shadow(cfg, s)?),
    };
    if shadow
        .as_ref()
        .is_some_and(|s| !s.conditions.is_empty() || !s.rules.is_empty())
    {
        needs_headers = true;
    }

    let scores = match &cfg.scores {
        None => None,
        Some(sc) => {
            check_json_pointer("scores.pointer".into(), &sc.pointer)?;
            check_bounds("scores.bounds", &sc.bounds, "[0.1, 0.2, ..., 1.0]")?;
            Some(CompiledScores {
                pointer: sc.pointer.clone(),
                bounds: sc.bounds.clone(),
                max_body_bytes: sc.max_body_bytes,
            })
        }
    };

    let metrics = compile_metrics(cfg.metrics.as_ref())?;
    let scope = compile_conditions(&cfg.scope, "match")?;
    needs_headers |= !scope.is_empty();

    Ok(Compiled {
        service: cfg.service.clone(),
        routing_header: cfg.routing_header.clone(),
        stamp_header: (!cfg.stamp_header.is_empty()).then(|| cfg.stamp_header.clone()),
        scope,
        layout: layout(&versions),
        versions,
        sticky: cfg.sticky.clone(),
        rules,
        override_,
        kill_switch,
        shadow,
        scores,
        metrics,
        digest,
        needs_headers,
    })
}

/// Histogram or bin bounds: 1 to 64, finite and strictly increasing.
fn check_bounds(field: &str, bounds: &[f64], example: &str) -> Result<(), ConfigError> {
    if bounds.is_empty() || bounds.len() > 64 {
        return Err(ConfigError::new(
            field,
            format!("list 1 to 64 upper bounds, e.g. {example}"),
        ));
    }
    if let Some(i) = bounds.iter().position(|b| !b.is_finite()) {
        return Err(ConfigError::new(
            format!("{field}[{i}]"),
            "bounds must be finite; the +Inf bin is implied",
        ));
    }
    for (i, w) in bounds.windows(2).enumerate() {
        if w[0].partial_cmp(&w[1]) != Some(std::cmp::Ordering::Less) {
            return Err(ConfigError::new(
                format!("{field}[{}]", i + 1),
                "bounds must be strictly increasing",
            ));
        }
    }
    Ok(())
}

fn compile_metrics(m: Option<&MetricsConfig>) -> Result<CompiledMetrics, ConfigError> {
    let field = "metrics.latencyBucketsMs";
    let bounds = m
        .and_then(|m| m.latency_buckets_ms.clone())
        .unwrap_or_else(|| DEFAULT_LATENCY_BUCKETS_MS.to_vec());
    check_bounds(field, &bounds, "[1, 5, 10, 50, 100, 500]")?;
    let mut latency_bounds_us = Vec::with_capacity(bounds.len());
    for (i, b) in bounds.iter().enumerate() {
        if !(0.001..=3_600_000.0).contains(b) {
            return Err(ConfigError::new(
                format!("{field}[{i}]"),
                "a bound must be from 0.001 (1 µs) to 3600000 (one hour)",
            ));
        }
        let us = (b * 1000.0).round() as u64;
        if latency_bounds_us.last().is_some_and(|p| *p >= us) {
            return Err(ConfigError::new(
                format!("{field}[{i}]"),
                "bounds must differ by at least 0.001 ms (the histogram counts microseconds)",
            ));
        }
        latency_bounds_us.push(us);
    }
    let latency_labels = latency_bounds_us
        .iter()
        .map(|us| crate::units::fmt_decimal(*us as f64 / 1000.0))
        .collect();
    let flush_interval_ms = m
        .and_then(|m| m.flush_interval_ms)
        .unwrap_or(DEFAULT_FLUSH_INTERVAL_MS);
    if !(1..=MAX_FLUSH_INTERVAL_MS).contains(&flush_interval_ms) {
        return Err(ConfigError::new(
            "metrics.flushIntervalMs",
            format!("{flush_interval_ms} is out of range; use 1 to {MAX_FLUSH_INTERVAL_MS} (milliseconds)"),
        ));
    }
    Ok(CompiledMetrics {
        latency_bounds_us,
        latency_labels,
        flush_interval_ms,
    })
}

fn sticky_seed(cfg: &PluginConfig) -> u32 {
    cfg.sticky.as_ref().map_or(0, |s| s.seed)
}

fn compile_shadow(cfg: &PluginConfig, s: &ShadowConfig) -> Result<CompiledShadow, ConfigError> {
    if s.targets.is_empty() {
        return Err(ConfigError::new(
            "shadow.targets",
            "list at least one {\"version\", \"cluster\"} to mirror to",
        ));
    }
    for (i, t) in s.targets.iter().enumerate() {
        if !valid_name(&t.version) {
            return Err(ConfigError::new(
                format!("shadow.targets[{i}].version"),
                "use 1-63 letters, digits, `-` or `_`",
            ));
        }
        if t.cluster.is_empty() {
            return Err(ConfigError::new(
                format!("shadow.targets[{i}].cluster"),
                "name the Envoy cluster that serves the shadow version",
            ));
        }
    }
    check_header_name("shadow.markHeader".into(), &s.mark_header)?;
    if !valid_header_value(&s.authority_suffix) {
        return Err(ConfigError::new(
            "shadow.authoritySuffix",
            "must be printable ASCII",
        ));
    }
    if s.timeout_ms == 0 || s.timeout_ms > 60_000 {
        return Err(ConfigError::new(
            "shadow.timeoutMs",
            "must be 1 to 60000 milliseconds",
        ));
    }
    if s.max_in_flight == 0 || s.max_in_flight > 100_000 {
        return Err(ConfigError::new(
            "shadow.maxInFlight",
            "must be 1 to 100000",
        ));
    }
    if s.max_body_bytes > 16 * 1024 * 1024 {
        return Err(ConfigError::new(
            "shadow.maxBodyBytes",
            "must be at most 16 MiB",
        ));
    }
    if s.via == ShadowVia::Envoy && s.compare.is_some() {
        return Err(ConfigError::new(
            "shadow.compare",
            "comparing answers needs the plugin to send the copies; remove `compare` or set `via` to \"plugin\"",
        ));
    }
    let envoy_mirror_headers = match s.via {
        ShadowVia::Plugin => None,
        ShadowVia::Envoy => Some(
            s.targets
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let h = t.mirror_header();
                    check_header_name(format!("shadow.targets[{i}].mirrorHeader"), &h)?;
                    Ok(h)
                })
                .collect::<Result<Vec<String>, ConfigError>>()?,
        ),
    };
    if let Some(c) = &s.compare {
        if c.label_pointer.is_none() && c.score_pointer.is_none() {
            return Err(ConfigError::new(
                "shadow.compare",
                "give `labelPointer`, `scorePointer` or both, e.g. \"/prediction/label\"",
            ));
        }
        if let Some(p) = &c.label_pointer {
            check_json_pointer("shadow.compare.labelPointer".into(), p)?;
        }
        if let Some(p) = &c.score_pointer {
            check_json_pointer("shadow.compare.scorePointer".into(), p)?;
        }
        if c.max_body_bytes > 16 * 1024 * 1024 {
            return Err(ConfigError::new(
                "shadow.compare.maxBodyBytes",
                "must be at most 16 MiB",
            ));
        }
    }
    Ok(CompiledShadow {
        targets: s.targets.clone(),
        share_bps: check_share("shadow.share".into(), s.share)?,
        conditions: compile_conditions(&s.conditions, "shadow.match")?,
        rules: s
            .rules
            .iter()
            .enumerate()
            .map(|(i, name)| {
                cfg.rules
                    .iter()
                    .position(|r| &r.name == name)
                    .ok_or_else(|| {
                        let known: Vec<&str> = cfg.rules.iter().map(|r| r.name.as_str()).collect();
                        ConfigError::new(
                            format!("shadow.rules[{i}]"),
                            format!("`{name}` names no rule; use one of: {}", known.join(", ")),
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
        timeout_ms: s.timeout_ms,
        max_body_bytes: s.max_body_bytes,
        max_in_flight: s.max_in_flight,
        mark_header: s.mark_header.clone(),
        authority_suffix: s.authority_suffix.clone(),
        compare: s.compare.clone(),
        seed: sticky_seed(cfg) ^ 0x5bd1_e995,
        envoy_mirror_headers,
    })
}

fn compile_conditions(
    list: &[ConditionConfig],
    field: &str,
) -> Result<Vec<Condition>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(c, cond)| compile_condition(cond, &format!("{field}[{c}]")))
        .collect()
}

fn compile_condition(c: &ConditionConfig, field: &str) -> Result<Condition, ConfigError> {
    let source = match (&c.header, &c.cookie, &c.query, &c.path_prefix) {
        (Some(h), None, None, None) => {
            // Conditions may read the request's pseudo-headers too, e.g. `:authority`.
            if !PSEUDO_HEADERS.contains(&h.as_str()) {
                check_header_name(format!("{field}.header"), h)?;
            }
            Source::Header(h.clone())
        }
        (None, Some(k), None, None) if !k.is_empty() => Source::Cookie(k.clone()),
        (None, None, Some(q), None) if !q.is_empty() => Source::Query(q.clone()),
        (None, None, None, Some(p)) => {
            if !p.starts_with('/') {
                return Err(ConfigError::new(
                    format!("{field}.pathPrefix"),
                    "must start with `/`",
                ));
            }
            if c.exact.is_some() || c.prefix.is_some() || c.present.is_some() || c.one_of.is_some()
            {
                return Err(ConfigError::new(
                    field,
                    "`pathPrefix` is a whole condition; drop `exact`, `prefix`, `present` and `oneOf`",
                ));
            }
            return Ok(Condition {
                source: Source::Path,
                matcher: Matcher::Prefix(p.clone()),
            });
        }
        _ => {
            return Err(ConfigError::new(
                field,
                "give exactly one of `header`, `cookie`, `query` or `pathPrefix`",
            ))
        }
    };
    let matcher =
        match (&c.exact, &c.prefix, c.present, &c.one_of) {
            (Some(v), None, None, None) => Matcher::Exact(v.clone()),
            (None, Some(v), None, None) => Matcher::Prefix(v.clone()),
            (None, None, Some(p), None) => Matcher::Present(p),
            (None, None, None, Some(list)) if !list.is_empty() => Matcher::OneOf(list.clone()),
            _ => return Err(ConfigError::new(
                field,
                "give exactly one of `exact`, `prefix`, `present` or `oneOf` (a non-empty list)",
            )),
        };
    Ok(Condition { source, matcher })
}

/// `(lo, hi)` bucket range of each version, in config order. The baseline (the first version)
/// owns the bottom of the range; the others are stacked from the top in the order listed, so
/// the buckets of any candidate are `[10000 - Σw, 10000)` and a ramp only ever adds buckets.
pub fn layout(versions: &[CompiledVersion]) -> Vec<(u32, u32)> {
    let mut out = vec![(0, 0); versions.len()];
    let mut top = BUCKETS;
    for (i, v) in versions.iter().enumerate().skip(1) {
        out[i] = (top - v.weight_bps, top);
        top -= v.weight_bps;
    }
    out[0] = (0, top);
    out
}
