//! The real release .wasm, driven through the wasmtime proxy-wasm test host: routing,
//! stickiness, rules, anti-spoofing, overrides, kill switch, stamping, metrics and the config
//! lifecycle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aviary_testhost::prelude::*;
use proptest::prelude::*;

const BASE: &str =
    r#""service":"recsys","sticky":{"keys":[{"header":"x-user-id"},{"cookie":"session"}]}"#;

fn cfg(weights: (u32, u32), extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(",{extra}")
    };
    format!(
        r#"{{{BASE},"versions":[{{"name":"stable","weight":{}}},{{"name":"canary","weight":{},"requestHeaders":{{"x-model":"v2"}},"responseHeaders":{{"x-canary-note":"yes"}}}}]{extra}}}"#,
        weights.0, weights.1
    )
}

fn host(config: &str) -> Host {
    let host = Host::release()
        .unwrap()
        .with_property("source\0address", "10.1.2.3:5555")
        .with_property("response\0code_details", "via_upstream")
        .with_random_seed(11);
    host.start_vm().unwrap();
    host.configure(config).unwrap().expect_ok().unwrap();
    host
}

/// One request through the filter; returns (routing header, response stamp).
fn request(host: &Host, headers: &[(&str, &str)], status: &str) -> (String, String) {
    let mut h = vec![
        (":method", "GET"),
        (":path", "/predict"),
        (":authority", "recsys"),
    ];
    h.extend_from_slice(headers);
    let s = host.http_stream().unwrap();
    s.request_headers(&h, true).expect_continue().unwrap();
    let route = s.request_header("x-aviary-version").unwrap_or_default();
    s.response_headers(&[(":status", status)], true)
        .expect_continue()
        .unwrap();
    let stamp = s.response_header("x-aviary-served-by").unwrap_or_default();
    s.finish().unwrap();
    (route, stamp)
}

/// Reads a counter after a tick: the plugin sends its batched counts on the root's tick.
fn counter(host: &Host, name: &str) -> u64 {
    host.tick().unwrap();
    host.counter(name).unwrap_or(0)
}

fn req_metric(version: &str, reason: &str) -> String {
    format!("aviary_requests_total.service.recsys.version.{version}.reason.{reason}")
}

fn resp_metric(version: &str, class: &str) -> String {
    format!("aviary_responses_total.service.recsys.version.{version}.class.{class}")
}

