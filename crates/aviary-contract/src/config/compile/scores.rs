//! Score histograms: bins of a number read from each primary response.

use crate::config::compile::checks::{check_bounds, check_json_pointer};
use crate::config::error::ConfigError;
use crate::config::schema::PluginConfig;

#[derive(Debug, Clone)]
pub struct CompiledScores {
    pub pointer: String,
    pub bounds: Vec<f64>,
    pub max_body_bytes: u32,
}

pub fn scores(cfg: &PluginConfig) -> Result<Option<CompiledScores>, ConfigError> {
    let Some(sc) = &cfg.scores else {
        return Ok(None);
    };
    check_json_pointer("scores.pointer".into(), &sc.pointer)?;
    check_bounds("scores.bounds", &sc.bounds, "[0.1, 0.2, ..., 1.0]")?;
    Ok(Some(CompiledScores {
        pointer: sc.pointer.clone(),
        bounds: sc.bounds.clone(),
        max_body_bytes: sc.max_body_bytes,
    }))
}
