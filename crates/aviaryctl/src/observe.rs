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
    pub latency_buckets: Vec<(f64, u64)>,
    pub latency_count: u64,
    pub latency_sum: f64,
    /// `aviary_score_bin_total` by bin upper bound (non-cumulative), ascending, last +Inf.
    pub score_bins: Vec<(f64, u64)>,
    /// Shadow comparison counters for this version as a *shadow* target.
    pub shadow_agree: u64,
    pub shadow_disagree: u64,
    /// `aviary_shadow_uncompared_total` by reason.
    pub shadow_uncompared: BTreeMap<String, u64>,
    /// `aviary_weight_bps` gauge: the weight Envoy is applying now.
    pub weight_bps: Option<u64>,
}
