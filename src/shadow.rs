//! Shadow mirroring and output comparison.
//!
//! Design: an HTTP stream never dispatches a shadow call itself. A call dispatched from a stream's
//! context is answered to that context, and once the stream has ended its context is gone, so the
//! answer would be lost (see `../shared/notes/envoy-facts.md`). Instead the stream queues a job in
//! this per-VM state; the root context drains the queue on its tick and dispatches, so every
//! answer comes back to the root, which outlives all streams. The primary's outcome and the
//! shadow's outcome meet in a `Pending` entry keyed by job id, in whichever order they arrive;
//! the second one to arrive records the comparison and frees the entry. Queue plus pending
//! entries never exceed `maxInFlight`; beyond it mirroring is skipped and counted.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use crate::extract::{Fields, Unusable};
use crate::filter::Active;
use crate::host::Host;
use crate::tally::Tally;
use aviary_contract::metrics::{Comparison, LatencyDirection, ShadowClass, Uncompared};

/// One side's result for a mirrored request.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub latency_ms: u64,
    pub fields: Result<Fields, Uncompared>,
}

pub struct Job {
    pub id: u64,
    pub target: usize,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

struct Pending {
    active: Rc<Active>,
    target: usize,
    created_ns: u64,
    dispatched_ns: u64,
    primary: Option<Outcome>,
    shadow: Option<Outcome>,
}

#[derive(Default)]
pub struct Shadows {
    tally: Rc<RefCell<Tally>>,
    queue: VecDeque<Job>,
    pending: HashMap<u64, Pending>,
    tokens: HashMap<u32, u64>,
    next_id: u64,
}

impl Shadows {
    pub fn new(tally: Rc<RefCell<Tally>>) -> Shadows {
        Shadows {
            tally,
            ..Shadows::default()
        }
    }

    /// Entries held: queued jobs are also pending, so this counts each mirrored request once.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Reserves a slot for a mirrored request to `target`; `None` when at capacity.
    pub fn reserve(&mut self, active: &Rc<Active>, target: usize, now_ns: u64) -> Option<u64> {
        let cap = active
            .cfg
            .shadow
            .as_ref()
            .map_or(0, |s| s.max_in_flight as usize);
        if self.pending.len() >= cap {
            return None;
        }
        self.next_id += 1;
        self.pending.insert(
            self.next_id,
            Pending {
                active: active.clone(),
                target,
                created_ns: now_ns,
                dispatched_ns: 0,
                primary: None,
                shadow: None,
            },
        );
        Some(self.next_id)
    }

    pub fn enqueue(&mut self, job: Job) {
        self.queue.push_back(job);
    }

    /// Drops a reservation whose request was never sent (e.g. its body was too large).
    pub fn cancel(&mut self, id: u64) {
        self.pending.remove(&id);
    }

    pub fn has_work(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Dispatches queued jobs (from the root context) and expires entries that outlived
    /// their timeout by far, so a lost callback can never leak a slot.
    pub fn on_tick(&mut self, host: &dyn Host) {
        let now = host.now_nanos();
        while let Some(job) = self.queue.pop_front() {
            let Some(p) = self.pending.get_mut(&job.id) else {
                continue;
            };
            let Some(s) = p.active.cfg.shadow.as_ref() else {
                continue;
            };
            let t = &s.targets[job.target];
            let headers: Vec<(&str, &str)> = job
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let ids = &p.active.ids;
            match host.dispatch(&t.cluster, &headers, job.body.as_deref(), s.timeout_ms) {
                Ok(token) => {
                    p.dispatched_ns = now;
                    self.tally.borrow_mut().add(ids.shadow_sent[job.target], 1);
                    self.tokens.insert(token, job.id);
                }
                Err(_) => {
                    self.tally.borrow_mut().add(
                        ids.shadow_uncompared[job.target][Uncompared::DispatchFailed.index()],
                        1,
                    );
                    self.pending.remove(&job.id);
                }
            }
        }
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                let limit = p
                    .active
                    .cfg
                    .shadow
                    .as_ref()
                    .map_or(0, |s| u64::from(s.timeout_ms))
                    + EXPIRY_GRACE_MS;
                now.saturating_sub(p.created_ns) / 1_000_000 > limit
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                self.tally.borrow_mut().add(
                    p.active.ids.shadow_uncompared[p.target][Uncompared::Expired.index()],
                    1,
                );
            }
        }
        self.tokens.retain(|_, id| self.pending.contains_key(id));
    }

