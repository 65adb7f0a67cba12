//! Per-VM metric batching. Every host call crosses from the wasm VM into Envoy, so the request
//! path only adds to counts in the VM's memory; the root context's tick sends each changed
//! count to Envoy with one call per metric. The latency histogram is kept the same way, as
//! cumulative `le` bucket counters, which also makes it live instead of waiting for Envoy's
//! stats flush, and gives it sub-millisecond bounds.

use std::collections::HashMap;

use crate::host::{Host, MetricKind};

/// A counter slot: a metric defined in the host and the count not yet sent to it.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: u32,
    pending: u64,
}

/// A latency histogram: non-cumulative pending counts per bucket, sent as cumulative counters.
#[derive(Debug, Clone)]
struct Histo {
    bounds_us: Vec<u64>,
    /// One counter per bound, then `+Inf`, then `_count` and `_sum` (milliseconds).
    ids: Vec<u32>,
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
    defined: HashMap<String, u32>,
    slots: Vec<Slot>,
    slot_of: HashMap<u32, u32>,
    histos: Vec<Histo>,
    histo_of: HashMap<String, u32>,
    dirty: bool,
}

impl Tally {
    /// The host's id for a metric, defining it on first use.
    pub fn define(&mut self, host: &dyn Host, kind: MetricKind, name: &str) -> Option<u32> {
        if let Some(id) = self.defined.get(name) {
            return Some(*id);
        }
        let id = host.define_metric(kind, name)?;
        self.defined.insert(name.to_owned(), id);
        Some(id)
    }

    /// A batched counter's slot.
    pub fn counter(&mut self, host: &dyn Host, name: &str) -> Option<u32> {
        let id = self.define(host, MetricKind::Counter, name)?;
        if let Some(s) = self.slot_of.get(&id) {
            return Some(*s);
        }
        let slot = u32::try_from(self.slots.len()).ok()?;
        self.slots.push(Slot { id, pending: 0 });
        self.slot_of.insert(id, slot);
        Some(slot)
    }

    /// A batched latency histogram with these upper bounds in microseconds; `names` must give
    /// one bound label per bound.
    pub fn histogram(
        &mut self,
        host: &dyn Host,
        names: HistoNames<'_>,
        bounds_us: &[u64],
    ) -> Option<u32> {
        let key = aviary_contract::metrics::stat_name(names.base, names.labels)
            + "|"
            + &names.bound_labels.join(",");
        if let Some(h) = self.histo_of.get(&key) {
            return Some(*h);
        }
        let mut ids = Vec::with_capacity(bounds_us.len() + 3);
        let bucket = format!("{}_bucket", names.base);
        for le in names
            .bound_labels
            .iter()
            .map(String::as_str)
            .chain(["+Inf"])
        {
            let mut labels = names.labels.to_vec();
            labels.push(("le", le));
            let name = aviary_contract::metrics::stat_name(&bucket, &labels);
            ids.push(self.define(host, MetricKind::Counter, &name)?);
        }
        for suffix in ["_count", "_sum"] {
            let name = aviary_contract::metrics::stat_name(
                &format!("{}{suffix}", names.base),
                names.labels,
            );
            ids.push(self.define(host, MetricKind::Counter, &name)?);
        }
        let h = u32::try_from(self.histos.len()).ok()?;
        self.histos.push(Histo {
            bounds_us: bounds_us.to_vec(),
            ids,
            pending: vec![0; bounds_us.len() + 1],
            sum_us: 0,
            dirty: false,
        });
        self.histo_of.insert(key, h);
        Some(h)
    }

