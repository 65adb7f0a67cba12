//! A stream's part in shadow mirroring: whether its request is mirrored, the copy collected
//! while the request streams in, and the primary's outcome handed to each pending comparison.

use std::rc::Rc;

use serde_json::Value;

use crate::active::Active;
use crate::extract::{self, BodyBuffer, Fields, Unusable};
use crate::filter::shared::Shared;
use crate::host::{Body, Host};
use crate::request::RequestView;
use crate::routing::{conditions_hold, in_share, sticky_key, Peer};
use crate::shadow::{copy_header, Job, Outcome};
use aviary_contract::config::{Compiled, CompiledShadow};
use aviary_contract::metrics::Uncompared;

/// A request being copied to shadows: its headers and body, collected until the request ends.
struct RequestCopy {
    headers: Vec<(String, String)>,
    body: BodyBuffer,
}

#[derive(Default)]
pub struct Mirror {
    copy: Option<RequestCopy>,
    /// Reserved shadow jobs: (job id, target index).
    jobs: Vec<(u64, usize)>,
    primary_reported: bool,
}

impl Mirror {
    /// Whether this request has pending comparisons waiting for the primary's outcome.
    pub fn is_pending(&self) -> bool {
        !self.jobs.is_empty()
    }

    /// Selects the request for mirroring and reserves its copies; with `via: envoy` only sets
    /// the mirror headers. Returns true when the primary's body must be kept for comparison.
    pub fn start(
        &mut self,
        host: &dyn Host,
        active: &Rc<Active>,
        shared: &Shared,
        req: &RequestView,
        peer: &mut Peer,
        start_ns: u64,
    ) -> bool {
        let cfg = &active.cfg;
        let Some(s) = &cfg.shadow else {
            return false;
        };
        let selected = selected(cfg, s, req, peer, shared);
        if let Some(headers) = &s.envoy_mirror_headers {
            let mut tally = shared.tally.borrow_mut();
            for ((h, target), ids) in headers.iter().zip(&s.targets).zip(&active.ids.shadows) {
                if selected {
                    host.set_request_header(h, &target.cluster);
                    tally.add(ids.sent, 1);
                } else if !cfg.needs_headers || req.header(h).is_some() {
                    // A client must not choose what is mirrored, or where to.
                    host.remove_request_header(h);
                }
            }
            return false;
        }
        if !selected {
            return false;
        }
        let mut shadows = shared.shadows.borrow_mut();
        for (t, ids) in active.ids.shadows.iter().enumerate() {
            match shadows.reserve(active, t, start_ns) {
                Some(id) => self.jobs.push((id, t)),
                None => shared
                    .tally
                    .borrow_mut()
                    .add(ids.uncompared[Uncompared::Capacity], 1),
            }
        }
        if self.jobs.is_empty() {
            return false;
        }
        let headers = if cfg.needs_headers {
            req.headers().to_pairs()
        } else {
            host.request_headers().to_pairs()
        };
        self.copy = Some(RequestCopy {
            headers,
            body: BodyBuffer::default(),
        });
        s.compare.is_some()
    }

    /// Adds a request body chunk to the copy; at the end of the request queues the copies.
    pub fn on_request_body(
        &mut self,
        host: &dyn Host,
        active: &Active,
        shared: &Shared,
        size: usize,
        end_of_stream: bool,
    ) {
        let Some(copy) = &mut self.copy else {
            return;
        };
        let limit = active.cfg.shadow.as_ref().map_or(0, |s| s.max_body_bytes);
        if size > 0 && !copy.body.overflowed {
            let chunk = host.body(Body::Request, 0, size).unwrap_or_default();
            copy.body.push(&chunk, limit as usize);
        }
        if end_of_stream {
            self.send(active, shared);
        }
    }

    /// Queues the collected copy for every reserved shadow target.
    pub fn send(&mut self, active: &Active, shared: &Shared) {
        let (Some(s), Some(copy)) = (&active.cfg.shadow, self.copy.take()) else {
            return;
        };
        if copy.body.overflowed {
            return self.release(active, shared, Uncompared::BodyTooLarge);
        }
        let mut shadows = shared.shadows.borrow_mut();
        let body = (!copy.body.data.is_empty()).then_some(copy.body.data);
        for (id, t) in &self.jobs {
            let Some(target) = s.targets.get(*t) else {
                continue;
            };
            let mut headers = shadow_headers(&active.cfg, s, &copy.headers);
            headers.push((s.mark_header.clone(), target.version.clone()));
            shadows.enqueue(Job {
                id: *id,
                target: *t,
                headers,
                body: body.clone(),
            });
        }
    }

