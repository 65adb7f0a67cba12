//! The root context: applies configurations, drives the tick (shadow dispatch, metric flush,
//! the ledger of open copies) and receives the answers of shadow calls.
//!
//! A config swap keeps the VM and gives it a new root context; Envoy ends the old one right
//! after. Every root shares the VM's state (`Shared`); the live one dispatches, and one that is
//! ending stays until the calls it dispatched are answered, so no answer is lost.

use std::rc::Rc;

use crate::active::Active;
use crate::filter::shared::Shared;
use crate::filter::stream::Stream;
use crate::host::{Host, LogLevel};
use aviary_contract::config::Compiled;
use aviary_contract::metrics::{self, stat_name, Uncompared};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Tick period while shadows are configured: how long a queued mirror waits for dispatch.
pub const SHADOW_TICK_MS: u32 = 5;

/// Shared-data key where VMs publish the config in force, for the log of a rejected one.
pub const ACTIVE_KEY: &str = "aviary.active_config";

pub struct Root {
    /// Envoy's id of this root context.
    id: u32,
    pub active: Option<Rc<Active>>,
    pub shared: Shared,
    tick_ms: u32,
    since_flush_ms: u32,
    /// Configured and not ending: counted in the VM's live roots.
    live: bool,
    /// `on_done` came; `finished` once the host was told it may delete this context.
    ending: bool,
    finished: bool,
}

impl Root {
    /// Root context `id` of the VM whose state is `shared`.
    pub fn new(id: u32, shared: Shared) -> Root {
        Root {
            id,
            active: None,
            shared,
            tick_ms: 0,
            since_flush_ms: 0,
            live: false,
            ending: false,
            finished: false,
        }
    }

    pub fn on_vm_start(&self, host: &dyn Host) {
        host.log(LogLevel::Info, &format!("aviary {VERSION} starting"));
    }

    /// Applies a new configuration, or rejects it and says which config stays in force.
    pub fn on_configure(&mut self, host: &dyn Host, raw: Option<&[u8]>) -> bool {
        match Active::new(host, &self.shared.tally, raw) {
            Ok(active) => {
                let summary = describe(&active.cfg);
                host.log(LogLevel::Info, &format!("aviary {VERSION}: {summary}"));
                host.set_shared_data(ACTIVE_KEY, summary.as_bytes(), 0);
                self.active = Some(Rc::new(active));
                self.tick_ms = 0;
                self.set_tick(host);
                if !self.live {
                    self.live = true;
                    self.shared.shadows.borrow_mut().live_roots += 1;
                }
                true
            }
            Err(e) => {
                let kept = match &self.active {
                    Some(a) => format!("keeping {}", describe(&a.cfg)),
                    // Envoy tries a config in a fresh VM first; the VMs serving traffic
                    // published theirs.
                    None => match host.shared_data(ACTIVE_KEY).0 {
                        Some(s) => format!(
                            "Envoy keeps serving the last accepted one: {}",
                            std::str::from_utf8(&s).unwrap_or("?")
                        ),
                        None => "no Aviary config is in force in this Envoy yet, and Envoy does not apply a rejected one (an ECDS filter without a config answers 500; a static config fails to load)".into(),
                    },
                };
                host.log(
                    LogLevel::Error,
                    &format!("aviary {VERSION}: rejected configuration: {e}; {kept}"),
                );
                false
            }
        }
    }

    /// Ticks every `SHADOW_TICK_MS` while shadow copies are configured or still in this VM's
    /// hands (they may outlive their config), else at the flush interval.
    fn set_tick(&mut self, host: &dyn Host) {
        let Some(a) = &self.active else {
            return;
        };
        let flush = a.cfg.metrics.flush_interval_ms;
        let shadows = a
            .cfg
            .shadow
            .as_ref()
            .is_some_and(|s| s.envoy_mirror_headers.is_none())
            || self.shared.shadows.borrow().has_work();
        let ms = if shadows {
            SHADOW_TICK_MS.min(flush)
        } else {
            flush
        };
        if ms != self.tick_ms {
            self.tick_ms = ms;
            host.set_tick_period_ms(ms);
        }
    }

    pub fn on_tick(&mut self, host: &dyn Host) {
        let dispatches = !self.ending || self.shared.shadows.borrow().live_roots == 0;
        if dispatches {
            self.shared.shadows.borrow_mut().on_tick(host, self.id);
            self.since_flush_ms = self.since_flush_ms.saturating_add(self.tick_ms);
            let interval = self
                .active
                .as_ref()
                .map_or(0, |a| a.cfg.metrics.flush_interval_ms);
            if self.since_flush_ms >= interval {
                self.since_flush_ms = 0;
                self.flush(host);
            }
            self.set_tick(host);
        }
        self.finish_if_idle(host);
    }

    /// Sends the VM's counts, then writes its open copies to the ledger (so the ledger agrees
    /// with what Envoy counted) and counts the copies of VMs that died as `vm_lost`.
    pub fn flush(&self, host: &dyn Host) {
        self.shared.tally.borrow_mut().flush(host);
        let interval = self
            .active
            .as_ref()
            .map_or(0, |a| a.cfg.metrics.flush_interval_ms);
        let open = self.shared.shadows.borrow().open();
        let now_ms = host.now_nanos() / 1_000_000;
        let stale_ms = 3 * u64::from(interval) + 1000;
        let lost = self
            .shared
            .ledger
            .borrow_mut()
            .sync(host, now_ms, &open, stale_ms);
        if lost.is_empty() {
            return;
        }
        let mut tally = self.shared.tally.borrow_mut();
        let mut total = 0;
        for (service, version, n) in &lost {
            let labels = [
                ("service", service.as_str()),
                ("version", version.as_str()),
                (Uncompared::KEY, Uncompared::VmLost.as_str()),
            ];
            if let Some(slot) = tally.counter(host, &stat_name(metrics::SHADOW_UNCOMPARED, &labels))
            {
                tally.add(slot, *n);
                total += n;
            }
        }
        tally.flush(host);
        host.log(
            LogLevel::Warn,
            &format!("aviary: {total} shadow copies were in flight in a VM that is gone; counted as vm_lost"),
        );
    }

    /// The root context is going away: send what it counted. It stays (answers false) while
    /// calls it dispatched await their answers, and tells the host once they are in.
    pub fn on_done(&mut self, host: &dyn Host) -> bool {
        if self.live {
            self.live = false;
            self.shared.shadows.borrow_mut().live_roots -= 1;
        }
        self.ending = true;
        self.flush(host);
        self.finished = self.shared.shadows.borrow().owned_by(self.id) == 0;
        self.finished
    }

    fn finish_if_idle(&mut self, host: &dyn Host) {
        if self.ending && !self.finished && self.shared.shadows.borrow().owned_by(self.id) == 0 {
            self.finished = true;
            host.done();
        }
    }

    pub fn on_http_call_response(
        &mut self,
        host: &dyn Host,
        token: u32,
        num_headers: usize,
        body_size: usize,
    ) {
        self.shared
            .shadows
            .borrow_mut()
            .on_call_response(host, token, num_headers, body_size);
        self.finish_if_idle(host);
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
        "config {:016x} active for service {}: {}, {} rules, sticky={}{kill}{shadows}",
        cfg.digest,
        cfg.service,
        weights.join(" "),
        cfg.rules.len(),
        cfg.sticky.is_some(),
    )
}
