//! The setups under test: Envoy configs (routes and HTTP filters) and Aviary plugin configs.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use aviary_sim::{EnvoyBuilder, EnvoyProcess};
use serde_json::{json, Value};

/// Both upstream bodies carry the same label, so shadow comparisons agree.
pub const PRIMARY_BODY: &str = r#"{"prediction":{"label":"cat","score":0.73}}"#;
pub const SHADOW_BODY: &str = r#"{"prediction":{"label":"cat","score":0.71}}"#;

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const STRING_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    NoFilter,
    NativeSplit,
    Noop,
    AviaryPercent,
    AviarySplitNoStamp,
    AviarySticky,
    NativeMirror,
    AviaryShadow,
    AviaryShadowCompare,
    AviaryShadowEnvoy,
    AviaryScores,
    ProbeMetrics,
    ProbeMinimal,
    ProbeSplit,
    ProbeSticky,
    ProbeLookups,
    ProbeMirror,
    ProbeMirrorNow,
    AviarySplitAlt,
}

impl Variant {
    pub const ALL: [Variant; 11] = [
        Variant::NoFilter,
        Variant::NativeSplit,
        Variant::Noop,
        Variant::AviaryPercent,
        Variant::AviarySplitNoStamp,
        Variant::AviarySticky,
        Variant::NativeMirror,
        Variant::AviaryShadow,
        Variant::AviaryShadowCompare,
        Variant::AviaryShadowEnvoy,
        Variant::AviaryScores,
    ];

    /// The no-op module as a probe making the host calls named (see crates/aviary-noop): what
    /// each kind of host call costs in this Envoy.
    pub const PROBES: [Variant; 7] = [
        Variant::ProbeMetrics,
        Variant::ProbeMinimal,
        Variant::ProbeSplit,
        Variant::ProbeSticky,
        Variant::ProbeLookups,
        Variant::ProbeMirror,
        Variant::ProbeMirrorNow,
    ];

    /// Pairs measured side by side (see `throughput::Pair`): each pair's first is the
    /// reference. The no-op filter against itself shows the method's noise floor.
    pub const PAIRS: [(Variant, Variant); 13] = [
        (Variant::Noop, Variant::Noop),
        (Variant::Noop, Variant::AviaryPercent),
        (Variant::Noop, Variant::AviarySplitNoStamp),
        (Variant::Noop, Variant::AviarySticky),
        (Variant::Noop, Variant::ProbeSplit),
        (Variant::Noop, Variant::ProbeMetrics),
        (Variant::Noop, Variant::ProbeMinimal),
        (Variant::ProbeSplit, Variant::ProbeSticky),
        (Variant::ProbeSplit, Variant::ProbeLookups),
        (Variant::NativeMirror, Variant::AviaryShadow),
        (Variant::NativeMirror, Variant::AviaryShadowEnvoy),
        (Variant::NativeMirror, Variant::ProbeMirror),
        (Variant::NativeMirror, Variant::ProbeMirrorNow),
    ];

