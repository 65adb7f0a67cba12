//! Per-VM metric batching. Every host call crosses from the wasm VM into Envoy, so the request
//! path only adds to counts in the VM's memory; the root context's tick sends each changed
//! count to Envoy with one call per metric. The latency histogram is kept the same way, as
//! cumulative `le` bucket counters, which also makes it live instead of waiting for Envoy's
//! stats flush, and gives it sub-millisecond bounds.

use std::collections::HashMap;

use crate::host::{Host, HostMetric, MetricKind};
use aviary_contract::metrics::stat_name;

/// A batched counter in a `Tally`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot(u32);

/// A batched latency histogram in a `Tally`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HistoSlot(u32);

/// A counter defined in the host and the count not yet sent to it.
#[derive(Debug, Clone, Copy)]
struct Pending {
    metric: HostMetric,
    count: u64,
}

/// A latency histogram: non-cumulative pending counts per bucket, sent as cumulative counters.
#[derive(Debug, Clone)]
struct Histo {
    bounds_us: Vec<u64>,
    /// One counter per bound, then `+Inf`, then `_count` and `_sum` (milliseconds).
    metrics: Vec<HostMetric>,
    pending: Vec<u64>,
    sum_us: u64,
    dirty: bool,
}

/// A histogram's names: `{base}_bucket…le.{bound}`, `{base}_count…`, `{base}_sum…`.
#[derive(Debug, Clone, Copy)]
pub struct HistoNames<'a> {
    pub base: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
    pub bound_labels: &'a [String],
}

/// Lives as long as the VM (not one root context), so counts from requests that outlive a
/// configuration are still sent, and each metric is defined in the host once.
#[derive(Debug, Default)]
pub struct Tally {
    defined: HashMap<String, HostMetric>,
    counters: Vec<Pending>,
    slot_of: HashMap<HostMetric, Slot>,
    histos: Vec<Histo>,
    histo_of: HashMap<String, HistoSlot>,
    dirty: bool,
}

impl Tally {
    /// The host's id for a metric, defining it on first use.
    pub fn define(&mut self, host: &dyn Host, kind: MetricKind, name: &str) -> Option<HostMetric> {
        if let Some(id) = self.defined.get(name) {
            return Some(*id);
        }
        let id = host.define_metric(kind, name)?;
        self.defined.insert(name.to_owned(), id);
        Some(id)
    }

    /// A batched counter's slot.
    pub fn counter(&mut self, host: &dyn Host, name: &str) -> Option<Slot> {
        let metric = self.define(host, MetricKind::Counter, name)?;
        if let Some(s) = self.slot_of.get(&metric) {
            return Some(*s);
        }
        let slot = Slot(u32::try_from(self.counters.len()).ok()?);
        self.counters.push(Pending { metric, count: 0 });
        self.slot_of.insert(metric, slot);
        Some(slot)
    }

    /// A batched latency histogram with these upper bounds in microseconds; `names` must give
    /// one bound label per bound.
    pub fn histogram(
        &mut self,
        host: &dyn Host,
        names: HistoNames<'_>,
        bounds_us: &[u64],
    ) -> Option<HistoSlot> {
        let key = stat_name(names.base, names.labels) + "|" + &names.bound_labels.join(",");
        if let Some(h) = self.histo_of.get(&key) {
            return Some(*h);
        }
        let mut metrics = Vec::with_capacity(bounds_us.len() + 3);
        let bucket = format!("{}_bucket", names.base);
        for le in names
            .bound_labels
            .iter()
            .map(String::as_str)
            .chain(["+Inf"])
        {
            let mut labels = names.labels.to_vec();
            labels.push(("le", le));
            metrics.push(self.define(host, MetricKind::Counter, &stat_name(&bucket, &labels))?);
        }
        for suffix in ["_count", "_sum"] {
            let name = stat_name(&format!("{}{suffix}", names.base), names.labels);
            metrics.push(self.define(host, MetricKind::Counter, &name)?);
        }
        let h = HistoSlot(u32::try_from(self.histos.len()).ok()?);
        self.histos.push(Histo {
            bounds_us: bounds_us.to_vec(),
            metrics,
            pending: vec![0; bounds_us.len() + 1],
            sum_us: 0,
            dirty: false,
        });
        self.histo_of.insert(key, h);
        Some(h)
    }

    pub fn add(&mut self, slot: Slot, n: u64) {
        if let Some(s) = self.counters.get_mut(slot.0 as usize) {
            s.count += n;
            self.dirty = true;
        }
    }

    pub fn observe_us(&mut self, histo: HistoSlot, us: u64) {
        if let Some(h) = self.histos.get_mut(histo.0 as usize) {
            let i = h.bounds_us.partition_point(|b| *b < us);
            h.pending[i] += 1;
            h.sum_us += us;
            h.dirty = true;
            self.dirty = true;
        }
    }

