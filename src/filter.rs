//! The filter's behaviour, written against `Host` only: configuration lifecycle (root) and the
//! per-request flow (stream). The adapter forwards proxy-wasm callbacks here.

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;

use crate::cidr::parse_socket_ip;
use crate::config::{Compiled, ConfigError};
use crate::hash::SplitMix64;
use crate::host::{Host, LogLevel, MetricKind};
use crate::matcher::RequestView;
use crate::metrics::{self, stat_name, CLASSES, CLASS_LOCAL, CLASS_RESET};
use crate::routing::{decide, Reason};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Metric ids, resolved once per configuration so the request path never builds a name.
#[derive(Debug, Clone)]
pub struct MetricIds {
    pub requests: Vec<[u32; Reason::ALL.len()]>,
    pub responses: Vec<[u32; CLASSES.len()]>,
    pub duration: Vec<u32>,
    pub override_rejected: u32,
}

/// A configuration in force: compiled config plus its metric ids. Streams hold an `Rc` to the
/// one that was active when they started, so a reconfigure never changes a request mid-flight.
#[derive(Debug)]
pub struct Active {
    pub cfg: Compiled,
    pub ids: MetricIds,
}

/// Per-VM state owned by the root context.
pub struct Root {
    pub active: Option<Rc<Active>>,
    pub rng: Rc<RefCell<SplitMix64>>,
}

impl Root {
    pub fn new(host: &dyn Host) -> Root {
        Root {
            active: None,
            rng: Rc::new(RefCell::new(SplitMix64::new(host.random_u64()))),
        }
    }

    pub fn on_vm_start(&self, host: &dyn Host) {
        host.log(LogLevel::Info, &format!("aviary {VERSION} starting"));
    }

