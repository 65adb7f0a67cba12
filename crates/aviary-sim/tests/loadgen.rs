//! The load generator's counts against the model servers' own counters.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aviary_sim::loadgen::{run, LoadConfig, NO_HEADER};
use aviary_sim::modelserver::{Fault, Latency, ModelServer, ModelServerConfig};

#[test]
fn counts_match_the_server_exactly() {
    let server = ModelServer::spawn(ModelServerConfig {
        error_rate: 0.1,
        ..ModelServerConfig::new("v1")
    })
    .unwrap();
    let config = LoadConfig {
        connections: 8,
        record_header: "x-model-version".into(),
        input_header: Some("x-input-id".into()),
        inputs: 50,
        body: Some(r#"{"user":"{{USER}}","input":"{{INPUT}}"}"#.into()),
        ..LoadConfig::requests(format!("{}/predict", server.url()), 3000)
    };
    let s = run(&config).unwrap().summary;
    let stats = server.stats();
    assert_eq!(s.total, 3000);
    assert_eq!(s.responses, 3000);
    assert_eq!(s.errors, 0);
    assert_eq!(stats.requests, 3000);
    assert_eq!(s.status(200), stats.status(200));
    assert_eq!(s.status(500), 300);
    assert_eq!(stats.status(500), 300);
    assert_eq!(s.served_by("v1"), 3000);
    assert_eq!(s.by_served_by["v1"].by_status.get(&500), Some(&300));
    assert_eq!(s.users_split, 0);
    assert!(s.users_seen > 900 && s.users_seen <= 1000);
    assert!(s.latency_ms.p50 <= s.latency_ms.p95 && s.latency_ms.p95 <= s.latency_ms.p99);
    // Eight connections, each kept alive for the whole run.
    assert!(server.open_connections() <= 8);
}

#[test]
fn records_are_reproducible_per_ticket() {
    let server = ModelServer::spawn(ModelServerConfig::new("v1")).unwrap();
    let config = LoadConfig {
        connections: 3,
        users: 20,
        keep_records: true,
        input_header: Some("x-input-id".into()),
        record_header: "x-missing".into(),
        ..LoadConfig::requests(server.url(), 200)
    };
    let a = run(&config).unwrap();
    let b = run(&config).unwrap();
    assert_eq!(a.records.len(), 200);
    let key = |r: &aviary_sim::loadgen::RequestRecord| (r.seq, r.user.clone(), r.input.clone());
    assert_eq!(
        a.records.iter().map(key).collect::<Vec<_>>(),
        b.records.iter().map(key).collect::<Vec<_>>()
    );
    let users: HashSet<_> = a.records.iter().map(|r| r.user.as_str()).collect();
    assert_eq!(users.len(), 20);
    assert_eq!(a.summary.served_by(NO_HEADER), 200);
    for (i, r) in a.records.iter().enumerate() {
        assert_eq!(r.seq, i as u64);
        assert_eq!(r.user, config.user_for(r.seq));
        assert_eq!(r.input.as_deref(), Some(config.input_for(r.seq).as_str()));
    }
}

#[test]
fn groups_by_header_and_detects_split_users() {
    // Two servers behind one client is not possible without a proxy, so alternate between two
    // runs and merge by hand: same user pool, different served-by values.
    let v1 = ModelServer::spawn(ModelServerConfig::new("v1")).unwrap();
    let v2 = ModelServer::spawn(ModelServerConfig {
        latency: Latency::fixed_ms(20.0),
        ..ModelServerConfig::new("v2")
    })
    .unwrap();
    let base = LoadConfig {
        users: 5,
        record_header: "x-model-version".into(),
        keep_records: true,
        ..LoadConfig::requests(v1.url(), 100)
    };
    let r1 = run(&base).unwrap();
    let r2 = run(&LoadConfig {
        url: v2.url(),
        requests: Some(20),
        ..base.clone()
    })
    .unwrap();
    assert_eq!(r1.summary.users_split, 0);
    let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
    for r in r1.records.iter().chain(&r2.records) {
        seen.entry(r.user.clone())
            .or_default()
            .insert(r.served_by.clone().unwrap());
    }
    assert!(seen.values().any(|s| s.len() == 2));
    assert!(r2.summary.by_served_by["v2"].latency_ms.p50 >= 20.0);
    assert!(r1.summary.by_served_by["v1"].latency_ms.p50 < 20.0);
}

#[test]
fn rate_and_duration_bound_the_run() {
    let server = ModelServer::spawn(ModelServerConfig::new("v1")).unwrap();
    let config = LoadConfig {
        rate: Some(200.0),
        connections: 2,
        ..LoadConfig::duration(server.url(), Duration::from_millis(500))
    };
    let s = run(&config).unwrap().summary;
    // Tickets 0..100 are due within the 500 ms window at 200/s.
    assert_eq!(s.total, 100);
    assert!(s.elapsed_s < 1.0, "{}", s.elapsed_s);
    assert_eq!(server.stats().requests, 100);

    let closed = LoadConfig {
        requests: Some(1_000_000),
        ..LoadConfig::duration(server.url(), Duration::from_millis(300))
    };
    let s = run(&closed).unwrap().summary;
    assert!(s.total < 1_000_000 && s.elapsed_s < 1.5, "{s}");
    assert_eq!(s.total, s.responses);
}

#[test]
fn errors_are_classified_and_counted() {
    let reset = ModelServer::spawn(ModelServerConfig {
        fault: Fault::Reset,
        ..ModelServerConfig::new("r")
    })
    .unwrap();
    let s = run(&LoadConfig {
        connections: 2,
        ..LoadConfig::requests(reset.url(), 50)
    })
    .unwrap()
    .summary;
    assert_eq!(s.total, 50);
    assert_eq!(s.errors, 50);
    assert_eq!(s.errors_by_kind.get("reset"), Some(&50));
    assert_eq!(reset.stats().resets, 50);

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = run(&LoadConfig::requests(
        format!("http://127.0.0.1:{port}/"),
        10,
    ))
    .unwrap()
    .summary;
    assert_eq!(s.errors_by_kind.get("connect"), Some(&10));

    let slow = ModelServer::spawn(ModelServerConfig {
        latency: Latency::fixed_ms(1000.0),
        ..ModelServerConfig::new("s")
    })
    .unwrap();
    let s = run(&LoadConfig {
        connections: 2,
        timeout: Duration::from_millis(100),
        ..LoadConfig::requests(slow.url(), 4)
    })
    .unwrap()
    .summary;
    assert_eq!(s.errors_by_kind.get("timeout"), Some(&4));
}

#[test]
fn refuses_non_loopback_targets() {
    let err = run(&LoadConfig::requests("http://192.0.2.1:80/", 1)).unwrap_err();
    assert!(err.to_string().contains("non-loopback"), "{err}");
}