#[test]
fn counts_are_batched_in_the_vm_and_sent_on_the_tick() {
    let host = host(&cfg((10000, 0), r#""metrics":{"flushIntervalMs":100}"#));
    assert_eq!(
        host.tick_period(),
        Some(std::time::Duration::from_millis(100))
    );
    for _ in 0..50 {
        request(&host, &[("x-user-id", "u")], "200");
    }
    let name = req_metric("stable", "sticky");
    assert_eq!(host.counter(&name), Some(0), "no host call per request");
    host.tick().unwrap();
    assert_eq!(host.counter(&name), Some(50));
    request(&host, &[("x-user-id", "u")], "200");
    host.tick().unwrap();
    assert_eq!(host.counter(&name), Some(51));
}

#[test]
fn latency_histogram_is_cumulative_in_microseconds() {
    let host = host(&cfg((10000, 0), ""));
    for ms in [0.4, 3.0, 120.0, 40_000.0] {
        let s = host.http_stream().unwrap();
        s.request_headers(
            &[(":method", "GET"), (":path", "/"), (":authority", "a")],
            true,
        )
        .expect_continue()
        .unwrap();
        host.advance_clock(std::time::Duration::from_secs_f64(ms / 1000.0));
        s.response_headers(&[(":status", "200")], true)
            .expect_continue()
            .unwrap();
        s.finish().unwrap();
    }
    let bucket = |le: &str| {
        counter(
            &host,
            &format!("aviary_request_duration_ms_bucket.service.recsys.version.stable.le.{le}"),
        )
    };
    // `le` is inclusive, as in Prometheus: the 3 ms request is in the 3 bucket.
    assert_eq!(bucket("0.25"), 0);
    assert_eq!(bucket("0.5"), 1);
    assert_eq!(bucket("2"), 1);
    assert_eq!(bucket("3"), 2);
    assert_eq!(bucket("100"), 2);
    assert_eq!(bucket("150"), 3);
    assert_eq!(bucket("30000"), 3);
    assert_eq!(bucket("+Inf"), 4);
    let m = |s: &str| {
        counter(
            &host,
            &format!("aviary_request_duration_ms_{s}.service.recsys.version.stable"),
        )
    };
    assert_eq!(m("count"), 4);
    assert_eq!(m("sum"), 40_123);
    assert!(host
        .histogram("aviary_request_duration_ms.service.recsys.version.stable")
        .is_none());
}

#[test]
fn start_logs_version_and_digest() {
    let raw = cfg((9000, 1000), "");
    let host = host(&raw);
    let digest = format!("{:016x}", aviary_contract::config::digest(raw.as_bytes()));
    let logs: Vec<String> = host.logs().iter().map(|l| l.message.clone()).collect();
    assert!(
        logs.iter().any(|l| l.contains("aviary 0.1.0 starting")),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains(&digest) && l.contains("stable=9000bps")),
        "{logs:?}"
    );
    assert_eq!(
        host.gauge("aviary_config_digest.service.recsys"),
        Some((aviary_contract::config::digest(raw.as_bytes()) & ((1 << 48) - 1)) as i64)
    );
    assert_eq!(
        host.gauge("aviary_weight_bps.service.recsys.version.canary"),
        Some(1000)
    );
}

#[test]
fn routes_stamps_and_counts_exactly() {
    let host = host(&cfg((9000, 1000), ""));
    let mut seen = std::collections::BTreeMap::<String, u64>::new();
    for i in 0..400 {
        let user = format!("user-{i}");
        let (route, stamp) = request(
            &host,
            &[("x-user-id", &user)],
            if i % 10 == 0 { "503" } else { "200" },
        );
        assert_eq!(route, stamp);
        let expect = if aviary_contract::hash::bucket(user.as_bytes(), 0) >= 9000 {
            "canary"
        } else {
            "stable"
        };
        assert_eq!(route, expect, "{user}");
        *seen.entry(route).or_default() += 1;
    }
    for (v, n) in &seen {
        assert_eq!(counter(&host, &req_metric(v, "sticky")), *n);
        assert_eq!(
            counter(&host, &resp_metric(v, "2xx")) + counter(&host, &resp_metric(v, "5xx")),
            *n
        );
        assert_eq!(
            counter(
                &host,
                &format!("aviary_request_duration_ms_count.service.recsys.version.{v}")
            ),
            *n
        );
    }
    assert_eq!(
        counter(&host, &resp_metric("stable", "5xx"))
            + counter(&host, &resp_metric("canary", "5xx")),
        40
    );
}

#[test]
fn per_version_headers_are_set() {
    let host = host(&cfg((0, 10_000), ""));
    let s = host.http_stream().unwrap();
    s.request_headers(
        &[
            (":method", "GET"),
            (":path", "/"),
            (":authority", "a"),
            ("x-model", "evil"),
        ],
        true,
    )
    .expect_continue()
    .unwrap();
    assert_eq!(s.request_header("x-model").as_deref(), Some("v2"));
    s.response_headers(&[(":status", "200")], true)
        .expect_continue()
        .unwrap();
    assert_eq!(s.response_header("x-canary-note").as_deref(), Some("yes"));
    assert_eq!(
        s.response_header("x-aviary-served-by").as_deref(),
        Some("canary")
    );
    s.finish().unwrap();
}

#[test]
fn cookie_key_is_a_fallback_and_no_key_is_random() {
    let host = host(&cfg((5000, 5000), ""));
    let (a, _) = request(&host, &[("cookie", "theme=dark; session=abc123")], "200");
    for _ in 0..20 {
        assert_eq!(request(&host, &[("cookie", "session=abc123")], "200").0, a);
    }
    let mut canary = 0;
    for _ in 0..2000 {
        if request(&host, &[], "200").0 == "canary" {
            canary += 1;
        }
    }
    // 50% of 2000, 4 sigma = 89.
    assert!((911..=1089).contains(&canary), "{canary}");
    assert_eq!(counter(&host, &req_metric("canary", "random")), canary);
}

#[test]
fn client_routing_header_is_overwritten() {
    let host = host(&cfg((10_000, 0), ""));
    for i in 0..50 {
        let (route, _) = request(
            &host,
            &[
                ("x-user-id", &format!("u{i}")),
                ("x-aviary-version", "canary"),
            ],
            "200",
        );
        assert_eq!(route, "stable");
    }
}

#[test]
fn rules_take_precedence_in_order_and_shares_are_sticky() {
    let rules = r#""rules":[
        {"name":"debug","match":[{"header":"x-canary","exact":"always"}],"version":"canary"},
        {"name":"region","match":[{"header":"x-region","oneOf":["eu-west-1","eu-north-1"]}],"version":"stable"},
        {"name":"beta-path","match":[{"pathPrefix":"/beta/"}],"version":"canary"},
        {"name":"query","match":[{"query":"model","exact":"next"}],"version":"canary"},
        {"name":"cookie","match":[{"cookie":"tier","prefix":"gold"}],"version":"canary"},
        {"name":"internal-half","match":[{"header":"x-internal","present":true}],"version":"canary","share":5000}]"#;
    let host = host(&cfg((10_000, 0), rules));
    assert_eq!(request(&host, &[("x-canary", "always")], "200").0, "canary");
    assert_eq!(
        request(
            &host,
            &[("x-canary", "always"), ("x-region", "eu-west-1")],
            "200"
        )
        .0,
        "canary"
    );
    let host2 = self::host(&cfg((0, 10_000), rules));
    assert_eq!(
        request(&host2, &[("x-region", "eu-north-1")], "200").0,
        "stable"
    );
    assert_eq!(
        request(&host2, &[("x-region", "us-east-1")], "200").0,
        "canary"
    );
    let s = host.http_stream().unwrap();
    s.request_headers(
        &[
            (":method", "GET"),
            (":path", "/beta/x?y=1"),
            (":authority", "a"),
        ],
        true,
    )
    .expect_continue()
    .unwrap();
    assert_eq!(
        s.request_header("x-aviary-version").as_deref(),
        Some("canary")
    );
    s.finish().unwrap();
    let s = host.http_stream().unwrap();
    s.request_headers(
        &[
            (":method", "GET"),
            (":path", "/p?a=1&model=next"),
            (":authority", "a"),
        ],
        true,
    )
    .expect_continue()
    .unwrap();
    assert_eq!(
        s.request_header("x-aviary-version").as_deref(),
        Some("canary")
    );
    s.finish().unwrap();
    assert_eq!(
        request(&host, &[("cookie", "tier=gold-plus")], "200").0,
        "canary"
    );
    assert_eq!(
        request(&host, &[("cookie", "tier=silver")], "200").0,
        "stable"
    );
    // The 50% rule: a fixed, sticky half of internal users.
    let mut in_rule = 0;
    for i in 0..1000 {
        let u = format!("emp-{i}");
        let first = request(&host, &[("x-internal", "1"), ("x-user-id", &u)], "200").0;
        let again = request(&host, &[("x-internal", "1"), ("x-user-id", &u)], "200").0;
        assert_eq!(first, again, "sticky share for {u}");
        if first == "canary" {
            in_rule += 1;
        }
    }
    assert!(
        (437..=563).contains(&in_rule),
        "{in_rule} of 1000 (4 sigma)"
    );
    assert!(counter(&host, &req_metric("canary", "rule")) >= 2 * in_rule);
}

