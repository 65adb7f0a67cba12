//! Every shadow copy sent ends in exactly one outcome, in the real Envoy, across ECDS config
//! swaps (each gives the VM a new root context and ends the old one with its calls in flight)
//! and across a VM crash (the copies in flight die with the VM; a live VM counts them from the
//! ledger as `vm_lost`). A slow shadow keeps many copies in flight at every moment.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aviary_sim::{run_load, EnvoyBuilder, EnvoyProcess, Latency, LoadConfig, ModelServer};
use common::*;

/// Only one of these loads at a time: they share two cores with the shadow's latency.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const SHADOW_MS: f64 = 150.0;

/// A shadow config; `variant` changes only the timeout, so each swap is a new config.
fn plugin(variant: u32) -> String {
    format!(
        r#"{{"service":"recsys","versions":[{{"name":"stable","weight":10000}},{{"name":"canary","weight":0}}],"shadow":{{"targets":[{{"version":"v2","cluster":"shadow_v2"}}],"share":10000,"timeoutMs":{},"maxInFlight":100000,"compare":{{"labelPointer":"/prediction/label"}}}}}}"#,
        1000 + variant
    )
}

/// Copies sent, compared, and uncompared by reason.
struct Accounting {
    sent: u64,
    compared: u64,
    uncompared: BTreeMap<String, u64>,
}

impl Accounting {
    fn read(envoy: &EnvoyProcess) -> Accounting {
        let m = prom(&envoy.stats_prometheus().unwrap());
        let mut uncompared = BTreeMap::new();
        for (k, v) in &m {
            if let Some(rest) = k.strip_prefix("aviary_shadow_uncompared_total{") {
                let reason = rest
                    .split("reason=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("?");
                if *v > 0.0 {
                    *uncompared.entry(reason.to_string()).or_default() += *v as u64;
                }
            }
        }
        Accounting {
            sent: sum(&m, "aviary_shadow_requests_total", &[]) as u64,
            compared: sum(&m, "aviary_shadow_comparisons_total", &[]) as u64,
            uncompared,
        }
    }

    fn accounted(&self) -> u64 {
        self.compared + self.uncompared.values().sum::<u64>()
    }

    /// Polls until every copy sent has its outcome (and stays so), or `limit` passes.
    fn settled(envoy: &EnvoyProcess, limit: Duration) -> Accounting {
        let end = Instant::now() + limit;
        loop {
            let a = Accounting::read(envoy);
            if a.sent > 0 && a.sent == a.accounted() || Instant::now() > end {
                // Once more after a flush interval or two: nothing moves any more.
                std::thread::sleep(Duration::from_millis(300));
                return Accounting::read(envoy);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl std::fmt::Display for Accounting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {}, compared {}, uncompared {:?} (accounted {}, missing {})",
            self.sent,
            self.compared,
            self.uncompared,
            self.accounted(),
            self.sent as i64 - self.accounted() as i64
        )
    }
}

fn slow_shadow() -> ModelServer {
    model("v2", |c| c.latency = Latency::fixed_ms(SHADOW_MS))
}

fn load(
    url: &str,
    duration: Duration,
    rate: f64,
) -> std::thread::JoinHandle<aviary_sim::LoadSummary> {
    let url = url.to_string();
    std::thread::spawn(move || {
        let mut cfg = LoadConfig::duration(&url, duration);
        cfg.connections = 8;
        cfg.rate = Some(rate);
        cfg.input_header = Some("x-input-id".into());
        run_load(&cfg).unwrap().summary
    })
}

#[test]
fn every_copy_is_accounted_once_across_config_swaps() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (stable, canary, shadow) = (
        model("stable", |_| {}),
        model("canary", |_| {}),
        slow_shadow(),
    );
    let wasm = wasm();
    let w = wasm.to_string_lossy().to_string();
    let envoy = EnvoyBuilder::new(with_shadow_cluster(template(
        "aviary-ecds.yaml",
        &plugin(0),
    )))
    .var("STABLE_PORT", stable.port())
    .var("CANARY_PORT", canary.port())
    .var("SHADOW_PORT", shadow.port())
    .path_var("WASM", &wasm)
    .file("ecds.yaml", ecds_resource(&plugin(0), &w))
    .concurrency(2)
    .start()
    .unwrap();
    let url = format!(
        "http://127.0.0.1:{}/predict",
        envoy.listener_port("ingress").unwrap()
    );
    let success = "extension_config_discovery.http_filter.aviary.update_success";
    let before = stat(&envoy, success);
    let running = load(&url, Duration::from_secs(4), 600.0);
    std::thread::sleep(Duration::from_millis(300));
    let swaps = 19;
    for i in 1..=swaps {
        envoy
            .replace_file("ecds.yaml", &ecds_resource(&plugin(i), &w))
            .unwrap();
        std::thread::sleep(Duration::from_millis(180));
    }
    let s = running.join().unwrap();
    assert_eq!(s.responses, s.status(200), "no user request failed: {s}");
    let applied = stat(&envoy, success) - before;
    let a = Accounting::settled(&envoy, Duration::from_secs(15));
    eprintln!(
        "{applied} ECDS swaps under {} requests with a {SHADOW_MS} ms shadow: {a}; the shadow saw {}",
        s.responses,
        shadow.stats().requests
    );
    assert!(applied >= 15, "{applied} swaps applied");
    assert!(a.sent >= s.responses * 9 / 10, "{a}");
    assert_eq!(
        a.sent,
        a.accounted(),
        "every copy sent has exactly one outcome: {a}"
    );
    assert_eq!(a.uncompared.get("vm_lost"), None, "no VM died: {a}");
}

#[test]
fn every_copy_is_accounted_once_across_a_vm_crash() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (stable, canary, shadow) = (
        model("stable", |_| {}),
        model("canary", |_| {}),
        slow_shadow(),
    );
    let envoy = EnvoyBuilder::new(template("aviary-shadow.yaml", &plugin(0)))
        .var("STABLE_PORT", stable.port())
        .var("CANARY_PORT", canary.port())
        .var("SHADOW_PORT", shadow.port())
        .path_var("WASM", crash_probe_wasm())
        .concurrency(2)
        .start()
        .unwrap();
    let url = format!(
        "http://127.0.0.1:{}/predict",
        envoy.listener_port("ingress").unwrap()
    );
    let running = load(&url, Duration::from_secs(4), 400.0);
    std::thread::sleep(Duration::from_millis(1500));
    let probe = aviary_sim::HttpRequest::get("/predict").header("x-aviary-crash-probe", "1");
    let r = aviary_sim::http::request(&url, probe, Duration::from_secs(5)).unwrap();
    assert_eq!(r.status, 503, "the probe kills a VM");
    let s = running.join().unwrap();
    let reloads = stat(&envoy, "wasm.aviary.vm_reload_success");
    let a = Accounting::settled(&envoy, Duration::from_secs(15));
    eprintln!(
        "VM crash under {} requests ({} answered 200) with a {SHADOW_MS} ms shadow, {reloads} reload(s): {a}; the shadow saw {}",
        s.responses,
        s.status(200),
        shadow.stats().requests
    );
    assert!(reloads >= 1);
    assert!(
        a.uncompared.get("vm_lost").is_some_and(|n| *n > 0),
        "copies were in flight: {a}"
    );
    assert_eq!(
        a.sent,
        a.accounted(),
        "every copy sent has exactly one outcome: {a}"
    );
}
