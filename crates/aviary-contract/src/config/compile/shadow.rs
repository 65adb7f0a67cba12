//! Shadow mirroring: which requests are copied, to which targets, and how answers are compared.

use crate::config::compile::checks::{
    check_body_limit, check_header_name, check_json_pointer, check_share, valid_header_value,
    valid_name,
};
use crate::config::compile::conditions::{conditions, Condition};
use crate::config::compile::sticky::sticky_seed;
use crate::config::error::ConfigError;
use crate::config::schema::{CompareConfig, PluginConfig, ShadowConfig, ShadowTarget, ShadowVia};

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

pub fn shadow(cfg: &PluginConfig) -> Result<Option<CompiledShadow>, ConfigError> {
    let Some(s) = &cfg.shadow else {
        return Ok(None);
    };
    targets(s)?;
    limits(s)?;
    if s.via == ShadowVia::Envoy && s.compare.is_some() {
        return Err(ConfigError::new(
            "shadow.compare",
            "comparing answers needs the plugin to send the copies; remove `compare` or set `via` to \"plugin\"",
        ));
    }
    let envoy_mirror_headers = match s.via {
        ShadowVia::Plugin => None,
        ShadowVia::Envoy => Some(mirror_headers(s)?),
    };
    if let Some(c) = &s.compare {
        compare(c)?;
    }
    Ok(Some(CompiledShadow {
        targets: s.targets.clone(),
        share_bps: check_share("shadow.share".into(), s.share)?,
        conditions: conditions(&s.conditions, "shadow.match")?,
        rules: rule_indices(cfg, &s.rules)?,
        timeout_ms: s.timeout_ms,
        max_body_bytes: s.max_body_bytes,
        max_in_flight: s.max_in_flight,
        mark_header: s.mark_header.clone(),
        authority_suffix: s.authority_suffix.clone(),
        compare: s.compare.clone(),
        seed: sticky_seed(cfg) ^ 0x5bd1_e995,
        envoy_mirror_headers,
    }))
}

fn targets(s: &ShadowConfig) -> Result<(), ConfigError> {
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
    Ok(())
}

fn limits(s: &ShadowConfig) -> Result<(), ConfigError> {
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
    check_body_limit("shadow.maxBodyBytes", s.max_body_bytes)
}

fn mirror_headers(s: &ShadowConfig) -> Result<Vec<String>, ConfigError> {
    s.targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let h = t.mirror_header();
            check_header_name(format!("shadow.targets[{i}].mirrorHeader"), &h)?;
            Ok(h)
        })
        .collect()
}

fn compare(c: &CompareConfig) -> Result<(), ConfigError> {
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
    check_body_limit("shadow.compare.maxBodyBytes", c.max_body_bytes)
}

fn rule_indices(cfg: &PluginConfig, names: &[String]) -> Result<Vec<usize>, ConfigError> {
    names
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
        .collect()
}
