//! What a metrics source observes: cumulative counters per version at one instant.
//! Gates work on the difference of two snapshots (a window), so counter resets and
//! restarts show up as negative deltas and are treated as missing data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Cumulative per-version metrics read from Envoy (admin or Prometheus) at one instant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Milliseconds since the Unix epoch when the snapshot was taken.
    pub at_ms: u64,
    pub versions: BTreeMap<String, VersionMetrics>,
    /// Values of custom queries (business KPIs), by gate name; absent when the query failed.
    pub custom: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionMetrics {
    /// `aviary_requests_total` summed over `reason`.
    pub requests: u64,
    /// `aviary_responses_total` by `class` (1xx..5xx, local, reset).
    pub responses: BTreeMap<String, u64>,
    /// `aviary_request_duration_ms` cumulative buckets: (upper bound ms, cumulative count),
    /// ascending, the last being +Inf.
    #[serde(with = "bounds")]
    pub latency_buckets: Vec<(f64, u64)>,
    pub latency_count: u64,
    pub latency_sum: f64,
    /// `aviary_score_bin_total` by bin upper bound (non-cumulative), ascending, last +Inf.
    #[serde(with = "bounds")]
    pub score_bins: Vec<(f64, u64)>,
    /// Shadow comparison counters for this version as a *shadow* target.
    pub shadow_agree: u64,
    pub shadow_disagree: u64,
    /// `aviary_shadow_uncompared_total` by reason.
    pub shadow_uncompared: BTreeMap<String, u64>,
    /// `aviary_weight_bps` gauge: the weight Envoy is applying now.
    pub weight_bps: Option<u64>,
}

/// Bucket bounds in JSON: numbers, with the infinite last bound as `"+Inf"` (JSON has no
/// infinity, and `null` would not read back).
mod bounds {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Bound {
        Finite(f64),
        Text(String),
    }

    pub fn serialize<S: Serializer>(v: &[(f64, u64)], s: S) -> Result<S::Ok, S::Error> {
        let out: Vec<(Bound, u64)> = v
            .iter()
            .map(|(b, n)| {
                let b = if b.is_finite() {
                    Bound::Finite(*b)
                } else {
                    Bound::Text(if *b > 0.0 { "+Inf" } else { "-Inf" }.into())
                };
                (b, *n)
            })
            .collect();
        out.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(f64, u64)>, D::Error> {
        let raw: Vec<(Bound, u64)> = Vec::deserialize(d)?;
        raw.into_iter()
            .map(|(b, n)| match b {
                Bound::Finite(f) => Ok((f, n)),
                Bound::Text(t) if t == "+Inf" => Ok((f64::INFINITY, n)),
                Bound::Text(t) if t == "-Inf" => Ok((f64::NEG_INFINITY, n)),
                Bound::Text(t) => Err(serde::de::Error::custom(format!("bad bucket bound {t:?}"))),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infinite_bounds_round_trip_through_json() {
        let v = VersionMetrics {
            latency_buckets: vec![(5.0, 1), (f64::INFINITY, 3)],
            score_bins: vec![(0.5, 2), (f64::INFINITY, 0)],
            ..VersionMetrics::default()
        };
        let json = serde_json::to_string(&v).unwrap_or_default();
        assert!(json.contains("\"+Inf\""), "{json}");
        let back: VersionMetrics = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, v);
    }
}
