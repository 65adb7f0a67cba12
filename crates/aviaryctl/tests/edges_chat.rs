//! Chat formats of webhooks (Slack, Microsoft Teams, Discord) checked against each service's
//! documented message shape and limits by a local receiver; the `json` format unchanged; and
//! secret URLs and headers (`urlFrom`, `{env}` / `{file}`) that never leave the process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod edges_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use aviaryctl::core::spec::{
    Event as Kind, HeaderValue, HumanDuration, SecretRef, WebhookFormat, WebhookSpec,
};
use aviaryctl::core::step::Notification;
use aviaryctl::edges::webhook::format::{truncate, Links};
use aviaryctl::edges::webhook::{Notifier, WebhookNotifier};
use edges_support::{poll, ChildGuard, TempDir};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_aviaryctl");

/// One request as received: path, headers (lower-cased names) and body.
#[derive(Debug, Clone)]
struct Got {
    path: String,
    headers: BTreeMap<String, String>,
    body: String,
}

struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Got>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Self {
        use std::sync::atomic::Ordering;
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind");
        let port = server.server_addr().to_ip().expect("ip").port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok(Some(mut req)) = server.recv_timeout(Duration::from_millis(20)) else {
                    continue;
                };
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                let headers = req
                    .headers()
                    .iter()
                    .map(|h| {
                        (
                            h.field.as_str().as_str().to_ascii_lowercase(),
                            h.value.as_str().to_string(),
                        )
                    })
                    .collect();
                g.lock().expect("lock").push(Got {
                    path: req.url().to_string(),
                    headers,
                    body,
                });
                let _ = req.respond(tiny_http::Response::from_string("ok"));
            }
        });
        Receiver {
            url: format!("http://127.0.0.1:{port}"),
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().expect("lock").clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A realistic fast-track evidence line, made long (and multi-byte) enough to exceed every
/// service's limits.
fn long_evidence() -> String {
    let one = "step 1 (5%): fast-track: latency.p95.regression: canary requests over 30 ms \
               7/11 = 63.6% (95% CI 35.4%–84.8%) vs baseline 0/372 = 0.0% (≤ 1.0%); limit \
               +5.0 points ≥ 1.2× baseline; strong evidence of a breach (p < 0.001) — µs";
    let mut s = String::new();
    while s.chars().count() < 9_000 {
        if !s.is_empty() {
            s.push_str(" | ");
        }
        s.push_str(one);
    }
    s
}

fn rollback(reason: &str) -> Notification {
    Notification {
        event: Kind::Rollback,
        payload: json!({
            "event": "rollback",
            "rollout": "recsys-v2",
            "service": "recsys",
            "baseline": "stable",
            "canary": "canary",
            "stage": "step 1 (5%)",
            "canaryWeightBps": 0,
            "canaryWeight": "0%",
            "paused": false,
            "failedChecks": 1,
            "reason": reason,
            "gates": [],
            "metrics": {},
            "windowMs": 5000,
            "atMs": 1_795_316_245_514u64,
        }),
    }
}

fn spec(url: &str, format: WebhookFormat) -> WebhookSpec {
    WebhookSpec {
        name: "chat".into(),
        url: url.into(),
        url_from: None,
        headers: BTreeMap::new(),
        events: Kind::NOTIFICATIONS.to_vec(),
        timeout: HumanDuration(2_000),
        retries: 0,
        metadata: BTreeMap::new(),
        format,
        report_url: Some("https://reports.example.com/recsys-v2/report.md".into()),
        dashboard_url: Some("https://grafana.example.com/d/aviary?var-rollout=recsys-v2".into()),
    }
}

/// Sends a rollback with a long evidence line in `format`; returns the parsed body.
fn deliver(format: WebhookFormat) -> Value {
    let rx = Receiver::start();
    let hook =
        WebhookNotifier::from_spec(&spec(&format!("{}/hook", rx.url), format)).expect("resolved");
    hook.notify(&rollback(&long_evidence())).expect("delivered");
    let got = rx.got();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    serde_json::from_str(&got[0].body).expect("json body")
}

fn chars(v: &Value) -> usize {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .chars()
        .count()
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// The evidence line as a message shows it: its start, cut with `…`.
fn shows_cut_evidence(text: &str) {
    let evidence = long_evidence();
    let kept = text.trim_end_matches('…');
    assert!(text.ends_with('…'), "cut: {text}");
    assert!(
        evidence.starts_with(kept) || kept.contains("7/11 = 63.6%"),
        "{text}"
    );
}

#[test]
fn slack_message_has_the_incoming_webhook_shape() {
    let v = deliver(WebhookFormat::Slack);
    // Slack: `text` (fallback) and `blocks` (≤ 50); header ≤ 150 plain_text; section text ≤
    // 3000; section fields ≤ 10, each ≤ 2000; context elements ≤ 10.
    let text = str_of(&v["text"]);
    assert!(!text.is_empty() && text.chars().count() <= 3000);
    assert!(
        text.contains("rollback") && text.contains("recsys-v2"),
        "{text}"
    );
    let blocks = v["blocks"].as_array().expect("blocks");
    assert!(!blocks.is_empty() && blocks.len() <= 50);
    let mut sections = Vec::new();
    let mut fields = Vec::new();
    let mut links = String::new();
    for b in blocks {
        match str_of(&b["type"]) {
            "header" => {
                assert_eq!(b["text"]["type"], "plain_text");
                assert!(chars(&b["text"]["text"]) <= 150);
                assert!(str_of(&b["text"]["text"]).contains("recsys-v2"));
            }
            "section" => {
                if let Some(t) = b.get("text") {
                    assert_eq!(t["type"], "mrkdwn");
                    assert!(chars(&t["text"]) <= 3000, "{}", chars(&t["text"]));
                    sections.push(str_of(&t["text"]).to_string());
                }
                if let Some(f) = b.get("fields") {
                    let f = f.as_array().expect("fields");
                    assert!(f.len() <= 10);
                    for x in f {
                        assert_eq!(x["type"], "mrkdwn");
                        assert!(chars(&x["text"]) <= 2000);
                        fields.push(str_of(&x["text"]).to_string());
                    }
                }
                assert!(b.get("text").is_some() || b.get("fields").is_some());
            }
            "context" => {
                let e = b["elements"].as_array().expect("elements");
                assert!(!e.is_empty() && e.len() <= 10);
                for x in e {
                    assert_eq!(x["type"], "mrkdwn");
                    links.push_str(str_of(&x["text"]));
                }
            }
            other => panic!("unexpected block {other}"),
        }
    }
    let evidence = sections
        .iter()
        .find(|s| s.contains("7/11 = 63.6%"))
        .expect("the evidence line");
    assert_eq!(evidence.chars().count(), 3000);
    shows_cut_evidence(evidence);
    let fields = fields.join("\n");
    for want in [
        "*Stage*\nstep 1 (5%)",
        "*Canary weight*\n0%",
        "*Outcome*\nrolled back",
    ] {
        assert!(fields.contains(want), "{want} in {fields}");
    }
    assert!(
        links.contains("<https://reports.example.com/recsys-v2/report.md|Report>")
            && links.contains("|Dashboard>"),
        "{links}"
    );
    // `&`, `<`, `>` are escaped as Slack's mrkdwn requires.
    assert!(evidence.contains("p &lt; 0.001"), "{evidence}");
}

#[test]
fn teams_message_carries_an_adaptive_card() {
    let v = deliver(WebhookFormat::Teams);
    assert_eq!(v["type"], "message");
    let att = v["attachments"].as_array().expect("attachments");
    assert_eq!(att.len(), 1);
    assert_eq!(
        att[0]["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    let card = &att[0]["content"];
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(card["version"], "1.4");
    let body = card["body"].as_array().expect("body");
    assert!(!body.is_empty());
    let mut texts = Vec::new();
    let mut facts = BTreeMap::new();
    for el in body {
        match str_of(&el["type"]) {
            "TextBlock" => texts.push(str_of(&el["text"]).to_string()),
            "FactSet" => {
                for f in el["facts"].as_array().expect("facts") {
                    facts.insert(
                        str_of(&f["title"]).to_string(),
                        str_of(&f["value"]).to_string(),
                    );
                }
            }
            other => panic!("unexpected element {other}"),
        }
    }
    assert!(texts[0].contains("rollback") && texts[0].contains("recsys-v2"));
    assert!(texts.iter().any(|t| t.contains("7/11 = 63.6%")));
    assert_eq!(facts["Stage"], "step 1 (5%)");
    assert_eq!(facts["Canary weight"], "0%");
    assert!(facts["Outcome"].contains("rolled back"));
    let actions = card["actions"].as_array().expect("actions");
    let urls: Vec<&str> = actions
        .iter()
        .map(|a| {
            assert_eq!(a["type"], "Action.OpenUrl");
            assert!(a["title"].is_string());
            str_of(&a["url"])
        })
        .collect();
    assert_eq!(
        urls,
        [
            "https://reports.example.com/recsys-v2/report.md",
            "https://grafana.example.com/d/aviary?var-rollout=recsys-v2"
        ]
    );
    // Teams rejects messages over 28 KB.
    assert!(v.to_string().len() < 28 * 1024);
}

#[test]
fn discord_message_stays_within_discord_limits() {
    let v = deliver(WebhookFormat::Discord);
    let content = str_of(&v["content"]);
    assert!(!content.is_empty() && content.chars().count() <= 2000);
    let embeds = v["embeds"].as_array().expect("embeds");
    assert!(!embeds.is_empty() && embeds.len() <= 10);
    let e = &embeds[0];
    assert!(chars(&e["title"]) <= 256);
    let description = str_of(&e["description"]);
    assert_eq!(description.chars().count(), 4096);
    shows_cut_evidence(description);
    let color = e["color"].as_u64().expect("color");
    assert!(color <= 0xFF_FF_FF);
    let fields = e["fields"].as_array().expect("fields");
    assert!(fields.len() <= 25);
    let mut total = chars(&e["title"]) + description.chars().count();
    let mut by_name = BTreeMap::new();
    for f in fields {
        let (n, val) = (str_of(&f["name"]), str_of(&f["value"]));
        assert!(!n.is_empty() && n.chars().count() <= 256);
        assert!(!val.is_empty() && val.chars().count() <= 1024);
        assert!(f["inline"].is_boolean());
        total += n.chars().count() + val.chars().count();
        by_name.insert(n.to_string(), val.to_string());
    }
    assert!(total <= 6000, "{total}");
    assert_eq!(by_name["Stage"], "step 1 (5%)");
    assert_eq!(by_name["Canary weight"], "0%");
    assert!(by_name["Outcome"].contains("rolled back"));
    assert!(by_name["Report"].contains("https://reports.example.com/recsys-v2/report.md"));
    assert!(by_name["Dashboard"].contains("https://grafana.example.com/"));
}

#[test]
fn long_values_are_cut_on_character_boundaries() {
    assert_eq!(truncate("ééé", 3), "ééé");
    assert_eq!(truncate("éééé", 3), "éé…");
    assert_eq!(truncate("🐦🐦🐦", 2), "🐦…");
    assert_eq!(truncate("abc", 0), "");
    // A field whose value alone exceeds Discord's 1024: the report link.
    let rx = Receiver::start();
    let mut s = spec(&format!("{}/hook", rx.url), WebhookFormat::Discord);
    s.report_url = Some(format!("/var/lib/aviary/{}", "ü".repeat(3000)));
    WebhookNotifier::from_spec(&s)
        .expect("resolved")
        .notify(&rollback("short"))
        .expect("delivered");
    let v: Value = serde_json::from_str(&rx.got()[0].body).expect("json");
    let report = v["embeds"][0]["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .find(|f| f["name"] == "Report")
        .expect("report field")
        .clone();
    assert_eq!(chars(&report["value"]), 1024);
    let _ = Links::default();
}

#[test]
fn json_format_is_the_payload_byte_for_byte() {
    let rx = Receiver::start();
    let mut s = spec(&format!("{}/hook", rx.url), WebhookFormat::Json);
    s.report_url = None;
    s.dashboard_url = None;
    let event = rollback("error rate 4.1% > 1%");
    WebhookNotifier::from_spec(&s)
        .expect("resolved")
        .notify(&event)
        .expect("delivered");
    assert_eq!(rx.got()[0].body, event.payload.to_string());
    // Also with links configured: they only shape chat messages.
    let rx = Receiver::start();
    WebhookNotifier::from_spec(&spec(&format!("{}/hook", rx.url), WebhookFormat::Json))
        .expect("resolved")
        .notify(&event)
        .expect("delivered");
    assert_eq!(rx.got()[0].body, event.payload.to_string());
}

#[test]
fn spec_reads_formats_and_secret_references() {
    let yaml = r#"
name: team-chat
urlFrom: {env: AVIARY_TEST_HOOK_URL}
format: slack
dashboardUrl: https://grafana.example.com/d/aviary
headers:
  Authorization: {file: /run/secrets/hook-token}
  X-Team: ml-platform
"#;
    let w: WebhookSpec = serde_yaml::from_str(yaml).expect("parses");
    assert_eq!(w.format, WebhookFormat::Slack);
    assert_eq!(
        w.url_from,
        Some(SecretRef {
            env: Some("AVIARY_TEST_HOOK_URL".into()),
            file: None
        })
    );
    assert_eq!(
        w.headers["Authorization"],
        HeaderValue::From(SecretRef {
            env: None,
            file: Some("/run/secrets/hook-token".into())
        })
    );
    assert_eq!(
        w.headers["X-Team"],
        HeaderValue::Value("ml-platform".into())
    );
    assert_eq!(w.describe_url(), "(url from env AVIARY_TEST_HOOK_URL)");
    let plain: WebhookSpec = serde_yaml::from_str("{name: a, url: 'http://x/h'}").expect("parses");
    assert_eq!(plain.format, WebhookFormat::Json);
    assert!(
        serde_yaml::from_str::<WebhookSpec>("{name: a, url: 'http://x/h', format: irc}").is_err()
    );
}

#[test]
fn missing_secrets_are_errors_naming_the_field() {
    let mut s = spec("", WebhookFormat::Slack);
    s.url_from = Some(SecretRef {
        env: Some("AVIARY_TEST_SURELY_UNSET_VAR".into()),
        file: None,
    });
    s.headers.insert(
        "Authorization".into(),
        HeaderValue::From(SecretRef {
            env: None,
            file: Some("/nonexistent/aviary-token".into()),
        }),
    );
    let err = WebhookNotifier::from_specs(&[s], None)
        .expect_err("unresolvable")
        .to_string();
    assert!(
        err.contains("spec.webhooks[0].urlFrom")
            && err.contains("AVIARY_TEST_SURELY_UNSET_VAR is not set"),
        "{err}"
    );
    assert!(
        err.contains("spec.webhooks[0].headers.Authorization")
            && err.contains("/nonexistent/aviary-token"),
        "{err}"
    );
}

fn write_spec(dir: &TempDir, hook: &str) -> std::path::PathBuf {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let text = format!(
        r#"apiVersion: aviary.dev/v1
kind: Rollout
metadata: {{name: chat-test}}
spec:
  baseline: stable
  canary: canary
  config:
    jsonFile: {dir}/plugin.json
    pluginConfig:
      service: recsys
      versions: [{{name: stable, weight: 10000}}, {{name: canary, weight: 0}}]
  metrics: {{envoyAdmin: ["http://127.0.0.1:{closed}"], timeout: 200ms}}
  analysis:
    interval: 1s
    fastInterval: 200ms
    stepWeights: [5, 25, 50]
  reportDir: {dir}/reports
  webhooks:
{hook}"#,
        dir = dir.path().display(),
    );
    let path = dir.join("rollout.yaml");
    std::fs::write(&path, text).expect("write spec");
    path
}

fn all_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            all_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn secret_url_and_header_never_leave_the_process() {
    let rx = Receiver::start();
    let dir = TempDir::new("chat-secrets");
    let secret_path = "/services/T0SECRET/B0SECRET/xoxSecretPathToken42";
    let secret_url = format!("{}{secret_path}", rx.url);
    let secret_token = "Bearer s3cr3t-header-token-9f8e7d";
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{secret_token}\n")).expect("token");
    let hook = format!(
        "  - name: team-chat\n    urlFrom: {{env: AVIARY_TEST_CHAT_URL}}\n    format: slack\n    \
         headers: {{Authorization: {{file: {}}}}}\n    dashboardUrl: https://grafana.example.com/d/aviary\n",
        token_file.display()
    );
    let spec = write_spec(&dir, &hook);
    let state = dir.join("state");
    let mut outputs = String::new();

    // Missing variable: `validate` and `run` name the field, and nothing is contacted.
    let out = Command::new(BIN)
        .env_remove("AVIARY_TEST_CHAT_URL")
        .arg("validate")
        .arg(&spec)
        .output()
        .expect("validate");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("spec.webhooks[0].urlFrom") && err.contains("AVIARY_TEST_CHAT_URL"),
        "{err}"
    );
    let out = Command::new(BIN)
        .env_remove("AVIARY_TEST_CHAT_URL")
        .arg("--state-dir")
        .arg(&state)
        .args(["run", "--log", "json"])
        .arg(&spec)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("spec.webhooks[0].urlFrom"), "{err}");

    let out = Command::new(BIN)
        .env("AVIARY_TEST_CHAT_URL", &secret_url)
        .arg("validate")
        .arg(&spec)
        .output()
        .expect("validate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    outputs.push_str(&String::from_utf8_lossy(&out.stdout));
    outputs.push_str(&String::from_utf8_lossy(&out.stderr));
    assert!(
        outputs.contains("(url from env AVIARY_TEST_CHAT_URL)"),
        "{outputs}"
    );

    // A run (with debug diagnostics) that starts, is aborted and rolls back.
    let log = dir.join("run.out");
    let errlog = dir.join("run.err");
    let mut run = ChildGuard(Some(
        Command::new(BIN)
            .env("AVIARY_TEST_CHAT_URL", &secret_url)
            .env("AVIARY_LOG", "debug")
            .arg("--state-dir")
            .arg(&state)
            .args(["run", "--log", "json"])
            .arg(&spec)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(std::fs::File::create(&errlog).expect("log"))
            .spawn()
            .expect("run"),
    ));
    poll(Duration::from_secs(10), Duration::from_millis(20), || {
        rx.got()
            .iter()
            .any(|g| g.body.contains("start"))
            .then_some(())
    })
    .expect("the start message arrives");
    let out = Command::new(BIN)
        .arg("--state-dir")
        .arg(&state)
        .args(["abort", "--reason", "chat secret test"])
        .output()
        .expect("abort");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    outputs.push_str(&String::from_utf8_lossy(&out.stdout));
    outputs.push_str(&String::from_utf8_lossy(&out.stderr));
    let status = run
        .wait_timeout(Duration::from_secs(10))
        .expect("driver ends");
    assert_eq!(status.code(), Some(3));
    let got = rx.got();
    let rollback = got
        .iter()
        .find(|g| g.body.contains("chat secret test"))
        .expect("the rollback message");
    assert_eq!(rollback.path, secret_path);
    assert_eq!(
        rollback.headers.get("authorization").map(String::as_str),
        Some(secret_token)
    );
    let v: Value = serde_json::from_str(&rollback.body).expect("json");
    assert!(v["blocks"].is_array() && v["text"].is_string());
    let report_md = format!("{}/reports/report.md", dir.path().display());
    assert!(rollback.body.contains(&report_md), "{}", rollback.body);

    for args in [
        vec!["status"],
        vec!["status", "--output", "json"],
        vec!["history", "--output", "json"],
    ] {
        let out = Command::new(BIN)
            .arg("--state-dir")
            .arg(&state)
            .args(&args)
            .output()
            .expect("runs");
        outputs.push_str(&String::from_utf8_lossy(&out.stdout));
        outputs.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    let report = dir.join("report");
    let out = Command::new(BIN)
        .arg("--state-dir")
        .arg(&state)
        .args(["report", "--out", report.to_str().expect("utf8")])
        .output()
        .expect("report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    outputs.push_str(&String::from_utf8_lossy(&out.stdout));
    outputs.push_str(&String::from_utf8_lossy(&out.stderr));
    let help = Command::new(BIN).arg("--help").output().expect("help");
    outputs.push_str(&String::from_utf8_lossy(&help.stdout));

    let mut files = Vec::new();
    all_files(dir.path(), &mut files);
    assert!(files.iter().any(|f| f.ends_with("reports/report.md")));
    assert!(files.iter().any(|f| f.ends_with("report/report.md")));
    assert!(files.len() >= 5, "{files:?}");
    let token_only = secret_token.trim_start_matches("Bearer ");
    for f in files.iter().filter(|f| **f != token_file) {
        let text = String::from_utf8_lossy(&std::fs::read(f).expect("read")).into_owned();
        for secret in ["xoxSecretPathToken42", "T0SECRET", token_only] {
            assert!(!text.contains(secret), "{secret} in {}", f.display());
        }
    }
    for secret in ["xoxSecretPathToken42", "T0SECRET", token_only] {
        assert!(
            !outputs.contains(secret),
            "{secret} in the output:\n{outputs}"
        );
    }
}

#[test]
fn spec_validation_rejects_ambiguous_or_unanswerable_hooks() {
    let dir = TempDir::new("chat-validate");
    let hooks = "  - {name: a, url: 'http://127.0.0.1:9/h', urlFrom: {env: X}}\n  \
                 - {name: b, urlFrom: {env: X, file: /y}}\n  \
                 - {name: c, url: 'http://127.0.0.1:9/h', headers: {Authorization: {}}}\n  \
                 - {name: d, url: 'http://127.0.0.1:9/h', format: teams, events: [confirm-promotion]}\n";
    let path = write_spec(&dir, hooks);
    let err = aviaryctl::edges::fs::read_spec(&path)
        .expect_err("invalid")
        .to_string();
    for want in [
        "spec.webhooks[0].urlFrom: give either `url` or `urlFrom`",
        "spec.webhooks[1].urlFrom: give exactly one",
        "spec.webhooks[2].headers.Authorization: give exactly one",
        "spec.webhooks[3].format: `teams` hooks post messages",
    ] {
        assert!(err.contains(want), "{want} in {err}");
    }
}

/// A rollback's Slack message: evidence escaped for mrkdwn in the blocks and the fallback, and
/// the dashboard link (`--nocapture` prints the message).
#[test]
fn slack_rollback_message_escapes_the_evidence_and_links_the_dashboard() {
    let reason = "step 1 (5%): fast-track: latency.p95.regression: canary requests over 30 ms \
                  7/11 = 63.6% vs baseline 0/372 = 0.0%; limit +5.0 points; strong evidence \
                  of a breach (p < 0.001)";
    let body = aviaryctl::edges::webhook::format::render(
        WebhookFormat::Slack,
        &rollback(reason).payload,
        &Links {
            report: Some(".aviary/report/report.md".into()),
            dashboard: Some("https://grafana.example.com/d/aviary?var-rollout=recsys-v2".into()),
        },
    )
    .expect("slack body");
    println!("{}", serde_json::to_string_pretty(&body).expect("json"));
    let text = body["text"].as_str().expect("text fallback");
    assert!(
        text.contains("7/11 = 63.6%") && text.contains("(p &lt; 0.001)"),
        "{text}"
    );
    let all = body.to_string();
    assert!(
        !all.contains("p < 0.001"),
        "an unescaped < reaches Slack: {all}"
    );
    assert!(all.contains("<https://grafana.example.com/d/aviary?var-rollout=recsys-v2|Dashboard>"));
    assert!(all.contains(".aviary/report/report.md"));
}
