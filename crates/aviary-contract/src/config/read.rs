//! Reads `PluginConfig` from a JSON value by hand rather than with derived deserializers:
//! errors carry the exact field path (`versions[1].weight`), unknown fields are named, and the
//! `.wasm` stays small (one generic JSON parser instead of a visitor per struct).

mod object;

use serde_json::Value;

use crate::config::error::ConfigError;
use crate::config::schema::{
    default_body_limit, default_max_in_flight, default_routing_header, default_service,
    default_shadow_header, default_shadow_suffix, default_shadow_timeout, default_stamp_header,
    CompareConfig, ConditionConfig, KeySource, MetricsConfig, OverrideConfig, PluginConfig,
    RuleConfig, ScoresConfig, ShadowConfig, ShadowTarget, ShadowVia, StickyConfig, VersionConfig,
};
use object::{numbers, obj, R};

impl PluginConfig {
    /// Parses JSON, rejecting unknown fields, with the failing field's path in the error.
    pub fn from_json(bytes: &[u8]) -> Result<PluginConfig, ConfigError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| ConfigError::new("", format!("not valid JSON: {e}")))?;
        Self::from_value(&v)
    }

    /// Reads a config from a JSON value (e.g. Istio's `pluginConfig` converted from YAML).
    pub fn from_value(v: &Value) -> Result<PluginConfig, ConfigError> {
        plugin_config(v)
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl<'de> serde::Deserialize<'de> for PluginConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        PluginConfig::from_value(&v).map_err(serde::de::Error::custom)
    }
}

fn plugin_config(v: &Value) -> R<PluginConfig> {
    let o = obj(
        v,
        String::new(),
        &[
            "service",
            "versions",
            "routingHeader",
            "stampHeader",
            "match",
            "sticky",
            "trustedCidrs",
            "rules",
            "override",
            "killSwitch",
            "shadow",
            "scores",
            "metrics",
        ],
    )?;
    if o.get("versions").is_none() {
        return Err(ConfigError::new(
            "versions",
            "missing; list the versions, baseline first, e.g. [{\"name\":\"stable\",\"weight\":10000},{\"name\":\"canary\",\"weight\":0}]",
        ));
    }
    Ok(PluginConfig {
        service: o.opt_str("service")?.unwrap_or_else(default_service),
        versions: o.each("versions", version)?,
        routing_header: o
            .opt_str("routingHeader")?
            .unwrap_or_else(default_routing_header),
        stamp_header: o
            .opt_str("stampHeader")?
            .unwrap_or_else(default_stamp_header),
        sticky: o.nested("sticky", sticky)?,
        scope: o.each("match", condition)?,
        trusted_cidrs: o.strings("trustedCidrs")?.unwrap_or_default(),
        rules: o.each("rules", rule)?,
        override_: o.nested("override", override_)?,
        kill_switch: o.opt_str("killSwitch")?,
        shadow: o.nested("shadow", shadow)?,
        scores: o.nested("scores", scores)?,
        metrics: o.nested("metrics", metrics)?,
    })
}

fn version(v: &Value, path: String) -> R<VersionConfig> {
    let o = obj(
        v,
        path,
        &[
            "name",
            "weight",
            "percent",
            "routeValue",
            "requestHeaders",
            "responseHeaders",
        ],
    )?;
    Ok(VersionConfig {
        name: o.str("name")?,
        weight: o.opt_u32("weight")?,
        percent: o.opt_f64("percent")?,
        route_value: o.opt_str("routeValue")?,
        request_headers: o.str_map("requestHeaders")?,
        response_headers: o.str_map("responseHeaders")?,
    })
}

fn sticky(v: &Value, path: String) -> R<StickyConfig> {
    let o = obj(v, path, &["keys", "seed"])?;
    Ok(StickyConfig {
        keys: o.each("keys", key_source)?,
        seed: o.opt_u32("seed")?.unwrap_or(0),
    })
}

fn key_source(v: &Value, path: String) -> R<KeySource> {
    let o = obj(v, path, &["header", "cookie", "query"])?;
    Ok(KeySource {
        header: o.opt_str("header")?,
        cookie: o.opt_str("cookie")?,
        query: o.opt_str("query")?,
    })
}

fn rule(v: &Value, path: String) -> R<RuleConfig> {
    let o = obj(
        v,
        path,
        &["name", "match", "version", "share", "trustedOnly"],
    )?;
    Ok(RuleConfig {
        name: o.str("name")?,
        conditions: o.each("match", condition)?,
        version: o.str("version")?,
        share: o.opt_u32("share")?,
        trusted_only: o.opt_bool("trustedOnly")?.unwrap_or(false),
    })
}

