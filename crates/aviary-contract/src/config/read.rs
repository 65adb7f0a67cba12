//! Reads `PluginConfig` from a JSON value by hand rather than with derived deserializers:
//! errors carry the exact field path (`versions[1].weight`), unknown fields are named, and the
//! `.wasm` stays small (one generic JSON parser instead of a visitor per struct).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::*;

type R<T> = Result<T, ConfigError>;

struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn obj<'a>(v: &'a Value, path: String, fields: &[&str]) -> R<Obj<'a>> {
    let Value::Object(map) = v else {
        return Err(ConfigError::new(
            path,
            format!("expected an object, found {}", type_name(v)),
        ));
    };
    if let Some(k) = map.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(ConfigError::new(
            join(&path, k),
            format!(
                "unknown field; the known fields here are: {}",
                fields.join(", ")
            ),
        ));
    }
    Ok(Obj { map, path })
}

impl<'a> Obj<'a> {
    fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn wrong(&self, key: &str, want: &str, v: &Value) -> ConfigError {
        ConfigError::new(
            self.at(key),
            format!("expected {want}, found {}", type_name(v)),
        )
    }

    fn opt_str(&self, key: &str) -> R<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.wrong(key, "a string", v)),
        }
    }

    fn str(&self, key: &str) -> R<String> {
        self.opt_str(key)?
            .ok_or_else(|| ConfigError::new(self.at(key), "missing; this field is required"))
    }

    fn opt_bool(&self, key: &str) -> R<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong(key, "true or false", v)),
        }
    }

    fn opt_u32(&self, key: &str) -> R<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    ConfigError::new(self.at(key), format!("expected a whole number, found {n}"))
                }),
            Some(v) => Err(self.wrong(key, "a whole number", v)),
        }
    }

    fn opt_f64(&self, key: &str) -> R<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(v) => Err(self.wrong(key, "a number", v)),
        }
    }

    fn list(&self, key: &str) -> R<&'a [Value]> {
        match self.get(key) {
            None => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(v) => Err(self.wrong(key, "a list", v)),
        }
    }

    fn each<T>(&self, key: &str, f: impl Fn(&Value, String) -> R<T>) -> R<Vec<T>> {
        self.list(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| f(v, format!("{}[{i}]", self.at(key))))
            .collect()
    }

    fn strings(&self, key: &str) -> R<Option<Vec<String>>> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        self.each(key, |v, path| match v {
            Value::String(s) => Ok(s.clone()),
            v => Err(ConfigError::new(
                path,
                format!("expected a string, found {}", type_name(v)),
            )),
        })
        .map(Some)
    }

    fn str_map(&self, key: &str) -> R<BTreeMap<String, String>> {
        match self.get(key) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    v => Err(ConfigError::new(
                        format!("{}.{k}", self.at(key)),
                        format!("expected a string, found {}", type_name(v)),
                    )),
                })
                .collect(),
            Some(v) => Err(self.wrong(key, "an object of header names to values", v)),
        }
    }

    fn nested<T>(&self, key: &str, f: impl Fn(&Value, String) -> R<T>) -> R<Option<T>> {
        self.get(key).map(|v| f(v, self.at(key))).transpose()
    }
}

pub(crate) fn plugin_config(v: &Value) -> R<PluginConfig> {
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
    let o = obj(v, path, &["name", "match", "version", "share"])?;
    Ok(RuleConfig {
        name: o.str("name")?,
        conditions: o.each("match", condition)?,
        version: o.str("version")?,
        share: o.opt_u32("share")?,
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

fn numbers(v: &Value, path: String) -> R<f64> {
    v.as_f64()
        .ok_or_else(|| ConfigError::new(path, format!("expected a number, found {}", type_name(v))))
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
