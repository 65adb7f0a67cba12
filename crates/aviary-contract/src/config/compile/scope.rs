//! The scope (`match`): the requests that are Aviary's at all.

use crate::config::compile::conditions::{conditions, Condition};
use crate::config::error::ConfigError;
use crate::config::schema::PluginConfig;

pub fn scope(cfg: &PluginConfig) -> Result<Vec<Condition>, ConfigError> {
    conditions(&cfg.scope, "match")
}
