//! The filter's flow through the fake host: configuration, routing, stamping, counting,
//! scores and mirroring.

use crate::filter::{Root, Shared, SHADOW_TICK_MS};
use crate::host::fake::FakeHost;
use crate::host::{Body, LogLevel};
use aviary_contract::metrics::{self, stat_name};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const TWO: &str = r#""service":"svc","versions":[{"name":"stable","weight":10000},{"name":"canary","weight":0,"requestHeaders":{"x-model":"v2"},"responseHeaders":{"x-model-served":"v2"}}]"#;

fn root(host: &FakeHost, rest: &str) -> Result<Root, String> {
    let mut root = Root::new(1, Shared::new(7));
    let raw = format!("{{{TWO}{rest}}}");
    if root.on_configure(host, Some(raw.as_bytes())) {
        Ok(root)
    } else {
        Err(format!("rejected: {:?}", host.logs.borrow()))
    }
}

/// A counter with `service` and `version` labels, then `extra`, after a flush.
fn count(host: &FakeHost, root: &Root, base: &str, version: &str, extra: &[(&str, &str)]) -> i64 {
    root.flush(host);
    let mut labels = vec![("service", "svc"), ("version", version)];
    labels.extend_from_slice(extra);
    host.counter(&stat_name(base, &labels))
}

