//! Config sinks without Envoy: ECDS rendering and atomic replacement, validation before any
//! write, and Istio WasmPlugin manifests checked against the real CRD schema.

mod edges_support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use aviary_contract::config::{digest, PluginConfig};
use aviary_contract::units::DIGEST48_MASK;
use aviaryctl::core::spec::istio::{FailStrategy, Phase};
use aviaryctl::edges::sink::{
    ConfigSink, EcdsFileSink, IstioWasmPluginSink, JsonFileSink, ManifestOutput,
};
use edges_support::openapi::CrdSchema;
use edges_support::{plugin_config, TempDir};
use serde_json::{json, Value};

fn crd() -> CrdSchema {
    // Relative to the project root, as the shared data is laid out next to it.
    let path = edges_support::root().join("../shared/istio-crds/wasmplugins.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    CrdSchema::from_crd_yaml(&text, "v1alpha1").expect("CRD schema")
}

fn rich_config() -> PluginConfig {
    let json = r#"{"service":"recsys",
        "versions":[{"name":"stable","weight":9000,"responseHeaders":{"x-model":"v1"}},
                    {"name":"canary","percent":10,"routeValue":"canary"}],
        "sticky":{"keys":[{"header":"x-user-id"},{"cookie":"session"}],"seed":7},
        "rules":[{"name":"debug","match":[{"header":"x-canary","exact":"always"}],"version":"canary"}],
        "override":{"header":"x-aviary-force","trustedCidrs":["10.0.0.0/8"]},
        "scores":{"pointer":"/score","bounds":[0.1,0.5,0.9]}}"#;
    PluginConfig::from_json(json.as_bytes()).expect("valid")
}

#[test]
fn ecds_file_is_the_documented_resource_and_digest_matches_the_value() {
    let dir = TempDir::new("sink");
    let path = dir.join("ecds.yaml");
    let sink = EcdsFileSink::new(&path, "aviary", "/opt/aviary.wasm");
    let cfg = plugin_config(2500);
    let receipt = sink.write(&cfg).expect("write");

    let text = std::fs::read_to_string(&path).expect("written");
    // JSON is YAML too: Envoy parses a .yaml path with its YAML loader.
    let doc: Value = serde_yaml::from_str(&text).expect("yaml");
    let res = &doc["resources"][0];
    assert_eq!(
        res["@type"],
        "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
    );
    assert_eq!(res["name"], "aviary");
    let wasm = &res["typed_config"];
    assert_eq!(
        wasm["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
    );
    let c = &wasm["config"];
    assert_eq!(c["name"], "aviary");
    assert_eq!(c["root_id"], "aviary");
    // A dead VM must never let requests bypass the plugin: the same policy as the shipped file.
    assert_eq!(c["failure_policy"], "FAIL_RELOAD");
    let shipped: Value = serde_yaml::from_str(
        &std::fs::read_to_string(edges_support::root().join("envoy/aviary-ecds-config.yaml"))
            .expect("shipped ECDS file"),
    )
    .expect("yaml");
    let shipped = &shipped["resources"][0]["typed_config"]["config"];
    assert_eq!(c["failure_policy"], shipped["failure_policy"]);
    assert_eq!(c["reload_config"], shipped["reload_config"]);
    assert_eq!(c["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
    assert_eq!(
        c["vm_config"]["code"]["local"]["filename"],
        "/opt/aviary.wasm"
    );
    assert_eq!(
        c["configuration"]["@type"],
        "type.googleapis.com/google.protobuf.StringValue"
    );
    let value = c["configuration"]["value"].as_str().expect("string value");
    assert_eq!(value, cfg.to_json());
    assert_eq!(receipt.digest, Some(digest(value.as_bytes())));
    assert_eq!(
        receipt.digest48(),
        Some(digest(value.as_bytes()) & DIGEST48_MASK)
    );
    assert_eq!(receipt.bytes, text.len());
    let back = PluginConfig::from_json(value.as_bytes()).expect("round trip");
    assert_eq!(back.weight_bps(1), Some(2500));

    // No temp files left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("ecds.yaml")]);
}

#[test]
fn invalid_configs_are_never_written() {
    let dir = TempDir::new("sink");
    let path = dir.join("ecds.json");
    let sink = EcdsFileSink::new(&path, "aviary", "/opt/aviary.wasm");
    sink.write(&plugin_config(1000)).expect("valid write");
    let before = std::fs::read(&path).expect("read");

    let mut bad = plugin_config(1000);
    bad.set_weights(&[9000, 2000]); // sums to 110 %
    let err = sink.write(&bad).expect_err("rejected");
    assert!(err.to_string().contains("invalid plugin config"), "{err}");
    let mut bad2 = plugin_config(1000);
    bad2.kill_switch = Some("nope".into());
    sink.write(&bad2).expect_err("unknown kill switch version");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        before,
        "file untouched"
    );

    let json_path = dir.join("plugin.json");
    JsonFileSink::new(&json_path)
        .write(&bad)
        .expect_err("json sink validates too");
    assert!(!json_path.exists());
}

#[test]
fn json_sink_writes_exactly_the_digested_bytes() {
    let dir = TempDir::new("sink");
    let path = dir.join("plugin.json");
    let cfg = rich_config();
    let r = JsonFileSink::new(&path).write(&cfg).expect("write");
    let bytes = std::fs::read(&path).expect("read");
    assert_eq!(r.digest, Some(digest(&bytes)));
    aviary_contract::config::parse_and_compile(&bytes).expect("plugin accepts it");
}

#[test]
fn concurrent_readers_never_see_a_torn_file() {
    let dir = TempDir::new("sink");
    let path = dir.join("ecds.json");
    let sink = EcdsFileSink::new(&path, "aviary", "/opt/aviary.wasm");
    sink.write(&plugin_config(0)).expect("first");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let text = std::fs::read_to_string(&path).expect("always present");
                let v: Value = serde_json::from_str(&text).expect("always complete JSON");
                assert!(v["resources"][0]["name"] == "aviary");
                reads += 1;
            }
            reads
        })
    };
    for i in 0..200u32 {
        sink.write(&plugin_config(i * 50)).expect("write");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(reader.join().expect("reader ok") > 0);
}

