//! The per-request decision: which version serves a request.
//!
//! Precedence: kill switch, then a trusted override header, then segment rules in order (a
//! `trustedOnly` rule only for trusted peers), then the weights (sticky by key, or random
//! without a key).
//!
//! Bucket layout: a key hashes to a bucket in 0..10000. The baseline (the first version) owns
//! the bottom of the range; the other versions are stacked from the top in the order listed,
//! version 1 highest. So the set of buckets that go to *any* candidate is `[10000 - Σw, 10000)`,
//! and version k owns `[10000 - Σ_{j≤k} w_j, 10000 - Σ_{j<k} w_j)`. This gives the monotone ramp
//! properties documented in the README and proven by property tests.

use std::net::IpAddr;

use crate::request::RequestView;
use aviary_contract::cidr::Cidr;
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
    conditions.iter().all(|c| {
        let scheme = if c.matcher.needs_scheme() {
            req.header(":scheme")
        } else {
            None
        };
        c.matcher.matches_in(req.get(&c.source), scheme)
    })
}

/// The request's peer (Envoy's `source.address`), read from the host at most once and only
/// when a trust check needs it.
pub struct Peer<'a> {
    read: &'a mut dyn FnMut() -> Option<IpAddr>,
    ip: Option<Option<IpAddr>>,
}

impl<'a> Peer<'a> {
    pub fn new(read: &'a mut dyn FnMut() -> Option<IpAddr>) -> Self {
        Peer { read, ip: None }
    }

