//! What an on-call engineer sees: `grafana/aviary.json` and `prometheus/aviary-alerts.yaml`.
//!
//! Every PromQL target of every dashboard panel runs against a real Prometheus scraping a real
//! Envoy (the shipped ECDS bootstrap with the plugin config of `envoy/aviary-shadow.yaml`: a
//! canary, a comparing shadow and score bins) under a few seconds of load, and must return at
//! least one series with a finite value. The alert rules pass `promtool check rules` and their
//! unit tests (`promtool test rules`).

mod edges_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use aviary_contract::config::PluginConfig;
use aviary_sim::{run_load, shipped_config_template, EnvoyBuilder, Latency, LoadConfig};
use aviaryctl::edges::sink::{ConfigSink, EcdsFileSink};
use edges_support::prometheus::Prometheus;
use edges_support::{model, poll, root, wasm, TempDir};
use serde_json::Value;

const PROMTOOL: &str = "/usr/bin/promtool";
use edges_support::prometheus::Series;
/// An alert from `/api/v1/alerts`: name, state, labels.
type Alert = (String, String, BTreeMap<String, String>);

/// The scrape job the alert rules expect.
const JOB: &str = "aviary-envoy";

/// The plugin config shipped in `envoy/aviary-shadow.yaml` (shadow `v2` comparing labels and
/// scores, score bins), with 20% of the traffic on the canary so both versions have series.
fn shadow_plugin_json() -> String {
    let shipped = std::fs::read_to_string(root().join("envoy/aviary-shadow.yaml"))
        .expect("reading envoy/aviary-shadow.yaml");
    let start = shipped.find("value: |").expect("inline plugin config") + "value: |".len();
    let end = start
        + shipped[start..]
            .find("- name: envoy.filters.http.router")
            .expect("router after the plugin");
    let json = shipped[start..end].trim().to_string();
    let weights = r#"[{"name": "stable", "weight": 10000}, {"name": "canary", "weight": 0}]"#;
    assert!(json.contains(weights), "aviary-shadow.yaml changed: {json}");
    let json = json.replace(
        weights,
        r#"[{"name": "stable", "weight": 8000}, {"name": "canary", "weight": 2000}]"#,
    );
    assert!(json.contains("\"shadow\"") && json.contains("\"scores\""));
    json
}

/// Every target of every panel (rows' nested panels too): (panel title, expr).
fn dashboard_targets(dash: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().expect("a target has an expr");
                assert_eq!(
                    t["datasource"]["uid"], "${DS_PROMETHEUS}",
                    "panel {title}: datasource"
                );
                out.push((title.clone(), expr.to_string()));
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// Grafana's variables as the dashboard would resolve them for service recsys, all versions.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$__range", "5m")
        .replace("$service", "recsys")
        .replace("$version", ".*")
}

