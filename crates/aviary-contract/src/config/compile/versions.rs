//! Versions and their weights, and the bucket layout the weights give.

use std::collections::BTreeMap;

use crate::config::compile::checks::{check_header_name, valid_header_value, valid_name};
use crate::config::error::ConfigError;
use crate::config::schema::{PluginConfig, VersionConfig};
use crate::units::{percent_to_bps, BUCKETS};

const MAX_VERSIONS: usize = 64;

#[derive(Debug, Clone)]
pub struct CompiledVersion {
    pub name: String,
    pub route_value: String,
    pub weight_bps: u32,
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
}

pub fn versions(cfg: &PluginConfig) -> Result<Vec<CompiledVersion>, ConfigError> {
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
    for (i, v) in cfg.versions.iter().enumerate() {
        versions.push(version(i, v, &cfg.versions[..i])?);
    }
    let total: u64 = versions.iter().map(|v| u64::from(v.weight_bps)).sum();
    if total != u64::from(BUCKETS) {
        return Err(ConfigError::new(
            "versions",
            format!(
                "weights add up to {total} basis points; they must add up to exactly 10000 (100%)"
            ),
        ));
    }
    Ok(versions)
}

fn version(
    i: usize,
    v: &VersionConfig,
    earlier: &[VersionConfig],
) -> Result<CompiledVersion, ConfigError> {
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
    if earlier.iter().any(|o| o.name == v.name) {
        return Err(ConfigError::new(
            at("name"),
            format!("version `{}` is listed twice", v.name),
        ));
    }
    let weight_bps = weight(v, &at)?;
    let route_value = v.route_value.clone().unwrap_or_else(|| v.name.clone());
    if route_value.is_empty() || !valid_header_value(&route_value) {
        return Err(ConfigError::new(
            at("routeValue"),
            "must be a non-empty printable ASCII header value",
        ));
    }
    Ok(CompiledVersion {
        name: v.name.clone(),
        route_value,
        weight_bps,
        request_headers: headers(&v.request_headers, &at("requestHeaders"))?,
        response_headers: headers(&v.response_headers, &at("responseHeaders"))?,
    })
}

fn weight(v: &VersionConfig, at: &dyn Fn(&str) -> String) -> Result<u32, ConfigError> {
    match (v.weight, v.percent) {
        (Some(w), None) if w > BUCKETS => Err(ConfigError::new(
            at("weight"),
            format!("{w} is out of range; weights are basis points, 0 to 10000"),
        )),
        (Some(w), None) => Ok(w),
        (None, Some(p)) => percent_to_bps(p).ok_or_else(|| {
            ConfigError::new(
                at("percent"),
                "not a percentage from 0 to 100 with at most two decimals",
            )
        }),
        (Some(_), Some(_)) => Err(ConfigError::new(
            at("weight"),
            "give either `weight` (basis points) or `percent`, not both",
        )),
        (None, None) => Err(ConfigError::new(
            at("weight"),
            "missing; give `weight` in basis points (0-10000) or `percent`",
        )),
    }
}

fn headers(
    map: &BTreeMap<String, String>,
    field: &str,
) -> Result<Vec<(String, String)>, ConfigError> {
    map.iter()
        .map(|(k, val)| {
            check_header_name(format!("{field}.{k}"), k)?;
            if k.starts_with(':') || !valid_header_value(val) {
                return Err(ConfigError::new(
                    format!("{field}.{k}"),
                    "must be a printable ASCII header value",
                ));
            }
            Ok((k.clone(), val.clone()))
        })
        .collect()
}

/// The index of the version named `name`, or an error at `field` listing the known names.
pub fn version_of(cfg: &PluginConfig, field: String, name: &str) -> Result<usize, ConfigError> {
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
