//! The one-command demo: real Envoy with the Aviary plugin over ECDS, two simulated model
//! servers, keyed traffic and a webhook receiver, then two real rollouts through the same
//! runner `aviaryctl run` uses: a good v2 that is promoted step by step, and a bad v2 (more
//! errors, slower, shifted predictions) that is rolled back automatically.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aviary_sim::{
    EnvoyBuilder, EnvoyProcess, Latency, LatencyTail, ModelServer, ModelServerConfig,
    ScoreDistribution,
};
use aviaryctl::clock::SystemClock;
use aviaryctl::core::spec::RolloutSpec;
use aviaryctl::core::step::Outcome;
use aviaryctl::edges::sink::sinks_for;
use aviaryctl::edges::store::StateStore;
use aviaryctl::error::Error;
use aviaryctl::runner::{Components, LogMode, Runner, RunnerOptions};
use serde::Serialize;

mod receiver;
mod traffic;

use receiver::Receiver;
use traffic::Traffic;

/// What can stop the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Preparing the demo (files, model servers, Envoy, the webhook receiver) failed.
    #[error("demo setup: {0}")]
    Setup(String),
    /// The driver failed.
    #[error(transparent)]
    Driver(#[from] Error),
}

pub(crate) fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> DemoError + '_ {
    move |e| DemoError::Setup(format!("{what}: {e}"))
}

/// Knobs of a demo run; `quick()` is the shortened version the end-to-end test runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub out: PathBuf,
    pub wasm: PathBuf,
    /// `envoy/aviary-ecds.yaml` of the repository.
    pub envoy_config: PathBuf,
    pub envoy_binary: Option<PathBuf>,
    pub interval: Duration,
    pub shadow: Duration,
    pub rate: f64,
    pub log: LogMode,
    /// The history of every demo run's rollouts, kept across runs (the output directory is
    /// cleared each time): by default `<out>-history.jsonl` beside it, e.g.
    /// `out/demo-history.jsonl`. List it with `aviaryctl history --history FILE`.
    pub history: PathBuf,
}

/// `out/demo` → `out/demo-history.jsonl`.
pub fn default_history(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map_or_else(|| "demo".into(), |n| n.to_string_lossy().into_owned());
    out.with_file_name(format!("{name}-history.jsonl"))
}

impl DemoOptions {
    pub fn new(root: &Path, out: PathBuf) -> DemoOptions {
        DemoOptions {
            history: default_history(&out),
            out,
            wasm: root.join("target/wasm32-wasip1/release/aviary.wasm"),
            envoy_config: root.join("envoy/aviary-ecds.yaml"),
            envoy_binary: None,
            interval: Duration::from_secs(6),
            shadow: Duration::from_secs(5),
            rate: 400.0,
            log: LogMode::detect(),
        }
    }

    pub fn quick(mut self) -> DemoOptions {
        self.interval = Duration::from_secs(3);
        self.shadow = Duration::from_secs(2);
        self.log = LogMode::Quiet;
        self
    }
}

/// What one rollout of the demo did.
#[derive(Debug, Clone, Serialize)]
pub struct DemoRollout {
    pub name: String,
    pub outcome: Option<String>,
    pub seconds: f64,
    pub report_dir: PathBuf,
    pub notifications: Vec<String>,
    pub client_errors: u64,
    pub client_requests: u64,
}

const STABLE_SEED: u64 = 42;

fn stable_model() -> ModelServerConfig {
    ModelServerConfig {
        seed: STABLE_SEED,
        error_rate: 0.002,
        latency: Latency {
            base_ms: 4.0,
            tail: LatencyTail::Exponential { mean_ms: 2.0 },
        },
        score: ScoreDistribution::Beta { a: 8.0, b: 2.0 },
        ..ModelServerConfig::new("v1")
    }
}

/// The candidate: same inputs give the same labels as the baseline except `disagree_rate`.
fn candidate(good: bool) -> ModelServerConfig {
    let base = ModelServerConfig {
        version: "v2".into(),
        disagree_rate: 0.01,
        ..stable_model()
    };
    if good {
        base
    } else {
        ModelServerConfig {
            error_rate: 0.06,
            latency: Latency {
                base_ms: 25.0,
                tail: LatencyTail::Exponential { mean_ms: 10.0 },
            },
            score: ScoreDistribution::Beta { a: 4.0, b: 4.0 },
            ..base
        }
    }
}

