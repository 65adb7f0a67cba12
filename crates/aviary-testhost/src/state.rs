//! Everything the emulated proxy knows, kept in the wasmtime `Store` so that
//! hosts are independent and tests can run in parallel.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime::{Memory, TypedFunc};

use crate::abi::{LogLevel, MetricKind, Pairs, StreamType};
use crate::policy::Policy;

/// 2024-01-01T00:00:00Z: a fixed, recognisable start for the fake wall clock.
pub(crate) const DEFAULT_EPOCH_NS: u64 = 1_704_067_200 * 1_000_000_000;

/// One captured log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The level the guest logged at (stdout is `Info`, stderr is `Error`, as in Envoy).
    pub level: LogLevel,
    /// The message text.
    pub message: String,
    /// The effective context when the line was logged.
    pub context_id: u32,
    /// Where the line came from.
    pub source: LogSource,
}

/// Where a [`LogEntry`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogSource {
    /// `proxy_log`.
    ProxyLog,
    /// WASI `fd_write` to fd 1.
    Stdout,
    /// WASI `fd_write` to fd 2.
    Stderr,
}

/// A response the guest sent with `proxy_send_local_response`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    /// HTTP status code.
    pub status: u32,
    /// The status code details (Envoy's `response_code_details`).
    pub details: String,
    /// Response body.
    pub body: Vec<u8>,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
    /// gRPC status, `-1` when not a gRPC response.
    pub grpc_status: i32,
}

impl LocalResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as UTF-8 text (lossy).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How a dispatched HTTP call ended, as far as the test has decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// Not answered yet.
    Pending,
    /// Answered with headers (the `:status` value, if any, is kept here).
    Responded {
        /// The `:status` header of the response, if it had one that parsed.
        status: Option<u16>,
    },
    /// Failed (reset); delivered with no headers.
    Failed,
    /// Timed out; delivered with no headers.
    TimedOut,
}

/// An HTTP call the guest dispatched with `proxy_http_call`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCall {
    /// The token returned to the guest, used to answer it.
    pub token: u32,
    /// The effective context that dispatched the call.
    pub context_id: u32,
    /// The root (plugin) context the response is delivered to, as in Envoy.
    pub root_context_id: u32,
    /// The cluster (upstream) name.
    pub upstream: String,
    /// Request headers, including pseudo-headers.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: Vec<(String, String)>,
    /// The timeout the guest asked for (zero means none).
    pub timeout: Duration,
    /// Fake-clock time of the dispatch.
    pub dispatched_at: SystemTime,
    /// What has happened to the call so far.
    pub outcome: CallOutcome,
}

impl HttpCall {
    /// The first value of request header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The request body as UTF-8 text (lossy).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the call still waits for an answer.
    pub fn is_pending(&self) -> bool {
        self.outcome == CallOutcome::Pending
    }
}

/// A `proxy_http_call` attempt, including ones the host refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatchAttempt {
    /// The cluster (upstream) name.
    pub upstream: String,
    /// Request headers.
    pub headers: Vec<(String, String)>,
    /// The status returned to the guest.
    pub status: crate::abi::Status,
    /// The token, when the call was accepted.
    pub token: Option<u32>,
}

/// A metric the guest defined, with its current value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metric {
    /// The name as defined by the guest.
    pub name: String,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// The current value.
    pub value: MetricValue,
}

/// The value of a [`Metric`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricValue {
    /// A counter's total.
    Counter(u64),
    /// A gauge's current value.
    Gauge(i64),
    /// Every value recorded into a histogram, in order.
    Histogram(Vec<u64>),
}

/// The answer to an HTTP call, for [`Host::respond_to_call_with`](crate::Host::respond_to_call_with).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallResponse {
    /// Response headers, including `:status`.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: Vec<u8>,
    /// Response trailers.
    pub trailers: Vec<(String, String)>,
}

impl CallResponse {
    /// A response with `:status` set to `status` and the given body.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            headers: vec![(":status".into(), status.to_string())],
            body: body.into(),
            trailers: Vec::new(),
        }
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds a response trailer.
    pub fn trailer(mut self, name: &str, value: &str) -> Self {
        self.trailers.push((name.into(), value.into()));
        self
    }
}

/// Whether a direction of an HTTP stream is flowing, paused or reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowState {
    /// Not (or no longer) paused.
    Flowing,
    /// The last callback returned `Pause` and the guest has not resumed it.
    Paused,
    /// The guest reset it with `proxy_close_stream`.
    Reset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ContextKind {
    Root,
    Http,
}

#[derive(Debug)]
pub(crate) struct ContextState {
    pub kind: ContextKind,
    pub root_id: u32,
    pub request_headers: Pairs,
    pub request_trailers: Pairs,
    pub response_headers: Pairs,
    pub response_trailers: Pairs,
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    pub properties: BTreeMap<Vec<u8>, Vec<u8>>,
    pub local_response: Option<LocalResponse>,
    pub request_flow: FlowState,
    pub response_flow: FlowState,
    pub resets: Vec<StreamType>,
    pub deleted: bool,
}

impl ContextState {
    pub(crate) fn new(kind: ContextKind, root_id: u32) -> Self {
        Self {
            kind,
            root_id,
            request_headers: Vec::new(),
            request_trailers: Vec::new(),
            response_headers: Vec::new(),
            response_trailers: Vec::new(),
            request_body: Vec::new(),
            response_body: Vec::new(),
            properties: BTreeMap::new(),
            local_response: None,
            request_flow: FlowState::Flowing,
            response_flow: FlowState::Flowing,
            resets: Vec::new(),
            deleted: false,
        }
    }
}