#[test]
fn override_only_from_trusted_sources_and_never_forwarded() {
    let extra = r#""override":{"header":"x-aviary-force","trustedCidrs":["10.0.0.0/8"]}"#;
    let host = host(&cfg((10_000, 0), extra));
    let s = host.http_stream().unwrap();
    s.request_headers(
        &[
            (":method", "GET"),
            (":path", "/"),
            (":authority", "a"),
            ("x-aviary-force", "canary"),
        ],
        true,
    )
    .expect_continue()
    .unwrap();
    assert_eq!(
        s.request_header("x-aviary-version").as_deref(),
        Some("canary")
    );
    assert_eq!(
        s.request_header("x-aviary-force"),
        None,
        "removed before upstream"
    );
    s.finish().unwrap();
    assert_eq!(counter(&host, &req_metric("canary", "override")), 1);

    let s = host.http_stream().unwrap();
    s.set_property("source\0address", "192.168.1.1:4000");
    s.request_headers(
        &[
            (":method", "GET"),
            (":path", "/"),
            (":authority", "a"),
            ("x-aviary-force", "canary"),
        ],
        true,
    )
    .expect_continue()
    .unwrap();
    assert_eq!(
        s.request_header("x-aviary-version").as_deref(),
        Some("stable")
    );
    assert_eq!(s.request_header("x-aviary-force"), None);
    s.finish().unwrap();
    assert_eq!(
        counter(&host, "aviary_override_rejected_total.service.recsys"),
        1
    );
    // Unknown version from a trusted source: ignored too.
    request(&host, &[("x-aviary-force", "v9")], "200");
    assert_eq!(
        counter(&host, "aviary_override_rejected_total.service.recsys"),
        2
    );
}

