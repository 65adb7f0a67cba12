//! The edges: everything that talks to the outside world. Metrics sources (Envoy admin,
//! Prometheus), config sinks (ECDS file, JSON file, Istio WasmPlugin), webhooks, and the
//! crash-safe state store. Edges import only the core (and the shared clock and error).

pub mod fs;
pub mod history;
pub(crate) mod http;
pub mod records;
pub mod sink;
pub mod source;
pub mod store;
pub mod webhook;
