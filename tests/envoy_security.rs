//! Attacks on version choice, tried as a hostile client would, against the real Envoy 1.40 with
//! the shipped configs. The canary's weight is 0 throughout, so any request the canary's model
//! server counts is a spoof that worked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aviary_sim::{EnvoyBuilder, HttpRequest};
use common::*;

const SCOPED: &str = r#"{"service":"recsys","match":[{"header":":authority","oneOf":["recsys","recsys:8080"]}],"versions":[{"name":"stable","weight":10000},{"name":"canary","weight":0}],"sticky":{"keys":[{"header":"x-user-id"}]},"override":{"header":"x-aviary-force","trustedCidrs":["10.0.0.0/8"]}}"#;

/// Every way a client can ask for the canary by header, with hosts in and out of scope.
fn spoofs() -> Vec<Vec<(&'static str, &'static str)>> {
    let mut out = Vec::new();
    for host in ["recsys", "other.svc", "RECSYS", "Recsys:8080", "recsys.default"] {
        out.push(vec![("host", host), ("x-aviary-version", "canary")]);
        out.push(vec![("host", host), ("X-Aviary-Version", "canary")]);
        out.push(vec![("host", host), ("x-aviary-force", "canary")]);
        out.push(vec![
            ("host", host),
            ("x-aviary-force", "canary"),
            ("x-forwarded-for", "10.1.2.3"),
        ]);
        out.push(vec![
            ("host", host),
            ("x-aviary-version", "canary"),
            ("x-aviary-mirror-v2", "canary"),
            ("x-aviary-shadow", "v2"),
        ]);
    }
    out
}

fn send(url: &str, headers: &[(&str, &str)]) -> aviary_sim::HttpResponse {
    let req = headers
        .iter()
        .fold(HttpRequest::get("/predict"), |r, (k, v)| r.header(*k, *v));
    aviary_sim::http::request(url, req, Duration::from_secs(5)).expect("request")
}

/// Sends every spoof and returns how many chose the canary (by the upstream's own answer).
fn spoofs_that_chose_canary(rig: &Rig) -> u64 {
    let mut chosen = 0;
    for headers in spoofs() {
        let r = send(&rig.url, &headers);
        assert_eq!(r.status, 200, "{headers:?}: {}", r.text());
        if r.header("x-model-version") == Some("canary") {
            chosen += 1;
        }
    }
    chosen
}

#[test]
fn no_spoofed_header_chooses_a_version_in_any_shipped_config() {
    for file in [
        "aviary-header-match.yaml",
        "aviary-cluster-header.yaml",
        "aviary-ecds.yaml",
    ] {
        let rig = start(file, SCOPED);
        let chose = spoofs_that_chose_canary(&rig);
        assert_eq!(chose, 0, "{file}: {chose} spoofs reached the canary");
        assert_eq!(rig.canary.stats().requests, 0, "{file}: canary saw traffic");
        assert!(rig.stable.stats().requests >= spoofs().len() as u64);
    }
}

#[test]
fn no_spoofed_mirror_header_chooses_a_mirror_target() {
    // The routes keep their mirror policy (cluster_header) while the plugin has no shadow, as
    // right after a shadow phase: only the plugin may name the cluster a copy goes to.
    let (stable, canary, shadow) = (
        model("stable", |_| {}),
        model("canary", |_| {}),
        model("v2", |_| {}),
    );
    let envoy = EnvoyBuilder::new(template("aviary-mirror.yaml", SCOPED))
        .var("STABLE_PORT", stable.port())
        .var("CANARY_PORT", canary.port())
        .var("SHADOW_PORT", shadow.port())
        .path_var("WASM", wasm())
        .start()
        .expect("envoy starts");
    let rig = Rig {
        url: format!(
            "http://127.0.0.1:{}/predict",
            envoy.listener_port("ingress").unwrap()
        ),
        envoy,
        stable,
        canary,
    };
    let chose = spoofs_that_chose_canary(&rig);
    assert_eq!(chose, 0, "{chose} spoofs reached the canary");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rig.canary.stats().requests, 0, "a copy was mirrored to the canary");
    assert_eq!(shadow.stats().requests, 0, "a copy was mirrored to the shadow");
}

