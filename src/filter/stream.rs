//! One request through the filter: route it, stamp its response, bin its score, count it, and
//! play its part in shadow comparisons.

use std::net::IpAddr;
use std::rc::Rc;

use serde_json::Value;

use crate::active::{Active, VersionIds};
use crate::extract::{self, BodyBuffer, Unusable};
use crate::filter::mirror::{primary_fields, Mirror};
use crate::filter::shared::Shared;
use crate::host::{Body, Host};
use crate::request::RequestView;
use crate::routing::{conditions_hold, decide, Peer};
use crate::shadow::Outcome;
use crate::tally::Tally;
use aviary_contract::cidr::parse_socket_ip;
use aviary_contract::config::{
    Compiled, CompiledScores, DEFAULT_ROUTING_HEADER, DEFAULT_SHADOW_HEADER,
};
use aviary_contract::metrics::ResponseClass;

/// Per-request state of the filter.
pub struct Stream {
    active: Option<Rc<Active>>,
    shared: Shared,
    version: Option<usize>,
    start_ns: u64,
    status: Option<u16>,
    mirror: Mirror,
    /// The primary response body, buffered only for score extraction or comparison.
    response: Option<BodyBuffer>,
}

impl Stream {
    pub fn new(active: Option<Rc<Active>>, shared: Shared) -> Stream {
        Stream {
            active,
            shared,
            version: None,
            start_ns: 0,
            status: None,
            mirror: Mirror::default(),
            response: None,
        }
    }

    pub fn version(&self) -> Option<usize> {
        self.version
    }

    /// Routes the request. On every path, in scope or not and with or without a config, the
    /// headers only the plugin may set leave without the client's values, so a route or a
    /// mirror policy never sees a client's choice even where Envoy does not strip them.
    pub fn on_request_headers(&mut self, host: &dyn Host, end_of_stream: bool) {
        let Some(active) = self.active.clone() else {
            for h in [DEFAULT_ROUTING_HEADER, DEFAULT_SHADOW_HEADER] {
                host.remove_request_header(h);
            }
            return;
        };
        let cfg = &active.cfg;
        let req = if cfg.needs_headers {
            RequestView::new(host.request_headers())
        } else {
            RequestView::default()
        };
        if !conditions_hold(&cfg.scope, &req) {
            remove_reserved(host, cfg, &req, &cfg.reserved_headers);
            return;
        }
        let mut source_ip = || -> Option<IpAddr> {
            let raw = host.property(&["source", "address"])?;
            parse_socket_ip(std::str::from_utf8(&raw).ok()?)
        };
        let mut peer = Peer::new(&mut source_ip);
        let d = decide(cfg, &req, &mut peer, &mut self.shared.rng.borrow_mut());
        let v = &cfg.versions[d.version];
        // A `set` replaces any client-sent value, so a client can never choose its version.
        host.set_request_header(&cfg.routing_header, &v.route_value);
        remove_reserved(host, cfg, &req, &cfg.reserved_in_scope);
        if let Some(o) = &cfg.override_ {
            if req.header(&o.header).is_some() {
                host.remove_request_header(&o.header);
            }
        }
        for (k, val) in &v.request_headers {
            host.set_request_header(k, val);
        }
        {
            let mut tally = self.shared.tally.borrow_mut();
            tally.add(active.ids.versions[d.version].requests[d.reason.label()], 1);
            if d.override_rejected {
                tally.add(active.ids.override_rejected, 1);
            }
        }
        self.version = Some(d.version);
        self.start_ns = host.now_nanos();
        if cfg.scores.is_some() {
            self.response = Some(BodyBuffer::default());
        }
        let compare =
            self.mirror
                .start(host, &active, &self.shared, &req, &mut peer, self.start_ns);
        if compare && self.response.is_none() {
            self.response = Some(BodyBuffer::default());
        }
        if end_of_stream {
            self.mirror.send(&active, &self.shared);
        }
    }

    pub fn on_request_body(&mut self, host: &dyn Host, size: usize, end_of_stream: bool) {
        if let Some(active) = &self.active {
            self.mirror
                .on_request_body(host, active, &self.shared, size, end_of_stream);
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
            let ids = &active.ids.versions[v];
            record_score(&mut self.shared.tally.borrow_mut(), ids, sc, b, parsed);
        }
        if !self.mirror.is_pending() {
            return;
        }
        let latency_ms = host.now_nanos().saturating_sub(self.start_ns) / 1_000_000;
        let fields = primary_fields(cfg, ok, body.as_ref(), parsed);
        let outcome = Outcome { latency_ms, fields };
        self.mirror.primary_done(host, &self.shared, outcome);
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
        {
            let ids = &active.ids.versions[v];
            let mut tally = self.shared.tally.borrow_mut();
            tally.add(ids.responses[class], 1);
            tally.observe_us(ids.duration, elapsed_ns / 1000);
        }
        self.mirror
            .on_log(host, &active, &self.shared, elapsed_ns / 1_000_000);
    }
}

/// Removes `headers` from the request. With the headers already read, only
/// those the client sent cost a host call; otherwise each is one removal.
fn remove_reserved(host: &dyn Host, cfg: &Compiled, req: &RequestView, headers: &[String]) {
    for h in headers {
        if !cfg.needs_headers || req.header(h).is_some() {
            host.remove_request_header(h);
        }
    }
}

/// Bins the primary's score, or counts why it has none.
fn record_score(
    tally: &mut Tally,
    ids: &VersionIds,
    sc: &CompiledScores,
    body: &BodyBuffer,
    parsed: &Result<Value, Unusable>,
) {
    let result = if body.overflowed || body.data.len() > sc.max_body_bytes as usize {
        Err(Unusable::BodyTooLarge)
    } else {
        parsed
            .as_ref()
            .map_err(|u| *u)
            .and_then(|val| extract::from_value(val, None, Some(&sc.pointer)))
    };
    match result.map(|f| f.score) {
        Ok(Some(score)) => {
            if let Some(bin) = ids.score_bins.get(extract::bin_index(&sc.bounds, score)) {
                tally.add(*bin, 1);
            }
        }
        Ok(None) => {}
        Err(u) => {
            if let Some(skipped) = &ids.score_skipped {
                tally.add(skipped[u.skipped()], 1);
            }
        }
    }
}

fn is_local_reply(host: &dyn Host) -> bool {
    host.property(&["response", "code_details"])
        .is_some_and(|d| d != b"via_upstream")
}