fn istio_sink(output: ManifestOutput) -> IstioWasmPluginSink {
    let mut s = IstioWasmPluginSink::new(
        "aviary-recsys",
        "oci://ghcr.io/example/aviary:0.1.0",
        output,
    );
    s.namespace = Some("ml-serving".into());
    s.sha256 = Some("a".repeat(64));
    s.selector = BTreeMap::from([("app".into(), "recsys".into())]);
    s.priority = Some(10);
    s
}

#[test]
fn istio_manifest_validates_against_the_crd() {
    let crd = crd();
    let cfg = rich_config();
    let sink = istio_sink(ManifestOutput::Stdout);
    let manifest = sink.manifest(&cfg).expect("manifest");
    let errs = crd.validate(&manifest);
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(manifest["spec"]["failStrategy"], "FAIL_RELOAD");
    assert_eq!(manifest["spec"]["phase"], "STATS");
    assert_eq!(manifest["spec"]["type"], "HTTP");
    assert_eq!(manifest["spec"]["match"][0]["mode"], "CLIENT");

    // pluginConfig is the plugin JSON as a map, and the plugin accepts it back.
    let yaml = sink.render(&cfg).expect("yaml");
    let parsed: Value = serde_yaml::from_str(&yaml).expect("yaml parses");
    assert_eq!(parsed, manifest);
    let pc = &parsed["spec"]["pluginConfig"];
    assert_eq!(pc["versions"][1]["percent"], json!(10.0));
    let back = PluginConfig::from_value(pc).expect("plugin reads pluginConfig");
    assert_eq!(back, cfg);

    for (fs, phase) in [
        (FailStrategy::FailClose, Phase::Authn),
        (FailStrategy::FailReload, Phase::Authz),
        (FailStrategy::FailOpen, Phase::UnspecifiedPhase),
    ] {
        let mut s = istio_sink(ManifestOutput::Stdout);
        s.fail_strategy = fs;
        s.phase = phase;
        s.sha256 = None;
        s.selector.clear();
        s.namespace = None;
        let m = s.manifest(&cfg).expect("manifest");
        assert!(crd.validate(&m).is_empty(), "{:?}", crd.validate(&m));
    }
}

