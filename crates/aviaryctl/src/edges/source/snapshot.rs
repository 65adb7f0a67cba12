//! Turning parsed samples into a [`Snapshot`]: Aviary's series of one service, summed over any
//! number of proxies.

use std::collections::BTreeMap;

use aviary_contract::metrics::{self, Comparison, ResponseClass, Uncompared};

use super::text::{parse_value, Sample};
use super::AppliedConfig;
use crate::core::observe::{Snapshot, VersionMetrics};
use crate::error::SampleError;

/// Label keys the plugin's `stats_tags` give every series of a service, and the keys of the
/// histogram buckets (Prometheus' `le`, the plugin's score `bin`).
pub(super) const SERVICE: &str = "service";
pub(super) const VERSION: &str = "version";
pub(super) const LE: &str = "le";
pub(super) const BIN: &str = "bin";

/// Every Aviary metric name starts with this (checked against the contract in the tests).
pub(super) const FAMILY: &str = "aviary_";

/// The Aviary series a snapshot or an apply check reads, by their exposition names (from
/// `aviary_contract::metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Series {
    /// `aviary_requests_total`, by routing reason.
    Requests,
    /// `aviary_responses_total`, by response class.
    Responses,
    /// `aviary_request_duration_ms_bucket`, cumulative by `le`.
    DurationBucket,
    /// `aviary_request_duration_ms_count`.
    DurationCount,
    /// `aviary_request_duration_ms_sum`.
    DurationSum,
    /// `aviary_score_bin_total`, by `bin`.
    ScoreBins,
    /// `aviary_shadow_comparisons_total`, by `result`.
    ShadowComparisons,
    /// `aviary_shadow_uncompared_total`, by `reason`.
    ShadowUncompared,
    /// `aviary_weight_bps`: the weight a proxy applies (a gauge).
    Weight,
    /// `aviary_config_digest`: the low 48 bits of the active config's digest (a gauge).
    ConfigDigest,
}

impl Series {
    /// The histogram's suffixes, after [`metrics::DURATION`].
    const DURATION_PARTS: [(&'static str, Series); 3] = [
        ("_bucket", Series::DurationBucket),
        ("_count", Series::DurationCount),
        ("_sum", Series::DurationSum),
    ];

    const PLAIN: [(&'static str, Series); 7] = [
        (metrics::REQUESTS, Series::Requests),
        (metrics::RESPONSES, Series::Responses),
        (metrics::SCORE_BINS, Series::ScoreBins),
        (metrics::SHADOW_COMPARISONS, Series::ShadowComparisons),
        (metrics::SHADOW_UNCOMPARED, Series::ShadowUncompared),
        (metrics::WEIGHT, Series::Weight),
        (metrics::CONFIG_DIGEST, Series::ConfigDigest),
    ];

    /// The series an exposition name is, if the driver reads it.
    pub(super) fn of(name: &str) -> Option<Series> {
        if let Some(part) = name.strip_prefix(metrics::DURATION) {
            return Self::DURATION_PARTS
                .iter()
                .find(|(p, _)| *p == part)
                .map(|&(_, s)| s);
        }
        Self::PLAIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, s)| s)
    }

    /// The exposition name.
    pub(super) fn name(self) -> String {
        if let Some((p, _)) = Self::DURATION_PARTS.iter().find(|(_, s)| *s == self) {
            return format!("{}{p}", metrics::DURATION);
        }
        Self::PLAIN
            .iter()
            .find(|(_, s)| *s == self)
            .map(|(n, _)| n.to_string())
            .unwrap_or_default()
    }

    /// The cumulative series summed over proxies, as a PromQL name regex.
    pub(super) fn summed_regex() -> String {
        [
            Series::Requests,
            Series::Responses,
            Series::DurationBucket,
            Series::DurationCount,
            Series::DurationSum,
            Series::ScoreBins,
            Series::ShadowComparisons,
            Series::ShadowUncompared,
        ]
        .map(Series::name)
        .join("|")
    }
}