#[test]
fn kill_switch_beats_rules_and_overrides() {
    let extra = r#""killSwitch":"stable","override":{"header":"x-aviary-force","trustedCidrs":["0.0.0.0/0"]},"rules":[{"name":"debug","match":[{"header":"x-canary","present":true}],"version":"canary"}]"#;
    let host = host(&cfg((0, 10_000), extra));
    for h in [
        ("x-canary", "1"),
        ("x-aviary-force", "canary"),
        ("x-user-id", "u1"),
    ] {
        assert_eq!(request(&host, &[h], "200").0, "stable");
    }
    assert_eq!(counter(&host, &req_metric("stable", "kill_switch")), 3);
    assert_eq!(
        host.gauge("aviary_weight_bps.service.recsys.version.stable"),
        Some(10_000)
    );
    assert_eq!(
        host.gauge("aviary_weight_bps.service.recsys.version.canary"),
        Some(0)
    );
}

#[test]
fn local_replies_and_resets_are_classified() {
    let host = host(&cfg((10_000, 0), ""));
    let s = host.http_stream().unwrap();
    s.set_property(
        "response\0code_details",
        "upstream_reset_before_response_started{connection_failure}",
    );
    s.request_headers(
        &[(":method", "GET"), (":path", "/"), (":authority", "a")],
        true,
    )
    .expect_continue()
    .unwrap();
    s.response_headers(&[(":status", "503")], true)
        .expect_continue()
        .unwrap();
    s.finish().unwrap();
    let s = host.http_stream().unwrap();
    s.request_headers(
        &[(":method", "GET"), (":path", "/"), (":authority", "a")],
        true,
    )
    .expect_continue()
    .unwrap();
    s.finish().unwrap();
    request(&host, &[], "404");
    assert_eq!(counter(&host, &resp_metric("stable", "local")), 1);
    assert_eq!(counter(&host, &resp_metric("stable", "reset")), 1);
    assert_eq!(counter(&host, &resp_metric("stable", "4xx")), 1);
    assert_eq!(counter(&host, &resp_metric("stable", "5xx")), 0);
}

#[test]
fn bad_configs_are_rejected_naming_the_field_and_the_last_good_one_keeps_serving() {
    let host = host(&cfg((0, 10_000), ""));
    let bad = [
        (
            r#"{"versions":[{"name":"stable","weight":9000},{"name":"canary","weight":12000}]}"#,
            "versions[1].weight",
        ),
        (
            r#"{"versions":[{"name":"stable","weight":10000},{"name":"canary","weight":0}],"colour":"red"}"#,
            "colour",
        ),
        (
            r#"{"versions":[{"name":"stable","weight":10000},{"name":"canary","weight":0}],"rules":[{"name":"debug","match":[{"header":"x-canary","exact":"always"}],"version":"canary","trustedOnly":true}]}"#,
            "rules[0].trustedOnly`: needs peers to trust: list them in the top-level `trustedCidrs`",
        ),
        ("not json", "not valid JSON"),
        ("", "no configuration given"),
    ];
    for (raw, needle) in bad {
        host.expect_matching(Category::ErrorLog, needle, 1);
        host.configure(raw).unwrap().expect_rejected().unwrap();
        host.expect_log_containing(LogLevel::Error, needle).unwrap();
        assert_eq!(
            request(&host, &[("x-user-id", "u1")], "200").0,
            "canary",
            "old config serves"
        );
    }
    host.verify().unwrap();
    // A good config after the bad ones applies.
    host.configure(cfg((10_000, 0), ""))
        .unwrap()
        .expect_ok()
        .unwrap();
    assert_eq!(request(&host, &[("x-user-id", "u1")], "200").0, "stable");
}