    pub fn add(&mut self, slot: u32, n: u64) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.pending += n;
            self.dirty = true;
        }
    }

    pub fn observe_us(&mut self, histo: u32, us: u64) {
        if let Some(h) = self.histos.get_mut(histo as usize) {
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
        for s in &mut self.slots {
            if s.pending > 0 {
                host.increment(s.id, to_i64(s.pending));
                s.pending = 0;
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
                    host.increment(h.ids[i], to_i64(cumulative));
                }
            }
            let n = h.ids.len();
            host.increment(h.ids[n - 2], to_i64(cumulative));
            // Whole milliseconds go out; the remainder waits, so the sum never drifts.
            let ms = h.sum_us / 1000;
            h.sum_us %= 1000;
            if ms > 0 {
                host.increment(h.ids[n - 1], to_i64(ms));
            }
        }
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::host::{Body, LogLevel};

    #[derive(Default)]
    struct Recorder {
        defined: RefCell<Vec<String>>,
        incs: RefCell<Vec<(u32, i64)>>,
    }

    impl Host for Recorder {
        fn log(&self, _: LogLevel, _: &str) {}
        fn now_nanos(&self) -> u64 {
            0
        }
        fn random_u64(&self) -> u64 {
            0
        }
        fn request_headers(&self) -> crate::headers::HeaderBlock {
            crate::headers::HeaderBlock::default()
        }
        fn set_request_header(&self, _: &str, _: &str) {}
        fn remove_request_header(&self, _: &str) {}
        fn response_header(&self, _: &str) -> Option<String> {
            None
        }
        fn set_response_header(&self, _: &str, _: &str) {}
        fn property(&self, _: &[&str]) -> Option<Vec<u8>> {
            None
        }
        fn body(&self, _: Body, _: usize, _: usize) -> Option<Vec<u8>> {
            None
        }
        fn define_metric(&self, _: MetricKind, name: &str) -> Option<u32> {
            let mut d = self.defined.borrow_mut();
            d.push(name.to_owned());
            Some(100 + d.len() as u32)
        }
        fn increment(&self, id: u32, by: i64) {
            self.incs.borrow_mut().push((id, by));
        }
        fn record(&self, _: u32, _: u64) {}
        fn dispatch(
            &self,
            _: &str,
            _: &[(&str, &str)],
            _: Option<&[u8]>,
            _: u32,
        ) -> Result<u32, String> {
            Err("none".into())
        }
        fn call_response_header(&self, _: &str) -> Option<String> {
            None
        }
        fn set_tick_period_ms(&self, _: u32) {}
    }

    #[test]
    fn counters_are_defined_once_and_sent_as_one_increment() {
        let host = Recorder::default();
        let mut t = Tally::default();
        let a = t.counter(&host, "a").unwrap_or(99);
        assert_eq!(t.counter(&host, "a"), Some(a));
        let b = t.counter(&host, "b").unwrap_or(99);
        assert_eq!(host.defined.borrow().len(), 2);
        for _ in 0..1000 {
            t.add(a, 1);
        }
        t.flush(&host);
        assert_eq!(*host.incs.borrow(), vec![(101, 1000)]);
        t.add(b, 2);
        t.flush(&host);
        t.flush(&host);
        assert_eq!(host.incs.borrow()[1..], [(102, 2)]);
    }

    #[test]
    fn histogram_is_cumulative_with_count_and_exact_sum() {
        let host = Recorder::default();
        let mut t = Tally::default();
        let labels: Vec<String> = vec!["0.5".into(), "1".into(), "5".into()];
        let names = HistoNames {
            base: "lat",
            labels: &[("version", "v")],
            bound_labels: &labels,
        };
        let h = t.histogram(&host, names, &[500, 1000, 5000]).unwrap_or(99);
        assert_eq!(t.histogram(&host, names, &[500, 1000, 5000]), Some(h));
        assert_eq!(
            *host.defined.borrow(),
            [
                "lat_bucket.version.v.le.0.5",
                "lat_bucket.version.v.le.1",
                "lat_bucket.version.v.le.5",
                "lat_bucket.version.v.le.+Inf",
                "lat_count.version.v",
                "lat_sum.version.v",
            ]
        );
        // 0.4 ms, exactly 1 ms (le is inclusive), 3 ms, 9 ms.
        for us in [400, 1000, 3000, 9000] {
            t.observe_us(h, us);
        }
        t.flush(&host);
        assert_eq!(
            *host.incs.borrow(),
            [(101, 1), (102, 2), (103, 3), (104, 4), (105, 4), (106, 13)]
        );
        host.incs.borrow_mut().clear();
        // 0.4 ms carried from the sum above; 0.6 ms more makes one whole millisecond.
        t.observe_us(h, 600);
        t.flush(&host);
        assert_eq!(
            *host.incs.borrow(),
            [(102, 1), (103, 1), (104, 1), (105, 1), (106, 1)]
        );
    }
}
