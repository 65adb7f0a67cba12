//! Shared helpers of the `edges_*` tests: a real Envoy running the release plugin over ECDS
//! (from the shipped `envoy/aviary-ecds.yaml`, on free ports), simulated model servers, a
//! temporary directory, and bounded polling.
#![allow(dead_code)]

pub mod openapi;
pub mod prometheus;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aviary_contract::config::PluginConfig;
use aviary_sim::{EnvoyBuilder, EnvoyProcess, ModelServer, ModelServerConfig};
use aviaryctl::edges::sink::EcdsFileSink;

static DIRS: AtomicU32 = AtomicU32::new(0);
static WASM_BUILD: Mutex<()> = Mutex::new(());

/// The workspace root (`/work/main`).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/aviaryctl has a workspace root")
        .to_path_buf()
}

/// The release plugin, built on first use if missing.
pub fn wasm() -> PathBuf {
    let p = root().join("target/wasm32-wasip1/release/aviary.wasm");
    let _guard = WASM_BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !p.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip1",
                "-p",
                "aviary",
            ])
            .current_dir(root())
            .status()
            .expect("running cargo to build the plugin");
        assert!(status.success(), "building aviary.wasm failed");
    }
    assert!(p.exists(), "{} is missing", p.display());
    p
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "aviaryctl-{tag}-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("AVIARY_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The demo plugin config with the canary at `canary_bps`.
pub fn plugin_config(canary_bps: u32) -> PluginConfig {
    let json = format!(
        r#"{{"service":"recsys","versions":[{{"name":"stable","weight":{}}},{{"name":"canary","weight":{canary_bps}}}],"sticky":{{"keys":[{{"header":"x-user-id"}}]}}}}"#,
        10_000 - canary_bps
    );
    PluginConfig::from_json(json.as_bytes()).expect("valid demo config")
}

/// The shipped ECDS bootstrap as a template: free ports, and the ECDS resource at `{{ECDS}}`.
pub fn envoy_template() -> String {
    let shipped = std::fs::read_to_string(root().join("envoy/aviary-ecds.yaml"))
        .expect("reading envoy/aviary-ecds.yaml");
    let t = aviary_sim::shipped_config_template(&shipped);
    assert!(
        t.contains("{{ECDS}}") && t.contains("{{STABLE_PORT}}"),
        "envoy/aviary-ecds.yaml changed shape; update edges_support"
    );
    t
}

pub fn model(version: &str, tweak: impl FnOnce(&mut ModelServerConfig)) -> ModelServer {
    let mut cfg = ModelServerConfig::new(version);
    tweak(&mut cfg);
    ModelServer::spawn(cfg).expect("model server starts")
}

/// Starts an Envoy reading the ECDS resource at `ecds`.
pub fn start_envoy(ecds: &Path, stable: &ModelServer, canary: &ModelServer) -> EnvoyProcess {
    EnvoyBuilder::new(envoy_template())
        .var("STABLE_PORT", stable.port())
        .var("CANARY_PORT", canary.port())
        .path_var("ECDS", ecds)
        .start()
        .expect("envoy starts")
}

/// One or more Envoys sharing one ECDS file, with their model servers.
pub struct Rig {
    pub dir: TempDir,
    pub ecds: PathBuf,
    pub sink: EcdsFileSink,
    pub stable: ModelServer,
    pub canary: ModelServer,
    pub envoys: Vec<EnvoyProcess>,
    pub urls: Vec<String>,
}

impl Rig {
    /// Writes `initial` with the ECDS sink, then starts `n` Envoys on it.
    pub fn start(n: usize, initial: &PluginConfig) -> Rig {
        use aviaryctl::edges::sink::ConfigSink;
        let dir = TempDir::new("rig");
        let ecds = dir.join("ecds.json");
        let sink = EcdsFileSink::new(&ecds, "aviary", wasm().display().to_string());
        sink.write(initial).expect("initial ECDS write");
        // 2 ms of service time: the plugin's histogram counts whole milliseconds, and the
        // tests read its sum.
        let stable = model("stable", |c| c.latency = aviary_sim::Latency::fixed_ms(2.0));
        let canary = model("canary", |c| c.latency = aviary_sim::Latency::fixed_ms(2.0));
        let envoys: Vec<EnvoyProcess> = (0..n)
            .map(|_| start_envoy(&ecds, &stable, &canary))
            .collect();
        let urls = envoys
            .iter()
            .map(|e| {
                let port = e.listener_port("ingress").expect("listener port");
                format!("http://127.0.0.1:{port}/predict")
            })
            .collect();
        Rig {
            dir,
            ecds,
            sink,
            stable,
            canary,
            envoys,
            urls,
        }
    }

