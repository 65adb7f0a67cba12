//! The one seam between Aviary's logic and the proxy: everything the filter asks of Envoy.
//! `adapter` implements it with proxy-wasm host calls; nothing else imports proxy-wasm.

#[cfg(test)]
pub mod fake;

use crate::headers::HeaderBlock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric's id in the host, as `define_metric` returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostMetric(pub u32);

/// Which body a `body` call reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Body {
    Request,
    Response,
    CallResponse,
}

pub trait Host {
    fn log(&self, level: LogLevel, msg: &str);
    fn now_nanos(&self) -> u64;
    fn random_u64(&self) -> u64;

    /// All request headers, in one read.
    fn request_headers(&self) -> HeaderBlock;
    fn set_request_header(&self, name: &str, value: &str);
    fn remove_request_header(&self, name: &str);
    fn response_header(&self, name: &str) -> Option<String>;
    fn set_response_header(&self, name: &str, value: &str);
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    fn body(&self, which: Body, start: usize, len: usize) -> Option<Vec<u8>>;

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<HostMetric>;
    fn increment(&self, metric: HostMetric, by: i64);
    fn record(&self, metric: HostMetric, value: u64);

    /// Sends an HTTP call to `cluster`; returns the call's token.
    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u32,
    ) -> Result<u32, String>;
    fn call_response_header(&self, name: &str) -> Option<String>;
    fn set_tick_period_ms(&self, ms: u32);
    /// Process-wide data every VM sees (it outlives VMs): the value and its CAS token.
    fn shared_data(&self, key: &str) -> (Option<Vec<u8>>, u32);
    /// Writes shared data if `cas` is still its token (0: whatever it is); false if not.
    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> bool;
    /// Ends the current root context, whose `on_done` answered false.
    fn done(&self);
}
