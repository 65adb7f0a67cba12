//! Segment rules: conditions that send matching requests (or a share of them) to a version.

use crate::config::compile::checks::check_share;
use crate::config::compile::conditions::{conditions, Condition};
use crate::config::compile::sticky::sticky_seed;
use crate::config::compile::versions::version_of;
use crate::config::error::ConfigError;
use crate::config::schema::{PluginConfig, RuleConfig};
use crate::units::BUCKETS;

const MAX_RULES: usize = 4096;

#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub name: String,
    pub conditions: Vec<Condition>,
    pub version: usize,
    pub share_bps: u32,
    /// Seed of the rule's own share hash, so a rule's share is independent of the weights.
    pub seed: u32,
    /// Applies only to requests from a trusted peer (top-level `trustedCidrs`).
    pub trusted_only: bool,
}

pub fn rules(cfg: &PluginConfig) -> Result<Vec<CompiledRule>, ConfigError> {
    if cfg.rules.len() > MAX_RULES {
        return Err(ConfigError::new(
            "rules",
            format!("at most {MAX_RULES} rules are supported"),
        ));
    }
    cfg.rules
        .iter()
        .enumerate()
        .map(|(r, rule)| compile_rule(cfg, r, rule))
        .collect()
}

fn compile_rule(
    cfg: &PluginConfig,
    r: usize,
    rule: &RuleConfig,
) -> Result<CompiledRule, ConfigError> {
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
    if rule.trusted_only && cfg.trusted_cidrs.is_empty() {
        let only_override = cfg
            .override_
            .as_ref()
            .is_some_and(|o| !o.trusted_cidrs.is_empty());
        let hint = if only_override {
            "; `override.trustedCidrs` applies to the override only, so move the ranges up"
        } else {
            ""
        };
        return Err(ConfigError::new(
            at("trustedOnly"),
            format!("needs peers to trust: list them in the top-level `trustedCidrs`, e.g. \"trustedCidrs\": [\"10.0.0.0/8\"]{hint}; or drop `trustedOnly`"),
        ));
    }
    Ok(CompiledRule {
        name: rule.name.clone(),
        conditions: conditions(&rule.conditions, &at("match"))?,
        version: version_of(cfg, at("version"), &rule.version)?,
        share_bps: check_share(at("share"), rule.share.unwrap_or(BUCKETS))?,
        seed: sticky_seed(cfg) ^ 0x9e37_79b9_u32.wrapping_mul(r as u32 + 1),
        trusted_only: rule.trusted_only,
    })
}
