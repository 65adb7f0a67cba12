//! Shadow bookkeeping: each reserved copy ends in exactly one outcome, within capacity, and a
//! lost answer can never hold a slot.

use std::cell::RefCell;
use std::rc::Rc;

use crate::active::Active;
use crate::extract::Fields;
use crate::host::fake::FakeHost;
use crate::host::{Body, Host};
use crate::shadow::{copy_header, Job, Outcome, Shadows, EXPIRY_GRACE_MS};
use crate::tally::Tally;
use aviary_contract::config::ConfigError;
use aviary_contract::hash::SplitMix64;
use aviary_contract::metrics::{self, stat_name, Comparison, Label, ShadowClass, Uncompared};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const TIMEOUT_MS: u64 = 100;

struct Rig {
    host: FakeHost,
    tally: Rc<RefCell<Tally>>,
    shadows: Shadows,
    active: Rc<Active>,
}

fn rig(compare: &str) -> Result<Rig, ConfigError> {
    let host = FakeHost::default();
    let tally = Rc::new(RefCell::new(Tally::default()));
    let raw = format!(
        r#"{{"service":"svc","versions":[{{"name":"stable","weight":10000}},{{"name":"canary","weight":0}}],
            "shadow":{{"targets":[{{"version":"canary","cluster":"shadow-c"}}],"share":10000,
                       "timeoutMs":{TIMEOUT_MS},"maxInFlight":4{compare}}}}}"#
    );
    let active = Rc::new(Active::new(&host, &tally, Some(raw.as_bytes()))?);
    Ok(Rig {
        shadows: Shadows::new(tally.clone()),
        host,
        tally,
        active,
    })
}

const COMPARE: &str =
    r#","compare":{"labelPointer":"/label","scorePointer":"/score","maxBodyBytes":64}"#;

fn primary(latency_ms: u64, label: &str, score: f64) -> Outcome {
    Outcome {
        latency_ms,
        fields: Ok(Fields {
            label: Some(label.into()),
            score: Some(score),
        }),
    }
}

impl Rig {
    /// Reserves and queues a copy, then dispatches it on a tick; the call's token.
    fn mirror(&mut self) -> Option<(u64, u32)> {
        let id = self
            .shadows
            .reserve(&self.active, 0, self.host.now_nanos())?;
        self.shadows.enqueue(Job {
            id,
            target: 0,
            headers: vec![(":path".into(), "/p".into())],
            body: None,
        });
        self.shadows.on_tick(&self.host, 1);
        let token = self.host.dispatches.borrow().last()?.token;
        Some((id, token))
    }

    fn answer(&mut self, token: u32, status: Option<u16>, body: &str) -> bool {
        let headers: Vec<(&str, String)> = status
            .map(|s| (":status", s.to_string()))
            .into_iter()
            .collect();
        *self.host.call_response.borrow_mut() = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        self.host.set_body(Body::CallResponse, body.as_bytes());
        self.shadows
            .on_call_response(&self.host, token, headers.len(), body.len())
    }

    fn count<L: Label>(&self, base: &str, value: L) -> i64 {
        self.tally.borrow_mut().flush(&self.host);
        let labels = [
            ("service", "svc"),
            ("version", "canary"),
            (L::KEY, value.as_str()),
        ];
        self.host.counter(&stat_name(base, &labels))
    }

    fn comparisons(&self, c: Comparison) -> i64 {
        self.count(metrics::SHADOW_COMPARISONS, c)
    }

    fn uncompared(&self, u: Uncompared) -> i64 {
        self.count(metrics::SHADOW_UNCOMPARED, u)
    }

    /// Comparisons and uncompared copies of every kind.
    fn outcomes(&self) -> i64 {
        self.tally.borrow_mut().flush(&self.host);
        self.host.counter_sum(metrics::SHADOW_COMPARISONS)
            + self.host.counter_sum(metrics::SHADOW_UNCOMPARED)
    }
}