    /// The variants of the fixed-rate latency runs.
    pub const LATENCY: [Variant; 5] = [
        Variant::NoFilter,
        Variant::NativeSplit,
        Variant::Noop,
        Variant::AviaryPercent,
        Variant::AviarySticky,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Variant::NoFilter => "none",
            Variant::NativeSplit => "native-split",
            Variant::Noop => "noop",
            Variant::AviaryPercent => "aviary-split",
            Variant::AviarySplitNoStamp => "aviary-split-nostamp",
            Variant::AviarySticky => "aviary-sticky",
            Variant::NativeMirror => "native-mirror",
            Variant::AviaryShadow => "aviary-shadow",
            Variant::AviaryShadowCompare => "aviary-shadow-compare",
            Variant::AviaryShadowEnvoy => "aviary-shadow-envoy",
            Variant::AviaryScores => "aviary-scores",
            Variant::ProbeMetrics => "probe-metrics",
            Variant::ProbeMinimal => "probe-minimal",
            Variant::ProbeSplit => "probe-split",
            Variant::ProbeSticky => "probe-sticky",
            Variant::ProbeLookups => "probe-lookups",
            Variant::ProbeMirror => "probe-mirror",
            Variant::ProbeMirrorNow => "probe-mirror-now",
            Variant::AviarySplitAlt => "aviary-split-alt",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::NoFilter => "No filter, plain routing",
            Variant::NativeSplit => "Native weighted_clusters 90/10",
            Variant::Noop => "No-op Rust wasm filter",
            Variant::AviaryPercent => "Aviary percentage split 90/10",
            Variant::AviarySplitNoStamp => "Aviary percentage split 90/10, stamping off",
            Variant::AviarySticky => "Aviary sticky split, 5 rules",
            Variant::NativeMirror => "Native request_mirror_policies 100%",
            Variant::AviaryShadow => "Aviary shadow 100%",
            Variant::AviaryShadowCompare => "Aviary shadow 100% + compare",
            Variant::AviaryShadowEnvoy => "Aviary shadow 100% via Envoy's mirror (`via: envoy`)",
            Variant::AviaryScores => "Aviary split 90/10 + score extraction",
            Variant::ProbeMetrics => {
                "Probe: per-request metric calls before batching: 2 counters, 2 clock reads, 1 histogram"
            }
            Variant::ProbeMinimal => "Probe: routing header, :status read, stamp only",
            Variant::ProbeSplit => "Probe: all host calls of the percentage split",
            Variant::ProbeSticky => "Probe: all host calls of the sticky split",
            Variant::ProbeLookups => "Probe: the split's calls + the 6 headers the sticky config reads, one lookup each",
            Variant::ProbeMirror => "Probe: copy every request to the shadow from the root context on a 5 ms tick (as Aviary)",
            Variant::ProbeMirrorNow => "Probe: the same copy at once from the stream's context",
            Variant::AviarySplitAlt => "Aviary percentage split 90/10, the --alt-wasm build",
        }
    }

    /// The host calls a probe variant makes per request (crates/aviary-noop).
    pub fn probe_ops(self) -> Option<&'static str> {
        match self {
            Variant::ProbeMetrics => Some("count,clock,record"),
            Variant::ProbeMinimal => Some("route,status,stamp"),
            Variant::ProbeSplit => Some("route,clock,status,stamp"),
            Variant::ProbeSticky => Some("headers,route,clock,status,stamp"),
            Variant::ProbeLookups => Some("lookups,route,clock,status,stamp"),
            Variant::ProbeMirror => Some("mirror"),
            Variant::ProbeMirrorNow => Some("mirror-now"),
            _ => None,
        }
    }

    /// Aviary's plugin config for this variant.
    pub fn plugin_config(self) -> Option<Value> {
        match self {
            Variant::AviaryPercent | Variant::AviarySplitAlt => Some(percent_config()),
            Variant::AviarySplitNoStamp => {
                let mut c = percent_config();
                c["stampHeader"] = json!("");
                Some(c)
            }
            Variant::AviarySticky => Some(sticky_config(5)),
            Variant::AviaryShadow => Some(shadow_config(false)),
            Variant::AviaryShadowCompare => Some(shadow_config(true)),
            Variant::AviaryShadowEnvoy => {
                let mut c = shadow_config(false);
                c["shadow"]["via"] = json!("envoy");
                Some(c)
            }
            Variant::AviaryScores => {
                let mut c = percent_config();
                c["scores"] = json!({"pointer": "/prediction/score", "bounds": score_bounds()});
                Some(c)
            }
            _ => None,
        }
    }

    /// The canary's expected share of primary traffic, for the sanity check of each run.
    pub fn canary_share(self) -> f64 {
        match self {
            Variant::NativeSplit
            | Variant::AviaryPercent
            | Variant::AviarySplitAlt
            | Variant::AviarySplitNoStamp
            | Variant::AviarySticky
            | Variant::AviaryScores => 0.10,
            _ => 0.0,
        }
    }

    /// Whether every request should also be copied to the shadow cluster.
    pub fn mirrors(self) -> bool {
        matches!(
            self,
            Variant::NativeMirror
                | Variant::AviaryShadow
                | Variant::AviaryShadowCompare
                | Variant::AviaryShadowEnvoy
                | Variant::ProbeMirror
                | Variant::ProbeMirrorNow
        )
    }

    fn routes(self) -> Value {
        match self {
            Variant::NoFilter | Variant::Noop => {
                json!([{"match": {"prefix": "/"}, "route": {"cluster": "stable"}}])
            }
            Variant::NativeSplit => {
                json!([{"match": {"prefix": "/"}, "route": {"weighted_clusters": {
                "clusters": [{"name": "stable", "weight": 90}, {"name": "canary", "weight": 10}]}}}])
            }
            Variant::NativeMirror => {
                json!([{"match": {"prefix": "/"}, "route": {"cluster": "stable",
                "request_mirror_policies": [{"cluster": "shadow",
                    "runtime_fraction": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}}]}}])
            }
            Variant::AviaryShadowEnvoy => {
                let mut routes = aviary_routes();
                for r in routes.as_array_mut().into_iter().flatten() {
                    r["route"]["request_mirror_policies"] = json!([{
                        "cluster_header": "x-aviary-mirror-canary",
                        "request_headers_mutations": [{"remove": "x-aviary-mirror-canary"}]}]);
                }
                routes
            }
            _ => aviary_routes(),
        }
    }

    fn filters(self, wasms: &Wasms) -> Value {
        match self {
            Variant::NoFilter | Variant::NativeSplit | Variant::NativeMirror => json!([router()]),
            Variant::Noop => json!([wasm_filter("noop", &wasms.noop, None), router()]),
            _ if self.probe_ops().is_some() => {
                json!([wasm_filter("noop", &wasms.noop, self.probe_ops()), router()])
            }
            _ => {
                let plugin = self.plugin_config().map(|c| c.to_string());
                let module = match (self, &wasms.alt) {
                    (Variant::AviarySplitAlt, Some(alt)) => alt,
                    _ => &wasms.aviary,
                };
                json!([wasm_filter("aviary", module, plugin.as_deref()), router()])
            }
        }
    }
}