#[test]
fn the_override_trusts_the_peer_not_x_forwarded_for() {
    // Trusted: the test client's own address. The override works, so the test can see a choice.
    let trusted = SCOPED.replace("10.0.0.0/8", "127.0.0.0/8");
    let rig = start("aviary-header-match.yaml", &trusted);
    let r = send(&rig.url, &[("host", "recsys"), ("x-aviary-force", "canary")]);
    assert_eq!(r.header("x-model-version"), Some("canary"));
    drop(rig);

    // Untrusted peer claiming a trusted address in X-Forwarded-For: ignored and counted.
    let rig = start("aviary-header-match.yaml", SCOPED);
    for xff in ["10.1.2.3", "10.1.2.3, 10.9.9.9", "127.0.0.1, 10.1.2.3"] {
        let r = send(
            &rig.url,
            &[
                ("host", "recsys"),
                ("x-aviary-force", "canary"),
                ("x-forwarded-for", xff),
            ],
        );
        assert_eq!(r.header("x-model-version"), Some("stable"), "XFF {xff}");
    }
    let s = flushed_stats(&rig.envoy);
    assert_eq!(sum(&s, "aviary_override_rejected_total", &[]) as u64, 3);
    assert_eq!(rig.canary.stats().requests, 0);
}

fn crash_probe_wasm() -> PathBuf {
    let p = root().join("target/crash-probe/wasm32-wasip1/release/aviary.wasm");
    assert!(
        p.exists(),
        "{} is missing: `make test` builds it (feature crash-probe)",
        p.display()
    );
    p
}

/// The shipped header-match config on the crash-probe build, with the attack running before,
/// during and after the VM dies.
struct CrashRun {
    failed: u64,
    spoofed_to_canary: u64,
    /// From the crash to the first request that succeeded again.
    to_recovery: Duration,
    /// From the crash to the first response stamped by the plugin again.
    to_plugin_back: Option<Duration>,
    reloads: u64,
}

fn crash_under_attack(template: String) -> CrashRun {
    let stable = model("stable", |_| {});
    let canary = model("canary", |_| {});
    let envoy = EnvoyBuilder::new(template)
        .var("STABLE_PORT", stable.port())
        .var("CANARY_PORT", canary.port())
        .path_var("WASM", crash_probe_wasm())
        .concurrency(1)
        .start()
        .expect("envoy starts");
    let url = format!(
        "http://127.0.0.1:{}/predict",
        envoy.listener_port("ingress").unwrap()
    );
    let attack = [("host", "recsys"), ("x-aviary-version", "canary")];
    assert_eq!(send(&url, &attack).header("x-model-version"), Some("stable"));

    let crashed = Instant::now();
    let r = send(&url, &[("host", "recsys"), ("x-aviary-crash-probe", "1")]);
    assert_eq!(r.status, 503, "the probe kills the VM");
    let mut run = CrashRun {
        failed: 0,
        spoofed_to_canary: 0,
        to_recovery: Duration::ZERO,
        to_plugin_back: None,
        reloads: 0,
    };
    let mut recovered = false;
    while crashed.elapsed() < Duration::from_secs(3) {
        let r = send(&url, &attack);
        if r.status != 200 {
            run.failed += 1;
            continue;
        }
        if !recovered {
            recovered = true;
            run.to_recovery = crashed.elapsed();
        }
        if r.header("x-model-version") == Some("canary") {
            run.spoofed_to_canary += 1;
        }
        if run.to_plugin_back.is_none() && r.header("x-aviary-served-by").is_some() {
            run.to_plugin_back = Some(crashed.elapsed());
        }
    }
    run.reloads = envoy.counter("wasm.aviary.vm_reload_success").unwrap_or(0);
    run
}

#[test]
fn a_dead_plugin_fails_safe_and_recovers() {
    let shipped = template("aviary-header-match.yaml", SCOPED);
    let run = crash_under_attack(shipped.clone());
    eprintln!(
        "VM crash under FAIL_RELOAD: {} requests failed, first success after {:?}, plugin back after {:?}, {} reloads",
        run.failed, run.to_recovery, run.to_plugin_back, run.reloads
    );
    assert_eq!(run.spoofed_to_canary, 0, "a spoof chose the canary while the VM was down");
    assert!(run.to_recovery < Duration::from_secs(1), "{:?}", run.to_recovery);
    let back = run.to_plugin_back.expect("the plugin serves again");
    assert!(back < Duration::from_secs(1), "{back:?}");
    assert!(run.reloads >= 1);

    // The same attack on the config as shipped before: no native strip, FAIL_OPEN. The spoof
    // works there, which is what the shipped config prevents.
    let start = shipped
        .find("          # Security: a client may never")
        .unwrap();
    let end = shipped.find("          use_remote_address: true").unwrap();
    let mut old = shipped.clone();
    old.replace_range(start..end, "");
    let old = old
        .replace("failure_policy: FAIL_RELOAD", "failure_policy: FAIL_OPEN")
        .replace(
            "reload_config: {backoff: {base_interval: 0.05s, max_interval: 1s}}",
            "",
        );
    let run = crash_under_attack(old);
    assert_eq!(run.failed, 0);
    assert!(
        run.spoofed_to_canary > 0,
        "without the native strip a dead plugin lets a client choose its version"
    );
}
