//! Item 6: how fast a new plugin config takes effect. ECDS apply latency (the file is replaced,
//! then a response shows the new behaviour), and the driver's rollback: aviaryctl's own runner
//! drives a rollout against the bench's Envoy, the canary starts failing, and a probe times
//! how long until Envoy serves 100% baseline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use aviary_contract::config::PluginConfig;
use aviary_sim::{
    EnvoyProcess, Fault, HttpConnection, HttpRequest, LoadConfig, ModelServer, ModelServerConfig,
};
use aviaryctl::clock::SystemClock;
use aviaryctl::core::spec::RolloutSpec;
use aviaryctl::core::step::Outcome;
use aviaryctl::edges::sink::{ConfigSink, EcdsFileSink};
use aviaryctl::edges::store::StateStore;
use aviaryctl::runner::{Components, LogMode, Runner, RunnerEvent, RunnerOptions};
use serde_json::json;

use crate::variants::{aviary_routes, ecds_filter, proxy_builder, router, Upstreams};
use crate::Options;

/// Background traffic during a rollback, as in aviaryctl's own end-to-end test.
pub const ROLLBACK_RATE: f64 = 500.0;
/// The rollout's analysis: a 100 ms fast track on the error rate; steps long enough that no
/// promotion happens during a measurement.
pub const ANALYSIS: &str = "    interval: 30s
    fastInterval: 100ms
    threshold: 2
    maxHold: 1m
    minSamples: 50
    stepWeights: [20, 40, 60, 80]
    gates:
      errorRate: {max: 0.05, maxRelative: 3}";

/// One rollback.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rollback {
    /// Breach until the probe is served by the baseline, ms.
    pub settled_ms: f64,
    /// The runner's own records, from the metrics read that triggered the rollback (its
    /// decision): to the new file in place, to the write durable, and to Envoy reporting the
    /// new config (the digest gauge, polled by the runner's watcher), ms.
    pub visible_ms: f64,
    pub durable_ms: f64,
    pub applied_ms: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Results {
    /// File renamed until a response shows the new config, ms.
    pub ecds_ms: Vec<f64>,
    pub rollbacks: Vec<Rollback>,
    pub problems: Vec<String>,
}

fn base_config() -> serde_json::Value {
    json!({"service": "bench",
           "versions": [{"name": "stable", "weight": 9000}, {"name": "canary", "weight": 1000}],
           "sticky": {"keys": [{"header": "x-user-id"}]}})
}

/// A user whose bucket is at the very top, so it is on the canary at any canary weight.
fn canary_user() -> String {
    (0..)
        .map(|i| format!("probe-{i}"))
        .find(|u| aviary_contract::hash::bucket(u.as_bytes(), 0) >= 9990)
        .unwrap_or_default()
}

