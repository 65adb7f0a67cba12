//! The latency histogram's bounds and how often batched counts are sent.

use crate::config::compile::checks::check_bounds;
use crate::config::error::ConfigError;
use crate::config::schema::{MetricsConfig, DEFAULT_FLUSH_INTERVAL_MS, DEFAULT_LATENCY_BUCKETS_MS};
use crate::units::fmt_decimal;

const MAX_FLUSH_INTERVAL_MS: u32 = 10_000;

#[derive(Debug, Clone)]
pub struct CompiledMetrics {
    pub latency_bounds_us: Vec<u64>,
    /// The `le` label of each bound.
    pub latency_labels: Vec<String>,
    pub flush_interval_ms: u32,
}

pub fn metrics(m: Option<&MetricsConfig>) -> Result<CompiledMetrics, ConfigError> {
    let latency_bounds_us = latency_bounds_us(m)?;
    let latency_labels = latency_bounds_us
        .iter()
        .map(|us| fmt_decimal(*us as f64 / 1000.0))
        .collect();
    let flush_interval_ms = m
        .and_then(|m| m.flush_interval_ms)
        .unwrap_or(DEFAULT_FLUSH_INTERVAL_MS);
    if !(1..=MAX_FLUSH_INTERVAL_MS).contains(&flush_interval_ms) {
        return Err(ConfigError::new(
            "metrics.flushIntervalMs",
            format!("{flush_interval_ms} is out of range; use 1 to {MAX_FLUSH_INTERVAL_MS} (milliseconds)"),
        ));
    }
    Ok(CompiledMetrics {
        latency_bounds_us,
        latency_labels,
        flush_interval_ms,
    })
}

fn latency_bounds_us(m: Option<&MetricsConfig>) -> Result<Vec<u64>, ConfigError> {
    let field = "metrics.latencyBucketsMs";
    let bounds = m
        .and_then(|m| m.latency_buckets_ms.clone())
        .unwrap_or_else(|| DEFAULT_LATENCY_BUCKETS_MS.to_vec());
    check_bounds(field, &bounds, "[1, 5, 10, 50, 100, 500]")?;
    let mut out: Vec<u64> = Vec::with_capacity(bounds.len());
    for (i, b) in bounds.iter().enumerate() {
        if !(0.001..=3_600_000.0).contains(b) {
            return Err(ConfigError::new(
                format!("{field}[{i}]"),
                "a bound must be from 0.001 (1 µs) to 3600000 (one hour)",
            ));
        }
        let us = (b * 1000.0).round() as u64;
        if out.last().is_some_and(|p| *p >= us) {
            return Err(ConfigError::new(
                format!("{field}[{i}]"),
                "bounds must differ by at least 0.001 ms (the histogram counts microseconds)",
            ));
        }
        out.push(us);
    }
    Ok(out)
}
