//! Item 6: how fast a new plugin config takes effect. ECDS apply latency (the file is replaced,
//! then a response shows the new behaviour), and the driver's rollback: a canary breach is
//! seen in Envoy's stats, the kill switch is written through the driver's ECDS sink, and
//! Envoy serves 100% baseline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use aviary::config::PluginConfig;
use aviary_sim::{EnvoyProcess, Fault, HttpConnection, HttpRequest, LoadConfig, ModelServer, ModelServerConfig};
use aviaryctl::sink::{ConfigSink, EcdsFileSink};
use aviaryctl::source::{EnvoyAdminSource, MetricsSource};
use serde_json::json;

use crate::variants::{aviary_routes, ecds_filter, proxy_builder, router, Upstreams};
use crate::Options;

/// The driver's fast-track check cadence assumed here (aviaryctl's `fastInterval`).
pub const FAST_INTERVAL: Duration = Duration::from_millis(100);
/// A check fails when the canary's error rate in the last interval exceeds this, over at least
/// `MIN_SAMPLES` responses (a simplified `errorRate.max` gate).
pub const MAX_ERROR_RATE: f64 = 0.05;
pub const MIN_SAMPLES: u64 = 5;
/// Background traffic during a rollback; the canary gets 10% of it.
pub const ROLLBACK_RATE: f64 = 500.0;
const PROBE_HEADER: &str = "x-bench-probe";

/// One rollback, in milliseconds from the breach.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rollback {
    /// Breach until the driver's check fails.
    pub detect_ms: f64,
    /// Decision until the sink has written (validated, rendered, fsynced, renamed).
    pub write_ms: f64,
    /// Written until a response shows the kill switch.
    pub apply_ms: f64,
}

impl Rollback {
    pub fn decision_to_applied(&self) -> f64 {
        self.write_ms + self.apply_ms
    }

    pub fn total(&self) -> f64 {
        self.detect_ms + self.write_ms + self.apply_ms
    }
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
           "rules": [{"name": "probe", "match": [{"header": PROBE_HEADER, "present": true}], "version": "canary"}]})
}

struct Rig {
    envoy: EnvoyProcess,
    url: String,
    addr: SocketAddr,
    canary: ModelServer,
    _stable: ModelServer,
    sink: EcdsFileSink,
    dir: PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn run(opts: &Options, stats: &str) -> anyhow::Result<Results> {
    let rig = start(opts, stats)?;
    let mut out = Results::default();
    let base = PluginConfig::from_json(base_config().to_string().as_bytes()).map_err(|e| anyhow!("{e}"))?;
    let mut killed = base.clone();
    killed.kill_switch = Some("stable".into());
    ecds(&rig, &base, &killed, opts.ecds_reps, &mut out)?;
    for rep in 0..opts.rollback_reps {
        let r = rollback(&rig, &base, &killed, &mut out.problems).with_context(|| format!("rollback {}", rep + 1))?;
        eprintln!(
            "rollback {}: detected {:.0} ms, written {:.1} ms, applied {:.1} ms later; breach to baseline {:.0} ms",
            rep + 1, r.detect_ms, r.write_ms, r.apply_ms, r.total()
        );
        out.rollbacks.push(r);
    }
    let rejected = rig.envoy.stat("extension_config_discovery.http_filter.aviary.update_rejected")?.unwrap_or(0);
    if rejected > 0 {
        out.problems.push(format!("Envoy rejected {rejected} ECDS updates"));
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
    let base = PluginConfig::from_json(base_config().to_string().as_bytes()).map_err(|e| anyhow!("{e}"))?;
    sink.write(&base)?;
    let ports = Upstreams {
        stable: stable.port(),
        canary: canary.port(),
        shadow: stable.port(),
    };
    let envoy = proxy_builder(stats, &aviary_routes(), &json!([ecds_filter(&file), router()]), ports).start()?;
    let port = envoy.listener_port("ingress")?;
    Ok(Rig {
        url: format!("http://127.0.0.1:{port}/predict"),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        envoy,
        canary,
        _stable: stable,
        sink,
        dir,
    })
}

/// Replaces the ECDS file the plain way (temp file, rename) and times until a probe shows it.
fn ecds(rig: &Rig, base: &PluginConfig, killed: &PluginConfig, reps: usize, out: &mut Results) -> anyhow::Result<()> {
    let mut conn = connect(rig)?;
    for rep in 0..reps {
        let (cfg, expect) = if rep % 2 == 0 { (killed, "stable") } else { (base, "canary") };
        let doc = serde_json::to_string_pretty(&rig.sink.render(&cfg.to_json()))?;
        let tmp = rig.dir.join(".aviary-ecds.yaml.tmp");
        std::fs::write(&tmp, doc)?;
        let t = Instant::now();
        std::fs::rename(&tmp, rig.sink.path())?;
        wait_for(&mut conn, rig, expect, Duration::from_secs(2))?;
        out.ecds_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        thread::sleep(Duration::from_millis(50));
    }
    // Leave the base config in force.
    if reps % 2 == 1 {
        rig.sink.write(base)?;
        wait_for(&mut conn, rig, "canary", Duration::from_secs(2))?;
    }
    Ok(())
}

fn connect(rig: &Rig) -> anyhow::Result<HttpConnection> {
    Ok(HttpConnection::connect(rig.addr, "bench", Duration::from_secs(2))?)
}

/// Sends probes until one is served by `version`; errors after `timeout`.
fn wait_for(conn: &mut HttpConnection, rig: &Rig, version: &str, timeout: Duration) -> anyhow::Result<()> {
    let probe = HttpRequest::get("/predict").header(PROBE_HEADER, "1");
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
            bail!("no response from {version} within {timeout:?} (last: {} served by {:?})", r.status, r.header("x-aviary-served-by"));
        }
        thread::sleep(Duration::from_micros(200));
    }
}

