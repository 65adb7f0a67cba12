//! Shadow comparison and live score bins in the real Envoy, against model servers with known,
//! seeded outputs; and proof that a slow or broken shadow never hurts users.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use aviary_sim::modelserver::{disagrees, predict};
use aviary_sim::{run_load, EnvoyBuilder, Fault, Latency, LoadConfig, ModelServer};
use common::*;

/// The latency comparison must not share the two cores with the other test's load.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const BOUNDS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

fn shadow_json(share: u32, cluster: &str) -> String {
    format!(
        r#"{{"service":"recsys","versions":[{{"name":"stable","weight":10000}},{{"name":"canary","weight":0}}],"shadow":{{"targets":[{{"version":"v2","cluster":"{cluster}"}}],"share":{share},"timeoutMs":3000,"maxInFlight":2048,"compare":{{"labelPointer":"/prediction/label","scorePointer":"/prediction/score"}}}},"scores":{{"pointer":"/prediction/score","bounds":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0]}}}}"#
    )
}

fn start_shadow(plugin: &str, shadow: &ModelServer) -> Rig {
    let stable = model("stable", |_| {});
    let canary = model("canary", |_| {});
    let wasm = wasm();
    let envoy = EnvoyBuilder::new(template("aviary-shadow.yaml", plugin))
        .var("STABLE_PORT", stable.port())
        .var("CANARY_PORT", canary.port())
        .var("SHADOW_PORT", shadow.port())
        .path_var("WASM", &wasm)
        .start()
        .unwrap();
    let port = envoy.listener_port("ingress").unwrap();
    Rig {
        envoy,
        stable,
        canary,
        url: format!("http://127.0.0.1:{port}/predict"),
    }
}

#[test]
fn agreement_and_score_bins_match_the_models_known_outputs() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let shadow = model("v2", |c| c.disagree_rate = 0.2);
    let rig = start_shadow(&shadow_json(10_000, "shadow_v2"), &shadow);
    let mut cfg = LoadConfig::requests(&rig.url, 2000);
    cfg.connections = 8;
    cfg.input_header = Some("x-input-id".into());
    let s = run_load(&cfg).unwrap().summary;
    assert_eq!(s.status(200), 2000, "{s}");

    let inputs: Vec<String> = (0..2000).map(|i| cfg.input_for(i)).collect();
    let seed = rig.stable.config().seed;
    let want_disagree = inputs.iter().filter(|i| disagrees(seed, 0.2, i)).count() as f64;
    let mut want_bins = [0u64; 11];
    let stable_cfg = rig.stable.config();
    for i in &inputs {
        let p = predict(seed, &stable_cfg.labels, &stable_cfg.score, 0.0, i);
        want_bins[BOUNDS.partition_point(|b| *b < p.score)] += 1;
    }

    let settled = wait_until(Duration::from_secs(10), || {
        let m = prom(&rig.envoy.stats_prometheus().unwrap());
        sum(&m, "aviary_shadow_comparisons_total", &[]) == 2000.0
    });
    let m = prom(&rig.envoy.stats_prometheus().unwrap());
    assert!(
        settled,
        "comparisons: {}",
        sum(&m, "aviary_shadow_comparisons_total", &[])
    );
    let disagree = sum(
        &m,
        "aviary_shadow_comparisons_total",
        &[("version", "v2"), ("result", "disagree")],
    );
    assert_eq!(
        disagree, want_disagree,
        "exactly the inputs the shadow disagrees on"
    );
    // And the known share: 20% of 2000 = 400 ± 72 (4 sigma).
    assert!((disagree - 400.0).abs() <= 72.0, "{disagree}");
    assert_eq!(sum(&m, "aviary_shadow_uncompared_total", &[]), 0.0);
    assert_eq!(
        sum(&m, "aviary_shadow_requests_total", &[("version", "v2")]),
        2000.0
    );
    assert_eq!(
        shadow.stats().requests,
        2000,
        "the shadow server saw every copy"
    );
    for (i, want) in want_bins.iter().enumerate() {
        let bin = if i < BOUNDS.len() {
            aviary_contract::units::fmt_decimal(BOUNDS[i])
        } else {
            "+Inf".into()
        };
        let got = sum(
            &m,
            "aviary_score_bin_total",
            &[("version", "stable"), ("bin", &bin)],
        );
        assert_eq!(got as u64, *want, "bin {bin}");
    }
}

fn user_latency(rig: &Rig) -> aviary_sim::LoadSummary {
    let mut cfg = LoadConfig::duration(&rig.url, Duration::from_secs(3));
    cfg.rate = Some(200.0);
    cfg.connections = 8;
    cfg.input_header = Some("x-input-id".into());
    run_load(&cfg).unwrap().summary
}

