//! The configuration in force: the compiled config and the ids of every metric it counts,
//! defined once when the config is applied so the request path never builds a name.

use std::cell::RefCell;

use crate::host::{Host, HostMetric, MetricKind};
use crate::tally::{HistoNames, HistoSlot, Slot, Tally};
use aviary_contract::config::{Compiled, ConfigError, BUCKETS};
use aviary_contract::metrics::{
    self, bin_label, stat_name, ByLabel, Comparison, DecisionReason, Label, LatencyDirection,
    ResponseClass, ScoreSkipped, ShadowClass, Uncompared,
};
use aviary_contract::units::DIGEST48_MASK;

/// A configuration in force. Streams hold an `Rc` to the one that was active when they
/// started, so a reconfigure never changes a request mid-flight.
#[derive(Debug)]
pub struct Active {
    pub cfg: Compiled,
    pub ids: MetricIds,
}

/// Counters are `Tally` slots and `duration` a `Tally` histogram; the shadow histograms and
/// the gauges are host metrics, recorded directly.
#[derive(Debug)]
pub struct MetricIds {
    pub override_rejected: Slot,
    /// Per version, in config order.
    pub versions: Vec<VersionIds>,
    /// Per shadow target, in config order.
    pub shadows: Vec<ShadowIds>,
}

#[derive(Debug)]
pub struct VersionIds {
    pub requests: ByLabel<DecisionReason, Slot>,
    pub responses: ByLabel<ResponseClass, Slot>,
    pub duration: HistoSlot,
    /// One per score bin, the last is +Inf; empty without `scores`.
    pub score_bins: Vec<Slot>,
    pub score_skipped: Option<ByLabel<ScoreSkipped, Slot>>,
}

#[derive(Debug)]
pub struct ShadowIds {
    pub sent: Slot,
    pub responses: ByLabel<ShadowClass, Slot>,
    pub comparisons: ByLabel<Comparison, Slot>,
    pub uncompared: ByLabel<Uncompared, Slot>,
    pub score_delta: HostMetric,
    pub latency_delta: ByLabel<LatencyDirection, HostMetric>,
}

impl Active {
    /// Compiles `raw` and defines its metrics.
    pub fn new(
        host: &dyn Host,
        tally: &RefCell<Tally>,
        raw: Option<&[u8]>,
    ) -> Result<Active, ConfigError> {
        let raw = raw.filter(|r| !r.is_empty()).ok_or(ConfigError {
            field: String::new(),
            message: "no configuration given; set the plugin configuration to Aviary's JSON (README, \"Configuration\")".into(),
        })?;
        let cfg = aviary_contract::config::parse_and_compile(raw)?;
        let ids = Definer {
            host,
            tally,
            svc: &cfg.service,
        }
        .all(&cfg)?;
        Ok(Active { cfg, ids })
    }
}

fn refused(name: &str) -> ConfigError {
    ConfigError {
        field: String::new(),
        message: format!("the host refused to define metric `{name}`"),
    }
}

/// Defines one config's metrics, in the host and in the VM's tally.
struct Definer<'a> {
    host: &'a dyn Host,
    tally: &'a RefCell<Tally>,
    svc: &'a str,
}

