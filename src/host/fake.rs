//! A `Host` for native unit tests: it holds the request, response, properties and bodies a
//! test gives it, and records what the filter does (headers set and removed, metrics, logs,
//! dispatched calls).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::headers::HeaderBlock;
use crate::host::{Body, Host, HostMetric, LogLevel, MetricKind};

/// A call the filter dispatched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u32,
}

#[derive(Default)]
pub struct FakeHost {
    pub now_ns: Cell<u64>,
    pub request: RefCell<Vec<(String, String)>>,
    pub response: RefCell<Vec<(String, String)>>,
    pub call_response: RefCell<Vec<(String, String)>>,
    /// Keyed by the path joined with `.`, e.g. `source.address`.
    pub properties: RefCell<HashMap<String, Vec<u8>>>,
    pub bodies: RefCell<HashMap<Body, Vec<u8>>>,
    /// Request headers set and removed, in order.
    pub request_sets: RefCell<Vec<(String, String)>>,
    pub request_removals: RefCell<Vec<String>>,
    pub response_sets: RefCell<Vec<(String, String)>>,
    /// Metrics in definition order, each name once; a metric's id is its position.
    pub metrics: RefCell<Vec<(MetricKind, String)>>,
    pub refuse_metrics: Cell<bool>,
    pub increments: RefCell<Vec<(HostMetric, i64)>>,
    pub records: RefCell<Vec<(HostMetric, u64)>>,
    pub logs: RefCell<Vec<(LogLevel, String)>>,
    pub dispatches: RefCell<Vec<Dispatch>>,
    pub refuse_dispatch: Cell<bool>,
    pub tick_ms: Cell<u32>,
    /// Shared data: key to (value, CAS token).
    pub shared: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    /// How many times `done` was called.
    pub dones: Cell<u32>,
}

fn set(list: &RefCell<Vec<(String, String)>>, name: &str, value: &str) {
    let mut list = list.borrow_mut();
    list.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    list.push((name.to_owned(), value.to_owned()));
}

