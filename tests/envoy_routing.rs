//! The plugin in the real Envoy 1.40 (V8), against model servers the tests run themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use aviary_sim::{run_load, HttpRequest, LoadConfig};
use common::*;

const TEN_PERCENT: &str = r#"{"service":"recsys","versions":[{"name":"stable","weight":9000},{"name":"canary","weight":1000}],"sticky":{"keys":[{"header":"x-user-id"}]},"rules":[{"name":"debug","match":[{"header":"x-canary","exact":"always"}],"version":"canary"},{"name":"eu","match":[{"header":"x-region","prefix":"eu-"}],"version":"stable"}]}"#;

fn get(url: &str, headers: &[(&str, &str)]) -> aviary_sim::HttpResponse {
    let req = headers
        .iter()
        .fold(HttpRequest::get("/predict"), |r, (k, v)| r.header(*k, *v));
    aviary_sim::http::request(url, req, Duration::from_secs(5)).expect("request")
}

fn assert_binomial(hits: u64, n: u64, p: f64, what: &str) {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (hits as f64 - mean).abs() <= 4.0 * sd,
        "{what}: {hits} of {n}, expected {mean} ± {:.0} (4 sigma)",
        4.0 * sd
    );
}

#[test]
fn ten_percent_split_is_binomial_and_metrics_match_client_counts() {
    let rig = start_with(
        "aviary-header-match.yaml",
        TEN_PERCENT,
        model("stable", |c| c.error_rate = 0.01),
        model("canary", |c| c.error_rate = 0.05),
    );
    // No key: the random path.
    let mut cfg = LoadConfig::requests(&rig.url, 10_000);
    cfg.connections = 8;
    cfg.user_header = "x-none".into();
    let random = run_load(&cfg).unwrap().summary;
    assert_eq!(random.errors, 0, "{random}");
    assert_binomial(random.served_by("canary"), 10_000, 0.1, "random split");
    // Unique keys: the sticky-hash path.
    let mut cfg = LoadConfig::requests(&rig.url, 10_000);
    cfg.connections = 8;
    cfg.users = 1_000_000;
    let keyed = run_load(&cfg).unwrap().summary;
    assert_eq!(keyed.errors, 0);
    let keyed_canary = keyed.served_by("canary");
    assert!(keyed.users_seen > 9_900, "keys mostly distinct");
    assert_binomial(keyed_canary, 10_000, 0.1, "keyed split");

    // Exact per-version metrics against the client's own counts.
    let samples = flushed_stats(&rig.envoy);
    for v in ["stable", "canary"] {
        let client = random.served_by(v) + keyed.served_by(v);
        let served_5xx = random
            .by_served_by
            .get(v)
            .map_or(0, |g| g.by_status.get(&500).copied().unwrap_or(0))
            + keyed
                .by_served_by
                .get(v)
                .map_or(0, |g| g.by_status.get(&500).copied().unwrap_or(0));
        let labels = [("service", "recsys"), ("version", v)];
        assert_eq!(
            sum(&samples, "aviary_requests_total", &labels) as u64,
            client,
            "{v} requests"
        );
        let r = |class| {
            sum(
                &samples,
                "aviary_responses_total",
                &[labels[0], labels[1], ("class", class)],
            ) as u64
        };
        assert_eq!(r("2xx") + r("5xx"), client, "{v} responses");
        assert_eq!(r("5xx"), served_5xx, "{v} 5xx");
        assert_eq!(r("local") + r("reset") + r("4xx"), 0);
        let upstream = if v == "stable" {
            &rig.stable
        } else {
            &rig.canary
        };
        assert_eq!(
            upstream.stats().requests,
            client,
            "{v} upstream saw what the client saw"
        );
    }
    assert_eq!(
        sum(&samples, "aviary_requests_total", &[("reason", "random")]) as u64,
        10_000
    );
    assert_eq!(
        sum(&samples, "aviary_requests_total", &[("reason", "sticky")]) as u64,
        10_000
    );
    assert_eq!(
        sum(&samples, "aviary_weight_bps", &[("version", "canary")]),
        1000.0
    );
    // Histograms appear after a stats flush (1 s).
    assert!(wait_until(Duration::from_secs(5), || {
        let s = prom(&rig.envoy.stats_prometheus().unwrap());
        sum(&s, "aviary_request_duration_ms_count", &[]) as u64 == 20_000
    }));
}