impl Definer<'_> {
    fn all(&self, cfg: &Compiled) -> Result<MetricIds, ConfigError> {
        let override_rejected = self.counter(&stat_name(
            metrics::OVERRIDE_REJECTED,
            &[("service", self.svc)],
        ))?;
        let mut versions = Vec::with_capacity(cfg.versions.len());
        for v in 0..cfg.versions.len() {
            versions.push(self.version(cfg, v)?);
        }
        let mut shadows = Vec::new();
        for t in cfg.shadow.iter().flat_map(|s| &s.targets) {
            shadows.push(self.shadow(&t.version)?);
        }
        let digest = self.host_metric(
            MetricKind::Gauge,
            &stat_name(metrics::CONFIG_DIGEST, &[("service", self.svc)]),
        )?;
        self.host.record(digest, cfg.digest & DIGEST48_MASK);
        Ok(MetricIds {
            override_rejected,
            versions,
            shadows,
        })
    }

    fn version(&self, cfg: &Compiled, v: usize) -> Result<VersionIds, ConfigError> {
        let name = cfg.versions[v].name.as_str();
        let labels = [("service", self.svc), ("version", name)];
        let requests = self.by_label(metrics::REQUESTS, &labels)?;
        let responses = self.by_label(metrics::RESPONSES, &labels)?;
        let names = HistoNames {
            base: metrics::DURATION,
            labels: &labels,
            bound_labels: &cfg.metrics.latency_labels,
        };
        let duration = self
            .tally
            .borrow_mut()
            .histogram(self.host, names, &cfg.metrics.latency_bounds_us)
            .ok_or_else(|| refused(metrics::DURATION))?;
        let (score_bins, score_skipped) = match &cfg.scores {
            None => (Vec::new(), None),
            Some(s) => {
                let bins: Vec<String> = s
                    .bounds
                    .iter()
                    .map(|b| bin_label(Some(*b)))
                    .chain([bin_label(None)])
                    .collect();
                let bins: Vec<&str> = bins.iter().map(String::as_str).collect();
                let bins = self.counters(metrics::SCORE_BINS, &labels, "bin", &bins)?;
                (bins, Some(self.by_label(metrics::SCORE_SKIPPED, &labels)?))
            }
        };
        let weight = self.host_metric(MetricKind::Gauge, &stat_name(metrics::WEIGHT, &labels))?;
        let effective = match cfg.kill_switch {
            Some(k) if k == v => BUCKETS,
            Some(_) => 0,
            None => cfg.versions[v].weight_bps,
        };
        self.host.record(weight, u64::from(effective));
        Ok(VersionIds {
            requests,
            responses,
            duration,
            score_bins,
            score_skipped,
        })
    }

    fn shadow(&self, version: &str) -> Result<ShadowIds, ConfigError> {
        let labels = [("service", self.svc), ("version", version)];
        Ok(ShadowIds {
            sent: self.counter(&stat_name(metrics::SHADOW_REQUESTS, &labels))?,
            responses: self.by_label(metrics::SHADOW_RESPONSES, &labels)?,
            comparisons: self.by_label(metrics::SHADOW_COMPARISONS, &labels)?,
            uncompared: self.by_label(metrics::SHADOW_UNCOMPARED, &labels)?,
            score_delta: self.host_metric(
                MetricKind::Histogram,
                &stat_name(metrics::SHADOW_SCORE_DELTA, &labels),
            )?,
            latency_delta: {
                let base = metrics::SHADOW_LATENCY_DELTA;
                let mut ids = Vec::new();
                for d in LatencyDirection::ALL {
                    let name = stat_name(
                        base,
                        &[labels[0], labels[1], (LatencyDirection::KEY, d.as_str())],
                    );
                    ids.push(self.host_metric(MetricKind::Histogram, &name)?);
                }
                ByLabel::from_vec(ids).ok_or_else(|| refused(base))?
            },
        })
    }

    fn counter(&self, name: &str) -> Result<Slot, ConfigError> {
        self.tally
            .borrow_mut()
            .counter(self.host, name)
            .ok_or_else(|| refused(name))
    }

    fn host_metric(&self, kind: MetricKind, name: &str) -> Result<HostMetric, ConfigError> {
        self.tally
            .borrow_mut()
            .define(self.host, kind, name)
            .ok_or_else(|| refused(name))
    }

    /// A counter per value of `L`.
    fn by_label<L: Label>(
        &self,
        base: &str,
        labels: &[(&str, &str)],
    ) -> Result<ByLabel<L, Slot>, ConfigError> {
        let slots = self.counters(base, labels, L::KEY, L::NAMES)?;
        // Cannot fail: `counters` gives one slot per name of `L`.
        ByLabel::from_vec(slots).ok_or_else(|| refused(base))
    }

    /// A counter per value of the label `key`.
    fn counters(
        &self,
        base: &str,
        labels: &[(&str, &str)],
        key: &str,
        values: &[&str],
    ) -> Result<Vec<Slot>, ConfigError> {
        let mut l = labels.to_vec();
        let mut out = Vec::with_capacity(values.len());
        for v in values {
            l.truncate(labels.len());
            l.push((key, v));
            out.push(self.counter(&stat_name(base, &l))?);
        }
        Ok(out)
    }
}
