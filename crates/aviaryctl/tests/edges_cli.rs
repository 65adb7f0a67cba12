//! The `aviaryctl` binary: validate, run (JSON logs), status, the control commands applied to
//! the state when no driver runs, report and render-istio.

mod edges_support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use aviary_contract::config::PluginConfig;
use edges_support::openapi::CrdSchema;
use edges_support::{poll, ChildGuard, TempDir};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_aviaryctl");

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn write_spec(dir: &TempDir, body_extra: &str) -> std::path::PathBuf {
    let text = format!(
        r#"apiVersion: aviary.dev/v1
kind: Rollout
metadata: {{name: cli-test}}
spec:
  baseline: stable
  canary: canary
  config:
    jsonFile: {dir}/plugin.json
    istioWasmPlugin: {{path: {dir}/wasmplugin.yaml, name: aviary-recsys, namespace: ml, image: "oci://ghcr.io/example/aviary:0.1.0", selector: {{app: recsys}}}}
    pluginConfig:
      service: recsys
      versions: [{{name: stable, weight: 10000}}, {{name: canary, weight: 0}}]
  metrics: {{envoyAdmin: ["http://127.0.0.1:{port}"], timeout: 200ms}}
  analysis:
    interval: 1s
    fastInterval: 200ms
    stepWeights: [5, 25, 50]
{body_extra}"#,
        dir = dir.path().display(),
        port = closed_port(),
    );
    let path = dir.join("rollout.yaml");
    std::fs::write(&path, text).expect("write spec");
    path
}

fn aviaryctl(state: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .expect("aviaryctl runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn written(dir: &TempDir) -> PluginConfig {
    PluginConfig::from_json(&std::fs::read(dir.join("plugin.json")).expect("plugin.json"))
        .expect("valid plugin config")
}

#[test]
fn validate_reports_every_problem_with_its_path() {
    let dir = TempDir::new("cli");
    let good = write_spec(&dir, "");
    let out = Command::new(BIN)
        .arg("validate")
        .arg(&good)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("valid"), "{stdout}");
    assert!(stdout.contains("5% → 25% → 50% → 100%"), "{stdout}");
    assert!(stdout.contains("json file"), "{stdout}");

    let bad = dir.join("bad.yaml");
    let spec = std::fs::read_to_string(&good)
        .expect("read")
        .replace("canary: canary", "canary: stable")
        .replace("stepWeights: [5, 25, 50]", "stepWeights: [25, 5]");
    std::fs::write(&bad, spec).expect("write");
    let out = Command::new(BIN)
        .arg("validate")
        .arg(&bad)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("spec.canary"), "{stderr}");
    assert!(stderr.contains("spec.analysis.stepWeights[1]"), "{stderr}");

    let out = Command::new(BIN).arg("--help").output().expect("runs");
    let help = text(&out.stdout);
    for cmd in [
        "validate",
        "run",
        "status",
        "pause",
        "resume",
        "promote",
        "abort",
        "report",
        "render-istio",
    ] {
        assert!(help.contains(cmd), "--help lists {cmd}: {help}");
    }
}

