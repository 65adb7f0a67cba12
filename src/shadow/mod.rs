//! Shadow mirroring and output comparison.
//!
//! An HTTP stream never dispatches a shadow call itself: Envoy delivers a call's answer to the
//! context that dispatched it, and once a stream has ended its context is gone, so the answer
//! would be lost. Instead the stream queues a job in this per-VM state; a root context drains
//! the queue on its tick and dispatches, so every answer comes back to a root. The primary's
//! outcome and the shadow's outcome meet in a `Pending` entry keyed by job id, in whichever
//! order they arrive; the second one to arrive records the comparison and frees the entry.
//! Queue plus pending entries never exceed `maxInFlight`; beyond it mirroring is skipped and
//! counted.
//!
//! The state belongs to the VM, not to one root context: a config swap keeps the VM but gives
//! it a new root context, and Envoy ends the old one about a millisecond later, with its calls
//! in flight. So every root shares this state, the live root dispatches, and a root that is
//! ending stays (its `on_done` answers false) until the calls it dispatched are answered; each
//! token remembers its root for that.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use crate::active::{Active, ShadowIds};
use crate::extract::{self, Fields, Unusable};
use crate::host::{Body, Host};
use crate::tally::Tally;
use aviary_contract::config::CompiledShadow;
use aviary_contract::metrics::{Comparison, LatencyDirection, ShadowClass, Uncompared};

#[cfg(test)]
mod tests;

/// One side's result for a mirrored request.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub latency_ms: u64,
    pub fields: Result<Fields, Uncompared>,
}

/// A copy of a request, queued for the root to send to one shadow target.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Queued, so counted as sent: from here on it is open until its outcome is counted.
    queued: bool,
    primary: Option<Outcome>,
    shadow: Option<Outcome>,
}

impl Pending {
    fn ids(&self) -> Option<&ShadowIds> {
        self.active.ids.shadows.get(self.target)
    }
}

/// How long past its timeout an entry may wait for a callback before it is expired.
const EXPIRY_GRACE_MS: u64 = 5_000;

/// Open copies of one shadow target: (service, version, count).
pub type Open = (String, String, u64);