/// The two modules under test.
#[derive(Debug, Clone)]
pub struct Wasms {
    pub aviary: PathBuf,
    pub noop: PathBuf,
    /// Another build of aviary.wasm, for `aviary-split-alt` (`--alt-wasm`).
    pub alt: Option<PathBuf>,
}

/// The shipped header-match routing: the plugin's routing header picks the canary cluster.
pub fn aviary_routes() -> Value {
    json!([
        {"match": {"prefix": "/", "headers": [{"name": "x-aviary-version", "string_match": {"exact": "canary"}}]},
         "route": {"cluster": "canary"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "stable"}}
    ])
}

pub fn router() -> Value {
    json!({"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}})
}

/// The Wasm filter's typed config, as in envoy/aviary-header-match.yaml.
pub fn wasm_config(name: &str, wasm: &Path, configuration: Option<&str>) -> Value {
    let mut config = json!({
        "name": name,
        "root_id": name,
        "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": wasm.display().to_string()}}},
    });
    if let Some(c) = configuration {
        config["configuration"] = json!({"@type": STRING_TYPE, "value": c});
    }
    json!({"@type": WASM_TYPE, "config": config})
}

fn wasm_filter(name: &str, wasm: &Path, configuration: Option<&str>) -> Value {
    json!({"name": name, "typed_config": wasm_config(name, wasm, configuration)})
}

/// The filter listed through ECDS from a file Envoy watches.
pub fn ecds_filter(path: &Path) -> Value {
    json!({"name": "aviary", "config_discovery": {
        "config_source": {"path_config_source": {"path": path.display().to_string()}},
        "type_urls": [WASM_TYPE]}})
}

pub fn percent_config() -> Value {
    json!({"service": "bench", "versions": [{"name": "stable", "weight": 9000}, {"name": "canary", "weight": 1000}]})
}

/// Sticky split by `x-user-id` behind `rules` segment rules that never match the benchmark's
/// requests, so every request evaluates all of them.
pub fn sticky_config(rules: usize) -> Value {
    let mut c = percent_config();
    c["sticky"] = json!({"keys": [{"header": "x-user-id"}]});
    c["rules"] = Value::Array(non_matching_rules(rules));
    c
}