#[test]
fn configure_logs_sets_the_tick_and_records_gauges() -> TestResult {
    let host = FakeHost::default();
    let mut r = root(&host, r#","metrics":{"flushIntervalMs":200}"#)?;
    assert!(host.logged(
        LogLevel::Info,
        "active for service svc: stable=10000bps canary=0bps"
    ));
    assert_eq!(host.tick_ms.get(), 200);
    let weight = |v: &str| {
        host.recorded(&stat_name(
            metrics::WEIGHT,
            &[("service", "svc"), ("version", v)],
        ))
    };
    assert_eq!((weight("stable"), weight("canary")), (vec![10000], vec![0]));
    let digest = host.recorded(&stat_name(metrics::CONFIG_DIGEST, &[("service", "svc")]));
    assert_eq!(digest.len(), 1);

    let raw = format!(
        r#"{{{TWO},"killSwitch":"canary","shadow":{{"targets":[{{"version":"s","cluster":"c"}}],"share":1}}}}"#
    );
    assert!(r.on_configure(&host, Some(raw.as_bytes())));
    assert_eq!(
        host.tick_ms.get(),
        SHADOW_TICK_MS,
        "shadows dispatch on the tick"
    );
    assert_eq!(
        weight("canary"),
        [0, 10000],
        "the kill switch is the weight"
    );
    Ok(())
}

#[test]
fn a_rejected_config_names_the_field_and_keeps_the_last_good_one() -> TestResult {
    let host = FakeHost::default();
    let mut r = Root::new(1, Shared::new(7));
    assert!(!r.on_configure(&host, None));
    assert!(host.logged(LogLevel::Error, "no configuration given"));
    assert!(host.logged(
        LogLevel::Error,
        "no Aviary config is in force in this Envoy yet"
    ));
    assert!(!host.logged(LogLevel::Error, "unrouted"));
    let mut r = root(&host, "")?;
    let bad = br#"{"versions":[{"name":"a","weight":1}]}"#;
    assert!(!r.on_configure(&host, Some(bad)));
    assert!(host.logged(LogLevel::Error, "at `versions`"));
    assert!(host.logged(LogLevel::Error, "; keeping config"));
    assert!(r.active.is_some());
    // A fresh VM (Envoy tries each config in one first) names the config the live VMs
    // published, the one that keeps serving.
    let mut trial = Root::new(1, Shared::new(8));
    assert!(!trial.on_configure(&host, Some(bad)));
    let digest = r.active.as_ref().map_or(0, |a| a.cfg.digest);
    let kept = format!("Envoy keeps serving the last accepted one: config {digest:016x} active for service svc: stable=10000bps canary=0bps");
    assert!(
        host.logged(LogLevel::Error, &kept),
        "{:?}",
        host.logs.borrow()
    );
    let refusing = FakeHost::default();
    refusing.refuse_metrics.set(true);
    assert!(root(&refusing, "").is_err());
    assert!(refusing.logged(LogLevel::Error, "refused to define metric"));
    Ok(())
}

#[test]
fn a_request_is_routed_stamped_and_counted() -> TestResult {
    let host = FakeHost::default();
    let r = root(
        &host,
        r#","override":{"header":"x-force","trustedCidrs":["10.0.0.0/8"]}"#,
    )?;
    host.set_property("source.address", "10.1.2.3:5555");
    host.set_request(&[
        (":path", "/p"),
        ("x-aviary-version", "stable"),
        ("x-force", "canary"),
    ]);
    let mut s = r.new_stream();
    s.on_request_headers(&host, true);
    assert_eq!(s.version(), Some(1));
    assert_eq!(
        host.request_header("x-aviary-version").as_deref(),
        Some("canary")
    );
    assert_eq!(host.request_header("x-model").as_deref(), Some("v2"));
    assert_eq!(
        *host.request_removals.borrow(),
        ["x-force"],
        "clients never see it upstream"
    );
    host.set_response(&[(":status", "200")]);
    host.advance_ms(12);
    s.on_response_headers(&host, true);
    assert_eq!(
        *host.response_sets.borrow(),
        [
            ("x-aviary-served-by".to_string(), "canary".to_string()),
            ("x-model-served".to_string(), "v2".to_string())
        ]
    );
    s.on_log(&host);
    let base = metrics::REQUESTS;
    assert_eq!(
        count(&host, &r, base, "canary", &[("reason", "override")]),
        1
    );
    assert_eq!(count(&host, &r, base, "stable", &[("reason", "random")]), 0);
    let responses = metrics::RESPONSES;
    assert_eq!(
        count(&host, &r, responses, "canary", &[("class", "2xx")]),
        1
    );
    let duration = format!("{}_count", metrics::DURATION);
    assert_eq!(count(&host, &r, &duration, "canary", &[]), 1);
    Ok(())
}

#[test]
fn an_untrusted_override_is_counted_and_ignored() -> TestResult {
    let host = FakeHost::default();
    let r = root(
        &host,
        r#","override":{"header":"x-force","trustedCidrs":["10.0.0.0/8"]}"#,
    )?;
    host.set_property("source.address", "192.168.0.1:1");
    host.set_request(&[("x-force", "canary")]);
    let mut s = r.new_stream();
    s.on_request_headers(&host, true);
    assert_eq!(s.version(), Some(0));
    r.flush(&host);
    let rejected = stat_name(metrics::OVERRIDE_REJECTED, &[("service", "svc")]);
    assert_eq!(host.counter(&rejected), 1);
    Ok(())
}

#[test]
fn requests_out_of_scope_pass_untouched() -> TestResult {
    let host = FakeHost::default();
    let r = root(
        &host,
        r#","match":[{"header":":authority","exact":"svc.local"}]"#,
    )?;
    host.set_request(&[(":authority", "other.local")]);
    let mut s = r.new_stream();
    s.on_request_headers(&host, true);
    host.set_response(&[(":status", "200")]);
    s.on_response_headers(&host, true);
    s.on_log(&host);
    assert_eq!(s.version(), None);
    assert!(host.request_sets.borrow().is_empty());
    assert!(host.response_sets.borrow().is_empty());
    r.flush(&host);
    assert!(host.increments.borrow().is_empty());
    let unconfigured = Root::new(1, Shared::new(7));
    let mut s = unconfigured.new_stream();
    s.on_request_headers(&host, true);
    assert_eq!(s.version(), None);
    Ok(())
}

/// The routing, mark and mirror headers never reach upstream with a client's value: before any
/// config, out of scope and in scope; with the headers read, only those sent cost a removal.
#[test]
fn reserved_headers_leave_every_request() -> TestResult {
    let spoof = [
        (":authority", "other.local"),
        ("x-aviary-version", "canary"),
        ("x-aviary-shadow", "v2"),
        ("x-aviary-mirror-v2", "canary"),
    ];
    let host = FakeHost::with_request(&spoof);
    let unconfigured = Root::new(1, Shared::new(7));
    unconfigured.new_stream().on_request_headers(&host, true);
    assert_eq!(
        *host.request_removals.borrow(),
        ["x-aviary-version", "x-aviary-shadow"]
    );

    let envoy = r#","shadow":{"via":"envoy","targets":[{"version":"v2","cluster":"c"}],"share":0}"#;
    let scoped = format!(
        r#",{}{envoy}"#,
        r#""match":[{"header":":authority","exact":"svc"}]"#
    );
    let host = FakeHost::with_request(&spoof[..3]);
    let r = root(&host, &scoped)?;
    r.new_stream().on_request_headers(&host, true);
    assert_eq!(
        *host.request_removals.borrow(),
        ["x-aviary-version", "x-aviary-shadow"],
        "out of scope: only the ones the client sent"
    );
    assert!(host.request_sets.borrow().is_empty());

    host.set_request(&[(":authority", "SVC:80"), ("x-aviary-mirror-v2", "canary")]);
    host.request_removals.borrow_mut().clear();
    let mut s = r.new_stream();
    s.on_request_headers(&host, true);
    assert_eq!(
        s.version(),
        Some(0),
        "in scope: the host matches as HTTP does"
    );
    assert_eq!(*host.request_removals.borrow(), ["x-aviary-mirror-v2"]);

    let host = FakeHost::with_request(&spoof);
    let r = root(&host, "")?;
    r.new_stream().on_request_headers(&host, true);
    assert_eq!(
        *host.request_removals.borrow(),
        ["x-aviary-shadow"],
        "without reading headers: each reserved one is removed, the routing header set"
    );
    assert_eq!(
        host.request_header("x-aviary-version").as_deref(),
        Some("stable")
    );
    Ok(())
}

#[test]
fn local_replies_and_resets_have_their_own_class() -> TestResult {
    let host = FakeHost::default();
    let r = root(&host, "")?;
    let classes = [
        (
            Some("503"),
            Some("upstream_reset_before_response_started"),
            "local",
        ),
        (Some("503"), Some("via_upstream"), "5xx"),
        (Some("404"), None, "4xx"),
        (None, None, "reset"),
    ];
    for (status, details, _) in classes {
        host.properties.borrow_mut().clear();
        if let Some(d) = details {
            host.set_property("response.code_details", d);
        }
        let mut s = r.new_stream();
        s.on_request_headers(&host, true);
        if let Some(st) = status {
            host.set_response(&[(":status", st)]);
            s.on_response_headers(&host, true);
        }
        s.on_log(&host);
    }
    for (_, _, class) in classes {
        let n = count(&host, &r, metrics::RESPONSES, "stable", &[("class", class)]);
        assert_eq!(n, 1, "{class}");
    }
    Ok(())
}

#[test]
fn scores_are_binned_or_counted_as_skipped() -> TestResult {
    let host = FakeHost::default();
    let r = root(
        &host,
        r#","scores":{"pointer":"/score","bounds":[0.5],"maxBodyBytes":32}"#,
    )?;
    let bodies: [&[u8]; 4] = [
        br#"{"score":0.2}"#,
        br#"{"score":0.9}"#,
        b"<html>",
        &[b' '; 40],
    ];
    for body in bodies {
        let mut s = r.new_stream();
        s.on_request_headers(&host, true);
        host.set_response(&[(":status", "200")]);
        s.on_response_headers(&host, false);
        host.set_body(Body::Response, body);
        s.on_response_body(&host, body.len(), true);
        s.on_log(&host);
    }
    let bin = |b: &str| count(&host, &r, metrics::SCORE_BINS, "stable", &[("bin", b)]);
    assert_eq!((bin("0.5"), bin("+Inf")), (1, 1));
    let skipped = |why: &str| {
        count(
            &host,
            &r,
            metrics::SCORE_SKIPPED,
            "stable",
            &[("reason", why)],
        )
    };
    assert_eq!((skipped("non_json"), skipped("body_too_large")), (1, 1));
    Ok(())
}

const SHADOW: &str = r#","shadow":{"targets":[{"version":"v2","cluster":"shadow-c"}],"share":10000,"compare":{"labelPointer":"/label"}}"#;

#[test]
fn a_mirrored_request_is_sent_from_the_root_and_compared() -> TestResult {
    let host = FakeHost::default();
    let mut r = root(&host, SHADOW)?;
    host.set_request(&[
        (":authority", "svc"),
        (":path", "/predict"),
        ("content-length", "2"),
        ("x-aviary-shadow", "forged"),
    ]);
    let mut s = r.new_stream();
    s.on_request_headers(&host, false);
    host.set_body(Body::Request, b"{}");
    s.on_request_body(&host, 2, true);
    r.on_tick(&host);
    let sent = host
        .dispatches
        .borrow()
        .first()
        .cloned()
        .ok_or("no dispatch")?;
    assert_eq!(sent.cluster, "shadow-c");
    assert_eq!(sent.body.as_deref(), Some(&b"{}"[..]));
    let has = |k: &str, v: &str| sent.headers.iter().any(|(a, b)| a == k && b == v);
    assert!(has(":authority", "svc-shadow") && has("x-aviary-shadow", "v2"));
    assert!(!sent
        .headers
        .iter()
        .any(|(k, _)| k == "content-length" || k == "x-aviary-version"));
    host.set_response(&[(":status", "200")]);
    s.on_response_headers(&host, false);
    host.set_body(Body::Response, br#"{"label":"cat"}"#);
    s.on_response_body(&host, 15, true);
    s.on_log(&host);
    *host.call_response.borrow_mut() = vec![(":status".into(), "200".into())];
    host.set_body(Body::CallResponse, br#"{"label":"cat"}"#);
    r.on_http_call_response(&host, sent.token, 1, 15);
    let agree = count(
        &host,
        &r,
        metrics::SHADOW_COMPARISONS,
        "v2",
        &[("result", "agree")],
    );
    assert_eq!(agree, 1);
    assert_eq!(count(&host, &r, metrics::SHADOW_REQUESTS, "v2", &[]), 1);
    assert!(!r.shared.shadows.borrow().has_work());
    Ok(())
}

/// A request that never completes, or whose body is over the limit, is never copied: its
/// reservation is given back and counted by reason.
#[test]
fn copies_never_sent_release_their_slots() -> TestResult {
    let limited =
        r#","shadow":{"targets":[{"version":"v2","cluster":"c"}],"share":10000,"maxBodyBytes":4}"#;
    let cases: [(&str, Option<&[u8]>, &str); 2] = [
        (SHADOW, None, "primary_error"),
        (limited, Some(b"too long"), "body_too_large"),
    ];
    for (cfg, body, reason) in cases {
        let host = FakeHost::default();
        let mut r = root(&host, cfg)?;
        let mut s = r.new_stream();
        s.on_request_headers(&host, false);
        assert_eq!(r.shared.shadows.borrow().in_flight(), 1);
        match body {
            Some(b) => {
                host.set_body(Body::Request, b);
                s.on_request_body(&host, b.len(), true);
            }
            None => s.on_log(&host),
        }
        r.on_tick(&host);
        assert!(host.dispatches.borrow().is_empty());
        assert_eq!(r.shared.shadows.borrow().in_flight(), 0);
        let uncompared = metrics::SHADOW_UNCOMPARED;
        let n = count(&host, &r, uncompared, "v2", &[("reason", reason)]);
        assert_eq!(n, 1, "{reason}");
    }
    Ok(())
}

#[test]
fn envoy_mirrors_by_header_and_clients_cannot_set_it() -> TestResult {
    let host = FakeHost::default();
    let envoy = |share: u32| {
        format!(
            r#","shadow":{{"via":"envoy","targets":[{{"version":"V2","cluster":"shadow-c"}}],"share":{share}}}"#
        )
    };
    let r = root(&host, &envoy(10000))?;
    let mut s = r.new_stream();
    s.on_request_headers(&host, true);
    assert_eq!(
        host.request_header("x-aviary-mirror-v2").as_deref(),
        Some("shadow-c")
    );
    assert_eq!(count(&host, &r, metrics::SHADOW_REQUESTS, "V2", &[]), 1);
    let none = FakeHost::with_request(&[("x-aviary-mirror-v2", "evil")]);
    let r = root(&none, &envoy(0))?;
    r.new_stream().on_request_headers(&none, true);
    assert_eq!(none.request_header("x-aviary-mirror-v2"), None);
    assert!(none.dispatches.borrow().is_empty());
    Ok(())
}

/// A config swap keeps the VM and gives it a new root context; Envoy ends the old one with its
/// calls in flight. The old root stays until they are answered, the new one dispatches what the
/// old one's streams queued, and every copy sent ends in one outcome.
#[test]
fn a_config_swap_loses_no_copy() -> TestResult {
    let host = FakeHost::with_request(&[(":path", "/p")]);
    let vm = Shared::new(7);
    let raw = format!("{{{TWO}{SHADOW}}}");
    let mut old = Root::new(1, vm.clone());
    assert!(old.on_configure(&host, Some(raw.as_bytes())));
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = old.new_stream();
        s.on_request_headers(&host, true);
        streams.push(s);
    }
    old.on_tick(&host);
    let sent: Vec<u32> = host.dispatches.borrow().iter().map(|d| d.token).collect();
    assert_eq!(sent.len(), 3);
    let mut late = old.new_stream();
    late.on_request_headers(&host, true);

    let mut new = Root::new(2, vm.clone());
    let other = raw.replace(r#""share":10000"#, r#""share":10000,"timeoutMs":999"#);
    assert!(new.on_configure(&host, Some(other.as_bytes())));
    assert!(!old.on_done(&host), "calls in flight: the old root stays");
    old.on_tick(&host);
    assert_eq!(
        host.dispatches.borrow().len(),
        3,
        "an ending root dispatches no more"
    );
    new.on_tick(&host);
    assert_eq!(
        host.dispatches.borrow().len(),
        4,
        "the live root sends the late copy"
    );

    *host.call_response.borrow_mut() = vec![(":status".into(), "200".into())];
    host.set_body(Body::CallResponse, br#"{"label":"cat"}"#);
    host.set_response(&[(":status", "200")]);
    host.set_body(Body::Response, br#"{"label":"cat"}"#);
    for s in streams.iter_mut().chain([&mut late]) {
        s.on_response_headers(&host, false);
        s.on_response_body(&host, 15, true);
        s.on_log(&host);
    }
    for (i, token) in sent.iter().enumerate() {
        assert_eq!(host.dones.get(), 0, "not done before the last answer");
        old.on_http_call_response(&host, *token, 1, 15);
        assert_eq!(host.dones.get(), u32::from(i == 2));
    }
    new.on_http_call_response(&host, 4, 1, 15);
    new.flush(&host);
    let sent = host.counter_sum(metrics::SHADOW_REQUESTS);
    let agree = host.counter_sum(metrics::SHADOW_COMPARISONS);
    assert_eq!((sent, agree), (4, 4));
    assert!(new.on_done(&host), "nothing in flight: gone at once");
    Ok(())
}

/// Copies in flight in a VM that died are counted once, as `vm_lost`, by a VM that lives on.
#[test]
fn copies_of_a_dead_vm_are_counted_once_as_lost() -> TestResult {
    let host = FakeHost::with_request(&[(":path", "/p")]);
    let raw = format!("{{{TWO}{SHADOW}}}");
    let mut dead = Root::new(1, Shared::new(1));
    assert!(dead.on_configure(&host, Some(raw.as_bytes())));
    for _ in 0..2 {
        dead.new_stream().on_request_headers(&host, true);
    }
    dead.flush(&host);
    // The VM dies here: its copies never finish and its row stops beating.
    let mut live = [Root::new(1, Shared::new(2)), Root::new(1, Shared::new(3))];
    for r in &mut live {
        assert!(r.on_configure(&host, Some(raw.as_bytes())));
        r.flush(&host);
    }
    let lost = stat_name(
        metrics::SHADOW_UNCOMPARED,
        &[("service", "svc"), ("version", "v2"), ("reason", "vm_lost")],
    );
    assert_eq!(host.counter(&lost), 0, "not before the row is stale");
    host.advance_ms(1_200);
    for r in &mut live {
        r.flush(&host);
    }
    assert_eq!(host.counter(&lost), 2, "exactly once");
    assert_eq!(host.counter_sum(metrics::SHADOW_REQUESTS), 2);
    Ok(())
}