fn rollout_yaml(
    name: &str,
    o: &DemoOptions,
    dir: &Path,
    ecds: &Path,
    admin: &str,
    hook: &str,
) -> String {
    let secs = |d: Duration| format!("{}ms", d.as_millis());
    format!(
        r#"apiVersion: aviary.dev/v1
kind: Rollout
metadata:
  name: {name}
spec:
  baseline: stable
  canary: canary
  config:
    ecdsFile: {ecds}
    filterName: aviary
    wasmFile: {wasm}
    pluginConfig:
      service: recsys
      versions:
      - {{name: stable, weight: 10000}}
      - {{name: canary, weight: 0}}
      sticky:
        keys: [{{header: x-user-id}}]
      shadow:
        targets: [{{version: canary, cluster: canary}}]
        share: 10000
        timeoutMs: 2000
        compare: {{labelPointer: /prediction/label, scorePointer: /prediction/score}}
      scores:
        pointer: /prediction/score
        bounds: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
  metrics:
    envoyAdmin: ["{admin}"]
  analysis:
    interval: {interval}
    fastInterval: 500ms
    threshold: 2
    maxHold: 60s
    minSamples: 80
    stepWeights: [5, 25, 50, 100]
    shadow:
      duration: {shadow}
      minComparisons: 300
      minAgreement: 0.95
    gates:
      errorRate: {{max: 0.03, maxRelative: 3}}
      latency:
        p95: {{maxMs: 200, maxRegression: 2.0}}
      drift: {{metric: psi, max: 0.25}}
      shadowAgreement: {{min: 0.95}}
  webhooks:
  - name: demo-receiver
    url: {hook}
    timeout: 2s
    retries: 2
  reportDir: {report}
"#,
        ecds = ecds.display(),
        wasm = o.wasm.display(),
        interval = secs(o.interval),
        shadow = secs(o.shadow),
        report = dir.join("report").display(),
    )
}

fn start_envoy(
    o: &DemoOptions,
    stable: &ModelServer,
    canary: &ModelServer,
    ecds: &Path,
) -> Result<(EnvoyProcess, String), DemoError> {
    let template = aviary_sim::shipped_config_template(
        &std::fs::read_to_string(&o.envoy_config).map_err(setup("reading the Envoy config"))?,
    );
    let mut b = EnvoyBuilder::new(template)
        .var("STABLE_PORT", stable.port())
        .var("CANARY_PORT", canary.port())
        .path_var("ECDS", ecds)
        .concurrency(2);
    if let Some(bin) = &o.envoy_binary {
        b = b.binary(bin);
    }
    let envoy = b.start().map_err(setup("starting Envoy"))?;
    let port = envoy
        .listener_port("ingress")
        .map_err(setup("Envoy listener"))?;
    Ok((envoy, format!("http://127.0.0.1:{port}/predict")))
}

