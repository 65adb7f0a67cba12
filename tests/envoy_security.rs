//! Attacks on version choice, tried as a hostile client would, against the real Envoy 1.40 with
//! the shipped configs, and with them minus Envoy's native header strip so that the plugin's own
//! layer is what is tested. The canary's weight is 0 throughout, so any request the canary's
//! model server counts is a spoof that worked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use aviary_sim::{EnvoyBuilder, HttpRequest};
use common::*;

const SCOPED: &str = r#"{"service":"recsys","match":[{"header":":authority","oneOf":["recsys","recsys:8080"]}],"versions":[{"name":"stable","weight":10000},{"name":"canary","weight":0}],"sticky":{"keys":[{"header":"x-user-id"}]},"override":{"header":"x-aviary-force","trustedCidrs":["10.0.0.0/8"]}}"#;

/// Every way a client can ask for the canary by header, with hosts in and out of scope.
fn spoofs() -> Vec<Vec<(&'static str, &'static str)>> {
    let mut out = Vec::new();
    for host in [
        "recsys",
        "other.svc",
        "RECSYS",
        "Recsys:8080",
        "recsys.default",
    ] {
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
    assert_eq!(
        rig.canary.stats().requests,
        0,
        "a copy was mirrored to the canary"
    );
    assert_eq!(
        shadow.stats().requests,
        0,
        "a copy was mirrored to the shadow"
    );
}

#[test]
fn the_override_trusts_the_peer_not_x_forwarded_for() {
    // Trusted: the test client's own address. The override works, so the test can see a choice.
    let trusted = SCOPED.replace("10.0.0.0/8", "127.0.0.0/8");
    let rig = start("aviary-header-match.yaml", &trusted);
    let r = send(
        &rig.url,
        &[("host", "recsys"), ("x-aviary-force", "canary")],
    );
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
    assert_eq!(
        send(&url, &attack).header("x-model-version"),
        Some("stable")
    );

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
    assert_eq!(
        run.spoofed_to_canary, 0,
        "a spoof chose the canary while the VM was down"
    );
    assert!(
        run.to_recovery < Duration::from_secs(1),
        "{:?}",
        run.to_recovery
    );
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

/// The plugin's own layer, with Envoy's native strip cut from the config: before any config is
/// in force (the first ECDS config is rejected), and then in scope and out of scope, no
/// routing, mark or mirror header a client sends reaches a route or a mirror policy.
#[test]
fn without_the_native_strip_the_plugin_removes_client_choices_in_every_state() {
    let (stable, canary) = (model("stable", |_| {}), model("canary", |_| {}));
    let wasm = wasm();
    let w = wasm.to_string_lossy().to_string();
    let rejected = SCOPED.replace(r#""weight":0"#, r#""weight":-1"#);
    let envoy = EnvoyBuilder::new(without_native_strip(&template("aviary-ecds.yaml", SCOPED)))
        .var("STABLE_PORT", stable.port())
        .var("CANARY_PORT", canary.port())
        .path_var("WASM", &wasm)
        .file("ecds.yaml", ecds_resource(&rejected, &w))
        .start()
        .expect("envoy starts");
    let url = format!(
        "http://127.0.0.1:{}/predict",
        envoy.listener_port("ingress").unwrap()
    );
    let rejected_stat = "extension_config_discovery.http_filter.aviary.update_rejected";
    assert!(wait_until(Duration::from_secs(5), || stat(
        &envoy,
        rejected_stat
    ) >= 1));
    let mut chose = 0;
    for headers in spoofs() {
        let r = send(&url, &headers);
        // Envoy does not install a filter whose config was rejected: 500, not the canary.
        assert_eq!(r.status, 500, "{headers:?}");
        chose += u64::from(r.header("x-model-version") == Some("canary"));
    }
    assert_eq!(
        chose, 0,
        "before any config: {chose} spoofs reached the canary"
    );

    envoy
        .replace_file("ecds.yaml", &ecds_resource(SCOPED, &w))
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        send(&url, &[("host", "recsys")]).header("x-aviary-served-by") == Some("stable")
    }));
    let rig = Rig {
        envoy,
        stable,
        canary,
        url,
    };
    let chose = spoofs_that_chose_canary(&rig);
    eprintln!(
        "spoofs that chose the canary without the native strip: {chose} of {}",
        spoofs().len()
    );
    assert_eq!(
        chose, 0,
        "in and out of scope: {chose} spoofs reached the canary"
    );
    assert_eq!(rig.canary.stats().requests, 0);

    // Mirror targets: the configured mirror header (share 0: the plugin mirrors nothing) is
    // removed in and out of scope, so the route's mirror policy never sends a client's copy.
    let mirrored = SCOPED.replace(
        r#""sticky""#,
        r#""shadow":{"via":"envoy","targets":[{"version":"v2","cluster":"shadow_v2"}],"share":0},"sticky""#,
    );
    let (stable, canary, shadow) = (
        model("stable", |_| {}),
        model("canary", |_| {}),
        model("v2", |_| {}),
    );
    let envoy = EnvoyBuilder::new(without_native_strip(&template(
        "aviary-mirror.yaml",
        &mirrored,
    )))
    .var("STABLE_PORT", stable.port())
    .var("CANARY_PORT", canary.port())
    .var("SHADOW_PORT", shadow.port())
    .path_var("WASM", &wasm)
    .start()
    .expect("envoy starts");
    let url = format!(
        "http://127.0.0.1:{}/predict",
        envoy.listener_port("ingress").unwrap()
    );
    for host in ["recsys", "RECSYS", "other.svc"] {
        for target in ["canary", "shadow_v2"] {
            let r = send(&url, &[("host", host), ("x-aviary-mirror-v2", target)]);
            assert_eq!(r.header("x-model-version"), Some("stable"));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        canary.stats().requests,
        0,
        "a client's copy reached the canary"
    );
    assert_eq!(
        shadow.stats().requests,
        0,
        "a client's copy reached the shadow"
    );
}

/// A rule that forces a version on a header any client can send (`x-canary: always`) applies
/// only to trusted peers when it is `trustedOnly`; the peer is the connection's, not a claim in
/// X-Forwarded-For.
#[test]
fn a_forcing_rule_applies_only_to_trusted_peers() {
    let debug = |trusted: &str, only: bool| {
        format!(
            r#"{{"service":"recsys","versions":[{{"name":"stable","weight":10000}},{{"name":"canary","weight":0}}],"trustedCidrs":["{trusted}"],"rules":[{{"name":"debug","match":[{{"header":"x-canary","exact":"always"}}],"version":"canary","trustedOnly":{only}}}]}}"#
        )
    };
    let ask = |rig: &Rig, xff: Option<&str>| {
        let mut h = vec![("host", "recsys"), ("x-canary", "always")];
        h.extend(xff.map(|x| ("x-forwarded-for", x)));
        send(&rig.url, &h)
            .header("x-model-version")
            .map(String::from)
    };
    // The test client is 127.0.0.1: untrusted here, even when it claims 10.x in XFF.
    let rig = start("aviary-header-match.yaml", &debug("10.0.0.0/8", true));
    for xff in [None, Some("10.1.2.3"), Some("127.0.0.1, 10.1.2.3")] {
        assert_eq!(
            ask(&rig, xff).as_deref(),
            Some("stable"),
            "untrusted, XFF {xff:?}"
        );
    }
    assert_eq!(rig.canary.stats().requests, 0);
    drop(rig);
    let rig = start("aviary-header-match.yaml", &debug("127.0.0.0/8", true));
    assert_eq!(ask(&rig, None).as_deref(), Some("canary"), "trusted peer");
    drop(rig);
    // The hole it closes: without trustedOnly, anyone chooses the canary with one header.
    let rig = start("aviary-header-match.yaml", &debug("10.0.0.0/8", false));
    assert_eq!(ask(&rig, None).as_deref(), Some("canary"));
}

/// `:authority` matches as HTTP defines it: the host case-insensitively, and with or without
/// the scheme's default port.
#[test]
fn the_scope_matches_hosts_as_http_defines_them() {
    let rig = start("aviary-header-match.yaml", SCOPED);
    for host in ["recsys", "RECSYS", "Recsys:8080", "recsys:80"] {
        let r = send(&rig.url, &[("host", host)]);
        assert_eq!(
            r.header("x-aviary-served-by"),
            Some("stable"),
            "{host} is in scope"
        );
    }
    for host in ["recsys:8081", "recsys.default", "other.svc"] {
        let r = send(&rig.url, &[("host", host)]);
        assert_eq!(
            r.header("x-aviary-served-by"),
            None,
            "{host} is out of scope"
        );
    }
    let s = flushed_stats(&rig.envoy);
    assert_eq!(sum(&s, "aviary_requests_total", &[]) as u64, 4);
}

/// A rejected config is tried in a fresh VM, which never had a config. Its log names the config
/// the serving VMs keep, and never claims that traffic passes unrouted.
#[test]
fn a_rejected_config_logs_the_config_that_keeps_serving() {
    let (stable, canary) = (model("stable", |_| {}), model("canary", |_| {}));
    let wasm = wasm();
    let w = wasm.to_string_lossy().to_string();
    let bad = SCOPED.replace(r#""weight":0"#, r#""weight":-1"#);
    let envoy = EnvoyBuilder::new(template("aviary-ecds.yaml", SCOPED))
        .var("STABLE_PORT", stable.port())
        .var("CANARY_PORT", canary.port())
        .path_var("WASM", &wasm)
        .file("ecds.yaml", ecds_resource(&bad, &w))
        .start()
        .expect("envoy starts");
    let url = format!(
        "http://127.0.0.1:{}/predict",
        envoy.listener_port("ingress").unwrap()
    );
    let rejected = "extension_config_discovery.http_filter.aviary.update_rejected";
    assert!(wait_until(Duration::from_secs(5), || stat(
        &envoy, rejected
    ) >= 1));
    let first = rejection_lines(&envoy);
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(
        first[0].contains("no Aviary config is in force in this Envoy yet"),
        "{}",
        first[0]
    );
    assert_eq!(
        send(&url, &[("host", "recsys")]).status,
        500,
        "as the log says"
    );

    envoy
        .replace_file("ecds.yaml", &ecds_resource(SCOPED, &w))
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        send(&url, &[("host", "recsys")]).header("x-aviary-served-by") == Some("stable")
    }));
    envoy
        .replace_file("ecds.yaml", &ecds_resource(&bad, &w))
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || stat(
        &envoy, rejected
    ) >= 2));
    let lines = rejection_lines(&envoy);
    let second = lines.last().unwrap();
    eprintln!("rejection logged: {second}");
    assert!(second.contains("at `versions[1].weight`"), "{second}");
    let kept = second
        .split_once("Envoy keeps serving the last accepted one: config ")
        .map(|(_, k)| k)
        .unwrap_or_else(|| panic!("names the config in force: {second}"));
    assert!(
        kept.ends_with(
            "active for service recsys: stable=10000bps canary=0bps, 0 rules, sticky=true"
        ),
        "{kept}"
    );
    // The digest named is the one the serving VMs report.
    let digest = u64::from_str_radix(&kept[..16], 16).unwrap();
    let gauge = sum(&flushed_stats(&envoy), "aviary_config_digest", &[]) as u64;
    assert_eq!(digest & aviary_contract::units::DIGEST48_MASK, gauge);
    let log = envoy_log(&envoy);
    assert!(!log.contains("unrouted"));
    let r = send(&url, &[("host", "recsys")]);
    assert_eq!(
        r.header("x-aviary-served-by"),
        Some("stable"),
        "and it does keep serving"
    );
}

fn rejection_lines(envoy: &aviary_sim::EnvoyProcess) -> Vec<String> {
    envoy_log(envoy)
        .lines()
        .filter(|l| l.contains("rejected configuration"))
        .map(String::from)
        .collect()
}