    pub fn admin_urls(&self) -> Vec<String> {
        self.envoys
            .iter()
            .map(|e| e.admin_url().to_string())
            .collect()
    }
}

/// Polls `f` every `every` until it returns `Some`, for at most `timeout`.
pub fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Percentile of a sample (nearest rank).
pub fn percentile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let idx = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[idx]
}

/// A rollout spec driving `rig` (ECDS sink, its Envoys' admin endpoints), with `analysis`
/// given as YAML lines indented under `analysis:`.
pub fn rollout_yaml(rig: &Rig, name: &str, analysis: &str) -> String {
    let admins: Vec<String> = rig
        .admin_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect();
    format!(
        r#"apiVersion: aviary.dev/v1
kind: Rollout
metadata: {{name: {name}}}
spec:
  baseline: stable
  canary: canary
  config:
    ecdsFile: {ecds}
    filterName: aviary
    wasmFile: {wasm}
    pluginConfig:
      service: recsys
      versions: [{{name: stable, weight: 10000}}, {{name: canary, weight: 0}}]
      sticky: {{keys: [{{header: x-user-id}}]}}
  metrics: {{envoyAdmin: [{admins}], timeout: 500ms}}
  analysis:
{analysis}
"#,
        ecds = rig.ecds.display(),
        wasm = wasm().display(),
        admins = admins.join(", "),
    )
}

/// One probe answer: when it arrived, which version served it, the status.
pub type ProbeSample = (Instant, Option<String>, u16);

/// Sends back-to-back requests as one user on one keep-alive connection and records when
/// each answer arrived and which version served it.
pub struct Probe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<ProbeSample>>>,
}

impl Probe {
    pub fn start(url: &str, user: &str) -> Probe {
        use std::sync::atomic::{AtomicBool, Ordering};
        let u = aviary_sim::Url::parse(url).expect("url");
        let user = user.to_string();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut conn =
                aviary_sim::HttpConnection::connect(u.addr, &u.authority, Duration::from_secs(2))
                    .expect("probe connects");
            let deadline = Instant::now() + Duration::from_secs(60);
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                let req = aviary_sim::HttpRequest::get(&u.path).header("x-user-id", user.as_str());
                match conn.send(&req) {
                    Ok(r) => {
                        out.push((
                            Instant::now(),
                            r.header("x-aviary-served-by").map(str::to_string),
                            r.status,
                        ));
                        // About 500 probes a second: 2 ms resolution without hogging a core.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(_) => {
                        conn = aviary_sim::HttpConnection::connect(
                            u.addr,
                            &u.authority,
                            Duration::from_secs(2),
                        )
                        .expect("probe reconnects");
                    }
                }
            }
            out
        });
        Probe {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops and returns the samples.
    pub fn finish(mut self) -> Vec<ProbeSample> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle
            .take()
            .map(|h| h.join().expect("probe thread"))
            .unwrap_or_default()
    }

    /// Time from `from` until the probe's answers were served by `version` for good.
    pub fn settled(samples: &[ProbeSample], from: Instant, version: &str) -> Option<Duration> {
        let last_other = samples
            .iter()
            .rposition(|(_, v, _)| v.as_deref() != Some(version))?;
        let first_good = samples.get(last_other + 1)?;
        Some(first_good.0.saturating_duration_since(from))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A user key the current config sends to `version`.
pub fn user_on(url: &str, version: &str) -> String {
    let u = aviary_sim::Url::parse(url).expect("url");
    let mut conn =
        aviary_sim::HttpConnection::connect(u.addr, &u.authority, Duration::from_secs(2))
            .expect("connect");
    (0..10_000)
        .map(|i| format!("probe-{i}"))
        .find(|user| {
            let r = conn
                .send(&aviary_sim::HttpRequest::get(&u.path).header("x-user-id", user.as_str()))
                .expect("request");
            r.header("x-aviary-served-by") == Some(version)
        })
        .expect("some user lands on the version")
}

/// Kills (SIGKILL) and reaps a child process on drop, so a failing test leaves nothing behind.
pub struct ChildGuard(pub Option<std::process::Child>);

impl ChildGuard {
    pub fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("child present")
    }

    /// Waits for exit, at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child();
        poll(timeout, Duration::from_millis(10), || {
            child.try_wait().ok().flatten()
        })
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
