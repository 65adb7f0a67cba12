//! The real-Envoy harness: start, route load through it, compare counts, validate, stop.

use std::time::Duration;

use aviary_sim::envoy::{find_envoy, free_port, validate, validate_yaml, EnvoyBuilder};
use aviary_sim::loadgen::{run, LoadConfig};
use aviary_sim::modelserver::{ModelServer, ModelServerConfig};

/// A listener splitting traffic 70/30 by weight between two model versions.
const SPLIT: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: {{ADMIN_PORT}}}}
static_resources:
  listeners:
  - name: ingress
    address: {socket_address: {address: 127.0.0.1, port_value: {{LISTEN_PORT}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route:
                  weighted_clusters:
                    clusters:
                    - {name: stable, weight: 70}
                    - {name: canary, weight: 30}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: stable
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: stable
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{STABLE_PORT}}}}}}]}]
  - name: canary
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: canary
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{CANARY_PORT}}}}}}]}]
"#;

fn envoy_available() {
    if let Err(e) = find_envoy() {
        panic!("these tests need the real Envoy: {e:#}");
    }
}

#[test]
fn counts_through_envoy_match_on_all_three_sides() {
    envoy_available();
    let stable = ModelServer::spawn(ModelServerConfig::new("v1")).unwrap();
    let canary = ModelServer::spawn(ModelServerConfig {
        error_rate: 0.2,
        ..ModelServerConfig::new("v2")
    })
    .unwrap();
    let envoy = EnvoyBuilder::new(SPLIT)
        .var("LISTEN_PORT", 0)
        .var("STABLE_PORT", stable.port())
        .var("CANARY_PORT", canary.port())
        .concurrency(2)
        .start()
        .unwrap();
    let port = envoy.listener_port("ingress").unwrap();
    let config = LoadConfig {
        connections: 6,
        record_header: "x-model-version".into(),
        input_header: Some("x-input-id".into()),
        ..LoadConfig::requests(format!("http://127.0.0.1:{port}/predict"), 2000)
    };
    let s = run(&config).unwrap().summary;
    assert_eq!(s.total, 2000);
    assert_eq!(s.errors, 0, "{s}");

    let (st, ca) = (stable.stats(), canary.stats());
    assert_eq!(s.served_by("v1"), st.requests);
    assert_eq!(s.served_by("v2"), ca.requests);
    assert_eq!(st.requests + ca.requests, 2000);
    // 30% +- 5 sd of a binomial(2000, 0.3).
    assert!(
        (ca.requests as f64 - 600.0).abs() < 5.0 * 420f64.sqrt(),
        "{}",
        ca.requests
    );
    assert_eq!(ca.status(500), ca.requests / 5);
    assert_eq!(s.status(500), ca.status(500));

    let total = envoy
        .wait_for_stat(
            "http.ingress.downstream_rq_completed",
            Duration::from_secs(2),
            |v| v >= 2000,
        )
        .unwrap();
    assert_eq!(total, 2000);
    assert_eq!(
        envoy.counter("http.ingress.downstream_rq_2xx").unwrap(),
        s.status(200)
    );
    assert_eq!(
        envoy.counter("http.ingress.downstream_rq_5xx").unwrap(),
        s.status(500)
    );
    assert_eq!(
        envoy.counter("cluster.stable.upstream_rq_2xx").unwrap(),
        st.status(200)
    );
    assert_eq!(
        envoy.counter("cluster.canary.upstream_rq_5xx").unwrap(),
        ca.status(500)
    );
    assert_eq!(
        envoy
            .counter("cluster.canary.upstream_rq_completed")
            .unwrap(),
        ca.requests
    );
    assert!(envoy.stat("no.such.stat").unwrap().is_none());
    assert!(envoy.counter("no.such.stat").is_err());

    let prom = envoy.stats_prometheus().unwrap();
    assert!(prom.contains("envoy_cluster_upstream_rq_completed{envoy_cluster_name=\"canary\"}"));
    assert!(envoy.admin_get("/clusters").unwrap().contains("canary::"));
    assert!(envoy.admin_get("/no-such-admin-page").is_err());
}