#[test]
fn same_user_always_reaches_one_version_and_rules_force_versions() {
    let rig = start("aviary-header-match.yaml", TEN_PERCENT);
    let mut cfg = LoadConfig::requests(&rig.url, 1000);
    cfg.users = 1;
    cfg.user_prefix = "alice-".into();
    let s = run_load(&cfg).unwrap().summary;
    assert_eq!(s.errors, 0);
    assert_eq!(s.by_served_by.len(), 1, "one user, one version: {s}");
    assert_eq!(s.users_split, 0);

    // Find a user the weights put on stable; the debug rule still forces the canary.
    let stable_user = (0..200)
        .map(|i| format!("u{i}"))
        .find(|u| aviary_contract::hash::bucket(u.as_bytes(), 0) < 9000)
        .unwrap();
    let r = get(&rig.url, &[("x-user-id", &stable_user)]);
    assert_eq!(r.header("x-aviary-served-by"), Some("stable"));
    assert_eq!(r.header("x-model-version"), Some("stable"));
    let r = get(
        &rig.url,
        &[("x-user-id", &stable_user), ("x-canary", "always")],
    );
    assert_eq!(r.header("x-aviary-served-by"), Some("canary"));
    assert_eq!(
        r.header("x-model-version"),
        Some("canary"),
        "Envoy routed on the header"
    );
    let canary_user = (0..2000)
        .map(|i| format!("u{i}"))
        .find(|u| aviary_contract::hash::bucket(u.as_bytes(), 0) >= 9000)
        .unwrap();
    let r = get(&rig.url, &[("x-user-id", &canary_user)]);
    assert_eq!(r.header("x-model-version"), Some("canary"));
    let r = get(
        &rig.url,
        &[("x-user-id", &canary_user), ("x-region", "eu-west-1")],
    );
    assert_eq!(
        r.header("x-model-version"),
        Some("stable"),
        "region rule forces stable"
    );
}

#[test]
fn client_cannot_pick_its_version() {
    let json = r#"{"service":"recsys","versions":[{"name":"stable","weight":10000},{"name":"canary","weight":0}]}"#;
    let rig = start("aviary-header-match.yaml", json);
    let mut cfg = LoadConfig::requests(&rig.url, 500);
    cfg.headers = vec![("x-aviary-version".into(), "canary".into())];
    let s = run_load(&cfg).unwrap().summary;
    assert_eq!(s.served_by("stable"), 500, "{s}");
    assert_eq!(
        rig.canary.stats().requests,
        0,
        "no spoofed request reached the canary"
    );
}

#[test]
fn cluster_header_routing_and_kill_switch() {
    let json = r#"{"service":"recsys","versions":[{"name":"stable","weight":5000},{"name":"canary","weight":5000}],"killSwitch":"canary"}"#;
    let rig = start("aviary-cluster-header.yaml", json);
    let mut cfg = LoadConfig::requests(&rig.url, 300);
    cfg.users = 300;
    let s = run_load(&cfg).unwrap().summary;
    assert_eq!(s.served_by("canary"), 300, "{s}");
    assert_eq!(rig.canary.stats().requests, 300);
    let samples = flushed_stats(&rig.envoy);
    assert_eq!(
        sum(
            &samples,
            "aviary_requests_total",
            &[("reason", "kill_switch")]
        ),
        300.0
    );
    assert_eq!(
        sum(&samples, "aviary_weight_bps", &[("version", "canary")]),
        10000.0
    );
}

#[test]
fn upstream_failures_are_counted_as_local_replies() {
    let rig = start("aviary-header-match.yaml", TEN_PERCENT);
    let canary_port = rig.canary.port();
    drop(rig.canary);
    // The canary is gone: Envoy answers 503 itself, and the plugin counts a local reply.
    let canary_user = (0..2000)
        .map(|i| format!("u{i}"))
        .find(|u| aviary_contract::hash::bucket(u.as_bytes(), 0) >= 9000)
        .unwrap();
    for _ in 0..5 {
        let r = get(&rig.url, &[("x-user-id", &canary_user)]);
        assert_eq!(r.status, 503, "canary port {canary_port} is closed");
        assert_eq!(r.header("x-aviary-served-by"), Some("canary"));
    }
    let samples = flushed_stats(&rig.envoy);
    assert_eq!(
        sum(
            &samples,
            "aviary_responses_total",
            &[("version", "canary"), ("class", "local")]
        ),
        5.0
    );
}

