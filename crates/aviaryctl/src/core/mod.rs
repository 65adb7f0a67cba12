//! The pure core: no I/O, no clock. The spec, what a metrics read observed, the statistics,
//! the gates and the decision step. Imports nothing from the edges, the runner or the reports.

pub mod gates;
pub mod observe;
pub mod spec;
pub mod stats;
pub mod step;