/// The shadow phase: all live traffic on the baseline, every request mirrored.
fn shadow_config(compare: bool) -> Value {
    let mut shadow =
        json!({"targets": [{"version": "canary", "cluster": "shadow"}], "share": 10000});
    if compare {
        shadow["compare"] =
            json!({"labelPointer": "/prediction/label", "scorePointer": "/prediction/score"});
    }
    json!({"service": "bench",
           "versions": [{"name": "stable", "weight": 10000}, {"name": "canary", "weight": 0}],
           "shadow": shadow})
}

fn score_bounds() -> Vec<f64> {
    (1..=10).map(|i| f64::from(i) / 10.0).collect()
}

/// Segment rules of every matcher kind, none of which matches a benchmark request.
pub fn non_matching_rules(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let (cond, version) = match i % 5 {
                0 => (json!({"header": "x-canary", "exact": format!("always-{i}")}), "canary"),
                1 => (json!({"header": "x-region", "oneOf": [format!("eu-west-{i}"), format!("eu-north-{i}")]}), "stable"),
                2 => (json!({"header": "x-internal-user", "present": true}), "canary"),
                3 => (json!({"cookie": "session", "prefix": format!("beta-{i}")}), "canary"),
                _ => (json!({"pathPrefix": format!("/v2/{i}/")}), "canary"),
            };
            json!({"name": format!("rule-{i}"), "match": [cond], "version": version})
        })
        .collect()
}

/// The stats block of the shipped config, so the bench bootstraps tag metrics the same way.
pub fn stats_config(root: &Path) -> anyhow::Result<String> {
    let path = root.join("envoy/aviary-header-match.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let start = text
        .find("stats_flush_interval:")
        .ok_or_else(|| anyhow!("no stats_flush_interval in {}", path.display()))?;
    let end = text
        .find("static_resources:")
        .ok_or_else(|| anyhow!("no static_resources in {}", path.display()))?;
    Ok(text[start..end].trim_end().to_string())
}

const PROXY_TEMPLATE: &str = include_str!("../envoy/proxy.yaml");
const UPSTREAM_TEMPLATE: &str = include_str!("../envoy/upstream.yaml");

/// Ports of the upstream's listeners.
#[derive(Debug, Clone, Copy)]
pub struct Upstreams {
    pub stable: u16,
    pub canary: u16,
    pub shadow: u16,
}

pub fn start_upstream() -> anyhow::Result<(EnvoyProcess, Upstreams)> {
    let envoy = EnvoyBuilder::new(UPSTREAM_TEMPLATE)
        .var("PRIMARY_BODY", PRIMARY_BODY)
        .var("SHADOW_BODY", SHADOW_BODY)
        .start()
        .context("starting the upstream Envoy")?;
    let ports = Upstreams {
        stable: envoy.listener_port("stable")?,
        canary: envoy.listener_port("canary")?,
        shadow: envoy.listener_port("shadow")?,
    };
    Ok((envoy, ports))
}

/// The Envoy under test with these routes and HTTP filters (JSON is YAML, so both go in as
/// flow-style values).
pub fn proxy_builder(stats: &str, routes: &Value, filters: &Value, up: Upstreams) -> EnvoyBuilder {
    EnvoyBuilder::new(PROXY_TEMPLATE)
        .var("STATS_CONFIG", stats)
        .var("ROUTES", routes)
        .var("HTTP_FILTERS", filters)
        .var("STABLE_PORT", up.stable)
        .var("CANARY_PORT", up.canary)
        .var("SHADOW_PORT", up.shadow)
}

pub fn start_variant(
    v: Variant,
    stats: &str,
    wasms: &Wasms,
    up: Upstreams,
) -> anyhow::Result<EnvoyProcess> {
    proxy_builder(stats, &v.routes(), &v.filters(wasms), up)
        .start()
        .with_context(|| format!("starting Envoy for {}", v.key()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_configs_compile() {
        for v in Variant::ALL {
            if let Some(c) = v.plugin_config() {
                aviary_contract::config::parse_and_compile(c.to_string().as_bytes()).unwrap();
            }
        }
        let c = sticky_config(1000);
        let compiled =
            aviary_contract::config::parse_and_compile(c.to_string().as_bytes()).unwrap();
        assert_eq!(compiled.rules.len(), 1000);
    }
}
