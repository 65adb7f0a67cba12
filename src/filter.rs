//! The filter's behaviour, written against `Host` only: configuration lifecycle (root) and the
//! per-request flow (stream). The adapter forwards proxy-wasm callbacks here.

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;

use crate::extract::{self, BodyBuffer, Fields, Unusable};
use crate::host::{Body, Host, LogLevel, MetricKind};
use crate::request::RequestView;
use crate::routing::{conditions_hold, decide, in_share, sticky_key};
use crate::shadow::{copy_header, Job, Outcome, Shadows};
use crate::tally::{HistoNames, Tally};
use aviary_contract::cidr::parse_socket_ip;
use aviary_contract::config::{Compiled, ConfigError, BUCKETS};
use aviary_contract::hash::SplitMix64;
use aviary_contract::metrics::{
    self, stat_name, Comparison, DecisionReason, LatencyDirection, ResponseClass, ScoreSkipped,
    ShadowClass, Uncompared,
};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Metric ids, resolved once per configuration so the request path never builds a name.
/// Counters are `Tally` slots and `duration` is a `Tally` histogram; the shadow histograms are
/// host metric ids.
#[derive(Debug, Clone, Default)]
pub struct MetricIds {
    pub requests: Vec<[u32; DecisionReason::ALL.len()]>,
    pub responses: Vec<[u32; ResponseClass::ALL.len()]>,
    pub duration: Vec<u32>,
    pub override_rejected: u32,
    /// Per version, one counter per score bin (the last is +Inf).
    pub score_bins: Vec<Vec<u32>>,
    pub score_skipped: Vec<[u32; ScoreSkipped::ALL.len()]>,
    /// Per shadow target.
    pub shadow_sent: Vec<u32>,
    pub shadow_responses: Vec<[u32; ShadowClass::ALL.len()]>,
    pub shadow_comparisons: Vec<[u32; Comparison::ALL.len()]>,
    pub shadow_uncompared: Vec<[u32; Uncompared::ALL.len()]>,
    pub shadow_score_delta: Vec<u32>,
    pub shadow_latency_delta: Vec<[u32; LatencyDirection::ALL.len()]>,
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
    pub shadows: Rc<RefCell<Shadows>>,
    pub tally: Rc<RefCell<Tally>>,
    tick_ms: u32,
    since_flush_ms: u32,
}

/// Tick period while shadows are configured: how long a queued mirror waits for dispatch.
pub const SHADOW_TICK_MS: u32 = 5;

impl Root {
    /// `tally` is the VM's, shared by every root context the VM runs.
    pub fn new(host: &dyn Host, tally: Rc<RefCell<Tally>>) -> Root {
        Root {
            active: None,
            rng: Rc::new(RefCell::new(SplitMix64::new(host.random_u64()))),
            shadows: Rc::new(RefCell::new(Shadows::new(tally.clone()))),
            tally,
            tick_ms: 0,
            since_flush_ms: 0,
        }
    }

    pub fn on_vm_start(&self, host: &dyn Host) {
        host.log(LogLevel::Info, &format!("aviary {VERSION} starting"));
    }