    /// Hands the primary's outcome to every pending comparison, once.
    pub fn primary_done(&mut self, host: &dyn Host, shared: &Shared, outcome: Outcome) {
        if self.primary_reported {
            return;
        }
        self.primary_reported = true;
        let mut shadows = shared.shadows.borrow_mut();
        for (id, _) in &self.jobs {
            shadows.primary_done(host, *id, outcome.clone());
        }
    }

    /// The stream is over. A request that never completed was never copied: its reservations
    /// are released; comparisons still waiting get a failed primary.
    pub fn on_log(&mut self, host: &dyn Host, active: &Active, shared: &Shared, elapsed_ms: u64) {
        if self.copy.take().is_some() {
            self.release(active, shared, Uncompared::PrimaryError);
        }
        if self.is_pending() {
            let outcome = Outcome {
                latency_ms: elapsed_ms,
                fields: Err(Uncompared::PrimaryError),
            };
            self.primary_done(host, shared, outcome);
        }
    }
}

impl Mirror {
    /// Gives back the reservations of copies that will never be sent, counting why.
    fn release(&mut self, active: &Active, shared: &Shared, reason: Uncompared) {
        let mut shadows = shared.shadows.borrow_mut();
        for (id, t) in self.jobs.drain(..) {
            shadows.cancel(id);
            if let Some(ids) = active.ids.shadows.get(t) {
                shared.tally.borrow_mut().add(ids.uncompared[reason], 1);
            }
        }
    }
}

/// Whether a request is mirrored: it meets the shadow's conditions, one of its rules (if any
/// are named; a `trustedOnly` rule only for a trusted peer), and falls in its share.
fn selected(
    cfg: &Compiled,
    s: &CompiledShadow,
    req: &RequestView,
    peer: &mut Peer,
    shared: &Shared,
) -> bool {
    conditions_hold(&s.conditions, req)
        && (s.rules.is_empty()
            || s.rules.iter().any(|r| {
                let rule = &cfg.rules[*r];
                conditions_hold(&rule.conditions, req)
                    && (!rule.trusted_only || peer.within(&cfg.trusted))
            }))
        && in_share(
            s.share_bps,
            s.seed,
            sticky_key(cfg, req),
            &mut shared.rng.borrow_mut(),
        )
}

/// The request headers a copy carries: not hop-by-hop, not Aviary's own (reserved or the
/// override), and `:authority` with the shadow suffix.
fn shadow_headers(
    cfg: &Compiled,
    s: &CompiledShadow,
    headers: &[(String, String)],
) -> Vec<(String, String)> {
    let override_header = cfg.override_.as_ref().map(|o| o.header.as_str());
    headers
        .iter()
        .filter(|(k, _)| {
            copy_header(k)
                && !cfg.reserved_headers.contains(k)
                && Some(k.as_str()) != override_header
        })
        .map(|(k, v)| {
            if k == ":authority" {
                (k.clone(), format!("{v}{}", s.authority_suffix))
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect()
}

/// What the primary's response yields for comparison: its fields, or why it cannot be compared.
pub fn primary_fields(
    cfg: &Compiled,
    ok: bool,
    body: Option<&BodyBuffer>,
    parsed: Option<Result<Value, Unusable>>,
) -> Result<Fields, Uncompared> {
    let Some(c) = cfg.shadow.as_ref().and_then(|s| s.compare.as_ref()) else {
        return Ok(Fields::default());
    };
    if !ok {
        return Err(Uncompared::PrimaryError);
    }
    match (body, parsed) {
        (Some(b), _) if b.overflowed || b.data.len() > c.max_body_bytes as usize => {
            Err(Uncompared::BodyTooLarge)
        }
        (_, Some(Ok(val))) => {
            extract::from_value(&val, c.label_pointer.as_deref(), c.score_pointer.as_deref())
                .map_err(Unusable::uncompared)
        }
        (_, Some(Err(u))) => Err(u.uncompared()),
        (_, None) => Err(Uncompared::PrimaryError),
    }
}
