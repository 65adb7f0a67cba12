//! The filter's behaviour, written against `Host` only: the configuration lifecycle (root)
//! and the per-request flow (stream). The adapter forwards proxy-wasm callbacks here.

mod mirror;
mod root;
mod shared;
mod stream;

#[cfg(test)]
mod tests;

pub use root::{Root, ACTIVE_KEY, SHADOW_TICK_MS, VERSION};
pub use shared::Shared;
pub use stream::Stream;