    /// Applies a new configuration, or rejects it and keeps the last good one.
    pub fn on_configure(&mut self, host: &dyn Host, raw: Option<&[u8]>) -> bool {
        match activate(host, &self.tally, raw) {
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
        self.shadows.borrow_mut().on_tick(host);
        self.since_flush_ms = self.since_flush_ms.saturating_add(self.tick_ms);
        let interval = self
            .active
            .as_ref()
            .map_or(0, |a| a.cfg.metrics.flush_interval_ms);
        if self.since_flush_ms >= interval {
            self.since_flush_ms = 0;
            self.tally.borrow_mut().flush(host);
        }
    }

    /// The root context is going away: send what it counted.
    pub fn on_done(&self, host: &dyn Host) {
        self.tally.borrow_mut().flush(host);
    }

    pub fn on_http_call_response(
        &self,
        host: &dyn Host,
        token: u32,
        num_headers: usize,
        body_size: usize,
    ) {
        self.shadows
            .borrow_mut()
            .on_call_response(host, token, num_headers, body_size);
    }

    pub fn new_stream(&self) -> Stream {
        Stream {
            active: self.active.clone(),
            rng: self.rng.clone(),
            shadows: self.shadows.clone(),
            tally: self.tally.clone(),
            version: None,
            start_ns: 0,
            status: None,
            mirror: None,
            jobs: Vec::new(),
            response: None,
            primary_reported: false,
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

fn activate(
    host: &dyn Host,
    tally: &RefCell<Tally>,
    raw: Option<&[u8]>,
) -> Result<Active, ConfigError> {
    let raw = raw.filter(|r| !r.is_empty()).ok_or(ConfigError {
        field: String::new(),
        message: "no configuration given; set the plugin configuration to Aviary's JSON (README, \"Configuration\")".into(),
    })?;
    let cfg = aviary_contract::config::parse_and_compile(raw)?;
    let ids = define_metrics(host, tally, &cfg)?;
    Ok(Active { cfg, ids })
}

fn refused(name: &str) -> ConfigError {
    ConfigError {
        field: String::new(),
        message: format!("the host refused to define metric `{name}`"),
    }
}

fn define_metrics(
    host: &dyn Host,
    tally: &RefCell<Tally>,
    cfg: &Compiled,
) -> Result<MetricIds, ConfigError> {
    let svc = cfg.service.as_str();
    let define = |kind, base: &str, labels: &[(&str, &str)]| {
        let name = stat_name(base, labels);
        let mut t = tally.borrow_mut();
        match kind {
            MetricKind::Counter => t.counter(host, &name),
            _ => t.define(host, kind, &name),
        }
        .ok_or_else(|| refused(&name))
    };
    let per = |kind, base: &str, labels: &[(&str, &str)], key: &str, values: &[&str]| {
        values
            .iter()
            .map(|v| {
                let mut l = labels.to_vec();
                l.push((key, v));
                define(kind, base, &l)
            })
            .collect::<Result<Vec<u32>, ConfigError>>()
    };
    use MetricKind::{Counter, Gauge, Histogram};
    let mut ids = MetricIds {
        override_rejected: define(Counter, metrics::OVERRIDE_REJECTED, &[("service", svc)])?,
        ..MetricIds::default()
    };
    let bins: Vec<String> = cfg
        .scores
        .as_ref()
        .map(|s| {
            s.bounds
                .iter()
                .map(|b| metrics::bin_label(Some(*b)))
                .chain(std::iter::once(metrics::bin_label(None)))
                .collect()
        })
        .unwrap_or_default();
    let bins: Vec<&str> = bins.iter().map(String::as_str).collect();
    for v in &cfg.versions {
        let labels = [("service", svc), ("version", v.name.as_str())];
        let ids_for = |kind, base, key, values: &[&str]| per(kind, base, &labels, key, values);
        ids.requests.push(fixed(ids_for(
            Counter,
            metrics::REQUESTS,
            DecisionReason::KEY,
            &DecisionReason::ALL.map(DecisionReason::as_str),
        )?));
        ids.responses.push(fixed(ids_for(
            Counter,
            metrics::RESPONSES,
            ResponseClass::KEY,
            &ResponseClass::ALL.map(ResponseClass::as_str),
        )?));
        let names = HistoNames {
            base: metrics::DURATION,
            labels: &labels,
            bound_labels: &cfg.metrics.latency_labels,
        };
        ids.duration.push(
            tally
                .borrow_mut()
                .histogram(host, names, &cfg.metrics.latency_bounds_us)
                .ok_or_else(|| refused(metrics::DURATION))?,
        );
        ids.score_bins
            .push(ids_for(Counter, metrics::SCORE_BINS, "bin", &bins)?);
        ids.score_skipped.push(match cfg.scores {
            Some(_) => fixed(ids_for(
                Counter,
                metrics::SCORE_SKIPPED,
                ScoreSkipped::KEY,
                &ScoreSkipped::ALL.map(ScoreSkipped::as_str),
            )?),
            None => [0; ScoreSkipped::ALL.len()],
        });
        let weight = define(Gauge, metrics::WEIGHT, &labels)?;
        let effective = match cfg.kill_switch {
            Some(k) if cfg.versions[k].name == v.name => BUCKETS,
            Some(_) => 0,
            None => v.weight_bps,
        };
        host.record(weight, u64::from(effective));
    }
    if let Some(s) = &cfg.shadow {
        for t in &s.targets {
            let labels = [("service", svc), ("version", t.version.as_str())];
            let ids_for = |kind, base, key, values: &[&str]| per(kind, base, &labels, key, values);
            ids.shadow_sent
                .push(define(Counter, metrics::SHADOW_REQUESTS, &labels)?);
            ids.shadow_responses.push(fixed(ids_for(
                Counter,
                metrics::SHADOW_RESPONSES,
                ShadowClass::KEY,
                &ShadowClass::ALL.map(ShadowClass::as_str),
            )?));
            ids.shadow_comparisons.push(fixed(ids_for(
                Counter,
                metrics::SHADOW_COMPARISONS,
                Comparison::KEY,
                &Comparison::ALL.map(Comparison::as_str),
            )?));
            ids.shadow_uncompared.push(fixed(ids_for(
                Counter,
                metrics::SHADOW_UNCOMPARED,
                Uncompared::KEY,
                &Uncompared::ALL.map(Uncompared::as_str),
            )?));
            ids.shadow_score_delta
                .push(define(Histogram, metrics::SHADOW_SCORE_DELTA, &labels)?);
            ids.shadow_latency_delta.push(fixed(ids_for(
                Histogram,
                metrics::SHADOW_LATENCY_DELTA,
                LatencyDirection::KEY,
                &LatencyDirection::ALL.map(LatencyDirection::as_str),
            )?));
        }
    }
    let digest = define(Gauge, metrics::CONFIG_DIGEST, &[("service", svc)])?;
    host.record(digest, cfg.digest & DIGEST_GAUGE_MASK);
    Ok(ids)
}

/// Metric ids for one label per value; `per` yields exactly N of them.
fn fixed<const N: usize>(ids: Vec<u32>) -> [u32; N] {
    ids.try_into().unwrap_or([0; N])
}

/// The digest gauge keeps 48 bits, which a Prometheus float holds exactly.
pub const DIGEST_GAUGE_MASK: u64 = (1 << 48) - 1;

/// A request being copied to shadows: its headers and body, collected until the request ends.
struct Mirror {
    headers: Vec<(String, String)>,
    body: BodyBuffer,
}

/// Per-request state of the filter.
pub struct Stream {
    active: Option<Rc<Active>>,
    rng: Rc<RefCell<SplitMix64>>,
    shadows: Rc<RefCell<Shadows>>,
    tally: Rc<RefCell<Tally>>,
    version: Option<usize>,
    start_ns: u64,
    status: Option<u16>,
    mirror: Option<Mirror>,
    /// Reserved shadow jobs: (job id, target index).
    jobs: Vec<(u64, usize)>,
    /// The primary response body, buffered only for score extraction or comparison.
    response: Option<BodyBuffer>,
    primary_reported: bool,
}

impl Stream {
    pub fn version(&self) -> Option<usize> {
        self.version
    }

    pub fn on_request_headers(&mut self, host: &dyn Host, end_of_stream: bool) {
        let Some(active) = self.active.clone() else {
            return;
        };
        let cfg = &active.cfg;
        let req = if cfg.needs_headers {
            RequestView::new(host.request_headers())
        } else {
            RequestView::default()
        };
        if !conditions_hold(&cfg.scope, &req) {
            return;
        }
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
        {
            let mut tally = self.tally.borrow_mut();
            tally.add(active.ids.requests[d.version][d.reason.label().index()], 1);
            if d.override_rejected {
                tally.add(active.ids.override_rejected, 1);
            }
        }
        self.version = Some(d.version);
        self.start_ns = host.now_nanos();
        if cfg.scores.is_some() {
            self.response = Some(BodyBuffer::default());
        }
        self.start_mirror(host, &active, req, end_of_stream);
    }

    fn start_mirror(
        &mut self,
        host: &dyn Host,
        active: &Rc<Active>,
        req: RequestView,
        end_of_stream: bool,
    ) {
        let cfg = &active.cfg;
        let Some(s) = &cfg.shadow else {
            return;
        };
        let selected = conditions_hold(&s.conditions, &req)
            && (s.rules.is_empty()
                || s.rules
                    .iter()
                    .any(|r| conditions_hold(&cfg.rules[*r].conditions, &req)))
            && in_share(
                s.share_bps,
                s.seed,
                sticky_key(cfg, &req),
                &mut self.rng.borrow_mut(),
            );
        if let Some(headers) = &s.envoy_mirror_headers {
            let mut tally = self.tally.borrow_mut();
            for (t, h) in headers.iter().enumerate() {
                if selected {
                    host.set_request_header(h, &s.targets[t].cluster);
                    tally.add(active.ids.shadow_sent[t], 1);
                } else if !cfg.needs_headers || req.header(h).is_some() {
                    // A client must not choose what is mirrored, or where to.
                    host.remove_request_header(h);
                }
            }
            return;
        }
        if !selected {
            return;
        }
        {
            let mut shadows = self.shadows.borrow_mut();
            for t in 0..s.targets.len() {
                match shadows.reserve(active, t, self.start_ns) {
                    Some(id) => self.jobs.push((id, t)),
                    None => self.tally.borrow_mut().add(
                        active.ids.shadow_uncompared[t][Uncompared::Capacity.index()],
                        1,
                    ),
                }
            }
        }
        if self.jobs.is_empty() {
            return;
        }
        let headers = if cfg.needs_headers {
            req.headers().to_pairs()
        } else {
            host.request_headers().to_pairs()
        };
        if s.compare.is_some() && self.response.is_none() {
            self.response = Some(BodyBuffer::default());
        }
        self.mirror = Some(Mirror {
            headers,
            body: BodyBuffer::default(),
        });
        if end_of_stream {
            self.send_mirror();
        }
    }

    pub fn on_request_body(&mut self, host: &dyn Host, size: usize, end_of_stream: bool) {
        let Some(m) = &mut self.mirror else {
            return;
        };
        let limit = self
            .active
            .as_ref()
            .and_then(|a| a.cfg.shadow.as_ref())
            .map_or(0, |s| s.max_body_bytes as usize);
        if size > 0 && !m.body.overflowed {
            let chunk = host.body(Body::Request, 0, size).unwrap_or_default();
            m.body.push(&chunk, limit);
        }
        if end_of_stream {
            self.send_mirror();
        }
    }

    /// Queues the collected copy for every reserved shadow target.
    fn send_mirror(&mut self) {
        let (Some(active), Some(m)) = (self.active.clone(), self.mirror.take()) else {
            return;
        };
        let Some(s) = &active.cfg.shadow else {
            return;
        };
        let mut shadows = self.shadows.borrow_mut();
        if m.body.overflowed {
            for (id, t) in self.jobs.drain(..) {
                shadows.cancel(id);
                self.tally.borrow_mut().add(
                    active.ids.shadow_uncompared[t][Uncompared::BodyTooLarge.index()],
                    1,
                );
            }
            return;
        }
        let routing = active.cfg.routing_header.as_str();
        let override_header = active.cfg.override_.as_ref().map(|o| o.header.as_str());
        for (id, t) in &self.jobs {
            let target = &s.targets[*t];
            let mut headers: Vec<(String, String)> = m
                .headers
                .iter()
                .filter(|(k, _)| {
                    copy_header(k)
                        && k != routing
                        && Some(k.as_str()) != override_header
                        && *k != s.mark_header
                })
                .map(|(k, v)| {
                    if k == ":authority" {
                        (k.clone(), format!("{v}{}", s.authority_suffix))
                    } else {
                        (k.clone(), v.clone())
                    }
                })
                .collect();
            headers.push((s.mark_header.clone(), target.version.clone()));
            shadows.enqueue(Job {
                id: *id,
                target: *t,
                headers,
                body: (!m.body.data.is_empty()).then(|| m.body.data.clone()),
            });
        }
    }

    pub fn on_response_headers(&mut self, host: &dyn Host, end_of_stream: bool) {
        let (Some(active), Some(v)) = (self.active.clone(), self.version) else {
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
        if end_of_stream {
            self.response_done(host);
        }
    }

    pub fn on_response_body(&mut self, host: &dyn Host, size: usize, end_of_stream: bool) {
        if size > 0 && self.response.as_ref().is_some_and(|b| !b.overflowed) {
            let limit = self.buffer_limit();
            let chunk = host.body(Body::Response, 0, size).unwrap_or_default();
            if let Some(buf) = &mut self.response {
                buf.push(&chunk, limit);
            }
        }
        if end_of_stream {
            self.response_done(host);
        }
    }

    fn buffer_limit(&self) -> usize {
        let Some(a) = &self.active else {
            return 0;
        };
        let scores = a.cfg.scores.as_ref().map_or(0, |s| s.max_body_bytes);
        let compare = a
            .cfg
            .shadow
            .as_ref()
            .and_then(|s| s.compare.as_ref())
            .map_or(0, |c| c.max_body_bytes);
        scores.max(compare) as usize
    }

    /// The whole primary response is in: record its score and hand it to pending comparisons.
    fn response_done(&mut self, host: &dyn Host) {
        let (Some(active), Some(v)) = (self.active.clone(), self.version) else {
            return;
        };
        let cfg = &active.cfg;
        let ok = matches!(self.status, Some(200..=299));
        let body = self.response.take();
        let parsed = match (&body, ok) {
            (Some(b), true) => Some(b.parse()),
            _ => None,
        };
        if let (Some(sc), Some(parsed), Some(b)) = (&cfg.scores, &parsed, &body) {
            let result = if b.overflowed || b.data.len() > sc.max_body_bytes as usize {
                Err(extract::Unusable::BodyTooLarge)
            } else {
                parsed
                    .as_ref()
                    .map_err(|u| *u)
                    .and_then(|val| extract::from_value(val, None, Some(&sc.pointer)))
            };
            match result.map(|f| f.score) {
                Ok(Some(score)) => {
                    let bin = extract::bin_index(&sc.bounds, score);
                    self.tally
                        .borrow_mut()
                        .add(active.ids.score_bins[v][bin], 1);
                }
                Ok(None) => {}
                Err(u) => self
                    .tally
                    .borrow_mut()
                    .add(active.ids.score_skipped[v][u.skipped().index()], 1),
            }
        }
        if self.jobs.is_empty() {
            return;
        }
        let latency_ms = host.now_nanos().saturating_sub(self.start_ns) / 1_000_000;
        let fields: Result<Fields, Uncompared> =
            match cfg.shadow.as_ref().and_then(|s| s.compare.as_ref()) {
                None => Ok(Fields::default()),
                Some(_) if !ok => Err(Uncompared::PrimaryError),
                Some(c) => match (&body, parsed) {
                    (Some(b), _) if b.overflowed || b.data.len() > c.max_body_bytes as usize => {
                        Err(Uncompared::BodyTooLarge)
                    }
                    (_, Some(Ok(val))) => extract::from_value(
                        &val,
                        c.label_pointer.as_deref(),
                        c.score_pointer.as_deref(),
                    )
                    .map_err(Unusable::uncompared),
                    (_, Some(Err(u))) => Err(u.uncompared()),
                    (_, None) => Err(Uncompared::PrimaryError),
                },
            };
        self.report_primary(host, Outcome { latency_ms, fields });
    }

    fn report_primary(&mut self, host: &dyn Host, outcome: Outcome) {
        if self.primary_reported {
            return;
        }
        self.primary_reported = true;
        let mut shadows = self.shadows.borrow_mut();
        for (id, _) in &self.jobs {
            shadows.primary_done(host, *id, outcome.clone());
        }
    }

    pub fn on_log(&mut self, host: &dyn Host) {
        let (Some(active), Some(v)) = (self.active.clone(), self.version) else {
            return;
        };
        let class = match self.status {
            None => ResponseClass::Reset,
            // Only error statuses can be local replies; skip the property read for the rest.
            Some(s) if s >= 400 && is_local_reply(host) => ResponseClass::Local,
            Some(s) => ResponseClass::of_status(s),
        };
        let elapsed_ns = host.now_nanos().saturating_sub(self.start_ns);
        let elapsed_ms = elapsed_ns / 1_000_000;
        {
            let mut tally = self.tally.borrow_mut();
            tally.add(active.ids.responses[v][class.index()], 1);
            tally.observe_us(active.ids.duration[v], elapsed_ns / 1000);
            // The request never completed, so its copy was never queued.
            if self.mirror.take().is_some() {
                let mut shadows = self.shadows.borrow_mut();
                for (id, t) in self.jobs.drain(..) {
                    shadows.cancel(id);
                    tally.add(
                        active.ids.shadow_uncompared[t][Uncompared::PrimaryError.index()],
                        1,
                    );
                }
            }
        }
        if !self.jobs.is_empty() {
            self.report_primary(
                host,
                Outcome {
                    latency_ms: elapsed_ms,
                    fields: Err(Uncompared::PrimaryError),
                },
            );
        }
    }
}

fn is_local_reply(host: &dyn Host) -> bool {
    host.property(&["response", "code_details"])
        .is_some_and(|d| d != b"via_upstream")
}