#[test]
fn run_logs_json_and_offline_commands_act_on_the_state() {
    let dir = TempDir::new("cli");
    let spec = write_spec(&dir, "");
    let state = dir.join("state");

    // A driver whose metrics source is down holds at the first step, logging JSON lines.
    let log = std::fs::File::create(dir.join("run.log")).expect("log");
    let mut run = ChildGuard(Some(
        Command::new(BIN)
            .arg("--state-dir")
            .arg(&state)
            .arg("run")
            .arg(&spec)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("run"),
    ));
    poll(Duration::from_secs(10), Duration::from_millis(20), || {
        let log = std::fs::read_to_string(dir.join("run.log")).ok()?;
        log.contains("source_error").then_some(())
    })
    .expect("the driver reports the unreachable source");
    assert_eq!(written(&dir).weight_bps(1), Some(500));
    let status = aviaryctl(&state, &["status"]);
    assert!(
        text(&status.stdout).contains("driver    running"),
        "{}",
        text(&status.stdout)
    );
    run.child().kill().expect("kill");
    run.child().wait().expect("reaped");
    let log = std::fs::read_to_string(dir.join("run.log")).expect("log");
    for line in log.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["ts"].is_u64() && v["level"].is_string() && v["event"].is_string(),
            "{line}"
        );
    }
    assert!(log.contains("\"event\":\"write\""), "{log}");

    let out = aviaryctl(&state, &["status"]);
    let st = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        st.contains("cli-test") && st.contains("driver    not running"),
        "{st}"
    );

    let out = aviaryctl(&state, &["pause"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no driver was running"));
    let out = aviaryctl(&state, &["pause"]);
    assert_eq!(out.status.code(), Some(1), "second pause is rejected");
    assert!(
        text(&out.stderr).contains("already paused"),
        "{}",
        text(&out.stderr)
    );
    assert!(aviaryctl(&state, &["resume"]).status.success());

    let out = aviaryctl(&state, &["promote"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(written(&dir).weight_bps(1), Some(2500));

    let out = aviaryctl(&state, &["abort", "--reason", "offline test"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("offline test"),
        "{}",
        text(&out.stdout)
    );
    let cfg = written(&dir);
    assert_eq!(cfg.kill_switch.as_deref(), Some("stable"));
    assert_eq!(cfg.weight_bps(0), Some(10_000));
    let out = aviaryctl(&state, &["abort"]);
    assert_eq!(out.status.code(), Some(1), "nothing left to abort");

    let out = aviaryctl(&state, &["status", "--output", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["outcome"], "aborted");
    assert_eq!(v["lastWrite"]["rollback"], true);

    let report = dir.join("report");
    let out = aviaryctl(&state, &["report", "--out", report.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for f in ["report.json", "report.md", "report.svg"] {
        assert!(report.join(f).exists(), "{f}");
    }

    // A restarted driver sees the ended rollout, re-asserts the rollback and exits 3.
    let out = Command::new(BIN)
        .arg("--state-dir")
        .arg(&state)
        .args(["run", "--log", "quiet"])
        .arg(&spec)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));

    // That driver recorded the ended rollout in the history, once.
    let out = aviaryctl(&state, &["history", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let runs: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");
    assert_eq!(runs[0]["outcome"], "aborted");
    assert_eq!(runs[0]["rollout"], "cli-test");
    let out = aviaryctl(&state, &["history"]);
    assert!(
        text(&out.stdout).contains("cli-test (stable → canary): aborted"),
        "{}",
        text(&out.stdout)
    );
    let out = aviaryctl(&state, &["history", "--gates"]);
    assert!(
        out.status.success() && text(&out.stdout).starts_with("gate"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn render_istio_prints_a_valid_wasmplugin() {
    let dir = TempDir::new("cli");
    let spec = write_spec(&dir, "");
    let state = dir.join("state");
    let crd_text = std::fs::read_to_string(
        edges_support::root().join("../shared/istio-crds/wasmplugins.yaml"),
    )
    .expect("CRD");
    let crd = CrdSchema::from_crd_yaml(&crd_text, "v1alpha1").expect("schema");

    let out = aviaryctl(
        &state,
        &[
            "render-istio",
            spec.to_str().expect("utf8"),
            "--weight",
            "12.5",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: Value =
        serde_yaml::from_str(text(&out.stdout).trim_start_matches("---\n")).expect("yaml");
    assert!(crd.validate(&doc).is_empty(), "{:?}", crd.validate(&doc));
    assert_eq!(doc["metadata"]["name"], "aviary-recsys");
    assert_eq!(doc["metadata"]["namespace"], "ml");
    assert_eq!(doc["spec"]["url"], "oci://ghcr.io/example/aviary:0.1.0");
    assert_eq!(doc["spec"]["selector"]["matchLabels"]["app"], "recsys");
    assert_eq!(doc["spec"]["pluginConfig"]["versions"][1]["weight"], 1250);

    let out_file = dir.join("manifest.yaml");
    let out = aviaryctl(
        &state,
        &[
            "render-istio",
            spec.to_str().expect("utf8"),
            "--fail-strategy",
            "fail-close",
            "--phase",
            "authz",
            "--out",
            out_file.to_str().expect("utf8"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&out_file).expect("written")).expect("yaml");
    assert!(crd.validate(&doc).is_empty());
    assert_eq!(doc["spec"]["failStrategy"], "FAIL_CLOSE");
    assert_eq!(doc["spec"]["phase"], "AUTHZ");
    assert_eq!(
        doc["spec"]["pluginConfig"]["versions"][1]["weight"], 0,
        "initial config"
    );

    let out = aviaryctl(
        &state,
        &[
            "render-istio",
            spec.to_str().expect("utf8"),
            "--weight",
            "101",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
}
