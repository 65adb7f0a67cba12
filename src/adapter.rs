//! The single adapter from `Host` to proxy-wasm host calls, and the proxy-wasm contexts that
//! forward callbacks to `filter`.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{self, Action, BufferType, ContextType, MapType, MetricType, Status};

use crate::filter::{Root, Shared, Stream};
use crate::headers::HeaderBlock;
use crate::host::{Body, Host, HostMetric, LogLevel, MetricKind};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

pub struct WasmHost;

impl Host for WasmHost {
    fn log(&self, level: LogLevel, msg: &str) {
        let level = match level {
            LogLevel::Trace => types::LogLevel::Trace,
            LogLevel::Debug => types::LogLevel::Debug,
            LogLevel::Info => types::LogLevel::Info,
            LogLevel::Warn => types::LogLevel::Warn,
            LogLevel::Error => types::LogLevel::Error,
            LogLevel::Critical => types::LogLevel::Critical,
        };
        let _ = hostcalls::log(level, msg);
    }

    fn now_nanos(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64)
    }

    fn random_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        // WASI random_get, via std's entropy source.
        let _ = getrandom_fill(&mut b);
        u64::from_le_bytes(b)
    }

    fn request_headers(&self) -> HeaderBlock {
        // The SDK's `get_map` copies every name and value into a `String` and panics on a
        // value that is not UTF-8; read the host's buffer and parse it in place instead.
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host writes a buffer it allocated through the SDK's
        // `proxy_on_memory_allocate` (a `Vec<u8>` of capacity `size`), which we take over.
        let buf = unsafe {
            match proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) {
                Status::Ok if !data.is_null() => Vec::from_raw_parts(data, size, size),
                _ => return HeaderBlock::default(),
            }
        };
        HeaderBlock::parse(buf)
    }

    fn set_request_header(&self, name: &str, value: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
    }

    fn remove_request_header(&self, name: &str) {
        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
    }

    fn response_header(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpResponseHeaders, name)
            .ok()
            .flatten()
    }

    fn set_response_header(&self, name: &str, value: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn body(&self, which: Body, start: usize, len: usize) -> Option<Vec<u8>> {
        let t = match which {
            Body::Request => BufferType::HttpRequestBody,
            Body::Response => BufferType::HttpResponseBody,
            Body::CallResponse => BufferType::HttpCallResponseBody,
        };
        hostcalls::get_buffer(t, start, len).ok().flatten()
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<HostMetric> {
        let t = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        hostcalls::define_metric(t, name).ok().map(HostMetric)
    }

    fn increment(&self, metric: HostMetric, by: i64) {
        let _ = hostcalls::increment_metric(metric.0, by);
    }

    fn record(&self, metric: HostMetric, value: u64) {
        let _ = hostcalls::record_metric(metric.0, value);
    }

    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u32,
    ) -> Result<u32, String> {
        hostcalls::dispatch_http_call(
            cluster,
            headers.to_vec(),
            body,
            vec![],
            Duration::from_millis(u64::from(timeout_ms)),
        )
        .map_err(|s| format!("{s:?}"))
    }

    fn call_response_header(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpCallResponseHeaders, name)
            .ok()
            .flatten()
    }

    fn set_tick_period_ms(&self, ms: u32) {
        let _ = hostcalls::set_tick_period(Duration::from_millis(u64::from(ms)));
    }

    fn shared_data(&self, key: &str) -> (Option<Vec<u8>>, u32) {
        match hostcalls::get_shared_data(key) {
            Ok((value, cas)) => (value, cas.unwrap_or(0)),
            Err(_) => (None, 0),
        }
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> bool {
        let cas = (cas != 0).then_some(cas);
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }

    fn done(&self) {
        let _ = hostcalls::done();
    }
}

fn getrandom_fill(buf: &mut [u8]) -> Result<(), ()> {
    // std's HashMap keys come from WASI random_get; two of them give 128 random bits.
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    for chunk in buf.chunks_mut(8) {
        let mut h = RandomState::new().build_hasher();
        h.write_u8(0);
        let v = h.finish().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    Ok(())
}

thread_local! {
    // One per VM (a VM is single-threaded): every root context the VM runs shares it (the
    // counts, the shadow copies in flight and the ledger), since a config swap replaces the
    // root context but keeps the VM.
    static VM: Shared = Shared::new(WasmHost.random_u64());
}

pub struct AviaryRoot(Root);

impl AviaryRoot {
    /// The root context `context_id`, as Envoy numbers it.
    pub fn new(context_id: u32) -> Self {
        AviaryRoot(Root::new(context_id, VM.with(Shared::clone)))
    }
}

impl Context for AviaryRoot {
    fn on_done(&mut self) -> bool {
        self.0.on_done(&WasmHost)
    }

    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _: usize,
    ) {
        self.0
            .on_http_call_response(&WasmHost, token, num_headers, body_size);
    }
}

impl RootContext for AviaryRoot {
    fn on_vm_start(&mut self, _: usize) -> bool {
        self.0.on_vm_start(&WasmHost);
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        let raw = self.get_plugin_configuration();
        self.0.on_configure(&WasmHost, raw.as_deref())
    }

    fn on_tick(&mut self) {
        self.0.on_tick(&WasmHost);
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AviaryStream(self.0.new_stream())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

pub struct AviaryStream(Stream);

impl Context for AviaryStream {}

impl HttpContext for AviaryStream {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "crash-probe")]
        crash_probe();
        self.0.on_request_headers(&WasmHost, end_of_stream);
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.0.on_request_body(&WasmHost, size, end_of_stream);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        self.0.on_response_headers(&WasmHost, end_of_stream);
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.0.on_response_body(&WasmHost, size, end_of_stream);
        Action::Continue
    }

    fn on_log(&mut self) {
        self.0.on_log(&WasmHost);
    }
}

/// Test-only: kills the VM on request, so tests can measure what a dead plugin does to traffic
/// under each failure policy. The release `.wasm` is built without this feature.
#[cfg(feature = "crash-probe")]
#[allow(clippy::panic)]
fn crash_probe() {
    if let Ok(Some(_)) =
        hostcalls::get_map_value(MapType::HttpRequestHeaders, "x-aviary-crash-probe")
    {
        panic!("crash probe");
    }
}