#[test]
fn the_validator_catches_what_the_api_server_would_reject() {
    let crd = crd();
    let good = istio_sink(ManifestOutput::Stdout)
        .manifest(&plugin_config(100))
        .expect("manifest");
    let mutate = |f: &dyn Fn(&mut Value)| {
        let mut m = good.clone();
        f(&mut m);
        crd.validate(&m)
    };
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "failStrategy",
            Box::new(|m| m["spec"]["failStrategy"] = json!("FAIL_SOMETIMES")),
        ),
        ("sha256", Box::new(|m| m["spec"]["sha256"] = json!("ABC"))),
        (
            "url",
            Box::new(|m| {
                m["spec"].as_object_mut().expect("obj").remove("url");
            }),
        ),
        ("spec.bogus", Box::new(|m| m["spec"]["bogus"] = json!(1))),
        (
            "priority",
            Box::new(|m| m["spec"]["priority"] = json!(4_000_000_000u64)),
        ),
        (
            "matchLabels",
            Box::new(|m| m["spec"]["selector"]["matchLabels"]["app"] = json!(5)),
        ),
        (
            "pluginName",
            Box::new(|m| m["spec"]["pluginName"] = json!("")),
        ),
        (
            "match[0].ports[0].number",
            Box::new(|m| m["spec"]["match"] = json!([{"ports": [{"number": 70000}]}])),
        ),
        (
            "apiVersion",
            Box::new(|m| m["apiVersion"] = json!("extensions.istio.io/v1")),
        ),
        (
            "metadata.name",
            Box::new(|m| m["metadata"]["name"] = json!("Aviary_Recsys")),
        ),
    ];
    for (needle, f) in cases {
        let errs = mutate(&*f);
        assert!(
            errs.iter().any(|e| e.contains(needle)),
            "{needle}: {errs:?}"
        );
    }
    // pluginConfig preserves unknown fields: anything goes inside it.
    assert!(
        mutate(&|m| m["spec"]["pluginConfig"]["anything"] = json!({"deep": [1, 2]})).is_empty()
    );
}

#[test]
fn istio_sink_writes_files_atomically_without_a_digest() {
    let dir = TempDir::new("sink");
    let path: PathBuf = dir.join("wasmplugin.yaml");
    let sink = istio_sink(ManifestOutput::File(path.clone()));
    let r = sink.write(&plugin_config(500)).expect("write");
    assert_eq!(r.digest, None, "Istio re-encodes the config");
    let text = std::fs::read_to_string(&path).expect("read");
    let m: Value = serde_yaml::from_str(&text).expect("yaml");
    assert!(crd().validate(&m).is_empty());
    assert_eq!(m["spec"]["pluginConfig"]["versions"][1]["weight"], 500);

    let mut bad_sha = istio_sink(ManifestOutput::File(path.clone()));
    bad_sha.sha256 = Some("xyz".into());
    bad_sha.write(&plugin_config(600)).expect_err("bad sha256");
    let unchanged: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).expect("read")).expect("yaml");
    assert_eq!(
        unchanged["spec"]["pluginConfig"]["versions"][1]["weight"],
        500
    );
}

#[test]
fn ecds_write_latency() {
    let dir = TempDir::new("sink");
    let sink = EcdsFileSink::new(dir.join("ecds.json"), "aviary", "/opt/aviary.wasm");
    let mut visible = Vec::new();
    let mut durable = Vec::new();
    for i in 0..200u32 {
        let r = sink.write(&plugin_config((i % 100) * 100)).expect("write");
        visible.push(r.visible_us as f64 / 1e3);
        durable.push(r.elapsed_us as f64 / 1e3);
    }
    let p = edges_support::percentile;
    println!(
        "EcdsFileSink write (validate + render + replace), 200 writes: in place p50 {:.2} ms \
         p99 {:.2} ms; durable p50 {:.2} ms p99 {:.2} ms",
        p(&visible, 0.5),
        p(&visible, 0.99),
        p(&durable, 0.5),
        p(&durable, 0.99)
    );
    assert!(p(&visible, 0.5) < 20.0, "{visible:?}");
}