struct Rig {
    envoy: EnvoyProcess,
    url: String,
    addr: SocketAddr,
    canary: ModelServer,
    _stable: ModelServer,
    sink: EcdsFileSink,
    dir: PathBuf,
    wasm: PathBuf,
    user: String,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn run(opts: &Options, stats: &str) -> anyhow::Result<Results> {
    let rig = start(opts, stats)?;
    let mut out = Results::default();
    let base = PluginConfig::from_json(base_config().to_string().as_bytes())
        .map_err(|e| anyhow!("{e}"))?;
    let mut killed = base.clone();
    killed.kill_switch = Some("stable".into());
    ecds(&rig, &base, &killed, opts.ecds_reps, &mut out)?;
    for rep in 0..opts.rollback_reps {
        match rollback(&rig, rep, &mut out.problems)
            .with_context(|| format!("rollback {}", rep + 1))
        {
            Ok(r) => {
                eprintln!(
                    "rollback {}: breach to baseline {:.0} ms; decision to file {:.1} ms, durable {:.1} ms, applied {:.1} ms",
                    rep + 1, r.settled_ms, r.visible_ms, r.durable_ms, r.applied_ms
                );
                out.rollbacks.push(r);
            }
            Err(e) => out.problems.push(format!("{e:#}")),
        }
    }
    let rejected = rig
        .envoy
        .stat("extension_config_discovery.http_filter.aviary.update_rejected")?
        .unwrap_or(0);
    if rejected > 0 {
        out.problems
            .push(format!("Envoy rejected {rejected} ECDS updates"));
    }
    Ok(out)
}

fn start(opts: &Options, stats: &str) -> anyhow::Result<Rig> {
    let stable = ModelServer::spawn(ModelServerConfig::new("stable"))?;
    let canary = ModelServer::spawn(ModelServerConfig::new("canary"))?;
    let dir = std::env::temp_dir().join(format!("aviary-bench-ecds-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("aviary-ecds.yaml");
    let sink = EcdsFileSink::new(&file, "aviary", opts.wasms.aviary.display().to_string());
    let base = PluginConfig::from_json(base_config().to_string().as_bytes())
        .map_err(|e| anyhow!("{e}"))?;
    sink.write(&base)?;
    let ports = Upstreams {
        stable: stable.port(),
        canary: canary.port(),
        shadow: stable.port(),
    };
    let envoy = proxy_builder(
        stats,
        &aviary_routes(),
        &json!([ecds_filter(&file), router()]),
        ports,
    )
    .start()?;
    let port = envoy.listener_port("ingress")?;
    Ok(Rig {
        url: format!("http://127.0.0.1:{port}/predict"),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        envoy,
        canary,
        _stable: stable,
        sink,
        dir,
        wasm: opts.wasms.aviary.clone(),
        user: canary_user(),
    })
}

/// Replaces the ECDS file the plain way (temp file, rename) and times until a probe shows it.
fn ecds(
    rig: &Rig,
    base: &PluginConfig,
    killed: &PluginConfig,
    reps: usize,
    out: &mut Results,
) -> anyhow::Result<()> {
    let mut conn = connect(rig)?;
    wait_for(&mut conn, rig, "canary", Duration::from_secs(2))?;
    for rep in 0..reps {
        let (cfg, expect) = if rep % 2 == 0 {
            (killed, "stable")
        } else {
            (base, "canary")
        };
        let doc = serde_json::to_string_pretty(&rig.sink.render(&cfg.to_json()))?;
        let tmp = rig.dir.join(".aviary-ecds.yaml.tmp");
        std::fs::write(&tmp, doc)?;
        let t = Instant::now();
        std::fs::rename(&tmp, rig.sink.path())?;
        wait_for(&mut conn, rig, expect, Duration::from_secs(2))?;
        out.ecds_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn connect(rig: &Rig) -> anyhow::Result<HttpConnection> {
    Ok(HttpConnection::connect(
        rig.addr,
        "bench",
        Duration::from_secs(2),
    )?)
}

/// Sends the canary user's requests until one is served by `version`; errors after `timeout`.
fn wait_for(
    conn: &mut HttpConnection,
    rig: &Rig,
    version: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let probe = HttpRequest::get("/predict").header("x-user-id", rig.user.as_str());
    let deadline = Instant::now() + timeout;
    loop {
        if !conn.is_open() {
            *conn = connect(rig)?;
        }
        let r = conn.send(&probe)?;
        if r.header("x-aviary-served-by") == Some(version) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "no response from {version} within {timeout:?} (last: {} served by {:?})",
                r.status,
                r.header("x-aviary-served-by")
            );
        }
        thread::sleep(Duration::from_micros(200));
    }
}

fn rollout_yaml(rig: &Rig, rep: usize) -> String {
    format!(
        r#"apiVersion: aviary.dev/v1
kind: Rollout
metadata: {{name: bench-rollback-{rep}}}
spec:
  baseline: stable
  canary: canary
  config:
    ecdsFile: {ecds}
    filterName: aviary
    wasmFile: {wasm}
    pluginConfig:
      service: bench
      versions: [{{name: stable, weight: 10000}}, {{name: canary, weight: 0}}]
      sticky: {{keys: [{{header: x-user-id}}]}}
  metrics: {{envoyAdmin: ["{admin}"], timeout: 500ms}}
  analysis:
{ANALYSIS}
"#,
        ecds = rig.sink.path().display(),
        wasm = rig.wasm.display(),
        admin = rig.envoy.admin_url(),
    )
}

/// One rollout by aviaryctl's runner: step 1 is applied, the canary breaks, the runner's fast
/// track rolls back.
fn rollback(rig: &Rig, rep: usize, problems: &mut Vec<String>) -> anyhow::Result<Rollback> {
    let spec = RolloutSpec::parse(&rollout_yaml(rig, rep))
        .map_err(|e| anyhow!("the bench's rollout spec: {e}"))?;
    let store = StateStore::in_dir(rig.dir.join(format!("state-{rep}")))?;
    let components = Components::from_spec(&spec)?;
    let opts = RunnerOptions {
        log: LogMode::Quiet,
        ..RunnerOptions::default()
    };
    let runner = Runner::new(spec, store.clone(), components, Arc::new(SystemClock), opts)?;
    let stop = runner.stop_handle();
    let load_cfg = LoadConfig {
        connections: 4,
        rate: Some(ROLLBACK_RATE),
        users: 2000,
        timeout: Duration::from_secs(2),
        ..LoadConfig::duration(&rig.url, Duration::from_secs(6))
    };
    let load = thread::spawn(move || aviary_sim::run_load(&load_cfg));
    let run = thread::spawn(move || runner.run());
    let mut conn = connect(rig)?;
    let measured = (|| -> anyhow::Result<f64> {
        wait_for(&mut conn, rig, "canary", Duration::from_secs(10))
            .context("step 1 never reached Envoy")?;
        thread::sleep(Duration::from_millis(300));
        let breach = Instant::now();
        rig.canary.update(|c| c.fault = Fault::Status(500))?;
        wait_for(&mut conn, rig, "stable", Duration::from_secs(3))
            .context("no rollback within 3 s")?;
        Ok(breach.elapsed().as_secs_f64() * 1000.0)
    })();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !run.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    let outcome = run
        .join()
        .map_err(|_| anyhow!("the runner thread panicked"))?;
    rig.canary.update(|c| c.fault = Fault::None)?;
    let _ = load.join();
    let settled_ms = measured?;
    if !matches!(outcome, Ok(Some(Outcome::RolledBack))) {
        problems.push(format!(
            "rollback {}: the runner ended with {outcome:?}",
            rep + 1
        ));
    }
    let events: Vec<RunnerEvent> = store.read_events()?;
    let write = events
        .iter()
        .find_map(|e| match e {
            RunnerEvent::Write(w) if w.rollback => Some(w.clone()),
            _ => None,
        })
        .ok_or_else(|| anyhow!("the runner logged no rollback write"))?;
    let applied = events.iter().find_map(|e| match e {
        RunnerEvent::Applied(a) if a.seq == write.seq => Some(a.clone()),
        _ => None,
    });
    let us = |v: Option<u64>| v.map_or(f64::NAN, |x| x as f64 / 1000.0);
    Ok(Rollback {
        settled_ms,
        visible_ms: us(write.trigger_to_visible_us),
        durable_ms: us(write.trigger_to_write_us),
        applied_ms: applied
            .and_then(|a| a.trigger_to_apply_ms)
            .unwrap_or(f64::NAN),
    })
}
