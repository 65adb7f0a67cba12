//! A proxy-wasm ABI 0.2.1 host, built on wasmtime, that runs the real
//! release `.wasm` of the Aviary filter so tests exercise exactly what Envoy
//! loads.
//!
//! # What it emulates
//!
//! * **Lifecycle**: `_initialize`/`_start`, `proxy_on_context_create`,
//!   `proxy_on_vm_start`, `proxy_on_configure`, the HTTP stream callbacks,
//!   `proxy_on_done`/`proxy_on_log`/`proxy_on_delete` (and `proxy_done`),
//!   `proxy_on_tick`, `proxy_on_http_call_response`, `proxy_on_queue_ready`.
//! * **Header and trailer maps** (all map types, incl. HTTP-call response
//!   headers/trailers), with Envoy's lowercasing and replace semantics.
//! * **Buffers**: request/response bodies, plugin and VM configuration and
//!   the HTTP-call response body; set_buffer_bytes supports what Envoy
//!   supports (prepend, replace all, append) and refuses the rest.
//! * **Properties** set by the test, per host or per stream (paths are
//!   `\0`-separated: `"source\0address"`).
//! * **Logs** (`proxy_log`, stdout/stderr), **metrics** (counters, gauges,
//!   histograms keeping every sample, with Envoy's rules), **shared data**
//!   with CAS, **shared queues**.
//! * **HTTP calls**: clusters must be declared ([`Host::with_cluster`]) and
//!   `:method`, `:path`, `:authority` present, else `BadArgument`, as in
//!   Envoy. The test answers, fails or times out each call whenever it likes.
//!   As in Envoy, the answer goes to the *root* context
//!   (`proxy_on_http_call_response(root_id, token, ..)`) even if the stream
//!   that dispatched it is gone; the Rust SDK routes it by token and drops it
//!   in that case.
//! * **Time**: a fake clock behind `proxy_get_current_time_nanoseconds` and
//!   WASI `clock_time_get`; the test advances it, fires ticks and lets call
//!   timeouts expire ([`Host::run_for`]).
//! * **WASI**: `fd_write`, `clock_time_get`, `clock_res_get`, `random_get`
//!   (seeded, deterministic), `environ_*`, `args_*`, `proc_exit`,
//!   `fd_fdstat_get`, `fd_prestat_*`, `fd_close`, `fd_read`, `sched_yield`.
//!
//! # Strictness
//!
//! Every import the host does not implement is linked to a trap that names
//! it. Calls in a [`Category`] (local responses, HTTP calls, unknown
//! property reads, error/critical logs, stream resets) fail the step that
//! made them unless the test declared them first with [`Host::allow`],
//! [`Host::allow_matching`], [`Host::expect`] or [`Host::expect_matching`].
//! Guest traps (a panic in the filter) fail the step with the panic message,
//! the recent logs and the wasm backtrace, and make the instance unusable.
//! Expectations not met, and problems a test ignored, panic when the host is
//! dropped (or fail [`Host::verify`]).
//!
//! Set `AVIARY_TESTHOST_ECHO=1` to also print every guest log line to stderr
//! as it happens.
//!
//! # Example
//!
//! ```no_run
//! use aviary_testhost::prelude::*;
//!
//! # fn main() -> anyhow::Result<()> {
//! let host = Host::release()? // or Host::load(path); compiled once per test binary
//!     .with_property("plugin_name", "aviary")
//!     .with_cluster("ml-shadow")
//!     .with_random_seed(7);
//! host.start_vm()?;
//! // Aviary's plugin config (README, "Configuration"): everyone to `canary`, every request
//! // mirrored to the `ml-shadow` cluster, counts sent to the host on every tick.
//! host.configure(
//!     r#"{"service": "recsys",
//!         "versions": [{"name": "stable", "weight": 0}, {"name": "canary", "weight": 10000}],
//!         "sticky": {"keys": [{"header": "x-user-id"}]},
//!         "shadow": {"targets": [{"version": "canary-shadow", "cluster": "ml-shadow"}], "share": 10000},
//!         "metrics": {"flushIntervalMs": 5}}"#,
//! )?
//! .expect_ok()?;
//!
//! let s = host.http_stream()?;
//! s.request_headers(
//!     &[(":method", "GET"), (":path", "/predict"), (":authority", "svc"), ("x-user-id", "u1")],
//!     true,
//! )
//! .expect_continue()?;
//! assert_eq!(s.request_header("x-aviary-version").as_deref(), Some("canary"));
//! s.response_headers(&[(":status", "200")], true).expect_continue()?;
//! s.finish()?; // on_done, on_log, on_delete
//!
//! // The tick sends the batched counts and dispatches the shadow copy.
//! host.allow(Category::HttpCall);
//! host.advance_clock(std::time::Duration::from_millis(5));
//! host.tick()?;
//! let requests = "aviary_requests_total.service.recsys.version.canary.reason.sticky";
//! assert_eq!(host.counter(requests), Some(1));
//! if let Some(call) = host.last_call() {
//!     host.respond_to_call(call.token, 200, &[], "ok")?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Raw access is there too: [`Host::call_export`] calls any export with any
//! arguments, and [`Host::exports`]/[`Host::imports`] list the module's ABI.

mod abi;
mod engine;
mod host;
mod imports;
mod policy;
mod state;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

pub use abi::{Action, BufferType, LogLevel, MapType, MetricKind, Status, StreamType};
pub use host::{
    ActionResultExt, Configured, ConfiguredResultExt, Host, HttpStream, PropertyPath, PropertyValue,
};
pub use policy::Category;
pub use state::{
    CallOutcome, CallResponse, DispatchAttempt, FlowState, HttpCall, LocalResponse, LogEntry,
    LogSource, Metric, MetricValue,
};
pub use wasmtime::Val;

/// Everything a test usually needs: `use aviary_testhost::prelude::*;`.
pub mod prelude {
    pub use crate::{
        release_wasm, Action, ActionResultExt, CallOutcome, CallResponse, Category, Configured,
        ConfiguredResultExt, FlowState, Host, HttpCall, HttpStream, LocalResponse, LogLevel,
        Status, StreamType,
    };
}

/// The path of the release build of the filter:
/// `$AVIARY_WASM` if set, else
/// `<target dir>/wasm32-wasip1/release/aviary.wasm` in this workspace (the
/// target dir is `$CARGO_TARGET_DIR` or `<workspace root>/target`).
/// Fails with instructions if the file is missing.
pub fn release_wasm() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("AVIARY_WASM") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "AVIARY_WASM points to {}, which does not exist",
            path.display()
        );
    }
    let root = workspace_root(Path::new(env!("CARGO_MANIFEST_DIR")));
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    let path = target.join("wasm32-wasip1/release/aviary.wasm");
    if path.is_file() {
        return Ok(path);
    }
    bail!(
        "the release wasm is not built: {} does not exist. Run `make build` first \
         (it runs `cargo build --release --target wasm32-wasip1 -p aviary`), \
         or point AVIARY_WASM at a built module",
        path.display()
    )
}

/// The nearest ancestor whose Cargo.toml declares `[workspace]`.
fn workspace_root(start: &Path) -> PathBuf {
    start
        .ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|text| text.lines().any(|l| l.trim() == "[workspace]"))
        })
        .unwrap_or(start)
        .to_path_buf()
}