fn get(list: &RefCell<Vec<(String, String)>>, name: &str) -> Option<String> {
    list.borrow()
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

impl FakeHost {
    pub fn with_request(headers: &[(&str, &str)]) -> FakeHost {
        let host = FakeHost::default();
        host.set_request(headers);
        host
    }

    /// Replaces the request headers, as a new request would.
    pub fn set_request(&self, headers: &[(&str, &str)]) {
        *self.request.borrow_mut() = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    pub fn set_response(&self, headers: &[(&str, &str)]) {
        *self.response.borrow_mut() = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    pub fn set_body(&self, which: Body, body: &[u8]) {
        self.bodies.borrow_mut().insert(which, body.to_vec());
    }

    pub fn set_property(&self, path: &str, value: &str) {
        self.properties
            .borrow_mut()
            .insert(path.to_owned(), value.as_bytes().to_vec());
    }

    pub fn advance_ms(&self, ms: u64) {
        self.now_ns.set(self.now_ns.get() + ms * 1_000_000);
    }

    pub fn request_header(&self, name: &str) -> Option<String> {
        get(&self.request, name)
    }

    pub fn metric(&self, name: &str) -> Option<HostMetric> {
        let metrics = self.metrics.borrow();
        let i = metrics.iter().position(|(_, n)| n == name)?;
        Some(HostMetric(i as u32))
    }

    /// The sum of every increment sent to the metric named `name`.
    pub fn counter(&self, name: &str) -> i64 {
        let Some(id) = self.metric(name) else {
            return 0;
        };
        let increments = self.increments.borrow();
        increments
            .iter()
            .filter(|(m, _)| *m == id)
            .map(|(_, n)| n)
            .sum()
    }

    /// The sum of every increment sent to the metrics whose names start with `prefix`.
    pub fn counter_sum(&self, prefix: &str) -> i64 {
        self.increments_by_name()
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    }

    /// Every value recorded to the metric named `name`.
    pub fn recorded(&self, name: &str) -> Vec<u64> {
        let Some(id) = self.metric(name) else {
            return Vec::new();
        };
        let records = self.records.borrow();
        records
            .iter()
            .filter(|(m, _)| *m == id)
            .map(|(_, v)| *v)
            .collect()
    }

    /// The increments sent so far, by metric name, in order.
    pub fn increments_by_name(&self) -> Vec<(String, i64)> {
        let metrics = self.metrics.borrow();
        self.increments
            .borrow()
            .iter()
            .map(|(m, n)| (metrics[m.0 as usize].1.clone(), *n))
            .collect()
    }

    pub fn logged(&self, level: LogLevel, part: &str) -> bool {
        self.logs
            .borrow()
            .iter()
            .any(|(l, m)| *l == level && m.contains(part))
    }
}

impl Host for FakeHost {
    fn log(&self, level: LogLevel, msg: &str) {
        self.logs.borrow_mut().push((level, msg.to_owned()));
    }

    fn now_nanos(&self) -> u64 {
        self.now_ns.get()
    }

    fn random_u64(&self) -> u64 {
        7
    }

    fn request_headers(&self) -> HeaderBlock {
        HeaderBlock::from_pairs(&self.request.borrow())
    }

    fn set_request_header(&self, name: &str, value: &str) {
        set(&self.request, name, value);
        self.request_sets
            .borrow_mut()
            .push((name.to_owned(), value.to_owned()));
    }

    fn remove_request_header(&self, name: &str) {
        self.request
            .borrow_mut()
            .retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.request_removals.borrow_mut().push(name.to_owned());
    }

    fn response_header(&self, name: &str) -> Option<String> {
        get(&self.response, name)
    }

    fn set_response_header(&self, name: &str, value: &str) {
        set(&self.response, name, value);
        self.response_sets
            .borrow_mut()
            .push((name.to_owned(), value.to_owned()));
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.properties.borrow().get(&path.join(".")).cloned()
    }

    fn body(&self, which: Body, start: usize, len: usize) -> Option<Vec<u8>> {
        let bodies = self.bodies.borrow();
        let b = bodies.get(&which)?;
        let end = start.saturating_add(len).min(b.len());
        b.get(start..end).map(<[u8]>::to_vec)
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<HostMetric> {
        if self.refuse_metrics.get() {
            return None;
        }
        let mut metrics = self.metrics.borrow_mut();
        // As in Envoy, a name defined again (by another VM) is the same metric.
        if let Some(i) = metrics.iter().position(|(_, n)| n == name) {
            return Some(HostMetric(i as u32));
        }
        metrics.push((kind, name.to_owned()));
        Some(HostMetric(metrics.len() as u32 - 1))
    }

    fn increment(&self, metric: HostMetric, by: i64) {
        self.increments.borrow_mut().push((metric, by));
    }

    fn record(&self, metric: HostMetric, value: u64) {
        self.records.borrow_mut().push((metric, value));
    }

    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u32,
    ) -> Result<u32, String> {
        if self.refuse_dispatch.get() {
            return Err("BadArgument".into());
        }
        let mut d = self.dispatches.borrow_mut();
        let token = d.len() as u32 + 1;
        d.push(Dispatch {
            token,
            cluster: cluster.to_owned(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.map(<[u8]>::to_vec),
            timeout_ms,
        });
        Ok(token)
    }

    fn call_response_header(&self, name: &str) -> Option<String> {
        get(&self.call_response, name)
    }

    fn set_tick_period_ms(&self, ms: u32) {
        self.tick_ms.set(ms);
    }

    fn shared_data(&self, key: &str) -> (Option<Vec<u8>>, u32) {
        match self.shared.borrow().get(key) {
            Some((v, cas)) => (Some(v.clone()), *cas),
            None => (None, 0),
        }
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> bool {
        let mut shared = self.shared.borrow_mut();
        let next = shared.values().map(|(_, c)| *c).max().unwrap_or(0) + 1;
        match shared.get_mut(key) {
            Some(e) if cas != 0 && cas != e.1 => return false,
            Some(e) => *e = (value.to_vec(), next),
            None => {
                shared.insert(key.to_owned(), (value.to_vec(), next));
            }
        }
        true
    }

    fn done(&self) {
        self.dones.set(self.dones.get() + 1);
    }
}