#[test]
fn two_envoys_run_side_by_side_and_stop_on_drop() {
    envoy_available();
    let server = ModelServer::spawn(ModelServerConfig::new("v1")).unwrap();
    let start = |listen: u16| {
        EnvoyBuilder::new(SPLIT)
            .var("LISTEN_PORT", listen)
            .var("STABLE_PORT", server.port())
            .var("CANARY_PORT", server.port())
            .start()
            .unwrap()
    };
    let (pa, pb) = (free_port().unwrap(), free_port().unwrap());
    let a = start(pa);
    let b = start(pb);
    assert_ne!(a.base_id(), b.base_id());
    assert_ne!(a.admin_port(), b.admin_port());
    assert_eq!(a.listener_port("ingress").unwrap(), pa);
    for port in [pa, pb] {
        let s = run(&LoadConfig::requests(
            format!("http://127.0.0.1:{port}/"),
            50,
        ))
        .unwrap();
        assert_eq!(s.summary.status(200), 50);
    }
    assert_eq!(server.stats().requests, 100);

    let pid = a.pid().unwrap();
    let dir = a.work_dir().to_path_buf();
    assert!(a.config_path().exists() && a.log_path().starts_with(&dir));
    drop(a);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.exists());
    let status = b.stop().unwrap().unwrap();
    // SIGTERM makes Envoy exit cleanly.
    assert!(status.success() || status.code().is_none(), "{status:?}");
}

#[test]
fn startup_failure_reports_the_log_tail() {
    envoy_available();
    let err = EnvoyBuilder::new(
        "admin: {address: {socket_address: {address: 127.0.0.1, port_value: {{ADMIN_PORT}}}}}\n\
         static_resources: {clusters: [{name: x, type: NOT_A_TYPE}]}\n",
    )
    .start()
    .unwrap_err()
    .to_string();
    assert!(err.contains("exited during startup"), "{err}");
    assert!(err.contains("NOT_A_TYPE"), "{err}");

    let err = EnvoyBuilder::new("{{UNSET}}")
        .start()
        .unwrap_err()
        .to_string();
    assert!(err.contains("UNSET"), "{err}");
}

#[test]
fn validate_accepts_good_and_rejects_bad_configs() {
    envoy_available();
    let dir = std::env::temp_dir().join(format!("aviary-sim-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.yaml");
    let rendered = aviary_sim::render_template(
        SPLIT,
        &[
            ("ADMIN_PORT", "0"),
            ("LISTEN_PORT", "0"),
            ("STABLE_PORT", "1"),
            ("CANARY_PORT", "2"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    )
    .unwrap();
    std::fs::write(&good, rendered).unwrap();
    validate(&good).unwrap();

    let bad = SPLIT.replace("weight: 30", "weight: lots");
    let err = validate_yaml(&bad).unwrap_err().to_string();
    assert!(err.contains("envoy rejected"), "{err}");
    assert!(validate(dir.join("missing.yaml")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn envoy_outlives_the_thread_that_started_it() {
    envoy_available();
    let template =
        "admin: {address: {socket_address: {address: 127.0.0.1, port_value: {{ADMIN_PORT}}}}}\n";
    let mut envoy = std::thread::spawn(move || EnvoyBuilder::new(template).start().unwrap())
        .join()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(envoy.is_running());
    assert_eq!(envoy.admin_get("/ready").unwrap().trim(), "LIVE");
    let path = envoy.replace_file("ecds.yaml", "resources: []\n").unwrap();
    assert_eq!(std::fs::read_to_string(path).unwrap(), "resources: []\n");
}

#[test]
fn upstream_resets_become_503s_at_the_client() {
    envoy_available();
    let server = ModelServer::spawn(ModelServerConfig {
        fault: aviary_sim::Fault::Reset,
        ..ModelServerConfig::new("broken")
    })
    .unwrap();
    let envoy = EnvoyBuilder::new(SPLIT)
        .var("LISTEN_PORT", 0)
        .var("STABLE_PORT", server.port())
        .var("CANARY_PORT", server.port())
        .start()
        .unwrap();
    let port = envoy.listener_port("ingress").unwrap();
    let s = run(&LoadConfig::requests(
        format!("http://127.0.0.1:{port}/"),
        40,
    ))
    .unwrap()
    .summary;
    assert_eq!(s.status(503), 40, "{s}");
    assert_eq!(server.stats().resets, 40);
    let destroyed = envoy
        .stats(Some("upstream_cx_destroy_remote_with_active_rq"))
        .unwrap()
        .values()
        .sum::<u64>();
    assert_eq!(destroyed, 40);
}
