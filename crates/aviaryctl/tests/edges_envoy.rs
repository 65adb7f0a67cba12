//! The edges against a real Envoy running the release plugin over ECDS: the admin source
//! matches what a load generator saw, an `EcdsFileSink` write changes the weight gauge, the
//! digest gauge and the actual routing, and a kill-switch write drains the canary fast.

mod edges_support;

use std::time::{Duration, Instant};

use aviary_sim::{run_load, LoadConfig};
use aviary_sim::{HttpConnection, HttpRequest};
use aviaryctl::edges::sink::ConfigSink;
use aviaryctl::edges::source::{ApplyProbe, EnvoyAdminSource, MetricsSource};
use edges_support::{plugin_config, poll, user_on, Rig};

fn load(url: &str, requests: u64, seed: u64) -> aviary_sim::LoadSummary {
    let cfg = LoadConfig {
        connections: 4,
        users: 2000,
        seed,
        ..LoadConfig::requests(url, requests)
    };
    let report = run_load(&cfg).expect("load runs");
    assert_eq!(
        report.summary.errors, 0,
        "{:?}",
        report.summary.errors_by_kind
    );
    report.summary
}

/// Waits until Envoy reports `digest48` for the service on every endpoint; returns the time.
fn await_digest(src: &EnvoyAdminSource, digest48: u64, timeout: Duration) -> Duration {
    let started = Instant::now();
    poll(timeout, Duration::from_millis(1), || {
        let applied = src.applied("recsys").ok()?;
        applied
            .iter()
            .all(|a| a.digest48 == Some(digest48))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("digest {digest48:x} not applied within {timeout:?}"));
    started.elapsed()
}

/// Longer than the plugin's default flush interval (50 ms), with room for a loaded machine.
const FLUSH_WAIT: Duration = Duration::from_millis(250);

#[test]
fn admin_source_matches_traffic_and_ecds_writes_reroute() {
    let rig = Rig::start(1, &plugin_config(1000));
    let src = EnvoyAdminSource::new(rig.admin_urls());
    let url = rig.urls[0].clone();

    let first = load(&url, 600, 1);
    let canary = first.served_by("canary");
    let stable = first.served_by("stable");
    assert_eq!(canary + stable, 600);
    assert!(canary > 20 && canary < 120, "about 10 % canary: {canary}");

    // The plugin sends its batched counts every 50 ms (`metrics.flushIntervalMs`).
    let snap = poll(Duration::from_secs(5), Duration::from_millis(100), || {
        let s = src.snapshot("recsys").ok()?;
        let total: u64 = s.versions.values().map(|v| v.latency_count).sum();
        (total == 600).then_some(s)
    })
    .expect("counts flushed");
    let c = &snap.versions["canary"];
    let s = &snap.versions["stable"];
    assert_eq!(c.requests, canary);
    assert_eq!(s.requests, stable);
    assert_eq!(c.responses.get("2xx"), Some(&canary));
    assert_eq!(s.responses.get("2xx"), Some(&stable));
    assert_eq!(c.responses.get("5xx"), Some(&0));
    assert_eq!(c.latency_count, canary);
    assert_eq!(c.latency_buckets.last().map(|b| b.1), Some(canary));
    assert!(c.latency_buckets.last().is_some_and(|b| b.0.is_infinite()));
    assert!(c
        .latency_buckets
        .windows(2)
        .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    assert!(c.latency_sum > 0.0);
    assert_eq!(c.weight_bps, Some(1000));
    assert_eq!(s.weight_bps, Some(9000));

    // A write: weights move to 50/50.
    let half = plugin_config(5000);
    let receipt = rig.sink.write(&half).expect("write");
    let d48 = receipt.digest48().expect("ECDS knows the digest");
    let apply = await_digest(&src, d48, Duration::from_secs(3));
    println!(
        "ecds write: in place after {} us, durable after {} us; applied (digest gauge) {:.1} ms later",
        receipt.visible_us,
        receipt.elapsed_us,
        apply.as_secs_f64() * 1e3
    );
    assert!(receipt.visible_us < 100_000, "{} us", receipt.visible_us);
    assert!(receipt.visible_us <= receipt.elapsed_us);
    let applied = src.applied("recsys").expect("applied");
    assert_eq!(applied[0].weights["canary"], 5000);
    assert_eq!(applied[0].weights["stable"], 5000);
    let snap = src.snapshot("recsys").expect("snapshot");
    assert_eq!(snap.versions["canary"].weight_bps, Some(5000));

    let second = load(&url, 1000, 2);
    let share = second.served_by("canary") as f64 / 1000.0;
    assert!(
        (0.4..0.6).contains(&share),
        "about half canary after the write: {share}"
    );

    // The counters keep accumulating across config updates (same VM, same stats).
    std::thread::sleep(FLUSH_WAIT);
    let after = src.snapshot("recsys").expect("snapshot");
    assert_eq!(
        after.versions["canary"].requests,
        canary + second.served_by("canary")
    );
}

#[test]
fn kill_switch_write_drains_the_canary_within_milliseconds() {
    let rig = Rig::start(1, &plugin_config(5000));
    let src = EnvoyAdminSource::new(rig.admin_urls());
    let url = rig.urls[0].clone();
    let user = user_on(&url, "canary");
    let u = aviary_sim::Url::parse(&url).expect("url");
    let mut conn =
        HttpConnection::connect(u.addr, &u.authority, Duration::from_secs(2)).expect("connect");

    let mut samples = Vec::new();
    for round in 0..5 {
        // Back to 50/50, confirm the user is on the canary again.
        let r = rig.sink.write(&plugin_config(5000)).expect("write");
        await_digest(&src, r.digest48().expect("digest"), Duration::from_secs(3));

        let mut kill = plugin_config(0);
        kill.kill_switch = Some("stable".into());
        let started = Instant::now();
        let receipt = rig.sink.write(&kill).expect("write kill switch");
        let written = started.elapsed();
        let drained = poll(Duration::from_secs(2), Duration::ZERO, || {
            let resp = conn
                .send(&HttpRequest::get(&u.path).header("x-user-id", user.as_str()))
                .ok()?;
            (resp.header("x-aviary-served-by") == Some("stable")).then(|| started.elapsed())
        })
        .expect("canary user moves to stable");
        let confirmed = await_digest(
            &src,
            receipt.digest48().expect("digest"),
            Duration::from_secs(2),
        );
        println!(
            "round {round}: write {:.2} ms, first baseline response {:.2} ms, digest gauge {:.2} ms",
            written.as_secs_f64() * 1e3,
            drained.as_secs_f64() * 1e3,
            (written + confirmed).as_secs_f64() * 1e3
        );
        samples.push(drained);
    }
    let worst = samples.iter().max().copied().unwrap_or_default();
    assert!(worst < Duration::from_millis(250), "worst {worst:?}");
}

#[test]
fn several_envoys_are_summed_and_confirmed_together() {
    let rig = Rig::start(2, &plugin_config(2000));
    let src = EnvoyAdminSource::new(rig.admin_urls());
    let a = load(&rig.urls[0], 300, 3);
    let b = load(&rig.urls[1], 200, 4);
    std::thread::sleep(FLUSH_WAIT);
    let snap = src.snapshot("recsys").expect("snapshot");
    for v in ["stable", "canary"] {
        assert_eq!(
            snap.versions[v].requests,
            a.served_by(v) + b.served_by(v),
            "{v} summed over both Envoys"
        );
    }
    assert_eq!(snap.versions["canary"].weight_bps, Some(2000));

    let receipt = rig.sink.write(&plugin_config(3000)).expect("write");
    let took = await_digest(
        &src,
        receipt.digest48().expect("digest"),
        Duration::from_secs(3),
    );
    println!(
        "two Envoys applied the shared ECDS file in {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    let applied = src.applied("recsys").expect("applied");
    assert_eq!(applied.len(), 2);
    assert!(applied.iter().all(|a| a.weights["canary"] == 3000));

    // An invalid config is refused before the file is touched, so Envoy keeps serving.
    let mut bad = plugin_config(3000);
    bad.set_weights(&[3000, 3000]);
    rig.sink.write(&bad).expect_err("refused");
    std::thread::sleep(Duration::from_millis(50));
    let still = src.applied("recsys").expect("applied");
    assert!(still.iter().all(|a| a.digest48 == receipt.digest48()));
    let rejected = rig.envoys[0]
        .stat("extension_config_discovery.http_filter.aviary.update_rejected")
        .expect("stat");
    assert_eq!(rejected.unwrap_or(0), 0);
}
