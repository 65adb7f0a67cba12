//! The plugin configuration: the JSON users write (`PluginConfig`, in `schema`, read by
//! `read`) and the immutable, validated form the filter runs on (`Compiled`, from `compile`).
//! The rollout driver writes configs with these same types, so the schema is defined once.

mod compile;
mod error;
mod read;
mod schema;

#[cfg(test)]
mod tests;

pub use crate::units::{percent_to_bps, BUCKETS};
pub use compile::{
    layout, Compiled, CompiledMetrics, CompiledOverride, CompiledRule, CompiledScores,
    CompiledShadow, CompiledVersion, Condition,
};
pub use error::ConfigError;
pub use schema::*;

/// Digest of a raw configuration: FNV-1a 64 of its bytes, as logged and exported by the plugin.
pub fn digest(raw: &[u8]) -> u64 {
    crate::hash::fnv1a64(raw)
}

/// Parses and compiles raw JSON, as the plugin does in `on_configure`.
pub fn parse_and_compile(raw: &[u8]) -> Result<Compiled, ConfigError> {
    PluginConfig::from_json(raw)?.compile(digest(raw))
}