fn condition(v: &Value, path: String) -> R<ConditionConfig> {
    let o = obj(
        v,
        path,
        &[
            "header",
            "cookie",
            "query",
            "pathPrefix",
            "exact",
            "prefix",
            "present",
            "oneOf",
        ],
    )?;
    Ok(ConditionConfig {
        header: o.opt_str("header")?,
        cookie: o.opt_str("cookie")?,
        query: o.opt_str("query")?,
        path_prefix: o.opt_str("pathPrefix")?,
        exact: o.opt_str("exact")?,
        prefix: o.opt_str("prefix")?,
        present: o.opt_bool("present")?,
        one_of: o.strings("oneOf")?,
    })
}

fn override_(v: &Value, path: String) -> R<OverrideConfig> {
    let o = obj(v, path, &["header", "trustedCidrs"])?;
    Ok(OverrideConfig {
        header: o.str("header")?,
        trusted_cidrs: o.strings("trustedCidrs")?.unwrap_or_default(),
    })
}

fn shadow(v: &Value, path: String) -> R<ShadowConfig> {
    let o = obj(
        v,
        path,
        &[
            "targets",
            "share",
            "match",
            "rules",
            "timeoutMs",
            "maxBodyBytes",
            "maxInFlight",
            "markHeader",
            "authoritySuffix",
            "compare",
            "via",
        ],
    )?;
    let via = match o.opt_str("via")?.as_deref() {
        None | Some("plugin") => ShadowVia::Plugin,
        Some("envoy") => ShadowVia::Envoy,
        Some(other) => {
            return Err(ConfigError::new(
                o.at("via"),
                format!("unknown value {other:?}; use \"plugin\" (copies sent and compared by the plugin) or \"envoy\" (Envoy's request_mirror_policies send them)"),
            ))
        }
    };
    if via == ShadowVia::Envoy {
        // Envoy's mirror takes these from the route, so accepting them would mislead.
        for key in [
            "timeoutMs",
            "maxBodyBytes",
            "maxInFlight",
            "markHeader",
            "authoritySuffix",
        ] {
            if o.get(key).is_some() {
                return Err(ConfigError::new(
                    o.at(key),
                    "does not apply with `via: \"envoy\"`: Envoy's mirror uses the route's timeout, copies the whole body and adds its own `-shadow` suffix; remove it",
                ));
            }
        }
    }
    Ok(ShadowConfig {
        via,
        targets: o.each("targets", |v, path| {
            let t = obj(v, path, &["version", "cluster", "mirrorHeader"])?;
            let mirror_header = t.opt_str("mirrorHeader")?;
            if mirror_header.is_some() && via == ShadowVia::Plugin {
                return Err(ConfigError::new(
                    t.at("mirrorHeader"),
                    "only applies with `via: \"envoy\"`; remove it or set `shadow.via`",
                ));
            }
            Ok(ShadowTarget {
                version: t.str("version")?,
                cluster: t.str("cluster")?,
                mirror_header,
            })
        })?,
        share: o.opt_u32("share")?.ok_or_else(|| {
            ConfigError::new(
                o.at("share"),
                "missing; give the mirrored share in basis points (10000 = all)",
            )
        })?,
        conditions: o.each("match", condition)?,
        rules: o.strings("rules")?.unwrap_or_default(),
        timeout_ms: o
            .opt_u32("timeoutMs")?
            .unwrap_or_else(default_shadow_timeout),
        max_body_bytes: o
            .opt_u32("maxBodyBytes")?
            .unwrap_or_else(default_body_limit),
        max_in_flight: o
            .opt_u32("maxInFlight")?
            .unwrap_or_else(default_max_in_flight),
        mark_header: o
            .opt_str("markHeader")?
            .unwrap_or_else(default_shadow_header),
        authority_suffix: o
            .opt_str("authoritySuffix")?
            .unwrap_or_else(default_shadow_suffix),
        compare: o.nested("compare", |v, path| {
            let c = obj(v, path, &["labelPointer", "scorePointer", "maxBodyBytes"])?;
            Ok(CompareConfig {
                label_pointer: c.opt_str("labelPointer")?,
                score_pointer: c.opt_str("scorePointer")?,
                max_body_bytes: c
                    .opt_u32("maxBodyBytes")?
                    .unwrap_or_else(default_body_limit),
            })
        })?,
    })
}

fn metrics(v: &Value, path: String) -> R<MetricsConfig> {
    let o = obj(v, path, &["latencyBucketsMs", "flushIntervalMs"])?;
    Ok(MetricsConfig {
        latency_buckets_ms: match o.get("latencyBucketsMs") {
            None | Some(Value::Null) => None,
            Some(_) => Some(o.each("latencyBucketsMs", numbers)?),
        },
        flush_interval_ms: o.opt_u32("flushIntervalMs")?,
    })
}

fn scores(v: &Value, path: String) -> R<ScoresConfig> {
    let o = obj(v, path, &["pointer", "bounds", "maxBodyBytes"])?;
    Ok(ScoresConfig {
        pointer: o.str("pointer")?,
        bounds: o.each("bounds", numbers)?,
        max_body_bytes: o
            .opt_u32("maxBodyBytes")?
            .unwrap_or_else(default_body_limit),
    })
}
