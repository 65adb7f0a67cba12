//! Shadow mirroring and comparison, and live score bins, through the real .wasm in the test
//! host, with every timing made deterministic by the host's fake clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use aviary_testhost::prelude::*;

fn config(shadow_extra: &str) -> String {
    format!(
        r#"{{"service":"recsys",
            "versions":[{{"name":"stable","weight":10000}},{{"name":"canary","weight":0}}],
            "sticky":{{"keys":[{{"header":"x-user-id"}}]}},
            "shadow":{{"targets":[{{"version":"v2","cluster":"shadow_v2"}}],"share":10000,"timeoutMs":1000,
                      "maxBodyBytes":64,
                      "compare":{{"labelPointer":"/prediction/label","scorePointer":"/prediction/score"}}{shadow_extra}}},
            "scores":{{"pointer":"/prediction/score","bounds":[0.25,0.5,0.75,1.0]}},
            "metrics":{{"flushIntervalMs":5}}}}"#
    )
}

fn host(cfg: &str) -> Host {
    let host = Host::release()
        .unwrap()
        .with_cluster("shadow_v2")
        .with_property("response\0code_details", "via_upstream")
        .with_random_seed(5);
    host.allow(Category::HttpCall);
    host.start_vm().unwrap();
    host.configure(cfg).unwrap().expect_ok().unwrap();
    host
}