#[test]
fn hostile_headers_do_not_break_routing() {
    let host = host(&cfg((5000, 5000), ""));
    let huge = "x".repeat(60_000);
    let weird = "\u{fffd}\u{0}ä;=;;session===;";
    for key in [huge.as_str(), weird, "", ";", "session="] {
        let (route, stamp) = request(&host, &[("x-user-id", key), ("cookie", key)], "200");
        assert!(route == "stable" || route == "canary");
        assert_eq!(route, stamp);
    }
}

fn ramp_assignments(weights: &[u32], users: &[String]) -> Vec<Vec<String>> {
    let host = Host::release().unwrap().with_random_seed(3);
    host.start_vm().unwrap();
    weights
        .iter()
        .map(|w| {
            host.configure(cfg((10_000 - w, *w), ""))
                .unwrap()
                .expect_ok()
                .unwrap();
            users
                .iter()
                .map(|u| request(&host, &[("x-user-id", u)], "200").0)
                .collect()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Through the .wasm, along random ramps (configs applied one after another to one VM):
    /// a canary user never goes back when the weight rises, a stable user never moves when it falls.
    #[test]
    fn wasm_ramp_is_monotone(ramp in prop::collection::vec(0u32..=10_000, 2..6),
                             users in prop::collection::vec("[a-zA-Z0-9_-]{1,32}", 60)) {
        let seen = ramp_assignments(&ramp, &users);
        for i in 1..ramp.len() {
            for (u, (before, after)) in seen[i - 1].iter().zip(&seen[i]).enumerate() {
                if ramp[i] >= ramp[i - 1] && before == "canary" {
                    prop_assert_eq!(after, "canary", "{} left canary at {}→{}", users[u], ramp[i - 1], ramp[i]);
                }
                if ramp[i] <= ramp[i - 1] && before == "stable" {
                    prop_assert_eq!(after, "stable", "{} joined canary at {}→{}", users[u], ramp[i - 1], ramp[i]);
                }
            }
        }
    }
}

#[test]
fn typical_ramp_keeps_users_sticky() {
    let users: Vec<String> = (0..500).map(|i| format!("user-{i}")).collect();
    let ramp = [100, 500, 1000, 2500, 5000, 10_000];
    let seen = ramp_assignments(&ramp, &users);
    for w in seen.windows(2) {
        for (a, b) in w[0].iter().zip(&w[1]) {
            if a == "canary" {
                assert_eq!(b, "canary");
            }
        }
    }
    assert!(seen[5].iter().all(|v| v == "canary"));
}

#[test]
fn requests_outside_match_pass_unrouted_and_uncounted_but_never_with_a_client_choice() {
    let host = host(&cfg(
        (0, 10000),
        r#""match":[{"header":":authority","oneOf":["recsys","recsys.default.svc.cluster.local"]}]"#,
    ));
    let one = |authority: &str| {
        let s = host.http_stream().unwrap();
        let h = [
            (":method", "GET"),
            (":path", "/"),
            (":authority", authority),
            ("x-aviary-version", "client-value"),
        ];
        s.request_headers(&h, true).expect_continue().unwrap();
        let route = s.request_header("x-aviary-version");
        s.response_headers(&[(":status", "200")], true)
            .expect_continue()
            .unwrap();
        let stamp = s.response_header("x-aviary-served-by");
        s.finish().unwrap();
        (route, stamp)
    };
    assert_eq!(
        one("recsys"),
        (Some("canary".into()), Some("canary".into()))
    );
    // Another service behind the same proxy: not Aviary's to route, stamp or count; but the
    // client's routing header never reaches a route.
    assert_eq!(one("payments"), (None, None));
    // The host compares as HTTP defines it: case-insensitively, with the default port implied.
    assert_eq!(one("RecSys:80").0, Some("canary".into()));
    assert_eq!(counter(&host, &req_metric("canary", "random")), 2);
    assert_eq!(counter(&host, &resp_metric("canary", "2xx")), 2);
}

#[test]
fn a_root_that_shuts_down_sends_what_it_counted() {
    let host = host(&cfg((10000, 0), ""));
    for _ in 0..7 {
        request(&host, &[("x-user-id", "u")], "200");
    }
    let name = req_metric("stable", "sticky");
    assert_eq!(host.counter(&name), Some(0), "not sent yet");
    assert!(host.shutdown().unwrap());
    assert_eq!(host.counter(&name), Some(7));
    assert_eq!(
        host.counter("aviary_request_duration_ms_count.service.recsys.version.stable"),
        Some(7)
    );
}