    /// Sends every changed count to the host, one increment per metric.
    pub fn flush(&mut self, host: &dyn Host) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        for s in &mut self.counters {
            if s.count > 0 {
                host.increment(s.metric, to_i64(s.count));
                s.count = 0;
            }
        }
        for h in &mut self.histos {
            if !h.dirty {
                continue;
            }
            h.dirty = false;
            let mut cumulative = 0;
            for (i, p) in h.pending.iter_mut().enumerate() {
                cumulative += *p;
                *p = 0;
                if cumulative > 0 {
                    host.increment(h.metrics[i], to_i64(cumulative));
                }
            }
            let n = h.metrics.len();
            host.increment(h.metrics[n - 2], to_i64(cumulative));
            // Whole milliseconds go out; the remainder waits, so the sum never drifts.
            let ms = h.sum_us / 1000;
            h.sum_us %= 1000;
            if ms > 0 {
                host.increment(h.metrics[n - 1], to_i64(ms));
            }
        }
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    fn names(host: &FakeHost) -> Vec<String> {
        host.metrics
            .borrow()
            .iter()
            .map(|(_, n)| n.clone())
            .collect()
    }

    #[test]
    fn counters_are_defined_once_and_sent_as_one_increment() -> Result<(), &'static str> {
        let host = FakeHost::default();
        let mut t = Tally::default();
        let a = t.counter(&host, "a").ok_or("a")?;
        assert_eq!(t.counter(&host, "a"), Some(a));
        let b = t.counter(&host, "b").ok_or("b")?;
        assert_eq!(names(&host), ["a", "b"]);
        for _ in 0..1000 {
            t.add(a, 1);
        }
        t.flush(&host);
        assert_eq!(host.increments_by_name(), [("a".into(), 1000)]);
        t.add(b, 2);
        t.flush(&host);
        t.flush(&host);
        assert_eq!(host.increments_by_name()[1..], [("b".into(), 2)]);
        Ok(())
    }

    #[test]
    fn nothing_is_sent_until_a_flush_nor_twice() {
        let host = FakeHost::default();
        let mut t = Tally::default();
        let slots: Vec<Slot> = ["x", "y"]
            .iter()
            .filter_map(|n| t.counter(&host, n))
            .collect();
        for s in &slots {
            t.add(*s, 3);
        }
        assert!(host.increments.borrow().is_empty());
        t.flush(&host);
        t.flush(&host);
        assert_eq!(host.counter("x"), 3);
        assert_eq!(host.counter("y"), 3);
        assert_eq!(host.increments.borrow().len(), 2);
    }

    #[test]
    fn a_refused_definition_is_none_and_retried() {
        let host = FakeHost::default();
        let mut t = Tally::default();
        host.refuse_metrics.set(true);
        assert_eq!(t.counter(&host, "a"), None);
        host.refuse_metrics.set(false);
        assert!(t.counter(&host, "a").is_some());
    }

    #[test]
    fn histogram_is_cumulative_with_count_and_exact_sum() -> Result<(), &'static str> {
        let host = FakeHost::default();
        let mut t = Tally::default();
        let labels: Vec<String> = vec!["0.5".into(), "1".into(), "5".into()];
        let names_of = HistoNames {
            base: "lat",
            labels: &[("version", "v")],
            bound_labels: &labels,
        };
        let h = t
            .histogram(&host, names_of, &[500, 1000, 5000])
            .ok_or("h")?;
        assert_eq!(t.histogram(&host, names_of, &[500, 1000, 5000]), Some(h));
        let all = [
            "lat_bucket.version.v.le.0.5",
            "lat_bucket.version.v.le.1",
            "lat_bucket.version.v.le.5",
            "lat_bucket.version.v.le.+Inf",
            "lat_count.version.v",
            "lat_sum.version.v",
        ];
        assert_eq!(names(&host), all);
        // 0.4 ms, exactly 1 ms (le is inclusive), 3 ms, 9 ms.
        for us in [400, 1000, 3000, 9000] {
            t.observe_us(h, us);
        }
        t.flush(&host);
        let sent = |counts: &[(usize, i64)]| -> Vec<(String, i64)> {
            counts
                .iter()
                .map(|(i, n)| (all[*i].to_string(), *n))
                .collect()
        };
        assert_eq!(
            host.increments_by_name(),
            sent(&[(0, 1), (1, 2), (2, 3), (3, 4), (4, 4), (5, 13)])
        );
        host.increments.borrow_mut().clear();
        // 0.4 ms carried from the sum above; 0.6 ms more makes one whole millisecond.
        t.observe_us(h, 600);
        t.flush(&host);
        assert_eq!(
            host.increments_by_name(),
            sent(&[(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)])
        );
        Ok(())
    }
}