#[test]
fn dashboard_is_importable_with_service_and_version_variables() {
    let text = std::fs::read_to_string(root().join("grafana/aviary.json")).expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(dash["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(dash["__inputs"][0]["pluginId"], "prometheus");
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for v in ["DS_PROMETHEUS", "service", "version"] {
        assert!(vars.contains(&v), "variable {v} missing: {vars:?}");
    }
    let targets = dashboard_targets(&dash);
    assert!(targets.len() >= 15, "{targets:?}");
    // Panels that show per-version data filter on both variables.
    for (title, expr) in &targets {
        if expr.contains("aviary_") && !expr.contains("envoy_extension_config_discovery") {
            assert!(expr.contains("$service"), "panel {title} ignores $service");
        }
    }
    // Panel ids are unique (Grafana requires it).
    let mut ids: Vec<i64> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter_map(|p| p["id"].as_i64())
        .collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "duplicate panel ids");
}

#[test]
fn alert_rules_pass_promtool() {
    assert!(
        Path::new(PROMTOOL).exists(),
        "{PROMTOOL} is missing: `make system-deps` installs prometheus"
    );
    for args in [
        ["check", "rules", "prometheus/aviary-alerts.yaml"],
        ["test", "rules", "prometheus/aviary-alerts.test.yaml"],
    ] {
        let out = Command::new(PROMTOOL)
            .args(args)
            .current_dir(root())
            .output()
            .expect("run promtool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("promtool {}:\n{text}", args.join(" "));
        assert!(
            out.status.success(),
            "promtool {} failed:\n{text}",
            args.join(" ")
        );
        assert!(text.contains("SUCCESS"), "{text}");
    }
}

#[test]
fn every_dashboard_query_returns_data_from_real_prometheus() {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("grafana/aviary.json")).expect("dashboard"),
    )
    .expect("valid JSON");
    let targets = dashboard_targets(&dash);

    // Model servers: the canary fails more than stable; the shadow disagrees on 20% of inputs.
    let stable = model("stable", |c| {
        c.latency = Latency::fixed_ms(2.0);
        c.error_rate = 0.02;
    });
    let canary = model("canary", |c| {
        c.latency = Latency::fixed_ms(4.0);
        c.error_rate = 0.05;
    });
    let shadow = model("v2", |c| {
        c.latency = Latency::fixed_ms(2.0);
        c.disagree_rate = 0.2;
    });

    // The shipped ECDS bootstrap (so Envoy's ECDS counters exist too) plus the shadow cluster
    // of aviary-shadow.yaml, fed the plugin config of aviary-shadow.yaml.
    let dir = TempDir::new("obs");
    let ecds = dir.join("ecds.json");
    let sink = EcdsFileSink::new(&ecds, "aviary", wasm().display().to_string());
    let plugin_json = shadow_plugin_json();
    let cfg = PluginConfig::from_json(plugin_json.as_bytes()).expect("valid plugin config");
    let receipt = sink.write(&cfg).expect("ECDS write");
    let shipped = std::fs::read_to_string(root().join("envoy/aviary-ecds.yaml")).expect("read");
    let template = shipped_config_template(&shipped)
        + "  - name: shadow_v2\n    connect_timeout: 1s\n    load_assignment: {cluster_name: shadow_v2, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{SHADOW_PORT}}}}}}]}]}\n";
    let envoy = EnvoyBuilder::new(template)
        .var("STABLE_PORT", stable.port())
        .var("CANARY_PORT", canary.port())
        .var("SHADOW_PORT", shadow.port())
        .path_var("ECDS", &ecds)
        .start()
        .expect("envoy starts");
    let url = format!(
        "http://127.0.0.1:{}/predict",
        envoy.listener_port("ingress").expect("listener")
    );
    let prom = Prometheus::start(
        envoy.admin_url(),
        JOB,
        &[root().join("prometheus/aviary-alerts.yaml")],
    );
    // Prometheus applies discovered targets every 5 s: wait for the first scrape of Envoy,
    // with the plugin's gauges in it, before the load starts.
    let scraped = poll(Duration::from_secs(20), Duration::from_millis(200), || {
        prom.query("aviary_config_digest")
            .ok()
            .filter(|s| !s.is_empty())
    });
    assert!(
        scraped.is_some(),
        "Prometheus never scraped Envoy:\n{}",
        prom.log()
    );

    // Bounded load: 5 s at 300 requests per second, each with an input id for the models.
    let mut load = LoadConfig::duration(&url, Duration::from_secs(5));
    load.rate = Some(300.0);
    load.connections = 4;
    load.input_header = Some("x-input-id".into());
    let report = run_load(&load).expect("load");
    println!("load: {}", report.summary);
    assert!(report.summary.served_by("canary") > 0 && report.summary.served_by("stable") > 0);

    // A config Envoy refuses (weights over 10000), written as a driver bypassing validation
    // would: the rejected-update panel must see it.
    let bad = plugin_json.replace("\"weight\": 8000", "\"weight\": 12000");
    let tmp = dir.join("ecds.json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_string_pretty(&sink.render(&bad)).expect("render"),
    )
    .expect("write");
    std::fs::rename(&tmp, &ecds).expect("rename");
    let rejected_stat = "extension_config_discovery.http_filter.aviary.update_rejected";
    let rejected = poll(Duration::from_secs(5), Duration::from_millis(50), || {
        envoy.stat(rejected_stat).ok().flatten().filter(|n| *n > 0)
    });
    assert!(rejected.is_some(), "Envoy did not reject the bad config");
    let seen = poll(Duration::from_secs(10), Duration::from_millis(200), || {
        prom.query("envoy_extension_config_discovery_http_filter_aviary_update_rejected > 0")
            .ok()
            .filter(|s| !s.is_empty())
    });
    assert!(seen.is_some(), "Prometheus never saw the rejection");

    // Every panel query, as Grafana would send it, must give a finite series. The rates look
    // back 30 s, so poll until each has been seen (scrapes every second, flushes every second).
    let queries: Vec<(String, String, String)> = targets
        .iter()
        .map(|(title, expr)| (title.clone(), expr.clone(), substitute(expr)))
        .collect();
    let mut results: BTreeMap<usize, Vec<Series>> = BTreeMap::new();
    let started = Instant::now();
    let mut last_err: BTreeMap<usize, String> = BTreeMap::new();
    poll(Duration::from_secs(20), Duration::from_millis(500), || {
        for (i, (_, _, q)) in queries.iter().enumerate() {
            if results.contains_key(&i) {
                continue;
            }
            match prom.query(q) {
                Ok(series) if series.iter().any(|(_, v)| v.is_finite()) => {
                    results.insert(i, series);
                }
                Ok(series) => {
                    last_err.insert(i, format!("no finite series: {series:?}"));
                }
                Err(e) => {
                    last_err.insert(i, e);
                }
            }
        }
        (results.len() == queries.len()).then_some(())
    });
    println!(
        "{} dashboard queries checked against Prometheus {} (all answered within {:?}):",
        queries.len(),
        prom.url,
        started.elapsed()
    );
    for (i, (title, _, q)) in queries.iter().enumerate() {
        let shown = match results.get(&i) {
            Some(series) => series
                .iter()
                .map(|(l, v)| {
                    let labels: Vec<String> = l
                        .iter()
                        .filter(|(k, _)| *k != "job" && *k != "instance")
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    format!("{{{}}} {v:.4}", labels.join(","))
                })
                .collect::<Vec<_>>()
                .join("; "),
            None => format!("FAILED: {}", last_err.get(&i).cloned().unwrap_or_default()),
        };
        println!("- [{title}] {}\n    => {shown}", q.replace('\n', " "));
    }
    let failed: Vec<&str> = queries
        .iter()
        .enumerate()
        .filter(|(i, _)| !results.contains_key(i))
        .map(|(_, (t, _, _))| t.as_str())
        .collect();
    if !failed.is_empty() {
        let raw = ureq::get(&format!("{}/api/v1/query", prom.url))
            .query(
                "query",
                "aviary_requests_total{version=\"stable\",reason=\"sticky\"}[2m]",
            )
            .call()
            .map(|r| r.into_string().unwrap_or_default());
        println!("raw: {raw:?}");
    }
    assert!(failed.is_empty(), "panels without data: {failed:?}");

    // A few panels' numbers checked against what was set up.
    let by = |title: &str, expr_part: &str| -> &Vec<Series> {
        let i = queries
            .iter()
            .position(|(t, e, _)| t == title && e.contains(expr_part))
            .unwrap_or_else(|| panic!("no panel {title} with {expr_part}"));
        &results[&i]
    };
    let value = |series: &Vec<Series>, k: &str, v: &str| {
        series
            .iter()
            .find(|(l, _)| l.get(k).map(String::as_str) == Some(v))
            .map(|s| s.1)
    };
    let weights = by("Weights in force", "aviary_weight_bps");
    assert_eq!(
        value(weights, "version", "canary"),
        Some(2000.0),
        "{weights:?}"
    );
    assert_eq!(
        value(weights, "version", "stable"),
        Some(8000.0),
        "{weights:?}"
    );
    let errors = by("Error rate by version", "aviary_responses_total");
    for v in ["stable", "canary"] {
        let e = value(errors, "version", v).expect("error ratio");
        assert!(e.is_finite() && (0.0..0.2).contains(&e), "{v}: {e}");
    }
    let p95 = by("p95 latency by version", "histogram_quantile");
    assert!(value(p95, "version", "canary").is_some_and(|v| v.is_finite() && v > 0.0));
    let disagree = by("Shadow disagreement share", "disagree");
    let d = value(disagree, "version", "v2").expect("v2 disagreement");
    assert!((0.1..0.3).contains(&d), "disagreement share {d}");
    let digests = by("Config digest per Envoy", "aviary_config_digest");
    let want = receipt.digest48().expect("digest") as f64;
    assert_eq!(digests.len(), 1, "{digests:?}");
    assert_eq!(
        digests[0].1, want,
        "the digest in force is the good config's"
    );
    let rejected = by("Config updates (ECDS)", "update_rejected");
    assert!(rejected.iter().any(|(_, v)| *v > 0.0), "{rejected:?}");

    // The alert rules' recording rules hold on the same data: the scrape job is what they
    // expect and no active-config or scrape alert applies to a healthy proxy.
    let up = prom.query(&format!("up{{job=\"{JOB}\"}}")).expect("up");
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].1, 1.0);
    let no_config = prom
        .query(&format!(
            "count by (job, instance) (up{{job=\"{JOB}\"}} == 1) unless on (job, instance) count by (job, instance) (aviary_config_digest != 0)"
        ))
        .expect("query");
    assert!(no_config.is_empty(), "{no_config:?}");

    // The alert rules, loaded into the same Prometheus, on the same data: the canary fails
    // 5% against stable's 2% (pending: `for: 5m`), the shadow disagrees on 20% of ~250
    // comparisons (pending: `for: 10m`), the rejected write fires at once; a healthy,
    // scraped proxy with a config raises neither AviaryNoActiveConfig nor AviaryMetricsMissing.
    let alerts = |prom: &Prometheus| -> Vec<Alert> {
        let body: Value = ureq::get(&format!("{}/api/v1/alerts", prom.url))
            .timeout(Duration::from_secs(5))
            .call()
            .ok()
            .and_then(|r| r.into_json().ok())
            .unwrap_or(Value::Null);
        body["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                let labels: BTreeMap<String, String> = a["labels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    labels.get("alertname").cloned().unwrap_or_default(),
                    a["state"].as_str().unwrap_or("").to_string(),
                    labels,
                )
            })
            .collect()
    };
    let want = [
        ("AviaryCanaryErrorsAboveBaseline", "pending", Some("canary")),
        ("AviaryShadowDisagreementHigh", "pending", Some("v2")),
        ("AviaryConfigRejected", "firing", None),
    ];
    let seen = poll(Duration::from_secs(15), Duration::from_millis(250), || {
        let now = alerts(&prom);
        want.iter()
            .all(|(name, state, version)| {
                now.iter().any(|(n, s, l)| {
                    n == name
                        && s == state
                        && version.is_none_or(|v| l.get("version").map(String::as_str) == Some(v))
                })
            })
            .then_some(now)
    });
    let now = seen.unwrap_or_else(|| panic!("alerts: {:?}", alerts(&prom)));
    println!("alerts on the real data:");
    for (name, state, labels) in &now {
        println!("- {name} {state} {labels:?}");
    }
    for quiet in ["AviaryNoActiveConfig", "AviaryMetricsMissing"] {
        assert!(!now.iter().any(|(n, _, _)| n == quiet), "{quiet}: {now:?}");
    }
    assert!(
        !now.iter()
            .any(|(n, _, l)| n == "AviaryCanaryErrorsAboveBaseline"
                && l.get("version").map(String::as_str) == Some("stable")),
        "the baseline is no canary: {now:?}"
    );
    drop(prom);
}
