//! aviaryctl: walks a canary through a schedule, judges gates against the baseline and rewrites
//! the Aviary plugin config to promote, hold or roll back. The decision step is pure
//! (`step`); sources, sinks, webhooks and the clock sit at the edges.

pub mod clock;
pub mod demo;
pub mod error;
pub mod gates;
pub mod observe;
pub mod report;
pub mod runner;
pub mod sink;
pub mod source;
pub mod spec;
pub mod state;
pub mod stats;
pub mod step;
pub mod webhook;
