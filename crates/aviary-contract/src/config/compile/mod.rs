//! Validates a `PluginConfig` and compiles it into the immutable form the filter runs on, one
//! section at a time. Errors name the field as a JSON path and say how to fix it.

mod checks;
mod conditions;
mod metrics;
mod overrides;
mod rules;
mod scope;
mod scores;
mod shadow;
mod sticky;
mod versions;

#[cfg(test)]
mod tests;

pub use conditions::Condition;
pub use metrics::CompiledMetrics;
pub use overrides::CompiledOverride;
pub use rules::CompiledRule;
pub use scores::CompiledScores;
pub use shadow::CompiledShadow;
pub use versions::{layout, CompiledVersion};

use crate::cidr::Cidr;
use crate::config::error::ConfigError;
use crate::config::schema::{PluginConfig, ShadowVia, StickyConfig, DEFAULT_SHADOW_HEADER};
use checks::{check_header_name, valid_name};
use versions::version_of;

/// The validated, immutable config the filter runs on. Shared by all HTTP contexts of a VM.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub service: String,
    pub routing_header: String,
    pub stamp_header: Option<String>,
    /// Conditions a request must meet to be handled at all (`match`).
    pub scope: Vec<Condition>,
    pub versions: Vec<CompiledVersion>,
    /// `(lo, hi)` bucket range of each version; see `layout`.
    pub layout: Vec<(u32, u32)>,
    pub sticky: Option<StickyConfig>,
    /// Peers trusted to make identity claims (`trustedCidrs`), for `trustedOnly` rules.
    pub trusted: Vec<Cidr>,
    pub rules: Vec<CompiledRule>,
    pub override_: Option<CompiledOverride>,
    pub kill_switch: Option<usize>,
    pub shadow: Option<CompiledShadow>,
    pub scores: Option<CompiledScores>,
    pub metrics: CompiledMetrics,
    pub digest: u64,
    /// True if any rule or key needs the request's headers.
    pub needs_headers: bool,
    /// Headers only the plugin may set, removed from every request that arrives with them: the
    /// routing header (first), the shadow mark header and, with `via: envoy`, each target's
    /// mirror header.
    pub reserved_headers: Vec<String>,
    /// The reserved headers the filter removes from a request it routes: all but the routing
    /// header (it sets that) and the `via: envoy` mirror headers (the mirror sets or removes
    /// those), decided here so the request path compares no names.
    pub reserved_in_scope: Vec<String>,
}

impl PluginConfig {
    /// Validates and compiles; `digest` identifies the raw bytes it came from.
    pub fn compile(&self, digest: u64) -> Result<Compiled, ConfigError> {
        let cfg = self;
        check_names(cfg)?;
        let versions = versions::versions(cfg)?;
        let sticky = sticky::sticky(cfg)?;
        let trusted = overrides::trusted(cfg)?;
        let rules = rules::rules(cfg)?;
        let override_ = overrides::override_(cfg, &trusted)?;
        let kill_switch = match &cfg.kill_switch {
            None => None,
            Some(name) => Some(version_of(cfg, "killSwitch".into(), name)?),
        };
        let shadow = shadow::shadow(cfg)?;
        let scores = scores::scores(cfg)?;
        let metrics = metrics::metrics(cfg.metrics.as_ref())?;
        let scope = scope::scope(cfg)?;
        let needs_headers = sticky.is_some()
            || !rules.is_empty()
            || override_.is_some()
            || shadow
                .as_ref()
                .is_some_and(|s| !s.conditions.is_empty() || !s.rules.is_empty())
            || !scope.is_empty();
        let reserved_headers = reserved_headers(cfg);
        let envoy_mirrors = shadow
            .as_ref()
            .and_then(|s| s.envoy_mirror_headers.as_ref());
        let reserved_in_scope = reserved_headers
            .iter()
            .filter(|h| **h != cfg.routing_header)
            .filter(|h| !envoy_mirrors.is_some_and(|m| m.contains(h)))
            .cloned()
            .collect();
        Ok(Compiled {
            service: cfg.service.clone(),
            routing_header: cfg.routing_header.clone(),
            stamp_header: (!cfg.stamp_header.is_empty()).then(|| cfg.stamp_header.clone()),
            scope,
            layout: layout(&versions),
            versions,
            sticky,
            trusted,
            rules,
            override_,
            kill_switch,
            shadow,
            scores,
            metrics,
            digest,
            needs_headers,
            reserved_headers,
            reserved_in_scope,
        })
    }
}

/// The routing header, the mark header (the default one without shadows) and, with
/// `via: envoy`, every target's mirror header, each once.
fn reserved_headers(cfg: &PluginConfig) -> Vec<String> {
    let mark = cfg
        .shadow
        .as_ref()
        .map_or(DEFAULT_SHADOW_HEADER, |s| s.mark_header.as_str());
    let mirrors = cfg
        .shadow
        .iter()
        .filter(|s| s.via == ShadowVia::Envoy)
        .flat_map(|s| &s.targets)
        .map(|t| t.mirror_header());
    let mut out: Vec<String> = Vec::new();
    for h in [cfg.routing_header.clone(), mark.to_owned()]
        .into_iter()
        .chain(mirrors)
    {
        if !out.contains(&h) {
            out.push(h);
        }
    }
    out
}

/// The service name and the headers the filter writes.
fn check_names(cfg: &PluginConfig) -> Result<(), ConfigError> {
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
    Ok(())
}