/// Runs both rollouts and writes everything under `o.out`.
pub fn run(o: &DemoOptions) -> Result<Vec<DemoRollout>, DemoError> {
    let say = |s: &str| {
        if o.log != LogMode::Quiet {
            aviaryctl::runner::console().line(s);
        }
    };
    if !o.wasm.is_file() {
        return Err(DemoError::Setup(format!(
            "{} is missing; run `make build`",
            o.wasm.display()
        )));
    }
    if o.out.exists() {
        std::fs::remove_dir_all(&o.out).map_err(setup("clearing the output directory"))?;
    }
    std::fs::create_dir_all(&o.out).map_err(setup("creating the output directory"))?;
    let out = o.out.canonicalize().map_err(setup("output directory"))?;

    let stable = ModelServer::spawn(stable_model()).map_err(setup("stable model server"))?;
    let canary = ModelServer::spawn(candidate(true)).map_err(setup("canary model server"))?;
    let hooks = Receiver::start(
        Some(out.join("notifications.jsonl")),
        o.log != LogMode::Quiet,
    )?;

    // Envoy needs the ECDS file before it starts: write the first rollout's start config.
    let first_dir = out.join("good-v2");
    std::fs::create_dir_all(&first_dir).map_err(setup("rollout directory"))?;
    let ecds = out.join("ecds.yaml");
    let placeholder = rollout_yaml(
        "good-v2",
        o,
        &first_dir,
        &ecds,
        "http://127.0.0.1:1",
        &hooks.url,
    );
    let spec: RolloutSpec = serde_yaml::from_str(&placeholder).map_err(Error::from)?;
    for sink in sinks_for(&spec)? {
        sink.write(&spec.render_config(0, false, false))?;
    }
    let (envoy, url) = start_envoy(o, &stable, &canary, &ecds)?;
    say(&format!(
        "Envoy {} (admin {}) routes {url} to stable :{} and canary :{}",
        envoy.pid().unwrap_or(0),
        envoy.admin_url(),
        stable.port(),
        canary.port()
    ));

    let mut results = Vec::new();
    for (name, good) in [("good-v2", true), ("bad-v2", false)] {
        canary
            .update(|c| {
                *c = ModelServerConfig {
                    port: c.port,
                    ..candidate(good)
                }
            })
            .map_err(setup("reconfiguring the canary model"))?;
        let dir = out.join(name);
        std::fs::create_dir_all(&dir).map_err(setup("rollout directory"))?;
        let yaml = rollout_yaml(name, o, &dir, &ecds, envoy.admin_url(), &hooks.url);
        std::fs::write(dir.join("rollout.yaml"), &yaml).map_err(setup("writing rollout.yaml"))?;
        let spec: RolloutSpec = serde_yaml::from_str(&yaml).map_err(Error::from)?;
        let errs = spec.validate();
        if !errs.is_empty() {
            return Err(Error::from(errs).into());
        }
        say(&format!(
            "\n== rollout {name}: {} ==",
            if good {
                "v2 as good as v1"
            } else {
                "v2 with 6% errors, 5x slower, shifted scores"
            }
        ));
        let traffic = Traffic::start(url.clone(), o.rate);
        let t0 = Instant::now();
        let components = Components::from_spec(&spec)?;
        let runner = Runner::new(
            spec,
            StateStore::in_dir(dir.join("state"))?,
            components,
            Arc::new(SystemClock),
            RunnerOptions {
                log: o.log,
                report_dir: Some(dir.join("report")),
                history: Some(o.history.clone()),
                ..RunnerOptions::default()
            },
        )?;
        let outcome = runner.run()?;
        let seconds = t0.elapsed().as_secs_f64();
        let (client_requests, client_errors) = traffic.finish();
        // Webhooks are delivered in the background; give the last ones a moment.
        std::thread::sleep(Duration::from_millis(300));
        let notifications = hooks.take();
        let outcome = outcome.map(|o| match o {
            Outcome::Promoted => "promoted".to_string(),
            Outcome::RolledBack => "rolled back".to_string(),
            Outcome::Aborted => "aborted".to_string(),
        });
        say(&format!(
            "== {name}: {} after {seconds:.1} s; {client_requests} client requests, {client_errors} transport errors; reports in {}",
            outcome.as_deref().unwrap_or("stopped"),
            dir.join("report").display()
        ));
        results.push(DemoRollout {
            name: name.into(),
            outcome,
            seconds,
            report_dir: dir.join("report"),
            notifications,
            client_errors,
            client_requests,
        });
    }
    let summary = serde_json::to_string_pretty(&results).map_err(Error::from)?;
    std::fs::write(out.join("demo-summary.json"), summary).map_err(setup("writing the summary"))?;
    say(&format!(
        "\nReports: {0}/good-v2/report and {0}/bad-v2/report (report.md, report.json, report.svg); webhooks in {0}/notifications.jsonl",
        out.display()
    ));
    say(&format!(
        "History of every demo run: {} (aviaryctl history --history {0}; --gates for the per-gate view)",
        o.history.display()
    ));
    drop(envoy);
    Ok(results)
}
