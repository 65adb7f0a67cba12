//! Shared helpers for the plugin's end-to-end tests: the shipped `envoy/*.yaml` configs, made
//! runnable on free ports, plus a Prometheus text reader.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aviary_sim::{EnvoyBuilder, EnvoyProcess, ModelServer, ModelServerConfig};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The release `.wasm`; `AVIARY_WASM` names another build (e.g. an older one, to see a test
/// fail on the old behaviour).
pub fn wasm() -> PathBuf {
    let p = std::env::var_os("AVIARY_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/wasm32-wasip1/release/aviary.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run `make build` first",
        p.display()
    );
    p
}

/// The test-only build whose VM panics on `x-aviary-crash-probe` (`make crash-probe`);
/// `AVIARY_CRASH_PROBE_WASM` names another build.
pub fn crash_probe_wasm() -> PathBuf {
    let p = std::env::var_os("AVIARY_CRASH_PROBE_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/crash-probe/wasm32-wasip1/release/aviary.wasm"));
    assert!(
        p.exists(),
        "{} is missing: `make test` builds it (feature crash-probe)",
        p.display()
    );
    p
}

/// A shipped config without Envoy's native strip of the routing, mark and mirror headers (the
/// connection manager's `early_header_mutation_extensions`), as a config written without it
/// would be: then only the plugin stands between a client's header and a route.
pub fn without_native_strip(template: &str) -> String {
    let start = template
        .find("          # Security: a client may never")
        .expect("the shipped config strips natively");
    let end = template
        .find("          # source.address (the override's trust check)")
        .expect("the strip block ends before use_remote_address");
    let mut t = template.to_string();
    t.replace_range(start..end, "");
    assert!(!t.contains("early_header_mutation"));
    t
}

/// Appends a `shadow_v2` cluster on `{{SHADOW_PORT}}` to a template whose clusters come last.
pub fn with_shadow_cluster(template: String) -> String {
    template
        + "  - name: shadow_v2\n    connect_timeout: 1s\n    load_assignment: {cluster_name: shadow_v2, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{SHADOW_PORT}}}}}}]}]}\n"
}

/// Envoy's log so far.
pub fn envoy_log(envoy: &EnvoyProcess) -> String {
    std::fs::read_to_string(envoy.log_path()).unwrap_or_default()
}

/// A counter of Envoy's, 0 while it does not exist.
pub fn stat(envoy: &EnvoyProcess, name: &str) -> u64 {
    envoy.stat(name).ok().flatten().unwrap_or(0)
}

pub fn envoy_file(name: &str) -> String {
    std::fs::read_to_string(root().join("envoy").join(name))
        .unwrap_or_else(|e| panic!("reading envoy/{name}: {e}"))
}

/// Turns a shipped config into a template: free ports, absolute wasm path, ECDS file in the
/// instance's work dir, and the given plugin JSON.
pub fn template(file: &str, plugin_json: &str) -> String {
    let mut t = aviary_sim::shipped_config_template(&envoy_file(file))
        .replace("path: {{ECDS}}", "path: {{WORK_DIR}}/ecds.yaml");
    if let Some(start) = t.find("value: |\n") {
        let end = t[start..]
            .find("\n          - name: envoy.filters.http.router")
            .map_or(t.len(), |e| start + e);
        let indent = " ".repeat(20);
        t.replace_range(start..end, &format!("value: |\n{indent}{plugin_json}"));
    }
    t
}

/// The ECDS resource file for a plugin config, in the shipped format.
pub fn ecds_resource(plugin_json: &str, wasm: &str) -> String {
    let shipped = envoy_file("aviary-ecds-config.yaml");
    let start = shipped
        .find("value: |\n")
        .expect("shipped ECDS file has a config value");
    format!("{}value: |\n          {}\n", &shipped[..start], plugin_json)
        .replace("target/wasm32-wasip1/release/aviary.wasm", wasm)
}

pub struct Rig {
    pub envoy: EnvoyProcess,
    pub stable: ModelServer,
    pub canary: ModelServer,
    pub url: String,
}

pub fn model(version: &str, tweak: impl FnOnce(&mut ModelServerConfig)) -> ModelServer {
    let mut cfg = ModelServerConfig::new(version);
    tweak(&mut cfg);
    ModelServer::spawn(cfg).expect("model server starts")
}

pub fn start(file: &str, plugin_json: &str) -> Rig {
    start_with(
        file,
        plugin_json,
        model("stable", |_| {}),
        model("canary", |_| {}),
    )
}

pub fn start_with(file: &str, plugin_json: &str, stable: ModelServer, canary: ModelServer) -> Rig {
    let wasm = wasm();
    let mut b = EnvoyBuilder::new(template(file, plugin_json))
        .var("STABLE_PORT", stable.port())
        .var("CANARY_PORT", canary.port())
        .path_var("WASM", &wasm);
    if file.contains("ecds") {
        b = b.file(
            "ecds.yaml",
            ecds_resource(plugin_json, &wasm.to_string_lossy()),
        );
    }
    let envoy = b.start().expect("envoy starts");
    let port = envoy.listener_port("ingress").expect("listener port");
    Rig {
        envoy,
        stable,
        canary,
        url: format!("http://127.0.0.1:{port}/predict"),
    }
}

/// Samples of a Prometheus text exposition, keyed by `name{labels}` exactly as printed.
pub fn prom(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Sum of all samples of `name` whose labels include every `want` pair.
pub fn sum(samples: &BTreeMap<String, f64>, name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}{{")))
        .filter(|(k, _)| {
            want.iter()
                .all(|(l, v)| k.contains(&format!("{l}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Envoy's Prometheus text once the plugin's batched counts have been sent: the plugin flushes
/// every `metrics.flushIntervalMs` (50 ms by default) on each worker's tick.
pub fn flushed_stats(envoy: &EnvoyProcess) -> BTreeMap<String, f64> {
    std::thread::sleep(Duration::from_millis(250));
    prom(&envoy.stats_prometheus().unwrap())
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
