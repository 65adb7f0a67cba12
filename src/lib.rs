//! Aviary: a proxy-wasm HTTP filter that routes each request to a version of a service
//! (by rules, a sticky key hash or a percentage), stamps it, mirrors it to shadows and counts
//! per-version metrics. Only `adapter` and the wiring below touch proxy-wasm; the rest is
//! plain Rust, shared with the rollout driver and tested natively.

pub mod active;
pub mod extract;
pub mod filter;
pub mod headers;
pub mod host;
pub mod ledger;
pub mod request;
pub mod routing;
pub mod shadow;
pub mod tally;

#[cfg(target_arch = "wasm32")]
mod adapter;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        let _ = proxy_wasm::hostcalls::log(
            proxy_wasm::types::LogLevel::Critical,
            &format!("aviary panicked: {info}"),
        );
    }));
    proxy_wasm::set_root_context(|id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(adapter::AviaryRoot::new(id))
    });
}}