    /// Whether the peer is in one of `cidrs` (never, for an empty list or an unknown peer).
    pub fn within(&mut self, cidrs: &[Cidr]) -> bool {
        if cidrs.is_empty() {
            return false;
        }
        let read = &mut self.read;
        let ip = *self.ip.get_or_insert_with(read);
        ip.is_some_and(|ip| cidrs.iter().any(|c| c.contains(&ip)))
    }
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
    peer: &mut Peer,
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
            match target {
                Some(v) if peer.within(&o.trusted) => {
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
        if conditions_hold(&rule.conditions, req)
            && (!rule.trusted_only || peer.within(&cfg.trusted))
            && in_share(rule.share_bps, rule.seed, key, rng)
        {
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use aviary_contract::config::{parse_and_compile, ConfigError};

    const VERSIONS: &str =
        r#""versions":[{"name":"stable","weight":9000},{"name":"canary","weight":1000}]"#;

    fn cfg(rest: &str) -> Result<Compiled, ConfigError> {
        parse_and_compile(format!("{{{VERSIONS}{rest}}}").as_bytes())
    }

    fn decide_from(cfg: &Compiled, headers: &[(&str, &str)], ip: [u8; 4]) -> Decision {
        let req = RequestView::from_pairs(headers);
        let mut source = || Some(IpAddr::V4(Ipv4Addr::from(ip)));
        decide(
            cfg,
            &req,
            &mut Peer::new(&mut source),
            &mut SplitMix64::new(1),
        )
    }

    const ALL: &str = r#","sticky":{"keys":[{"header":"x-user-id"}]},
        "override":{"header":"x-force","trustedCidrs":["10.0.0.0/8"]},
        "rules":[{"name":"beta","match":[{"header":"x-beta","present":true}],"version":"canary"},
                 {"name":"eu","match":[{"header":"x-region","exact":"eu"}],"version":"stable"},
                 {"name":"none","match":[{"header":"x-region","present":true}],"version":"canary","share":0}]"#;

    #[test]
    fn kill_switch_then_override_then_rules_then_weights() -> Result<(), ConfigError> {
        let c = cfg(ALL)?;
        let at = |h: &[(&str, &str)], ip| {
            let d = decide_from(&c, h, ip);
            (d.version, d.reason, d.override_rejected)
        };
        let trusted = [10, 1, 2, 3];
        let outside = [192, 168, 0, 1];
        let both = [("x-force", "stable"), ("x-beta", "1")];
        assert_eq!(at(&both, trusted), (0, Reason::Override, false));
        assert_eq!(at(&both, outside), (1, Reason::Rule(0), true));
        assert_eq!(at(&[("x-force", "v9")], trusted), (0, Reason::Random, true));
        let eu = [("x-region", "eu"), ("x-beta", "1")];
        assert_eq!(
            at(&eu, outside),
            (1, Reason::Rule(0), false),
            "rules in order"
        );
        let d = at(&[("x-region", "us"), ("x-user-id", "u1")], outside);
        assert_eq!(d.1, Reason::Sticky, "a share of 0 never applies");
        let killed = cfg(&format!(r#"{ALL},"killSwitch":"stable""#))?;
        let d = decide_from(&killed, &both, trusted);
        assert_eq!((d.version, d.reason), (0, Reason::KillSwitch));
        Ok(())
    }

    #[test]
    fn trusted_only_rules_apply_to_trusted_peers_and_the_peer_is_read_once(
    ) -> Result<(), ConfigError> {
        let c = cfg(
            r#","trustedCidrs":["10.0.0.0/8"],"override":{"header":"x-force"},
            "rules":[{"name":"debug","match":[{"header":"x-canary","exact":"always"}],"version":"canary","trustedOnly":true}]"#,
        )?;
        let at = |ip| decide_from(&c, &[("x-canary", "always")], ip).reason;
        assert_eq!(at([10, 0, 0, 1]), Reason::Rule(0));
        assert_ne!(at([192, 168, 0, 1]), Reason::Rule(0));
        let mut reads = 0;
        let mut source = || {
            reads += 1;
            Some(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1)))
        };
        let req = RequestView::from_pairs(&[("x-canary", "always"), ("x-force", "canary")]);
        let d = decide(
            &c,
            &req,
            &mut Peer::new(&mut source),
            &mut SplitMix64::new(1),
        );
        assert!(d.override_rejected && d.version == 0);
        assert_eq!(reads, 1, "the override and the rule share one read");
        let mut none = || None;
        assert!(
            !Peer::new(&mut none).within(&c.trusted),
            "an unknown peer is untrusted"
        );
        Ok(())
    }

    #[test]
    fn authority_conditions_ignore_case_and_the_default_port() -> Result<(), ConfigError> {
        let c = cfg(r#","match":[{"header":":authority","oneOf":["recsys","recsys:8080"]}]"#)?;
        let holds = |h: &[(&str, &str)]| conditions_hold(&c.scope, &RequestView::from_pairs(h));
        for host in ["RECSYS", "Recsys:8080", "recsys:80"] {
            assert!(holds(&[(":authority", host)]), "{host}");
        }
        assert!(holds(&[(":authority", "recsys:443"), (":scheme", "https")]));
        assert!(!holds(&[(":authority", "recsys:443"), (":scheme", "http")]));
        assert!(!holds(&[(":authority", "recsys.default")]));
        Ok(())
    }

    #[test]
    fn reasons_map_to_their_labels() {
        assert_eq!(Reason::Rule(3).label(), DecisionReason::Rule);
        assert_eq!(Reason::KillSwitch.label(), DecisionReason::KillSwitch);
        assert_eq!(Reason::Random.label().as_str(), "random");
    }

    #[test]
    fn sticky_keys_are_tried_in_order_and_empty_ones_skipped() -> Result<(), ConfigError> {
        let c = cfg(
            r#","sticky":{"keys":[{"header":"x-user-id"},{"cookie":"session"},{"query":"u"}]}"#,
        )?;
        let key =
            |h: &[(&str, &str)]| sticky_key(&c, &RequestView::from_pairs(h)).map(String::from);
        assert_eq!(
            key(&[("x-user-id", "a"), ("cookie", "session=b")]),
            Some("a".into())
        );
        assert_eq!(
            key(&[("x-user-id", ""), ("cookie", "session=b")]),
            Some("b".into())
        );
        assert_eq!(key(&[(":path", "/p?u=c")]), Some("c".into()));
        assert_eq!(key(&[(":path", "/p?v=c")]), None);
        for user in ["u1", "u2", "user-7", "\u{e9}"] {
            let d = decide_from(&c, &[("x-user-id", user)], [0; 4]);
            let b = bucket(user.as_bytes(), 0);
            assert_eq!(d.version, version_for_bucket(&c.layout, b));
            assert_eq!(d.reason, Reason::Sticky);
        }
        Ok(())
    }

    #[test]
    fn shares_are_all_none_or_by_key() {
        let mut rng = SplitMix64::new(3);
        assert!(in_share(BUCKETS, 0, None, &mut rng));
        assert!(!in_share(0, 0, Some("k"), &mut rng));
        let inside = (0..1000)
            .filter(|i| in_share(2500, 9, Some(&format!("user-{i}")), &mut rng))
            .count();
        assert!(
            (180..320).contains(&inside),
            "{inside} of 1000 in a 25% share"
        );
        let k = Some("user-1");
        assert_eq!(
            in_share(2500, 9, k, &mut rng),
            in_share(2500, 9, k, &mut rng)
        );
    }

    /// As weights ramp up, a bucket held by any candidate stays with a candidate; the first
    /// candidate keeps its buckets as its weight grows; a later one keeps its buckets while the
    /// weights listed before it stay the same.
    #[test]
    fn layout_ramp_is_monotone() -> Result<(), ConfigError> {
        let three = |b: u32, c: u32| {
            parse_and_compile(
                format!(
                    r#"{{"versions":[{{"name":"a","weight":{}}},{{"name":"b","weight":{b}}},{{"name":"c","weight":{c}}}]}}"#,
                    BUCKETS - b - c
                )
                .as_bytes(),
            )
        };
        let steps = [
            (0, 0),
            (100, 0),
            (500, 100),
            (500, 300),
            (1000, 300),
            (2500, 2500),
            (2500, 7500),
        ];
        let mut before: Option<(u32, Vec<usize>)> = None;
        for (b, c) in steps {
            let layout = three(b, c)?.layout;
            let owner: Vec<usize> = (0..BUCKETS)
                .map(|k| version_for_bucket(&layout, k))
                .collect();
            assert_eq!(owner.iter().filter(|v| **v == 1).count(), b as usize);
            assert_eq!(owner.iter().filter(|v| **v == 2).count(), c as usize);
            if let Some((prev_b, prev)) = &before {
                for (p, n) in prev.iter().zip(&owner) {
                    assert!(
                        *p == 0 || *n != 0,
                        "a candidate bucket went to the baseline"
                    );
                    assert!(*p != 1 || *n == 1, "the first candidate lost a bucket");
                    if *prev_b == b {
                        assert!(*p != 2 || *n == 2, "the second candidate lost a bucket");
                    }
                }
            }
            before = Some((b, owner));
        }
        Ok(())
    }
}
