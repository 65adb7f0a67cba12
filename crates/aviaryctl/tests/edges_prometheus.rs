//! `PrometheusSource` against a real Prometheus scraping a real Envoy running the plugin:
//! the snapshot it builds from instant queries matches the load generator's counts and the
//! Envoy admin snapshot, and custom KPI queries land in `Snapshot::custom`.

mod edges_support;

use std::time::{Duration, Instant};

use aviary_contract::units::DIGEST48_MASK;
use aviary_sim::{run_load, LoadConfig};
use aviaryctl::edges::source::{ApplyProbe, EnvoyAdminSource, MetricsSource, PrometheusSource};
use edges_support::prometheus::Prometheus;
use edges_support::{plugin_config, poll, Rig};

#[test]
fn prometheus_source_matches_envoy() {
    let rig = Rig::start(1, &plugin_config(3000));
    let prom = Prometheus::start(&rig.admin_urls()[0], "envoy", &[]);
    let report = run_load(&LoadConfig {
        users: 2000,
        ..LoadConfig::requests(rig.urls[0].clone(), 500)
    })
    .expect("load");
    let canary = report.summary.served_by("canary");
    let stable = report.summary.served_by("stable");
    assert_eq!(canary + stable, 500);

    let src = PrometheusSource::new(&prom.url)
        .timeout(Duration::from_secs(2))
        .var("canary", "canary")
        .var("baseline", "stable")
        .custom_query(
            "canary_requests",
            r#"sum(aviary_requests_total{service="$service",version="$canary"})"#,
        )
        .custom_query(
            "success_ratio",
            r#"sum(aviary_responses_total{service="$service",version="$baseline",class="2xx"}) / sum(aviary_requests_total{service="$service",version="$baseline"})"#,
        )
        .custom_query("broken", "sum(")
        .custom_query("empty", r#"aviary_requests_total{service="nope"}"#);

    // Scrapes run every second, histograms flush every second: wait for a complete view.
    let started = Instant::now();
    let snap = poll(Duration::from_secs(20), Duration::from_millis(250), || {
        let s = src.snapshot("recsys").ok()?;
        let complete = s.versions.get("canary")?.latency_count == canary
            && s.versions.get("stable")?.latency_count == stable;
        complete.then_some(s)
    })
    .expect("prometheus caught up");
    println!("prometheus view complete after {:?}", started.elapsed());

    let c = &snap.versions["canary"];
    let s = &snap.versions["stable"];
    assert_eq!(c.requests, canary);
    assert_eq!(s.requests, stable);
    assert_eq!(c.responses.get("2xx"), Some(&canary));
    assert_eq!(c.weight_bps, Some(3000));
    assert_eq!(s.weight_bps, Some(7000));
    assert!(c
        .latency_buckets
        .last()
        .is_some_and(|b| b.0.is_infinite() && b.1 == canary));

    // Same numbers as straight from Envoy.
    let direct = EnvoyAdminSource::new(rig.admin_urls())
        .snapshot("recsys")
        .expect("admin");
    for v in ["stable", "canary"] {
        let (p, d) = (&snap.versions[v], &direct.versions[v]);
        assert_eq!(p.requests, d.requests, "{v}");
        assert_eq!(p.responses, d.responses, "{v}");
        assert_eq!(p.latency_buckets, d.latency_buckets, "{v}");
        assert_eq!(p.latency_count, d.latency_count, "{v}");
        assert!((p.latency_sum - d.latency_sum).abs() < 1e-6, "{v}");
        assert_eq!(p.weight_bps, d.weight_bps, "{v}");
    }

    assert_eq!(snap.custom.get("canary_requests"), Some(&(canary as f64)));
    assert_eq!(snap.custom.get("success_ratio"), Some(&1.0));
    assert!(
        !snap.custom.contains_key("broken"),
        "a bad query is absent, not zero"
    );
    assert!(!snap.custom.contains_key("empty"));

    // Prometheus also confirms which config each scraped proxy applied.
    let applied = src.applied("recsys").expect("applied");
    assert_eq!(applied.len(), 1, "{applied:?}");
    let expected =
        aviary_contract::config::digest(plugin_config(3000).to_json().as_bytes()) & DIGEST48_MASK;
    assert_eq!(applied[0].digest48, Some(expected));
    assert_eq!(applied[0].weights.get("canary"), Some(&3000));
    assert!(applied[0].endpoint.starts_with("127.0.0.1:"), "{applied:?}");

    let err = src.snapshot("no-such-service").expect_err("no series");
    assert!(err.to_string().contains("no Aviary series"), "{err}");
}
