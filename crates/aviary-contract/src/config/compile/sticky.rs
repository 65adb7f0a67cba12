//! Sticky assignment: where a request's user or session key comes from.

use crate::config::compile::checks::check_header_name;
use crate::config::error::ConfigError;
use crate::config::schema::{PluginConfig, StickyConfig};

pub fn sticky(cfg: &PluginConfig) -> Result<Option<StickyConfig>, ConfigError> {
    let Some(sticky) = &cfg.sticky else {
        return Ok(None);
    };
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
    Ok(Some(sticky.clone()))
}

/// The sticky hash seed, from which rule and shadow shares derive theirs.
pub fn sticky_seed(cfg: &PluginConfig) -> u32 {
    cfg.sticky.as_ref().map_or(0, |s| s.seed)
}