    /// Applies a new configuration, or rejects it and keeps the last good one.
    pub fn on_configure(&mut self, host: &dyn Host, raw: Option<&[u8]>) -> bool {
        match activate(host, raw) {
            Ok(active) => {
                host.log(LogLevel::Info, &describe(&active.cfg));
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

    pub fn new_stream(&self) -> Stream {
        Stream {
            active: self.active.clone(),
            rng: self.rng.clone(),
            version: None,
            start_ns: 0,
            status: None,
        }
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
    format!(
        "aviary {VERSION}: config {:016x} active for service {}: {}, {} rules, sticky={}{kill}",
        cfg.digest,
        cfg.service,
        weights.join(" "),
        cfg.rules.len(),
        cfg.sticky.is_some(),
    )
}

fn activate(host: &dyn Host, raw: Option<&[u8]>) -> Result<Active, ConfigError> {
    let raw = raw.filter(|r| !r.is_empty()).ok_or(ConfigError {
        field: String::new(),
        message: "no configuration given; set the plugin configuration to Aviary's JSON (README, \"Configuration\")".into(),
    })?;
    let cfg = crate::config::parse_and_compile(raw)?;
    let ids = define_metrics(host, &cfg)?;
    Ok(Active { cfg, ids })
}

fn define_metrics(host: &dyn Host, cfg: &Compiled) -> Result<MetricIds, ConfigError> {
    let svc = cfg.service.as_str();
    let define = |kind, name: String| {
        host.define_metric(kind, &name).ok_or_else(|| ConfigError {
            field: String::new(),
            message: format!("the host refused to define metric `{name}`"),
        })
    };
    let mut ids = MetricIds {
        requests: Vec::new(),
        responses: Vec::new(),
        duration: Vec::new(),
        override_rejected: define(
            MetricKind::Counter,
            stat_name(metrics::OVERRIDE_REJECTED, &[("service", svc)]),
        )?,
    };
    for v in &cfg.versions {
        let labels = [("service", svc), ("version", v.name.as_str())];
        let mut req = [0; Reason::ALL.len()];
        for (slot, reason) in req.iter_mut().zip(Reason::ALL) {
            let mut l = labels.to_vec();
            l.push(("reason", reason));
            *slot = define(MetricKind::Counter, stat_name(metrics::REQUESTS, &l))?;
        }
        let mut resp = [0; CLASSES.len()];
        for (slot, class) in resp.iter_mut().zip(CLASSES) {
            let mut l = labels.to_vec();
            l.push(("class", class));
            *slot = define(MetricKind::Counter, stat_name(metrics::RESPONSES, &l))?;
        }
        ids.requests.push(req);
        ids.responses.push(resp);
        ids.duration.push(define(
            MetricKind::Histogram,
            stat_name(metrics::DURATION, &labels),
        )?);
        let weight = define(MetricKind::Gauge, stat_name(metrics::WEIGHT, &labels))?;
        let effective = match cfg.kill_switch {
            Some(k) if cfg.versions[k].name == v.name => crate::config::BUCKETS,
            Some(_) => 0,
            None => v.weight_bps,
        };
        host.record(weight, u64::from(effective));
    }
    let digest = define(
        MetricKind::Gauge,
        stat_name(metrics::CONFIG_DIGEST, &[("service", svc)]),
    )?;
    host.record(digest, cfg.digest & DIGEST_GAUGE_MASK);
    Ok(ids)
}

/// The digest gauge keeps 48 bits, which a Prometheus float holds exactly.
pub const DIGEST_GAUGE_MASK: u64 = (1 << 48) - 1;

/// Per-request state of the filter.
pub struct Stream {
    active: Option<Rc<Active>>,
    rng: Rc<RefCell<SplitMix64>>,
    version: Option<usize>,
    start_ns: u64,
    status: Option<u16>,
}

impl Stream {
    pub fn version(&self) -> Option<usize> {
        self.version
    }

    pub fn on_request_headers(&mut self, host: &dyn Host) {
        let Some(active) = self.active.clone() else {
            return;
        };
        let cfg = &active.cfg;
        let req = if cfg.needs_headers {
            RequestView::new(host.request_headers())
        } else {
            RequestView::default()
        };
        let mut source_ip = || -> Option<IpAddr> {
            let raw = host.property(&["source", "address"])?;
            parse_socket_ip(std::str::from_utf8(&raw).ok()?)
        };
        let d = decide(cfg, &req, &mut source_ip, &mut self.rng.borrow_mut());
        let v = &cfg.versions[d.version];
        // A `set` replaces any client-sent value, so a client can never choose its version.
        host.set_request_header(&cfg.routing_header, &v.route_value);
        if let Some(o) = &cfg.override_ {
            if req.header(&o.header).is_some() {
                host.remove_request_header(&o.header);
            }
        }
        for (k, val) in &v.request_headers {
            host.set_request_header(k, val);
        }
        host.increment(active.ids.requests[d.version][d.reason.index()], 1);
        if d.override_rejected {
            host.increment(active.ids.override_rejected, 1);
        }
        self.version = Some(d.version);
        self.start_ns = host.now_nanos();
    }

    pub fn on_response_headers(&mut self, host: &dyn Host) {
        let (Some(active), Some(v)) = (&self.active, self.version) else {
            return;
        };
        self.status = host.response_header(":status").and_then(|s| s.parse().ok());
        let cfg = &active.cfg;
        let version = &cfg.versions[v];
        if let Some(stamp) = &cfg.stamp_header {
            host.set_response_header(stamp, &version.name);
        }
        for (k, val) in &version.response_headers {
            host.set_response_header(k, val);
        }
    }

    pub fn on_log(&mut self, host: &dyn Host) {
        let (Some(active), Some(v)) = (&self.active, self.version) else {
            return;
        };
        let class = match self.status {
            None => CLASS_RESET,
            // Only error statuses can be local replies; skip the property read for the rest.
            Some(s) if s >= 400 && is_local_reply(host) => CLASS_LOCAL,
            Some(s) => metrics::class_of_status(s),
        };
        host.increment(active.ids.responses[v][class], 1);
        let elapsed_ms = host.now_nanos().saturating_sub(self.start_ns) / 1_000_000;
        host.record(active.ids.duration[v], elapsed_ms);
    }
}

fn is_local_reply(host: &dyn Host) -> bool {
    host.property(&["response", "code_details"])
        .is_some_and(|d| d != b"via_upstream")
}
