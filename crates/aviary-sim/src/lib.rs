//! Simulation tools for Aviary's demo, end-to-end tests and benchmarks.
//!
//! - [`modelserver`]: simulated ML model versions with seeded, deterministic predictions,
//!   latency, error rates, label disagreement and failure modes.
//! - [`loadgen`]: a keyed HTTP/1.1 load generator with exact per-status and per-header counts.
//! - [`envoy`]: a harness running the real Envoy binary as an owned child process.
//! - [`http`]: the small keep-alive HTTP/1.1 client the others use, handy in tests.
//!
//! Everything binds and connects to 127.0.0.1 only.
//!
//! ```no_run
//! use aviary_sim::{EnvoyBuilder, LoadConfig, ModelServer, ModelServerConfig};
//!
//! # fn main() -> anyhow::Result<()> {
//! let stable = ModelServer::spawn(ModelServerConfig::new("v1"))?;
//! let canary = ModelServer::spawn(ModelServerConfig {
//!     disagree_rate: 0.05,
//!     ..ModelServerConfig::new("v2")
//! })?;
//! let shipped = std::fs::read_to_string("envoy/aviary-header-match.yaml")?;
//! let envoy = EnvoyBuilder::new(aviary_sim::shipped_config_template(&shipped))
//!     .path_var("WASM", aviary_sim::find_wasm()?)
//!     .var("STABLE_PORT", stable.port())
//!     .var("CANARY_PORT", canary.port())
//!     .start()?;
//! let port = envoy.listener_port("ingress")?;
//! let report = aviary_sim::run_load(&LoadConfig {
//!     users: 500,
//!     ..LoadConfig::requests(format!("http://127.0.0.1:{port}/predict"), 1000)
//! })?;
//! println!("{}", report.summary);
//! assert_eq!(report.summary.total, 1000);
//! let canary_rq = envoy.counter("cluster.canary.upstream_rq_completed")?;
//! # let _ = canary_rq;
//! # Ok(())
//! # }
//! ```

pub mod envoy;
pub mod http;
pub mod loadgen;
pub mod modelserver;
pub mod rng;

pub use envoy::{
    find_envoy, find_wasm, free_port, render_template, shipped_config_template, validate,
    validate_yaml, workspace_root, EnvoyBuilder, EnvoyProcess,
};
pub use http::{HttpConnection, HttpRequest, HttpResponse, Url};
pub use loadgen::{run as run_load, LoadConfig, LoadReport, LoadSummary};
pub use modelserver::{
    ControlUpdate, Fault, Latency, LatencyTail, ModelServer, ModelServerConfig, Prediction,
    ScoreDistribution, ServerStats,
};