#[derive(Debug)]
pub(crate) struct MetricState {
    pub name: String,
    pub kind: MetricKind,
    pub counter: u64,
    pub gauge: i64,
    pub samples: Vec<u64>,
}

impl MetricState {
    pub(crate) fn snapshot(&self) -> Metric {
        let value = match self.kind {
            MetricKind::Counter => MetricValue::Counter(self.counter),
            MetricKind::Gauge => MetricValue::Gauge(self.gauge),
            MetricKind::Histogram => MetricValue::Histogram(self.samples.clone()),
        };
        Metric {
            name: self.name.clone(),
            kind: self.kind,
            value,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Queue {
    pub name: String,
    pub vm_id: String,
    pub owner_root: u32,
    pub items: VecDeque<Vec<u8>>,
}

/// The response being delivered to `proxy_on_http_call_response`.
#[derive(Debug, Default)]
pub(crate) struct DeliveredResponse {
    pub headers: Pairs,
    pub body: Vec<u8>,
    pub trailers: Pairs,
}

/// SplitMix64: tiny, seedable, and good enough for `random_get` in tests.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// The store data.
pub(crate) struct HostState {
    pub memory: Option<Memory>,
    pub alloc: Option<TypedFunc<i32, i32>>,

    pub realtime_ns: u64,
    pub monotonic_ns: u64,
    pub rng: Rng,
    pub env: Vec<(String, String)>,

    pub log_level: LogLevel,
    pub logs: Vec<LogEntry>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub echo_logs: bool,

    pub properties: BTreeMap<Vec<u8>, Vec<u8>>,
    pub vm_id: String,
    pub vm_config: Vec<u8>,
    pub plugin_config: Vec<u8>,

    pub root_id: u32,
    pub next_context_id: u32,
    pub contexts: BTreeMap<u32, ContextState>,
    /// The context the host is calling into, reset after each callback.
    pub active_context: u32,
    /// `active_context`, unless the guest changed it with `proxy_set_effective_context`.
    pub effective_context: u32,
    pub pending_done: Vec<u32>,
    pub done_requested: Vec<u32>,

    pub tick_period_ms: u32,
    pub next_tick_ns: Option<u64>,

    pub metrics: Vec<MetricState>,

    pub shared_data: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    pub next_cas: u32,
    pub queues: Vec<Queue>,
    pub queue_ready: Vec<(u32, u32)>,

    pub clusters: Vec<String>,
    pub calls: Vec<HttpCall>,
    pub attempts: Vec<DispatchAttempt>,
    pub forced_dispatch_status: Option<crate::abi::Status>,
    pub delivering: Option<DeliveredResponse>,
    pub status: (u32, String),

    pub policy: Policy,
}

impl HostState {
    pub(crate) fn new() -> Self {
        Self {
            memory: None,
            alloc: None,
            realtime_ns: DEFAULT_EPOCH_NS,
            monotonic_ns: 1_000_000_000,
            rng: Rng::new(0),
            env: Vec::new(),
            log_level: LogLevel::Trace,
            logs: Vec::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            echo_logs: std::env::var_os("AVIARY_TESTHOST_ECHO").is_some(),
            properties: BTreeMap::new(),
            vm_id: String::new(),
            vm_config: Vec::new(),
            plugin_config: Vec::new(),
            root_id: 1,
            next_context_id: 2,
            contexts: BTreeMap::new(),
            active_context: 0,
            effective_context: 0,
            pending_done: Vec::new(),
            done_requested: Vec::new(),
            tick_period_ms: 0,
            next_tick_ns: None,
            metrics: Vec::new(),
            shared_data: HashMap::new(),
            next_cas: 1,
            queues: Vec::new(),
            queue_ready: Vec::new(),
            clusters: Vec::new(),
            calls: Vec::new(),
            attempts: Vec::new(),
            forced_dispatch_status: None,
            delivering: None,
            status: (0, String::new()),
            policy: Policy::default(),
        }
    }

    pub(crate) fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.realtime_ns)
    }

    pub(crate) fn advance(&mut self, by: Duration) {
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.realtime_ns = self.realtime_ns.saturating_add(ns);
        self.monotonic_ns = self.monotonic_ns.saturating_add(ns);
    }

    /// The live (not deleted) context the guest is acting as.
    pub(crate) fn effective(&mut self) -> Option<&mut ContextState> {
        self.contexts
            .get_mut(&self.effective_context)
            .filter(|c| !c.deleted)
    }

    /// The live HTTP stream the guest is acting as.
    pub(crate) fn effective_http(&mut self) -> Option<&mut ContextState> {
        self.effective().filter(|c| c.kind == ContextKind::Http)
    }

    pub(crate) fn push_log(&mut self, level: LogLevel, message: String, source: LogSource) {
        if level < self.log_level {
            return;
        }
        if self.echo_logs {
            eprintln!(
                "[aviary-testhost ctx={}] {level}: {message}",
                self.effective_context
            );
        }
        if level >= LogLevel::Error {
            self.policy
                .admit(crate::policy::Category::ErrorLog, &message);
        }
        self.logs.push(LogEntry {
            level,
            message,
            context_id: self.effective_context,
            source,
        });
    }

    /// Looks a property up: the effective stream's own values first, then the host's.
    pub(crate) fn property(&mut self, path: &[u8]) -> Option<Vec<u8>> {
        if let Some(v) = self.effective().and_then(|c| c.properties.get(path)) {
            return Some(v.clone());
        }
        self.properties.get(path).cloned()
    }
}

/// Renders a NUL-separated property path for messages: `source.address`.
pub(crate) fn display_path(path: &[u8]) -> String {
    String::from_utf8_lossy(path).replace('\0', ".")
}