    /// Records the primary's outcome for a mirrored request.
    pub fn primary_done(&mut self, host: &dyn Host, id: u64, outcome: Outcome) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.primary = Some(outcome);
            self.try_finish(host, id);
        }
    }

    /// Handles a shadow call's answer (root context). Returns false for unknown tokens.
    pub fn on_call_response(
        &mut self,
        host: &dyn Host,
        token: u32,
        num_headers: usize,
        body_size: usize,
    ) -> bool {
        let Some(id) = self.tokens.remove(&token) else {
            return false;
        };
        let Some(p) = self.pending.get_mut(&id) else {
            return true;
        };
        let active = p.active.clone();
        let Some(s) = active.cfg.shadow.as_ref() else {
            return true;
        };
        let latency_ms = host.now_nanos().saturating_sub(p.dispatched_ns) / 1_000_000;
        let status: Option<u16> = if num_headers == 0 {
            None
        } else {
            host.call_response_header(":status")
                .and_then(|v| v.parse().ok())
        };
        // Envoy answers a timed-out call with a local 504 or with no headers at all.
        let timed_out =
            latency_ms + 1 >= u64::from(s.timeout_ms) && matches!(status, None | Some(504));
        let class = match status {
            _ if timed_out => ShadowClass::Timeout,
            None => ShadowClass::Reset,
            Some(st) => ShadowClass::of_status(st),
        };
        let ids = &p.active.ids;
        self.tally
            .borrow_mut()
            .add(ids.shadow_responses[p.target][class.index()], 1);
        let fields = match status {
            _ if timed_out => Err(Uncompared::Timeout),
            Some(200..=299) => match &s.compare {
                None => Ok(Fields::default()),
                Some(c) if body_size > c.max_body_bytes as usize => Err(Uncompared::BodyTooLarge),
                Some(c) => {
                    let body = host
                        .body(crate::host::Body::CallResponse, 0, body_size)
                        .unwrap_or_default();
                    crate::extract::fields(
                        &body,
                        c.label_pointer.as_deref(),
                        c.score_pointer.as_deref(),
                    )
                    .map_err(Unusable::uncompared)
                }
            },
            _ => Err(Uncompared::ShadowError),
        };
        p.shadow = Some(Outcome { latency_ms, fields });
        self.try_finish(host, id);
        true
    }

    fn try_finish(&mut self, host: &dyn Host, id: u64) {
        let ready = self
            .pending
            .get(&id)
            .is_some_and(|p| p.primary.is_some() && p.shadow.is_some());
        if !ready {
            return;
        }
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        let (Some(primary), Some(shadow)) = (p.primary, p.shadow) else {
            return;
        };
        let ids = &p.active.ids;
        let t = p.target;
        let (delta, dir) = if shadow.latency_ms >= primary.latency_ms {
            (
                shadow.latency_ms - primary.latency_ms,
                LatencyDirection::Slower,
            )
        } else {
            (
                primary.latency_ms - shadow.latency_ms,
                LatencyDirection::Faster,
            )
        };
        host.record(ids.shadow_latency_delta[t][dir.index()], delta);
        let compare = p
            .active
            .cfg
            .shadow
            .as_ref()
            .and_then(|s| s.compare.as_ref());
        if compare.is_none() {
            return;
        }
        match (primary.fields, shadow.fields) {
            (_, Err(reason)) => self
                .tally
                .borrow_mut()
                .add(ids.shadow_uncompared[t][reason.index()], 1),
            (Err(reason), _) => self
                .tally
                .borrow_mut()
                .add(ids.shadow_uncompared[t][reason.index()], 1),
            (Ok(a), Ok(b)) => {
                if let (Some(x), Some(y)) = (a.score, b.score) {
                    host.record(
                        ids.shadow_score_delta[t],
                        ((x - y).abs() * 1000.0).round() as u64,
                    );
                }
                let result = match (a.label, b.label) {
                    (Some(x), Some(y)) if x == y => Comparison::Agree,
                    (Some(_), Some(_)) => Comparison::Disagree,
                    _ => Comparison::Scored,
                };
                self.tally
                    .borrow_mut()
                    .add(ids.shadow_comparisons[t][result.index()], 1);
            }
        }
    }
}

/// How long past its timeout an entry may wait for a callback before it is expired.
const EXPIRY_GRACE_MS: u64 = 5_000;

/// Hop-by-hop and length headers are not copied: Envoy sets the length from the body.
pub fn copy_header(name: &str) -> bool {
    !matches!(
        name,
        "content-length"
            | "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "upgrade"
            | "proxy-connection"
            | "expect"
    )
}
