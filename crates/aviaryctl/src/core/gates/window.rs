//! Windows: what the baseline and the canary did between two snapshots, and the counter
//! arithmetic behind them (a counter that goes down is a reset, never negative traffic).

use std::collections::BTreeMap;

use aviary_contract::metrics::ResponseClass;
use serde::{Deserialize, Serialize};

use crate::core::observe::{Snapshot, VersionMetrics};
use crate::error::CounterReset;

/// Whether responses of class `label` count as errors (5xx, local replies, resets).
fn is_error_class(label: &str) -> bool {
    ResponseClass::from_label(label).is_some_and(ResponseClass::is_error)
}

/// Baseline and canary metrics accumulated between two snapshots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub from_ms: u64,
    pub to_ms: u64,
    pub baseline: VersionMetrics,
    pub canary: VersionMetrics,
    /// Custom query values at the end of the window.
    pub custom: BTreeMap<String, f64>,
}

impl Window {
    /// The metrics between `start` and `end`. A version absent from `start` counts from
    /// zero (Envoy creates stats on first use); any counter that went down (Envoy restarted,
    /// stats were reset) or a version that disappeared is an error: the window is unusable.
    pub fn between(
        start: &Snapshot,
        end: &Snapshot,
        baseline: &str,
        canary: &str,
    ) -> Result<Window, CounterReset> {
        Ok(Window {
            from_ms: start.at_ms,
            to_ms: end.at_ms,
            baseline: delta(start.versions.get(baseline), end.versions.get(baseline))
                .map_err(|e| e.within("baseline", baseline))?,
            canary: delta(start.versions.get(canary), end.versions.get(canary))
                .map_err(|e| e.within("canary", canary))?,
            custom: end.custom.clone(),
        })
    }

    /// Window length in ms.
    pub fn duration_ms(&self) -> u64 {
        self.to_ms.saturating_sub(self.from_ms)
    }
}

/// Responses of any class.
pub fn responses(v: &VersionMetrics) -> u64 {
    v.responses.values().sum()
}

/// Error responses (5xx, local replies, resets).
pub fn errors(v: &VersionMetrics) -> u64 {
    v.responses
        .iter()
        .filter(|(class, _)| is_error_class(class))
        .map(|(_, n)| n)
        .sum()
}

/// Error rate, `None` without responses.
pub fn error_rate(v: &VersionMetrics) -> Option<f64> {
    let n = responses(v);
    (n > 0).then(|| errors(v) as f64 / n as f64)
}

fn sub(end: u64, start: u64, what: impl Fn() -> String) -> Result<u64, CounterReset> {
    end.checked_sub(start)
        .ok_or_else(|| CounterReset::WentDown {
            counter: what(),
            from: start,
            to: end,
        })
}

fn sub_map(
    end: &BTreeMap<String, u64>,
    start: &BTreeMap<String, u64>,
    what: &str,
) -> Result<BTreeMap<String, u64>, CounterReset> {
    if let Some(k) = start.keys().find(|k| !end.contains_key(*k)) {
        return Err(CounterReset::Disappeared {
            counter: format!("{what}{{{k}}}"),
        });
    }
    end.iter()
        .map(|(k, &v)| {
            let s = start.get(k).copied().unwrap_or(0);
            sub(v, s, || format!("{what}{{{k}}}")).map(|d| (k.clone(), d))
        })
        .collect()
}

fn sub_bins(
    end: &[(f64, u64)],
    start: &[(f64, u64)],
    what: &str,
) -> Result<Vec<(f64, u64)>, CounterReset> {
    // Bucket layouts are normally identical, so match by position and fall back to search.
    let same_layout = start.len() == end.len() && start.iter().zip(end).all(|(a, b)| a.0 == b.0);
    if !same_layout {
        if let Some((b, _)) = start.iter().find(|(b, _)| !end.iter().any(|(e, _)| e == b)) {
            return Err(CounterReset::Disappeared {
                counter: format!("{what} bucket {b}"),
            });
        }
    }
    end.iter()
        .enumerate()
        .map(|(i, &(b, v))| {
            let s = if same_layout {
                start[i].1
            } else {
                start.iter().find(|(x, _)| *x == b).map_or(0, |&(_, c)| c)
            };
            sub(v, s, || format!("{what}{{le={b}}}")).map(|d| (b, d))
        })
        .collect()
}

/// `end − start` for one version's counters.
pub fn delta(
    start: Option<&VersionMetrics>,
    end: Option<&VersionMetrics>,
) -> Result<VersionMetrics, CounterReset> {
    let zero = VersionMetrics::default();
    let end = match (start, end) {
        (_, Some(e)) => e,
        (None, None) => return Ok(zero),
        (Some(s), None) if *s == zero || (s.requests == 0 && responses(s) == 0) => return Ok(zero),
        (Some(_), None) => return Err(CounterReset::NoLongerReported),
    };
    let start = start.unwrap_or(&zero);
    Ok(VersionMetrics {
        requests: sub(end.requests, start.requests, || "requests".into())?,
        responses: sub_map(&end.responses, &start.responses, "responses")?,
        latency_buckets: sub_bins(&end.latency_buckets, &start.latency_buckets, "latency")?,
        latency_count: sub(end.latency_count, start.latency_count, || {
            "latency count".into()
        })?,
        latency_sum: (end.latency_sum - start.latency_sum).max(0.0),
        score_bins: sub_bins(&end.score_bins, &start.score_bins, "score")?,
        shadow_agree: sub(end.shadow_agree, start.shadow_agree, || {
            "shadow agree".into()
        })?,
        shadow_disagree: sub(end.shadow_disagree, start.shadow_disagree, || {
            "shadow disagree".into()
        })?,
        shadow_uncompared: sub_map(
            &end.shadow_uncompared,
            &start.shadow_uncompared,
            "shadow uncompared",
        )?,
        weight_bps: end.weight_bps,
    })
}

/// Errors and responses of one version between two snapshots, without building a full
/// [`Window`]: the fast path run at every read. `Err` on a counter reset.
pub fn error_delta(
    start: &Snapshot,
    end: &Snapshot,
    version: &str,
) -> Result<(u64, u64), CounterReset> {
    let (s, e) = (start.versions.get(version), end.versions.get(version));
    let Some(e) = e else {
        return match s {
            Some(s) if s.requests > 0 || responses(s) > 0 => Err(CounterReset::VersionGone {
                version: version.to_string(),
            }),
            _ => Ok((0, 0)),
        };
    };
    let Some(s) = s else {
        return Ok((errors(e), responses(e)));
    };
    let mut n = 0;
    let mut err = 0;
    for (class, &v) in &e.responses {
        let before = s.responses.get(class).copied().unwrap_or(0);
        let d = sub(v, before, || format!("`{version}` responses{{{class}}}"))?;
        n += d;
        if is_error_class(class) {
            err += d;
        }
    }
    if s.responses.len() > e.responses.len() || e.requests < s.requests {
        return Err(CounterReset::VersionWentDown {
            version: version.to_string(),
        });
    }
    Ok((err, n))
}
