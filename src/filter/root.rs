//! The root context: applies configurations, drives the tick (shadow dispatch, metric flush)
//! and receives the answers of shadow calls.

use std::cell::RefCell;
use std::rc::Rc;

use crate::active::Active;
use crate::filter::shared::Shared;
use crate::filter::stream::Stream;
use crate::host::{Host, LogLevel};
use crate::tally::Tally;
use aviary_contract::config::Compiled;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Tick period while shadows are configured: how long a queued mirror waits for dispatch.
pub const SHADOW_TICK_MS: u32 = 5;

/// Per-VM state owned by the root context.
pub struct Root {
    pub active: Option<Rc<Active>>,
    pub shared: Shared,
    tick_ms: u32,
    since_flush_ms: u32,
}

impl Root {
    /// `tally` is the VM's, shared by every root context the VM runs.
    pub fn new(host: &dyn Host, tally: Rc<RefCell<Tally>>) -> Root {
        Root {
            active: None,
            shared: Shared::new(host.random_u64(), tally),
            tick_ms: 0,
            since_flush_ms: 0,
        }
    }

    pub fn on_vm_start(&self, host: &dyn Host) {
        host.log(LogLevel::Info, &format!("aviary {VERSION} starting"));
    }

    /// Applies a new configuration, or rejects it and keeps the last good one.
    pub fn on_configure(&mut self, host: &dyn Host, raw: Option<&[u8]>) -> bool {
        match Active::new(host, &self.shared.tally, raw) {
            Ok(active) => {
                host.log(LogLevel::Info, &describe(&active.cfg));
                let flush = active.cfg.metrics.flush_interval_ms;
                let plugin_shadows = active
                    .cfg
                    .shadow
                    .as_ref()
                    .is_some_and(|s| s.envoy_mirror_headers.is_none());
                self.tick_ms = if plugin_shadows {
                    SHADOW_TICK_MS.min(flush)
                } else {
                    flush
                };
                host.set_tick_period_ms(self.tick_ms);
                self.active = Some(Rc::new(active));
                true
            }
            Err(e) => {
                let kept = match &self.active {
                    Some(a) => format!("keeping config {:016x}", a.cfg.digest),
                    None => "no config is active, so requests pass through unrouted".into(),
                };
                host.log(
                    LogLevel::Error,
                    &format!("aviary {VERSION}: rejected configuration: {e}; {kept}"),
                );
                false
            }
        }
    }

    pub fn on_tick(&mut self, host: &dyn Host) {
        self.shared.shadows.borrow_mut().on_tick(host);
        self.since_flush_ms = self.since_flush_ms.saturating_add(self.tick_ms);
        let interval = self
            .active
            .as_ref()
            .map_or(0, |a| a.cfg.metrics.flush_interval_ms);
        if self.since_flush_ms >= interval {
            self.since_flush_ms = 0;
            self.shared.tally.borrow_mut().flush(host);
        }
    }

    /// The root context is going away: send what it counted.
    pub fn on_done(&self, host: &dyn Host) {
        self.shared.tally.borrow_mut().flush(host);
    }

    pub fn on_http_call_response(
        &self,
        host: &dyn Host,
        token: u32,
        num_headers: usize,
        body_size: usize,
    ) {
        self.shared
            .shadows
            .borrow_mut()
            .on_call_response(host, token, num_headers, body_size);
    }

    pub fn new_stream(&self) -> Stream {
        Stream::new(self.active.clone(), self.shared.clone())
    }
}

fn describe(cfg: &Compiled) -> String {
    let weights: Vec<String> = cfg
        .versions
        .iter()
        .map(|v| format!("{}={}bps", v.name, v.weight_bps))
        .collect();
    let kill = cfg
        .kill_switch
        .map(|k| format!(", killSwitch={}", cfg.versions[k].name))
        .unwrap_or_default();
    let shadows = cfg
        .shadow
        .as_ref()
        .map(|s| {
            format!(
                ", shadow={}bps to {} target(s)",
                s.share_bps,
                s.targets.len()
            )
        })
        .unwrap_or_default();
    format!(
        "aviary {VERSION}: config {:016x} active for service {}: {}, {} rules, sticky={}{kill}{shadows}",
        cfg.digest,
        cfg.service,
        weights.join(" "),
        cfg.rules.len(),
        cfg.sticky.is_some(),
    )
}