#[derive(Default)]
pub struct Shadows {
    tally: Rc<RefCell<Tally>>,
    queue: VecDeque<Job>,
    pending: HashMap<u64, Pending>,
    /// Call token to (job id, the root context that dispatched it).
    tokens: HashMap<u32, (u64, u32)>,
    /// Calls awaiting an answer, per root context that dispatched them.
    owned: Vec<(u32, usize)>,
    /// Root contexts configured and not ending.
    pub live_roots: usize,
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
                queued: false,
                primary: None,
                shadow: None,
            },
        );
        Some(self.next_id)
    }

    /// Queues a reserved copy: from here it counts as sent and ends in exactly one outcome.
    pub fn enqueue(&mut self, job: Job) {
        let Some(p) = self.pending.get_mut(&job.id) else {
            return;
        };
        p.queued = true;
        if let Some(ids) = p.ids() {
            self.tally.borrow_mut().add(ids.sent, 1);
        }
        self.queue.push_back(job);
    }

    /// Calls dispatched by root context `root` that await their answer.
    pub fn owned_by(&self, root: u32) -> usize {
        self.owned
            .iter()
            .find(|(r, _)| *r == root)
            .map_or(0, |(_, n)| *n)
    }

    fn own(&mut self, root: u32, add: bool) {
        match self.owned.iter().position(|(r, _)| *r == root) {
            Some(i) if add => self.owned[i].1 += 1,
            Some(i) => {
                self.owned[i].1 -= 1;
                if self.owned[i].1 == 0 {
                    self.owned.swap_remove(i);
                }
            }
            None if add => self.owned.push((root, 1)),
            None => {}
        }
    }

    /// Copies counted as sent whose outcome is not counted yet, by shadow target.
    pub fn open(&self) -> Vec<Open> {
        let mut out: Vec<Open> = Vec::new();
        for p in self.pending.values().filter(|p| p.queued) {
            let service = &p.active.cfg.service;
            let Some(t) = p
                .active
                .cfg
                .shadow
                .as_ref()
                .and_then(|s| s.targets.get(p.target))
            else {
                continue;
            };
            match out
                .iter_mut()
                .find(|(s, v, _)| s == service && *v == t.version)
            {
                Some(o) => o.2 += 1,
                None => out.push((service.clone(), t.version.clone(), 1)),
            }
        }
        out
    }

    /// Drops a reservation whose request was never sent (e.g. its body was too large).
    pub fn cancel(&mut self, id: u64) {
        self.pending.remove(&id);
    }

    pub fn has_work(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Dispatches queued jobs from root context `root` and expires entries that outlived
    /// their timeout by far, so a lost callback can never leak a slot.
    pub fn on_tick(&mut self, host: &dyn Host, root: u32) {
        let now = host.now_nanos();
        while let Some(job) = self.queue.pop_front() {
            self.dispatch(host, job, now, root);
        }
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                let timeout = p.active.cfg.shadow.as_ref().map_or(0, |s| s.timeout_ms);
                let limit = u64::from(timeout) + EXPIRY_GRACE_MS;
                now.saturating_sub(p.created_ns) / 1_000_000 > limit
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(ids) = self.pending.remove(&id).as_ref().and_then(Pending::ids) {
                self.tally
                    .borrow_mut()
                    .add(ids.uncompared[Uncompared::Expired], 1);
            }
        }
        let gone: Vec<u32> = self
            .tokens
            .iter()
            .filter(|(_, (id, _))| !self.pending.contains_key(id))
            .map(|(t, _)| *t)
            .collect();
        for t in gone {
            if let Some((_, root)) = self.tokens.remove(&t) {
                self.own(root, false);
            }
        }
    }

    fn dispatch(&mut self, host: &dyn Host, job: Job, now: u64, root: u32) {
        let Some(p) = self.pending.get_mut(&job.id) else {
            return;
        };
        let active = &p.active;
        let (Some(s), Some(ids)) = (&active.cfg.shadow, active.ids.shadows.get(job.target)) else {
            return;
        };
        let Some(t) = s.targets.get(job.target) else {
            return;
        };
        let headers: Vec<(&str, &str)> = job
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match host.dispatch(&t.cluster, &headers, job.body.as_deref(), s.timeout_ms) {
            Ok(token) => {
                p.dispatched_ns = now;
                self.tokens.insert(token, (job.id, root));
                self.own(root, true);
            }
            Err(_) => {
                let failed = ids.uncompared[Uncompared::DispatchFailed];
                self.tally.borrow_mut().add(failed, 1);
                self.pending.remove(&job.id);
            }
        }
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
        let Some((id, root)) = self.tokens.remove(&token) else {
            return false;
        };
        self.own(root, false);
        let Some(p) = self.pending.get_mut(&id) else {
            return true;
        };
        let active = p.active.clone();
        let (Some(s), Some(ids)) = (active.cfg.shadow.as_ref(), p.ids()) else {
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
        self.tally.borrow_mut().add(ids.responses[class], 1);
        let fields = match status {
            _ if timed_out => Err(Uncompared::Timeout),
            Some(200..=299) => shadow_fields(host, s, body_size),
            _ => Err(Uncompared::ShadowError),
        };
        p.shadow = Some(Outcome { latency_ms, fields });
        self.try_finish(host, id);
        true
    }

    /// Once both outcomes are in: records the latency delta and the comparison, frees the entry.
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
        let (Some(primary), Some(shadow), Some(ids)) = (&p.primary, &p.shadow, p.ids()) else {
            return;
        };
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
        host.record(ids.latency_delta[dir], delta);
        let compare = p
            .active
            .cfg
            .shadow
            .as_ref()
            .and_then(|s| s.compare.as_ref());
        if compare.is_none() {
            return;
        }
        let mut tally = self.tally.borrow_mut();
        match (&primary.fields, &shadow.fields) {
            (_, Err(reason)) | (Err(reason), _) => tally.add(ids.uncompared[*reason], 1),
            (Ok(a), Ok(b)) => {
                if let (Some(x), Some(y)) = (a.score, b.score) {
                    host.record(ids.score_delta, ((x - y).abs() * 1000.0).round() as u64);
                }
                let result = match (&a.label, &b.label) {
                    (Some(x), Some(y)) if x == y => Comparison::Agree,
                    (Some(_), Some(_)) => Comparison::Disagree,
                    _ => Comparison::Scored,
                };
                tally.add(ids.comparisons[result], 1);
            }
        }
    }
}

/// The fields of a shadow's 2xx answer, read from the call's body when answers are compared.
fn shadow_fields(
    host: &dyn Host,
    s: &CompiledShadow,
    body_size: usize,
) -> Result<Fields, Uncompared> {
    match &s.compare {
        None => Ok(Fields::default()),
        Some(c) if body_size > c.max_body_bytes as usize => Err(Uncompared::BodyTooLarge),
        Some(c) => {
            let body = host
                .body(Body::CallResponse, 0, body_size)
                .unwrap_or_default();
            extract::fields(
                &body,
                c.label_pointer.as_deref(),
                c.score_pointer.as_deref(),
            )
            .map_err(Unusable::uncompared)
        }
    }
}

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
