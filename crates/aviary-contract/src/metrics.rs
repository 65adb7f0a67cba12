//! Metric names. Each stat name carries its labels as `.key.value` pairs, which the
//! `stats_tags` in `envoy/` turn into Prometheus labels (see README, "Metrics").
//! The rollout driver reads the same names, so they are defined once, here.

/// Response classes. `local` is a reply Envoy generated (no upstream answer, e.g. connect
/// failure or timeout); `reset` is a stream that ended with no response at all.
pub const CLASSES: [&str; 7] = ["1xx", "2xx", "3xx", "4xx", "5xx", "local", "reset"];
pub const CLASS_LOCAL: usize = 5;
pub const CLASS_RESET: usize = 6;

pub const REQUESTS: &str = "aviary_requests_total";
pub const RESPONSES: &str = "aviary_responses_total";
pub const DURATION: &str = "aviary_request_duration_ms";
pub const WEIGHT: &str = "aviary_weight_bps";
pub const CONFIG_DIGEST: &str = "aviary_config_digest";
pub const OVERRIDE_REJECTED: &str = "aviary_override_rejected_total";
pub const SCORE_BINS: &str = "aviary_score_bin_total";
pub const SCORE_SKIPPED: &str = "aviary_score_skipped_total";
pub const SHADOW_REQUESTS: &str = "aviary_shadow_requests_total";
pub const SHADOW_RESPONSES: &str = "aviary_shadow_responses_total";
pub const SHADOW_COMPARISONS: &str = "aviary_shadow_comparisons_total";
pub const SHADOW_UNCOMPARED: &str = "aviary_shadow_uncompared_total";
pub const SHADOW_SCORE_DELTA: &str = "aviary_shadow_score_delta_milli";
pub const SHADOW_LATENCY_DELTA: &str = "aviary_shadow_latency_delta_ms";

/// `class` index of an HTTP status.
pub fn class_of_status(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// A stat name: `base` followed by `.key.value` for each label.
pub fn stat_name(base: &str, labels: &[(&str, &str)]) -> String {
    let mut s = String::with_capacity(base.len() + 48);
    s.push_str(base);
    for (k, v) in labels {
        s.push('.');
        s.push_str(k);
        s.push('.');
        s.push_str(v);
    }
    s
}

/// Formats a score bin's upper bound as its `bin` label; the implied last bin is `+Inf`.
pub fn bin_label(bound: Option<f64>) -> String {
    match bound {
        Some(b) => crate::units::fmt_decimal(b),
        None => "+Inf".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_labels() {
        assert_eq!(bin_label(Some(0.25)), "0.25");
        assert_eq!(bin_label(None), "+Inf");
    }
}
