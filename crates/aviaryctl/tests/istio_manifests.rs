//! The manifests shipped in `istio/` are valid against Istio's CRD schemas, and every
//! WasmPlugin's `pluginConfig` is accepted by the plugin's own parser.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod edges_support;

use aviary_contract::config::PluginConfig;
use edges_support::openapi::CrdSchema;
use serde_json::Value;

fn crd(file: &str, version: &str) -> CrdSchema {
    let path = edges_support::root()
        .join("../shared/istio-crds")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    CrdSchema::from_crd_yaml(&text, version).expect("CRD schema")
}

fn manifests() -> Vec<(String, Value)> {
    let dir = edges_support::root().join("istio");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let doc: Value = serde_yaml::from_str(&text).unwrap();
            out.push((path.file_name().unwrap().to_string_lossy().into(), doc));
        }
    }
    out
}

#[test]
fn shipped_manifests_match_the_crd_schemas() {
    let docs = manifests();
    assert!(docs.len() >= 3, "{docs:?}");
    let mut kinds = Vec::new();
    for (name, doc) in &docs {
        let kind = doc["kind"].as_str().unwrap();
        let version = doc["apiVersion"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap();
        let file = match kind {
            "WasmPlugin" => "wasmplugins.yaml",
            "VirtualService" => "virtualservices.yaml",
            "DestinationRule" => "destinationrules.yaml",
            "TrafficExtension" => "trafficextensions.yaml",
            other => panic!("{name}: unexpected kind {other}"),
        };
        let errors = crd(file, version).validate(doc);
        assert!(errors.is_empty(), "{name}: {errors:#?}");
        kinds.push(kind.to_string());
    }
    for k in ["WasmPlugin", "VirtualService", "DestinationRule"] {
        assert!(kinds.iter().any(|x| x == k), "istio/ ships a {k}");
    }
}

#[test]
fn the_validator_rejects_broken_manifests() {
    let (_, wasm) = manifests()
        .into_iter()
        .find(|(_, d)| d["kind"] == "WasmPlugin")
        .unwrap();
    let schema = crd("wasmplugins.yaml", "v1alpha1");
    let mut bad = wasm.clone();
    bad["spec"]["failStrategy"] = Value::from("FAIL_SOMETIMES");
    assert!(!schema.validate(&bad).is_empty());
    let mut bad = wasm;
    bad["spec"]["phase"] = Value::from(7);
    assert!(!schema.validate(&bad).is_empty());
}

#[test]
fn wasmplugin_config_is_accepted_by_the_plugin_parser() {
    let mut n = 0;
    for (name, doc) in manifests() {
        if doc["kind"] != "WasmPlugin" {
            continue;
        }
        let spec = &doc["spec"];
        assert!(
            spec["sha256"].as_str().is_some_and(|s| s.len() == 64),
            "{name}: sha256"
        );
        assert!(spec["failStrategy"].is_string(), "{name}: failStrategy");
        // Istio picks the subset where the request leaves: inbound is too late to route.
        assert_eq!(
            spec["match"][0]["mode"], "CLIENT",
            "{name}: runs on callers"
        );
        let scope = &spec["pluginConfig"]["match"][0];
        assert_eq!(
            scope["header"], ":authority",
            "{name}: scoped to the service"
        );
        let cfg = PluginConfig::from_value(&spec["pluginConfig"])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let raw = serde_json::to_vec(&spec["pluginConfig"]).unwrap();
        aviary_contract::config::parse_and_compile(&raw).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(cfg.versions.len() >= 2);
        n += 1;
    }
    assert_eq!(n, 1);
    // The VirtualService routes on the header the plugin writes.
    let vs = manifests()
        .into_iter()
        .find(|(_, d)| d["kind"] == "VirtualService")
        .unwrap()
        .1;
    let header = aviary_contract::config::DEFAULT_ROUTING_HEADER;
    assert!(vs["spec"]["http"][0]["match"][0]["headers"][header].is_object());
    // Every host the VirtualService serves is in the plugin's scope.
    let plugin = manifests()
        .into_iter()
        .find(|(_, d)| d["kind"] == "WasmPlugin")
        .unwrap()
        .1;
    let scope: Vec<&str> = plugin["spec"]["pluginConfig"]["match"][0]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for host in vs["spec"]["hosts"].as_array().unwrap() {
        assert!(
            scope.contains(&host.as_str().unwrap()),
            "{host:?} not in {scope:?}"
        );
    }
}