fn body(label: &str, score: f64) -> String {
    format!(r#"{{"model":"m","prediction":{{"label":"{label}","score":{score}}}}}"#)
}

fn start_request(host: &Host, req_body: Option<&str>) -> HttpStream {
    let s = host.http_stream().unwrap();
    let h = [
        (":method", "POST"),
        (":path", "/predict"),
        (":authority", "recsys"),
        ("content-type", "application/json"),
        ("content-length", "12"),
        ("x-user-id", "u1"),
        ("x-aviary-version", "spoofed"),
    ];
    match req_body {
        None => s.request_headers(&h, true).expect_continue().unwrap(),
        Some(b) => {
            s.request_headers(&h, false).expect_continue().unwrap();
            s.request_body(b, true).expect_continue().unwrap();
        }
    }
    s
}

fn respond_primary(s: &HttpStream, status: &str, body: &str) {
    s.response_headers(
        &[(":status", status), ("content-type", "application/json")],
        false,
    )
    .expect_continue()
    .unwrap();
    // Two chunks: the plugin must reassemble the body without pausing the stream.
    let (a, b) = body.split_at(body.len() / 2);
    s.response_body(a, false).expect_continue().unwrap();
    s.response_body(b, true).expect_continue().unwrap();
}

/// Reads a counter after a tick, which sends the plugin's batched counts.
fn counter(host: &Host, name: &str) -> Option<u64> {
    host.tick().unwrap();
    host.counter(name)
}

fn c(host: &Host, metric: &str, label: &str) -> u64 {
    counter(host, &format!("{metric}.service.recsys.version.v2.{label}")).unwrap_or(0)
}

fn compared(host: &Host, result: &str) -> u64 {
    c(
        host,
        "aviary_shadow_comparisons_total",
        &format!("result.{result}"),
    )
}

fn uncompared(host: &Host, reason: &str) -> u64 {
    c(
        host,
        "aviary_shadow_uncompared_total",
        &format!("reason.{reason}"),
    )
}

fn dispatch(host: &Host) -> HttpCall {
    host.tick().unwrap();
    host.last_call()
        .expect("the root dispatched the copy on its tick")
}

#[test]
fn copy_is_dispatched_from_the_root_marked_and_complete() {
    let host = host(&config(""));
    assert_eq!(host.tick_period(), Some(Duration::from_millis(5)));
    let s = start_request(&host, Some(r#"{"x":[1,2]}"#));
    assert!(
        host.http_calls().is_empty(),
        "streams never dispatch themselves"
    );
    let call = dispatch(&host);
    assert_eq!(call.upstream, "shadow_v2");
    assert_eq!(
        call.context_id,
        host.root_context_id(),
        "dispatched by the root context"
    );
    assert_eq!(call.header(":authority"), Some("recsys-shadow"));
    assert_eq!(call.header("x-aviary-shadow"), Some("v2"));
    assert_eq!(call.header(":method"), Some("POST"));
    assert_eq!(
        call.header("content-length"),
        None,
        "Envoy sets it from the body"
    );
    assert_eq!(
        call.header("x-aviary-version"),
        None,
        "the routing header is not copied"
    );
    assert_eq!(call.header("x-user-id"), Some("u1"));
    assert_eq!(call.body, br#"{"x":[1,2]}"#);
    assert_eq!(call.timeout, Duration::from_millis(1000));
    assert_eq!(
        counter(
            &host,
            "aviary_shadow_requests_total.service.recsys.version.v2"
        ),
        Some(1)
    );
    // The user's request was never paused.
    assert_eq!(
        s.request_header("x-aviary-version").as_deref(),
        Some("stable")
    );
    s.finish().unwrap();
}

#[test]
fn shadow_answers_before_the_primary() {
    let host = host(&config(""));
    let s = start_request(&host, None);
    let call = dispatch(&host);
    host.advance_clock(Duration::from_millis(30));
    host.respond_to_call(call.token, 200, &[], body("cat", 0.9))
        .unwrap();
    host.advance_clock(Duration::from_millis(20));
    respond_primary(&s, "200", &body("cat", 0.8));
    s.finish().unwrap();
    assert_eq!(compared(&host, "agree"), 1);
    assert_eq!(compared(&host, "disagree"), 0);
    let delta = host
        .histogram("aviary_shadow_score_delta_milli.service.recsys.version.v2")
        .unwrap();
    assert_eq!(delta, vec![100]);
    // Shadow took 30 ms from dispatch, the primary 50 ms from its start: 20 ms faster.
    assert_eq!(
        host.histogram("aviary_shadow_latency_delta_ms.service.recsys.version.v2.direction.faster"),
        Some(vec![20])
    );
}

#[test]
fn shadow_answers_after_the_stream_has_ended() {
    let host = host(&config(""));
    let s = start_request(&host, None);
    let call = dispatch(&host);
    respond_primary(&s, "200", &body("cat", 0.8));
    s.finish().unwrap();
    assert!(s.is_deleted());
    assert_eq!(compared(&host, "agree") + compared(&host, "disagree"), 0);
    host.advance_clock(Duration::from_millis(400));
    host.respond_to_call(call.token, 200, &[], body("dog", 0.3))
        .unwrap();
    assert_eq!(
        compared(&host, "disagree"),
        1,
        "the comparison survived the stream"
    );
    assert_eq!(
        host.histogram("aviary_shadow_latency_delta_ms.service.recsys.version.v2.direction.slower"),
        Some(vec![400])
    );
    assert_eq!(
        counter(
            &host,
            "aviary_shadow_responses_total.service.recsys.version.v2.class.2xx"
        ),
        Some(1)
    );
}

#[test]
fn timeouts_errors_and_unusable_bodies_are_counted_by_reason() {
    let host = host(&config(""));
    // Timeout: the host expires the call after its 1000 ms timeout.
    let s = start_request(&host, None);
    dispatch(&host);
    respond_primary(&s, "200", &body("cat", 0.8));
    s.finish().unwrap();
    host.run_for(Duration::from_millis(1100)).unwrap();
    assert_eq!(uncompared(&host, "timeout"), 1);
    assert_eq!(
        counter(
            &host,
            "aviary_shadow_responses_total.service.recsys.version.v2.class.timeout"
        ),
        Some(1)
    );
    // 5xx from the shadow.
    let s = start_request(&host, None);
    let call = dispatch(&host);
    host.respond_to_call(call.token, 503, &[], "overloaded")
        .unwrap();
    respond_primary(&s, "200", &body("cat", 0.8));
    s.finish().unwrap();
    assert_eq!(uncompared(&host, "shadow_error"), 1);
    // A reset (no headers at all).
    let s = start_request(&host, None);
    let call = dispatch(&host);
    host.fail_call(call.token).unwrap();
    respond_primary(&s, "200", &body("cat", 0.8));
    s.finish().unwrap();
    assert_eq!(uncompared(&host, "shadow_error"), 2);
    // Non-JSON shadow body.
    let s = start_request(&host, None);
    let call = dispatch(&host);
    host.respond_to_call(call.token, 200, &[], "<html>oops</html>")
        .unwrap();
    respond_primary(&s, "200", &body("cat", 0.8));
    s.finish().unwrap();
    assert_eq!(uncompared(&host, "non_json"), 1);
    // Missing field in the primary.
    let s = start_request(&host, None);
    let call = dispatch(&host);
    host.respond_to_call(call.token, 200, &[], body("cat", 0.1))
        .unwrap();
    respond_primary(&s, "200", r#"{"prediction":{"score":0.5}}"#);
    s.finish().unwrap();
    assert_eq!(uncompared(&host, "field_missing"), 1);
    // A primary 5xx cannot be compared.
    let s = start_request(&host, None);
    let call = dispatch(&host);
    host.respond_to_call(call.token, 200, &[], body("cat", 0.1))
        .unwrap();
    respond_primary(&s, "500", "{}");
    s.finish().unwrap();
    assert_eq!(uncompared(&host, "primary_error"), 1);
    // A primary stream reset before any response.
    let s = start_request(&host, None);
    let call = dispatch(&host);
    s.finish().unwrap();
    host.respond_to_call(call.token, 200, &[], body("cat", 0.1))
        .unwrap();
    assert_eq!(uncompared(&host, "primary_error"), 2);
    assert_eq!(compared(&host, "agree") + compared(&host, "disagree"), 0);
    assert!(host.pending_calls().is_empty());
}

#[test]
fn bodies_over_the_limits_are_skipped_and_counted() {
    let host = host(&config(r#","maxInFlight":8"#).replace(
        r#""scorePointer":"/prediction/score"}"#,
        r#""scorePointer":"/prediction/score","maxBodyBytes":80}"#,
    ));
    // Request body above shadow.maxBodyBytes (64): not mirrored.
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(100));
    let s = start_request(&host, Some(&big));
    host.tick().unwrap();
    assert!(host.http_calls().is_empty());
    respond_primary(&s, "200", &body("cat", 0.8));
    s.finish().unwrap();
    assert_eq!(uncompared(&host, "body_too_large"), 1);
    // Shadow response above compare.maxBodyBytes (80).
    let s = start_request(&host, None);
    let call = dispatch(&host);
    let padded = format!(
        r#"{{"pad":"{}","prediction":{{"label":"cat","score":0.8}}}}"#,
        "y".repeat(100)
    );
    host.respond_to_call(call.token, 200, &[], padded).unwrap();
    respond_primary(&s, "200", &body("cat", 0.8));
    s.finish().unwrap();
    assert_eq!(uncompared(&host, "body_too_large"), 2);
}

#[test]
fn capacity_bounds_in_flight_comparisons() {
    let host = host(&config(r#","maxInFlight":3"#));
    let streams: Vec<HttpStream> = (0..5).map(|_| start_request(&host, None)).collect();
    host.tick().unwrap();
    assert_eq!(host.pending_calls().len(), 3);
    assert_eq!(uncompared(&host, "capacity"), 2);
    for s in &streams {
        respond_primary(s, "200", &body("cat", 0.8));
        s.finish().unwrap();
    }
    for call in host.pending_calls() {
        host.respond_to_call(call.token, 200, &[], body("cat", 0.7))
            .unwrap();
    }
    assert_eq!(compared(&host, "agree"), 3);
    // Slots are free again.
    let s = start_request(&host, None);
    let call = dispatch(&host);
    host.respond_to_call(call.token, 200, &[], body("dog", 0.7))
        .unwrap();
    respond_primary(&s, "200", &body("cat", 0.8));
    s.finish().unwrap();
    assert_eq!(compared(&host, "disagree"), 1);
    assert_eq!(uncompared(&host, "capacity"), 2);
}

#[test]
fn unknown_shadow_cluster_never_hurts_the_user() {
    let cfg = config("").replace("shadow_v2", "no_such_cluster");
    let host = host(&cfg);
    let s = start_request(&host, None);
    host.tick().unwrap();
    respond_primary(&s, "200", &body("cat", 0.8));
    assert_eq!(
        s.response_header("x-aviary-served-by").as_deref(),
        Some("stable")
    );
    s.finish().unwrap();
    assert_eq!(uncompared(&host, "dispatch_failed"), 1);
    assert!(host.http_calls().is_empty());
}

#[test]
fn share_and_conditions_select_what_is_mirrored() {
    let cfg = config(r#","match":[{"header":"x-user-id","present":true}]"#)
        .replace(r#""share":10000"#, r#""share":2500"#);
    let host = host(&cfg);
    let mut mirrored = 0;
    for i in 0..400 {
        let s = host.http_stream().unwrap();
        let user = format!("u{i}");
        let mut h = vec![(":method", "GET"), (":path", "/p"), (":authority", "a")];
        if i % 2 == 0 {
            h.push(("x-user-id", &user));
        }
        s.request_headers(&h, true).expect_continue().unwrap();
        host.tick().unwrap();
        let calls = host.http_calls().len();
        if calls > mirrored {
            assert_eq!(i % 2, 0, "requests without the header are never mirrored");
            mirrored = calls;
        }
        s.finish().unwrap();
    }
    // 25% of the 200 keyed requests: 50 ± 24 (4 sigma).
    assert!((26..=74).contains(&mirrored), "{mirrored}");
}

#[test]
fn live_scores_fill_per_version_bins() {
    let host = host(&config("").replace(r#""share":10000"#, r#""share":0"#));
    let bin = |b: &str| {
        counter(
            &host,
            &format!("aviary_score_bin_total.service.recsys.version.stable.bin.{b}"),
        )
        .unwrap_or(0)
    };
    for score in [0.1, 0.25, 0.3, 0.6, 0.9, 0.95, 1.0, 3.0] {
        let s = start_request(&host, None);
        respond_primary(&s, "200", &body("cat", score));
        s.finish().unwrap();
    }
    assert_eq!(
        (bin("0.25"), bin("0.5"), bin("0.75"), bin("1"), bin("+Inf")),
        (2, 1, 1, 3, 1)
    );
    let s = start_request(&host, None);
    respond_primary(&s, "200", "nope");
    s.finish().unwrap();
    let s = start_request(&host, None);
    respond_primary(&s, "200", r#"{"prediction":{}}"#);
    s.finish().unwrap();
    let skipped = |r: &str| {
        counter(
            &host,
            &format!("aviary_score_skipped_total.service.recsys.version.stable.reason.{r}"),
        )
        .unwrap_or(0)
    };
    assert_eq!((skipped("non_json"), skipped("field_missing")), (1, 1));
    // Error responses are not scored.
    let s = start_request(&host, None);
    respond_primary(&s, "500", &body("cat", 0.1));
    s.finish().unwrap();
    assert_eq!(bin("0.25"), 2);
}

#[test]
fn shadow_can_be_limited_to_segment_rules() {
    let cfg = config("").replace(
        r#""share":10000,"#,
        r#""share":10000,"rules":["internal"],"#,
    ).replace(
        r#""sticky":{"keys":[{"header":"x-user-id"}]},"#,
        r#""sticky":{"keys":[{"header":"x-user-id"}]},"rules":[{"name":"internal","match":[{"header":"x-internal","present":true}],"version":"stable"}],"#,
    );
    let host = host(&cfg);
    for internal in [false, true, false, true, true] {
        let s = host.http_stream().unwrap();
        let mut h = vec![(":method", "GET"), (":path", "/p"), (":authority", "a")];
        if internal {
            h.push(("x-internal", "1"));
        }
        s.request_headers(&h, true).expect_continue().unwrap();
        host.tick().unwrap();
        s.finish().unwrap();
    }
    assert_eq!(
        host.http_calls().len(),
        3,
        "only the internal users' requests were mirrored"
    );
    let bad = cfg.replace(r#""rules":["internal"]"#, r#""rules":["nobody"]"#);
    host.expect_matching(Category::ErrorLog, "shadow.rules[0]", 1);
    host.configure(bad).unwrap().expect_rejected().unwrap();
    host.verify().unwrap();
}

#[test]
fn via_envoy_names_the_mirror_cluster_and_strips_client_values() {
    // Half of the users, sticky; Envoy's mirror policy reads the header and sends the copy.
    let cfg = r#"{"service":"recsys",
        "versions":[{"name":"stable","weight":10000},{"name":"canary","weight":0}],
        "sticky":{"keys":[{"header":"x-user-id"}]},
        "shadow":{"via":"envoy","share":5000,"targets":[{"version":"V2","cluster":"shadow_v2"}]},
        "metrics":{"flushIntervalMs":5}}"#;
    let host = host(cfg);
    assert_eq!(host.tick_period(), Some(Duration::from_millis(5)));
    let mut marked = 0;
    for i in 0..200 {
        let user = format!("u{i}");
        let s = host.http_stream().unwrap();
        let h = [
            (":method", "POST"),
            (":path", "/p"),
            (":authority", "a"),
            ("x-user-id", user.as_str()),
            // A client trying to pick what is mirrored, and where to.
            ("x-aviary-mirror-v2", "internal_admin"),
        ];
        s.request_headers(&h, false).expect_continue().unwrap();
        match s.request_header("x-aviary-mirror-v2").as_deref() {
            Some("shadow_v2") => marked += 1,
            None => {}
            other => panic!("client value kept: {other:?}"),
        }
        // Decided per user, so the same user gets the same answer again.
        let again = host.http_stream().unwrap();
        again.request_headers(&h, true).expect_continue().unwrap();
        assert_eq!(
            again.request_header("x-aviary-mirror-v2"),
            s.request_header("x-aviary-mirror-v2")
        );
        s.request_body(b"{}", true).expect_continue().unwrap();
        s.finish().unwrap();
        again.finish().unwrap();
    }
    assert!((60..=140).contains(&marked), "{marked} of 200 users");
    host.tick().unwrap();
    assert!(
        host.http_calls().is_empty(),
        "Envoy, not the plugin, sends the copies"
    );
    assert_eq!(
        counter(
            &host,
            "aviary_shadow_requests_total.service.recsys.version.V2"
        ),
        Some(2 * marked)
    );
}