#[test]
fn the_second_side_to_arrive_records_the_comparison() -> TestResult {
    let mut r = rig(COMPARE)?;
    let (a, ta) = r.mirror().ok_or("reserve")?;
    let (b, tb) = r.mirror().ok_or("reserve")?;
    r.host.advance_ms(30);
    r.shadows.primary_done(&r.host, a, primary(10, "cat", 0.5));
    assert_eq!(r.shadows.in_flight(), 2, "waits for the shadow");
    assert!(r.answer(ta, Some(200), r#"{"label":"cat","score":0.25}"#));
    assert!(r.answer(tb, Some(200), r#"{"label":"dog","score":0.5}"#));
    assert_eq!(r.shadows.in_flight(), 1, "waits for the primary");
    r.shadows.primary_done(&r.host, b, primary(50, "cat", 0.5));
    assert_eq!(r.shadows.in_flight(), 0);
    assert!(!r.shadows.has_work());
    assert_eq!(r.comparisons(Comparison::Agree), 1);
    assert_eq!(r.comparisons(Comparison::Disagree), 1);
    assert_eq!(r.outcomes(), 2);
    assert_eq!(r.count(metrics::SHADOW_RESPONSES, ShadowClass::Success), 2);
    assert_eq!(r.host.counter_sum(metrics::SHADOW_REQUESTS), 2);
    let delta = stat_name(
        metrics::SHADOW_SCORE_DELTA,
        &[("service", "svc"), ("version", "canary")],
    );
    assert_eq!(r.host.recorded(&delta), [250, 0]);
    let latency = |d: &str| {
        let labels = [("service", "svc"), ("version", "canary"), ("direction", d)];
        r.host
            .recorded(&stat_name(metrics::SHADOW_LATENCY_DELTA, &labels))
    };
    assert_eq!(latency("slower"), [20]);
    assert_eq!(latency("faster"), [20]);
    Ok(())
}

#[test]
fn without_compare_only_latency_is_recorded() -> TestResult {
    let mut r = rig("")?;
    let (id, token) = r.mirror().ok_or("reserve")?;
    assert!(r.answer(token, Some(200), "not json"));
    r.shadows.primary_done(&r.host, id, primary(0, "x", 1.0));
    assert_eq!(r.shadows.in_flight(), 0);
    assert_eq!(r.outcomes(), 0);
    assert_eq!(r.host.counter_sum(metrics::SHADOW_REQUESTS), 1);
    Ok(())
}

#[test]
fn capacity_is_max_in_flight_and_freed_by_outcomes() -> TestResult {
    let mut r = rig(COMPARE)?;
    let ids: Vec<u64> = (0..4)
        .filter_map(|_| r.shadows.reserve(&r.active, 0, 0))
        .collect();
    assert_eq!(ids.len(), 4);
    assert_eq!(r.shadows.reserve(&r.active, 0, 0), None);
    r.shadows.cancel(ids[0]);
    assert_eq!(r.shadows.in_flight(), 3);
    assert!(r.shadows.reserve(&r.active, 0, 0).is_some());
    Ok(())
}

#[test]
fn answers_are_classified_and_uncompared_for_one_reason() -> TestResult {
    let timeout = TIMEOUT_MS;
    let cases: [(u64, Option<u16>, &str, ShadowClass, Uncompared); 6] = [
        (timeout, None, "", ShadowClass::Timeout, Uncompared::Timeout),
        (
            timeout + 3,
            Some(504),
            "",
            ShadowClass::Timeout,
            Uncompared::Timeout,
        ),
        (5, None, "", ShadowClass::Reset, Uncompared::ShadowError),
        (
            5,
            Some(503),
            "",
            ShadowClass::ServerError,
            Uncompared::ShadowError,
        ),
        (
            5,
            Some(200),
            "<html>",
            ShadowClass::Success,
            Uncompared::NonJson,
        ),
        (
            5,
            Some(200),
            &"x".repeat(65),
            ShadowClass::Success,
            Uncompared::BodyTooLarge,
        ),
    ];
    for (after_ms, status, body, class, reason) in cases {
        let mut r = rig(COMPARE)?;
        let (id, token) = r.mirror().ok_or("reserve")?;
        r.host.advance_ms(after_ms);
        assert!(r.answer(token, status, body));
        r.shadows.primary_done(&r.host, id, primary(1, "cat", 0.5));
        assert_eq!(r.count(metrics::SHADOW_RESPONSES, class), 1, "{status:?}");
        assert_eq!(r.uncompared(reason), 1, "{status:?} {body}");
        assert_eq!(r.outcomes(), 1);
        assert_eq!(r.shadows.in_flight(), 0);
    }
    // A failed primary is the reason when the shadow's answer is usable; when both sides
    // fail, the shadow's reason is the one counted.
    for (body, reason) in [
        (r#"{"label":"cat","score":1}"#, Uncompared::PrimaryError),
        (r#"{"label":"cat"}"#, Uncompared::FieldMissing),
    ] {
        let mut r = rig(COMPARE)?;
        let (id, token) = r.mirror().ok_or("reserve")?;
        assert!(r.answer(token, Some(200), body));
        let failed = Outcome {
            latency_ms: 1,
            fields: Err(Uncompared::PrimaryError),
        };
        r.shadows.primary_done(&r.host, id, failed);
        assert_eq!(r.uncompared(reason), 1, "{body}");
        assert_eq!(r.outcomes(), 1);
    }
    Ok(())
}

#[test]
fn a_refused_dispatch_frees_its_slot() -> TestResult {
    let mut r = rig(COMPARE)?;
    r.host.refuse_dispatch.set(true);
    assert!(r.mirror().is_none(), "nothing was dispatched");
    assert_eq!(r.shadows.in_flight(), 0);
    assert_eq!(r.uncompared(Uncompared::DispatchFailed), 1);
    assert_eq!(
        r.host.counter_sum(metrics::SHADOW_REQUESTS),
        1,
        "a queued copy counts as sent, and its outcome is the refusal"
    );
    Ok(())
}

#[test]
fn lost_answers_expire_and_late_ones_are_ignored() -> TestResult {
    let mut r = rig(COMPARE)?;
    let (_, token) = r.mirror().ok_or("reserve")?;
    r.host.advance_ms(TIMEOUT_MS + EXPIRY_GRACE_MS);
    r.shadows.on_tick(&r.host, 1);
    assert_eq!(r.shadows.in_flight(), 1, "not yet past the grace period");
    r.host.advance_ms(1);
    r.shadows.on_tick(&r.host, 1);
    assert_eq!(r.shadows.in_flight(), 0);
    assert_eq!(r.uncompared(Uncompared::Expired), 1);
    assert!(!r.answer(token, Some(200), "{}"), "the token was dropped");
    assert!(!r.answer(999, Some(200), "{}"));
    assert_eq!(r.outcomes(), 1);
    Ok(())
}

/// Random interleavings of reserve, cancel, dispatch, answers, primaries and time: every
/// reserved copy ends in exactly one outcome (or a cancel), and nothing stays held.
#[test]
fn every_reserved_copy_ends_in_exactly_one_outcome() -> TestResult {
    let mut rng = SplitMix64::new(42);
    let mut seen = [0; 3];
    for _ in 0..200 {
        let mut r = rig(COMPARE)?;
        r.host.refuse_dispatch.set(rng.next_u64().is_multiple_of(5));
        let mut reserved = 0;
        let mut cancelled = 0;
        // (job id, call token, primary reported, tick seen)
        let mut open: Vec<(u64, Option<u32>, bool, bool)> = Vec::new();
        for _ in 0..40 {
            match rng.next_u64() % 6 {
                0 => {
                    if let Some(id) = r.shadows.reserve(&r.active, 0, r.host.now_nanos()) {
                        reserved += 1;
                        r.shadows.enqueue(Job {
                            id,
                            target: 0,
                            headers: Vec::new(),
                            body: None,
                        });
                        open.push((id, None, false, false));
                    }
                }
                1 => {
                    let before = r.host.dispatches.borrow().len();
                    r.shadows.on_tick(&r.host, 1);
                    let tokens: Vec<u32> = r.host.dispatches.borrow()[before..]
                        .iter()
                        .map(|d| d.token)
                        .collect();
                    let queued = open.iter_mut().filter(|o| !o.3);
                    let mut tokens = tokens.into_iter();
                    for o in queued {
                        o.3 = true;
                        if !r.host.refuse_dispatch.get() {
                            o.1 = tokens.next();
                        }
                    }
                }
                2 if !open.is_empty() => {
                    let i = (rng.next_u64() % open.len() as u64) as usize;
                    if let (Some(t), status) = (open[i].1, rng.next_u64() % 3) {
                        let status = [Some(200), Some(500), None][status as usize];
                        r.answer(t, status, r#"{"label":"a","score":1}"#);
                    }
                }
                3 if !open.is_empty() => {
                    let i = (rng.next_u64() % open.len() as u64) as usize;
                    if !open[i].2 {
                        open[i].2 = true;
                        r.shadows
                            .primary_done(&r.host, open[i].0, primary(1, "a", 1.0));
                    }
                }
                4 if open.last().is_some_and(|o| !o.2 && !o.3) => {
                    r.shadows.cancel(open.remove(open.len() - 1).0);
                    cancelled += 1;
                }
                _ => r.host.advance_ms(rng.next_u64() % 2_000),
            }
        }
        r.shadows.on_tick(&r.host, 1);
        r.host.advance_ms(TIMEOUT_MS + EXPIRY_GRACE_MS + 1);
        r.shadows.on_tick(&r.host, 1);
        assert_eq!(r.shadows.in_flight(), 0);
        assert_eq!(r.outcomes() + cancelled, reserved);
        seen[0] += r.host.counter_sum(metrics::SHADOW_COMPARISONS);
        seen[1] += r.host.counter_sum(metrics::SHADOW_UNCOMPARED);
        seen[2] += cancelled;
    }
    assert!(
        seen.iter().all(|n| *n > 10),
        "every ending was exercised: {seen:?}"
    );
    Ok(())
}

#[test]
fn hop_by_hop_headers_are_not_copied() {
    for h in [
        "content-length",
        "connection",
        "transfer-encoding",
        "expect",
    ] {
        assert!(!copy_header(h), "{h}");
    }
    assert!(copy_header("x-user-id"));
    assert!(copy_header(":path"));
}
