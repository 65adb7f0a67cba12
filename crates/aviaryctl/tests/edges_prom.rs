//! The Prometheus text parser and the snapshot builder, on hand-written and Envoy-shaped input.

use aviaryctl::edges::source::{parse_prometheus_text, parse_value, snapshot_from_samples, Sample};

fn one(text: &str) -> Sample {
    let mut v = parse_prometheus_text(text).expect("parses");
    assert_eq!(v.len(), 1, "{v:?}");
    v.remove(0)
}

#[test]
fn skips_comments_help_and_type() {
    let text = "# HELP x_total Some help with \"quotes\" and \\ backslash\n\
                # TYPE x_total counter\n\
                # a free comment\n\
                \n\
                x_total 3\n";
    let s = one(text);
    assert_eq!(s.name, "x_total");
    assert!(s.labels.is_empty());
    assert_eq!(s.value, 3.0);
    assert_eq!(s.timestamp_ms, None);
}

#[test]
fn labels_with_escapes_and_odd_spacing() {
    let s = one(r#"m{a="x\"y",b="back\\slash",c="new\nline",d="{,}=",} 1.5e3 1700000000000"#);
    assert_eq!(s.label("a"), Some("x\"y"));
    assert_eq!(s.label("b"), Some("back\\slash"));
    assert_eq!(s.label("c"), Some("new\nline"));
    assert_eq!(s.label("d"), Some("{,}="));
    assert_eq!(s.value, 1500.0);
    assert_eq!(s.timestamp_ms, Some(1_700_000_000_000));

    let s = one("m { a = \"1\" , b=\"2\" }\t\t7");
    assert_eq!(
        s.labels,
        vec![("a".into(), "1".into()), ("b".into(), "2".into())]
    );
    assert_eq!(s.value, 7.0);

    let s = one("envoy_x{} 0");
    assert!(s.labels.is_empty());
    let s = one("ns:rule:rate5m{le=\"+Inf\"} -2.5E-3\r");
    assert_eq!(s.name, "ns:rule:rate5m");
    assert_eq!(s.value, -0.0025);
}

#[test]
fn special_values() {
    assert!(parse_value("NaN").is_some_and(f64::is_nan));
    assert_eq!(parse_value("+Inf"), Some(f64::INFINITY));
    assert_eq!(parse_value("-Inf"), Some(f64::NEG_INFINITY));
    assert_eq!(parse_value("Inf"), Some(f64::INFINITY));
    assert_eq!(parse_value("1e-7"), Some(1e-7));
    assert_eq!(parse_value("6.02E+23"), Some(6.02e23));
    assert_eq!(
        parse_value("94.274349181749414583464385941625"),
        Some(94.274_349_181_749_41)
    );
    assert_eq!(
        parse_value("17241709254077376921"),
        Some(1.724_170_925_407_737_7e19)
    );
    for bad in ["", "abc", "1,5", "0x10", "infinity and beyond", "--1"] {
        assert_eq!(parse_value(bad), None, "{bad:?}");
    }
}

#[test]
fn garbage_is_an_error_with_its_line() {
    let cases = [
        ("ok 1\nbroken{a=\"1\" 2\n", 2, "expected ',' or '}'"),
        ("m{a=\"unterminated} 1", 1, "unterminated"),
        ("m{a=1} 1", 1, "expected '\"'"),
        ("m{a=\"1\"} one", 1, "bad value"),
        ("m 1 2 3", 1, "unexpected"),
        ("m{a=\"1\",a=\"2\"} 1", 1, "duplicate label"),
        ("m{a=\"\\x\"} 1", 1, "bad escape"),
        ("1m 1", 1, "metric name"),
        ("m", 1, "no value"),
        ("m 1 notatime", 1, "bad timestamp"),
        (
            "<html><body>502 Bad Gateway</body></html>",
            1,
            "metric name",
        ),
        ("m{0a=\"1\"} 1", 1, "label name"),
    ];
    for (text, line, needle) in cases {
        let e = parse_prometheus_text(text).expect_err(text);
        assert_eq!(e.line, line, "{text:?}: {e}");
        assert!(e.error.to_string().contains(needle), "{text:?}: {e}");
    }
}

const ENVOY_A: &str = r#"# TYPE aviary_requests_total counter
aviary_requests_total{service="recsys",version="canary",reason="random"} 3
aviary_requests_total{service="recsys",version="canary",reason="sticky"} 7
aviary_requests_total{service="recsys",version="stable",reason="sticky"} 90
aviary_requests_total{service="other",version="stable",reason="sticky"} 1000
# TYPE aviary_responses_total counter
aviary_responses_total{service="recsys",version="canary",class="2xx"} 8
aviary_responses_total{service="recsys",version="canary",class="5xx"} 2
aviary_responses_total{service="recsys",version="stable",class="2xx"} 90
# TYPE aviary_config_digest gauge
aviary_config_digest{service="recsys"} 81163757913629
# TYPE aviary_weight_bps gauge
aviary_weight_bps{service="recsys",version="canary"} 1000
aviary_weight_bps{service="recsys",version="stable"} 9000
# TYPE aviary_score_bin_total counter
aviary_score_bin_total{service="recsys",version="canary",bin="0.5"} 4
aviary_score_bin_total{service="recsys",version="canary",bin="+Inf"} 6
aviary_score_bin_total{service="recsys",version="canary",bin="0.1"} 1
# TYPE aviary_shadow_comparisons_total counter
aviary_shadow_comparisons_total{service="recsys",version="canary",result="agree"} 40
aviary_shadow_comparisons_total{service="recsys",version="canary",result="disagree"} 2
# TYPE aviary_shadow_uncompared_total counter
aviary_shadow_uncompared_total{service="recsys",version="canary",reason="timeout"} 1
# TYPE aviary_request_duration_ms histogram
aviary_request_duration_ms_bucket{service="recsys",version="canary",le="0.5"} 1
aviary_request_duration_ms_bucket{service="recsys",version="canary",le="10"} 9
aviary_request_duration_ms_bucket{service="recsys",version="canary",le="+Inf"} 10
aviary_request_duration_ms_sum{service="recsys",version="canary"} 94.274349181749414583464385941625
aviary_request_duration_ms_count{service="recsys",version="canary"} 10
"#;

const ENVOY_B: &str = r#"aviary_requests_total{service="recsys",version="canary",reason="random"} 5
aviary_responses_total{service="recsys",version="canary",class="2xx"} 5
aviary_config_digest{service="recsys"} 81163757913629
aviary_weight_bps{service="recsys",version="canary"} 2500
aviary_weight_bps{service="recsys",version="stable"} 9000
aviary_request_duration_ms_bucket{service="recsys",version="canary",le="0.5"} 2
aviary_request_duration_ms_bucket{service="recsys",version="canary",le="10"} 4
aviary_request_duration_ms_bucket{service="recsys",version="canary",le="+Inf"} 5
aviary_request_duration_ms_sum{service="recsys",version="canary"} 5.7e1
aviary_request_duration_ms_count{service="recsys",version="canary"} 5
"#;

#[test]
fn snapshot_sums_endpoints_per_bucket_and_checks_gauges_agree() {
    let a = parse_prometheus_text(ENVOY_A).expect("a");
    let b = parse_prometheus_text(ENVOY_B).expect("b");
    let snap = snapshot_from_samples("recsys", a.iter().chain(&b), 42)
        .expect("valid")
        .expect("has series");
    assert_eq!(snap.at_ms, 42);
    let c = &snap.versions["canary"];
    assert_eq!(c.requests, 15);
    assert_eq!(c.responses["2xx"], 13);
    assert_eq!(c.responses["5xx"], 2);
    assert_eq!(
        c.latency_buckets,
        vec![(0.5, 3), (10.0, 13), (f64::INFINITY, 15)]
    );
    assert_eq!(c.latency_count, 15);
    assert!((c.latency_sum - 151.274_349).abs() < 1e-3);
    assert_eq!(c.score_bins, vec![(0.1, 1), (0.5, 4), (f64::INFINITY, 6)]);
    assert_eq!((c.shadow_agree, c.shadow_disagree), (40, 2));
    assert_eq!(c.shadow_uncompared["timeout"], 1);
    // The Envoys disagree on the canary weight (an update in flight): unknown.
    assert_eq!(c.weight_bps, None);
    let s = &snap.versions["stable"];
    assert_eq!(s.requests, 90);
    assert_eq!(s.weight_bps, Some(9000));
    // Another service's series are not mixed in.
    assert_eq!(snap.versions.len(), 2);

    assert_eq!(snapshot_from_samples("absent", &a, 0).expect("valid"), None);
}

#[test]
fn nan_counters_are_rejected() {
    let text = "aviary_requests_total{service=\"s\",version=\"v\",reason=\"random\"} NaN\n";
    let samples = parse_prometheus_text(text).expect("parses");
    let err = snapshot_from_samples("s", &samples, 0).expect_err("NaN counter");
    assert!(err.to_string().contains("NaN"), "{err}");
    assert!(
        matches!(err, aviaryctl::error::SampleError::NaN { .. }),
        "{err:?}"
    );
}