/// Per-version sums across endpoints, keyed by the label text so that equal bucket bounds
/// from different Envoys add up exactly.
#[derive(Default)]
struct VersionAcc {
    requests: f64,
    responses: BTreeMap<String, f64>,
    buckets: BTreeMap<String, f64>,
    count: f64,
    sum: f64,
    score_bins: BTreeMap<String, f64>,
    agree: f64,
    disagree: f64,
    uncompared: BTreeMap<String, f64>,
    /// One weight per endpoint reporting it.
    weights: Vec<u64>,
}

/// Accumulates Aviary samples for one service from any number of endpoints.
#[derive(Default)]
pub(super) struct SnapshotBuilder {
    versions: BTreeMap<String, VersionAcc>,
    /// Aviary series of the service seen so far.
    pub(super) series: usize,
}

impl SnapshotBuilder {
    /// Adds one sample; returns false when it is not an Aviary series of `service`.
    pub(super) fn add(&mut self, service: &str, s: &Sample) -> Result<bool, SampleError> {
        if s.label(SERVICE) != Some(service) || !s.name.starts_with(FAMILY) {
            return Ok(false);
        }
        self.series += 1;
        let Some(version) = s.label(VERSION) else {
            return Ok(true);
        };
        let label = |name: &'static str| -> Result<String, SampleError> {
            s.label(name)
                .map(str::to_string)
                .ok_or_else(|| SampleError::MissingLabel {
                    metric: s.name.clone(),
                    label: name,
                })
        };
        if s.value.is_nan() {
            return Err(SampleError::NaN {
                metric: s.name.clone(),
                version: version.to_string(),
            });
        }
        let acc = self.versions.entry(version.to_string()).or_default();
        let Some(series) = Series::of(&s.name) else {
            return Ok(true);
        };
        match series {
            Series::Requests => acc.requests += s.value,
            Series::Responses => {
                *acc.responses.entry(label(ResponseClass::KEY)?).or_default() += s.value
            }
            Series::DurationBucket => *acc.buckets.entry(label(LE)?).or_default() += s.value,
            Series::DurationCount => acc.count += s.value,
            Series::DurationSum => acc.sum += s.value,
            Series::ScoreBins => *acc.score_bins.entry(label(BIN)?).or_default() += s.value,
            Series::ShadowComparisons => {
                match s.label(Comparison::KEY).and_then(Comparison::from_label) {
                    Some(Comparison::Agree) => acc.agree += s.value,
                    Some(Comparison::Disagree) => acc.disagree += s.value,
                    _ => {}
                }
            }
            Series::ShadowUncompared => {
                *acc.uncompared.entry(label(Uncompared::KEY)?).or_default() += s.value
            }
            Series::Weight => acc.weights.push(to_count(s.value, series)?),
            Series::ConfigDigest => {}
        }
        Ok(true)
    }

    pub(super) fn finish(self, at_ms: u64) -> Result<Snapshot, SampleError> {
        let mut versions = BTreeMap::new();
        for (name, acc) in self.versions {
            let weight_bps = match acc.weights.split_first() {
                Some((first, rest)) if rest.iter().all(|w| w == first) => Some(*first),
                // Proxies disagree while an update propagates: the applied weight is unknown.
                _ => None,
            };
            let m = VersionMetrics {
                requests: to_count(acc.requests, Series::Requests)?,
                responses: counts(acc.responses, Series::Responses)?,
                latency_buckets: bounds(acc.buckets, Series::DurationBucket)?,
                latency_count: to_count(acc.count, Series::DurationCount)?,
                latency_sum: acc.sum,
                score_bins: bounds(acc.score_bins, Series::ScoreBins)?,
                shadow_agree: to_count(acc.agree, Series::ShadowComparisons)?,
                shadow_disagree: to_count(acc.disagree, Series::ShadowComparisons)?,
                shadow_uncompared: counts(acc.uncompared, Series::ShadowUncompared)?,
                weight_bps,
            };
            versions.insert(name, m);
        }
        Ok(Snapshot {
            at_ms,
            versions,
            custom: BTreeMap::new(),
        })
    }
}

