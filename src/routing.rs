//! The per-request decision: which version serves a request.
//!
//! Precedence: kill switch, then a trusted override header, then segment rules in order,
//! then the weights (sticky by key, or random without a key).
//!
//! Bucket layout: a key hashes to a bucket in 0..10000. The baseline (the first version) owns
//! the bottom of the range; the other versions are stacked from the top in the order listed,
//! version 1 highest. So the set of buckets that go to *any* candidate is `[10000 - Σw, 10000)`,
//! and version k owns `[10000 - Σ_{j≤k} w_j, 10000 - Σ_{j<k} w_j)`. This gives the monotone ramp
//! properties documented in the README and proven by property tests.

use std::net::IpAddr;

use crate::request::RequestView;
use aviary_contract::config::{Compiled, Condition, BUCKETS};
use aviary_contract::hash::{bucket, SplitMix64};
use aviary_contract::metrics::DecisionReason;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    KillSwitch,
    Override,
    Rule(usize),
    Sticky,
    Random,
}

impl Reason {
    /// The `reason` label this decision is counted under.
    pub fn label(self) -> DecisionReason {
        match self {
            Reason::KillSwitch => DecisionReason::KillSwitch,
            Reason::Override => DecisionReason::Override,
            Reason::Rule(_) => DecisionReason::Rule,
            Reason::Sticky => DecisionReason::Sticky,
            Reason::Random => DecisionReason::Random,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub version: usize,
    pub reason: Reason,
    /// An override header was present but not honoured (untrusted source or unknown version).
    pub override_rejected: bool,
}

/// The version owning `bucket` under `layout`.
pub fn version_for_bucket(layout: &[(u32, u32)], bucket: u32) -> usize {
    layout
        .iter()
        .position(|(lo, hi)| (*lo..*hi).contains(&bucket))
        .unwrap_or(0)
}

/// The sticky key of a request, from the first configured source that has one.
pub fn sticky_key<'a>(cfg: &Compiled, req: &'a RequestView) -> Option<&'a str> {
    let sticky = cfg.sticky.as_ref()?;
    sticky.keys.iter().find_map(|k| {
        let v = if let Some(h) = &k.header {
            req.header(h)
        } else if let Some(c) = &k.cookie {
            req.cookie(c)
        } else {
            k.query.as_deref().and_then(|q| req.query(q))
        };
        v.filter(|v| !v.is_empty())
    })
}

pub fn conditions_hold(conditions: &[Condition], req: &RequestView) -> bool {
    conditions
        .iter()
        .all(|c| c.matcher.matches(req.get(&c.source)))
}

/// Whether a request falls in a `share` (basis points): by its key's bucket under `seed` when it
/// has one (so the same user is always in or out), else at random.
pub fn in_share(share: u32, seed: u32, key: Option<&str>, rng: &mut SplitMix64) -> bool {
    if share >= BUCKETS {
        return true;
    }
    if share == 0 {
        return false;
    }
    let b = match key {
        Some(k) => bucket(k.as_bytes(), seed),
        None => rng.bucket(),
    };
    b < share
}

pub fn decide(
    cfg: &Compiled,
    req: &RequestView,
    source_ip: &mut dyn FnMut() -> Option<IpAddr>,
    rng: &mut SplitMix64,
) -> Decision {
    let mut d = Decision {
        version: 0,
        reason: Reason::KillSwitch,
        override_rejected: false,
    };
    if let Some(v) = cfg.kill_switch {
        d.version = v;
        return d;
    }
    if let Some(o) = &cfg.override_ {
        if let Some(wanted) = req.header(&o.header) {
            let target = cfg.versions.iter().position(|v| v.name == wanted);
            let mut trusted =
                || source_ip().is_some_and(|ip| o.trusted.iter().any(|c| c.contains(&ip)));
            match target {
                Some(v) if trusted() => {
                    d.version = v;
                    d.reason = Reason::Override;
                    return d;
                }
                _ => d.override_rejected = true,
            }
        }
    }
    let key = sticky_key(cfg, req);
    for (i, rule) in cfg.rules.iter().enumerate() {
        if conditions_hold(&rule.conditions, req) && in_share(rule.share_bps, rule.seed, key, rng) {
            d.version = rule.version;
            d.reason = Reason::Rule(i);
            return d;
        }
    }
    let (b, reason) = match key {
        Some(k) => (
            bucket(k.as_bytes(), cfg.sticky.as_ref().map_or(0, |s| s.seed)),
            Reason::Sticky,
        ),
        None => (rng.bucket(), Reason::Random),
    };
    d.version = version_for_bucket(&cfg.layout, b);
    d.reason = reason;
    d
}