#[test]
fn slow_or_broken_shadows_never_hurt_users() {
    let cases: Vec<(&str, ModelServer, u32, &str)> = vec![
        ("no shadow", model("v2", |_| {}), 0, "shadow_v2"),
        (
            "2 s shadow",
            model("v2", |c| c.latency = Latency::fixed_ms(2000.0)),
            10_000,
            "shadow_v2",
        ),
        (
            "5xx shadow",
            model("v2", |c| c.fault = Fault::Status(503)),
            10_000,
            "shadow_v2",
        ),
        (
            "resetting shadow",
            model("v2", |c| c.fault = Fault::Reset),
            10_000,
            "shadow_v2",
        ),
        (
            "missing cluster",
            model("v2", |_| {}),
            10_000,
            "no_such_cluster",
        ),
    ];
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Two interleaved rounds; each case keeps its better round, so a passing burst of other
    // work on this small machine does not count against one case only.
    let mut rows: Vec<(&str, f64, f64, u64)> = Vec::new();
    for round in 0..2 {
        for (i, (name, shadow, share, cluster)) in cases.iter().enumerate() {
            let rig = start_shadow(&shadow_json(*share, cluster), shadow);
            let s = user_latency(&rig);
            assert_eq!(s.errors, 0, "{name}: {s}");
            assert_eq!(
                s.responses,
                s.status(200),
                "{name}: every user request succeeded: {s}"
            );
            assert!(s.by_served_by.keys().all(|k| k == "stable"), "{name}");
            if *name == "2 s shadow" {
                let m = prom(&rig.envoy.stats_prometheus().unwrap());
                assert!(
                    sum(&m, "aviary_shadow_requests_total", &[]) > 500.0,
                    "it really mirrored"
                );
            }
            let row = (*name, s.latency_ms.p50, s.latency_ms.p99, s.total);
            if round == 0 {
                rows.push(row);
            } else if row.1 < rows[i].1 {
                rows[i] = row;
            }
        }
    }
    eprintln!("user latency at 200 req/s (p50 ms, p99 ms, requests):");
    for r in &rows {
        eprintln!("  {:<18} {:>7.3} {:>7.3} {:>6}", r.0, r.1, r.2, r.3);
    }
    let (base50, base99) = (rows[0].1, rows[0].2);
    for (name, p50, p99, _) in &rows[1..] {
        assert!(
            *p50 <= base50 + 2.0,
            "{name}: p50 {p50} ms vs {base50} ms without shadow"
        );
        assert!(
            *p99 <= base99 + 10.0 + base99,
            "{name}: p99 {p99} ms vs {base99} ms"
        );
    }
}

#[test]
fn via_envoy_mirrors_exactly_the_chosen_users_and_ignores_client_headers() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let plugin = r#"{"service":"recsys","versions":[{"name":"stable","weight":10000},{"name":"canary","weight":0}],"sticky":{"keys":[{"header":"x-user-id"}]},"shadow":{"via":"envoy","targets":[{"version":"v2","cluster":"shadow_v2"}],"share":2500}}"#;
    let seed = aviary_contract::config::parse_and_compile(plugin.as_bytes())
        .unwrap()
        .shadow
        .unwrap()
        .seed;
    let shadow = model("v2", |_| {});
    let stable = model("stable", |_| {});
    let canary = model("canary", |_| {});
    let envoy = EnvoyBuilder::new(template("aviary-mirror.yaml", plugin))
        .var("STABLE_PORT", stable.port())
        .var("CANARY_PORT", canary.port())
        .var("SHADOW_PORT", shadow.port())
        .path_var("WASM", wasm())
        .start()
        .unwrap();
    let url = format!(
        "http://127.0.0.1:{}/predict",
        envoy.listener_port("ingress").unwrap()
    );
    let users: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    for u in &users {
        // The client asks to mirror to the stable cluster; the plugin must not let it.
        let req = aviary_sim::HttpRequest::get("/predict")
            .header("x-user-id", u)
            .header("x-aviary-mirror-v2", "stable");
        let r = aviary_sim::http::request(&url, req, Duration::from_secs(5)).unwrap();
        assert_eq!(r.status, 200);
    }
    let chosen = users
        .iter()
        .filter(|u| aviary_contract::hash::bucket(u.as_bytes(), seed) < 2500)
        .count() as u64;
    assert!(
        (40..=110).contains(&chosen),
        "{chosen} of 300 in a 25% share"
    );
    assert!(
        wait_until(Duration::from_secs(5), || shadow.stats().requests >= chosen),
        "shadow got {} of {chosen} copies",
        shadow.stats().requests
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(shadow.stats().requests, chosen, "exactly the chosen users");
    assert_eq!(stable.stats().requests, 300, "no client-chosen copies");
    let m = flushed_stats(&envoy);
    assert_eq!(
        sum(&m, "aviary_shadow_requests_total", &[("version", "v2")]),
        chosen as f64
    );
    assert_eq!(
        envoy
            .counter("cluster.shadow_v2.upstream_rq_total")
            .unwrap(),
        chosen
    );
}