/// A counter or gauge value as an integer.
pub(super) fn to_count(v: f64, series: Series) -> Result<u64, SampleError> {
    if v.is_finite() && v >= 0.0 {
        // Counters are integers; the float round trip of Prometheus keeps them exact to 2^53.
        Ok(v.round() as u64)
    } else {
        Err(SampleError::InvalidValue {
            metric: series.name(),
            value: v,
        })
    }
}

fn counts(m: BTreeMap<String, f64>, series: Series) -> Result<BTreeMap<String, u64>, SampleError> {
    m.into_iter()
        .map(|(k, v)| Ok((k, to_count(v, series)?)))
        .collect()
}

fn bounds(m: BTreeMap<String, f64>, series: Series) -> Result<Vec<(f64, u64)>, SampleError> {
    let mut out =
        m.into_iter()
            .map(|(k, v)| {
                let bound = parse_value(&k).filter(|b| !b.is_nan()).ok_or_else(|| {
                    SampleError::BadBound {
                        metric: series.name(),
                        bound: k.clone(),
                    }
                })?;
                Ok((bound, to_count(v, series)?))
            })
            .collect::<Result<Vec<_>, SampleError>>()?;
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(out)
}

/// Builds a snapshot of `service` from parsed samples of any number of endpoints, summing
/// counters and histogram buckets. Returns `Ok(None)` when no Aviary series of the service
/// was present.
pub fn snapshot_from_samples<'a>(
    service: &str,
    samples: impl IntoIterator<Item = &'a Sample>,
    at_ms: u64,
) -> Result<Option<Snapshot>, SampleError> {
    let mut b = SnapshotBuilder::default();
    for s in samples {
        b.add(service, s)?;
    }
    if b.series == 0 {
        return Ok(None);
    }
    b.finish(at_ms).map(Some)
}

/// What one proxy's samples say it applies for `service`.
pub(super) fn applied_from_samples(
    endpoint: &str,
    service: &str,
    samples: &[Sample],
) -> AppliedConfig {
    let mut applied = AppliedConfig {
        endpoint: endpoint.to_string(),
        digest48: None,
        weights: BTreeMap::new(),
    };
    for s in samples.iter().filter(|s| s.label(SERVICE) == Some(service)) {
        match Series::of(&s.name) {
            Some(Series::ConfigDigest) => {
                applied.digest48 = to_count(s.value, Series::ConfigDigest).ok()
            }
            Some(Series::Weight) => {
                if let (Some(v), Ok(w)) = (s.label(VERSION), to_count(s.value, Series::Weight)) {
                    applied.weights.insert(v.to_string(), w);
                }
            }
            _ => {}
        }
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_reads_back_from_its_name() {
        let all = [
            Series::Requests,
            Series::Responses,
            Series::DurationBucket,
            Series::DurationCount,
            Series::DurationSum,
            Series::ScoreBins,
            Series::ShadowComparisons,
            Series::ShadowUncompared,
            Series::Weight,
            Series::ConfigDigest,
        ];
        for s in all {
            assert_eq!(Series::of(&s.name()), Some(s), "{s:?}");
            assert!(s.name().starts_with(FAMILY), "{s:?}");
        }
        assert_eq!(
            Series::DurationBucket.name(),
            "aviary_request_duration_ms_bucket"
        );
        assert_eq!(Series::of("aviary_request_duration_ms"), None);
        assert_eq!(Series::of("aviary_override_rejected_total"), None);
    }

    #[test]
    fn every_contract_metric_is_in_the_family() {
        for name in [
            metrics::REQUESTS,
            metrics::RESPONSES,
            metrics::DURATION,
            metrics::WEIGHT,
            metrics::CONFIG_DIGEST,
            metrics::OVERRIDE_REJECTED,
            metrics::SCORE_BINS,
            metrics::SCORE_SKIPPED,
            metrics::SHADOW_REQUESTS,
            metrics::SHADOW_RESPONSES,
            metrics::SHADOW_COMPARISONS,
            metrics::SHADOW_UNCOMPARED,
            metrics::SHADOW_SCORE_DELTA,
            metrics::SHADOW_LATENCY_DELTA,
        ] {
            assert!(name.starts_with(FAMILY), "{name}");
        }
    }
}