fn canary_window(prev: &aviaryctl::observe::Snapshot, now: &aviaryctl::observe::Snapshot) -> (u64, u64) {
    let count = |s: &aviaryctl::observe::Snapshot, errors_only: bool| -> u64 {
        s.versions.get("canary").map_or(0, |v| {
            v.responses
                .iter()
                .filter(|(class, _)| !errors_only || matches!(class.as_str(), "5xx" | "local" | "reset"))
                .map(|(_, n)| n)
                .sum()
        })
    };
    (
        count(now, false).saturating_sub(count(prev, false)),
        count(now, true).saturating_sub(count(prev, true)),
    )
}

fn rollback(rig: &Rig, base: &PluginConfig, killed: &PluginConfig, problems: &mut Vec<String>) -> anyhow::Result<Rollback> {
    let source = EnvoyAdminSource::new([rig.envoy.admin_url().to_string()]);
    let load_cfg = LoadConfig {
        connections: 4,
        rate: Some(ROLLBACK_RATE),
        users: 100_000,
        timeout: Duration::from_secs(2),
        ..LoadConfig::duration(&rig.url, Duration::from_secs(3))
    };
    let load = thread::spawn(move || aviary_sim::run_load(&load_cfg));
    thread::sleep(Duration::from_millis(400));
    let mut prev = source.snapshot("bench")?;
    let breach = Instant::now();
    rig.canary.update(|c| c.fault = Fault::Status(500))?;
    let decided = loop {
        let next = Instant::now() + FAST_INTERVAL;
        thread::sleep(next.saturating_duration_since(Instant::now()));
        let now = source.snapshot("bench")?;
        let (responses, errors) = canary_window(&prev, &now);
        prev = now;
        if responses >= MIN_SAMPLES && errors as f64 / responses as f64 > MAX_ERROR_RATE {
            break Instant::now();
        }
        if breach.elapsed() > Duration::from_secs(2) {
            bail!("the breach was not detected within 2 s");
        }
    };
    rig.sink.write(killed)?;
    let written = Instant::now();
    let mut conn = connect(rig)?;
    wait_for(&mut conn, rig, "stable", Duration::from_secs(2))?;
    let applied = Instant::now();
    let after_apply = source.snapshot("bench")?;
    let report = load.join().map_err(|_| anyhow!("the load thread panicked"))??;
    let end = source.snapshot("bench")?;
    let late = |s: &aviaryctl::observe::Snapshot| s.versions.get("canary").map_or(0, |v| v.requests);
    if late(&end) > late(&after_apply) {
        problems.push(format!("{} requests went to the canary after the kill switch applied", late(&end) - late(&after_apply)));
    }
    if report.summary.errors > 0 {
        problems.push(format!("rollback load: {} transport errors", report.summary.errors));
    }
    rig.canary.update(|c| c.fault = Fault::None)?;
    rig.sink.write(base)?;
    wait_for(&mut conn, rig, "canary", Duration::from_secs(2))?;
    thread::sleep(Duration::from_millis(300));
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
    Ok(Rollback {
        detect_ms: ms(breach, decided),
        write_ms: ms(decided, written),
        apply_ms: ms(written, applied),
    })
}

