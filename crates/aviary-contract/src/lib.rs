//! The contract between Aviary's filter and its driver: the plugin config schema, its reader and
//! compiler, metric names and label values, units, and the hashes. Both sides build on this
//! crate, so nothing here is defined twice. No proxy-wasm and no I/O.

pub mod cidr;
pub mod config;
pub mod hash;
pub mod matcher;
pub mod metrics;
pub mod units;
