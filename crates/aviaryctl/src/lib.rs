//! aviaryctl: walks a canary through a schedule, judges gates against the baseline and rewrites
//! the Aviary plugin config to promote, hold or roll back.
//!
//! The crate is layered; a module only imports from the layers below it (enforced by
//! `tests/layers.rs`):
//!
//! - [`core`]: pure, no I/O: the rollout spec, observations, statistics, gates and the
//!   decision step;
//! - [`edges`]: the outside world: metrics sources, config sinks, webhooks, the state store;
//! - [`report`]: the reports rendered from a rollout's state;
//! - [`runner`]: the loop that feeds the step and carries out its actions through the edges.
//!
//! [`clock`] and [`error`] are shared by every layer.

pub mod clock;
pub mod core;
pub mod edges;
pub mod error;
pub mod report;
pub mod runner;