#[test]
fn every_shipped_envoy_config_validates() {
    let dir = root().join("envoy");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".yaml") || name == "aviary-ecds-config.yaml" {
            continue;
        }
        // Validate from the repository root, where the relative paths in the configs resolve.
        let out = std::process::Command::new(aviary_sim::find_envoy().unwrap())
            .current_dir(root())
            .args([
                "--mode",
                "validate",
                "--base-id",
                "0",
                "--disable-hot-restart",
                "-c",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Envoy only sees a string; the plugin's own parser must accept it too.
        let doc: serde_yaml::Value = serde_yaml::from_str(&envoy_file(&name)).unwrap();
        for json in plugin_configs(&doc) {
            aviary_contract::config::parse_and_compile(json.as_bytes())
                .unwrap_or_else(|e| panic!("{name}: the plugin rejects its config: {e}"));
        }
        n += 1;
    }
    assert!(n >= 5, "validated {n} configs");
    // The ECDS resource carries a plugin config the plugin itself accepts.
    let res: serde_yaml::Value =
        serde_yaml::from_str(&envoy_file("aviary-ecds-config.yaml")).unwrap();
    let json = res["resources"][0]["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .unwrap();
    aviary_contract::config::parse_and_compile(json.as_bytes()).unwrap();
}

#[test]
fn ecds_applies_new_weights_under_load_without_failures() {
    let json = |w: u32| {
        format!(
            r#"{{"service":"recsys","versions":[{{"name":"stable","weight":{}}},{{"name":"canary","weight":{w}}}],"sticky":{{"keys":[{{"header":"x-user-id"}}]}}}}"#,
            10_000 - w
        )
    };
    let rig = start("aviary-ecds.yaml", &json(0));
    let wasm = wasm().to_string_lossy().to_string();
    let url = rig.url.clone();
    let load = std::thread::spawn(move || {
        let mut cfg = LoadConfig::duration(&url, Duration::from_secs(6));
        cfg.connections = 4;
        cfg.users = 5000;
        cfg.rate = Some(1500.0);
        run_load(&cfg).unwrap().summary
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut applied = Vec::new();
    for w in [1000, 10_000, 0] {
        let t0 = Instant::now();
        rig.envoy
            .replace_file("ecds.yaml", &ecds_resource(&json(w), &wasm))
            .unwrap();
        let want = if w == 0 { "stable" } else { "canary" };
        // A user in the top bucket is on the canary at any weight > 0.
        let top_user = (0..5000)
            .map(|i| format!("u{i}"))
            .find(|u| aviary_contract::hash::bucket(u.as_bytes(), 0) >= 9990)
            .unwrap();
        let ok = wait_until(Duration::from_secs(3), || {
            get(&rig.url, &[("x-user-id", &top_user)]).header("x-aviary-served-by") == Some(want)
        });
        assert!(ok, "weight {w} applied");
        applied.push(t0.elapsed());
        std::thread::sleep(Duration::from_millis(1200));
    }
    let s = load.join().unwrap();
    assert_eq!(s.errors, 0, "{s}");
    assert_eq!(
        s.responses,
        s.status(200),
        "no request failed during swaps: {s}"
    );
    assert!(s.served_by("canary") > 0 && s.served_by("stable") > 0);
    eprintln!("ECDS apply latency (rename to first response with new behaviour): {applied:?}");
    for d in &applied {
        assert!(*d < Duration::from_secs(2), "apply took {d:?}");
    }
    // A bad config is rejected and the last good one keeps serving.
    let before = rig
        .envoy
        .stat("extension_config_discovery.http_filter.aviary.update_rejected")
        .unwrap()
        .unwrap_or(0);
    let bad = json(0).replace("\"weight\":0", "\"weight\":12000");
    rig.envoy
        .replace_file("ecds.yaml", &ecds_resource(&bad, &wasm))
        .unwrap();
    assert!(wait_until(Duration::from_secs(3), || {
        rig.envoy
            .stat("extension_config_discovery.http_filter.aviary.update_rejected")
            .unwrap()
            .unwrap_or(0)
            > before
    }));
    let mut cfg = LoadConfig::requests(&rig.url, 200);
    cfg.users = 200;
    let s = run_load(&cfg).unwrap().summary;
    assert_eq!(
        s.served_by("stable"),
        200,
        "last good config (0% canary) still serves"
    );
    let log = std::fs::read_to_string(rig.envoy.log_path()).unwrap();
    assert!(
        log.contains("versions[1].weight") && log.contains("out of range"),
        "the rejection names the field"
    );
}

/// Every Aviary plugin configuration string inside an Envoy config.
fn plugin_configs(v: &serde_yaml::Value) -> Vec<String> {
    match v {
        serde_yaml::Value::Mapping(m) => {
            let here = m
                .get("configuration")
                .and_then(|c| c.get("value"))
                .and_then(|v| v.as_str())
                .filter(|s| s.contains("\"versions\""))
                .map(str::to_string);
            here.into_iter()
                .chain(m.values().flat_map(plugin_configs))
                .collect()
        }
        serde_yaml::Value::Sequence(s) => s.iter().flat_map(plugin_configs).collect(),
        _ => vec![],
    }
}

/// HTTP allows bytes 0x80-0xFF in header values (obs-text). The SDK's header reader panics on
/// them, which would abort the VM; Aviary reads the raw map, so the request is still routed.
#[test]
fn non_utf8_header_bytes_are_routed_not_fatal() {
    use std::io::{Read, Write};
    let rig = start("aviary-header-match.yaml", TEN_PERCENT);
    let port = rig.envoy.listener_port("ingress").unwrap();
    let send = |user: &[u8]| -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut req =
            b"GET /predict HTTP/1.1\r\nhost: recsys\r\nconnection: close\r\nx-user-id: ".to_vec();
        req.extend_from_slice(user);
        req.extend_from_slice(b"\r\nx-note: caf\xe9 \xff\xfe\r\n\r\n");
        s.write_all(&req).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    for i in 0..20 {
        let resp = send(format!("user-\u{e9}-{i}").as_bytes());
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.contains("x-aviary-served-by: "), "{resp}");
        let raw = send(&[b'u', 0xe9, b'0' + i as u8]);
        assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
        assert!(raw.contains("x-aviary-served-by: "), "{raw}");
    }
    let samples = flushed_stats(&rig.envoy);
    assert_eq!(
        sum(&samples, "aviary_requests_total", &[("reason", "sticky")]),
        40.0
    );
}
