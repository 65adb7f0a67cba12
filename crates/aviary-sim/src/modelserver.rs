//! A simulated ML model server: one model version behind a keep-alive HTTP/1.1 endpoint.
//!
//! Every prediction is a pure function of `(seed, input id)`, so two servers with the same seed
//! answer identically, and a server with `disagree_rate = r` changes the label for a known,
//! seeded share `r` of inputs. That lets shadow-comparison tests assert disagreement rates.
//!
//! Routes: `GET /__stats` (counters as JSON), `POST /__stats/reset`, `GET /__health`,
//! `GET /__config`, `POST /__control` (a JSON [`ControlUpdate`]); every other request is a
//! prediction.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::http::{self, header, Headers};
use crate::rng::{keyed_hash, stable_hash, unit_f64, Rng};

/// How long a connection thread blocks in a read before checking for shutdown.
const POLL: Duration = Duration::from_millis(100);
/// Upper bound for any simulated delay, so a bad configuration cannot hang a test forever.
const MAX_DELAY: Duration = Duration::from_secs(120);

/// Distribution of prediction scores, clamped to `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ScoreDistribution {
    /// Beta(a, b); mean `a / (a + b)`.
    Beta {
        /// First shape parameter (> 0).
        a: f64,
        /// Second shape parameter (> 0).
        b: f64,
    },
    /// Normal(mean, std_dev), clamped to `[0, 1]`.
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation (>= 0).
        std_dev: f64,
    },
    /// Uniform on `[0, 1)`.
    Uniform,
}

impl ScoreDistribution {
    fn sample(&self, rng: &mut Rng) -> f64 {
        let x = match *self {
            Self::Beta { a, b } => rng.beta(a, b),
            Self::Normal { mean, std_dev } => mean + std_dev * rng.standard_normal(),
            Self::Uniform => rng.next_f64(),
        };
        x.clamp(0.0, 1.0)
    }

    fn validate(&self) -> anyhow::Result<()> {
        match *self {
            Self::Beta { a, b } if !(a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite()) => {
                bail!("beta parameters must be positive and finite, got a={a} b={b}")
            }
            Self::Normal { mean, std_dev } if !(mean.is_finite() && std_dev >= 0.0) => {
                bail!("normal needs a finite mean and std_dev >= 0, got {mean}, {std_dev}")
            }
            _ => Ok(()),
        }
    }
}

/// The random part of a simulated latency, added to [`Latency::base_ms`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LatencyTail {
    /// No random part.
    None,
    /// Exponential with this mean, in milliseconds.
    Exponential {
        /// Mean of the tail in milliseconds.
        mean_ms: f64,
    },
    /// Log-normal: `exp(mu + sigma * N(0,1))` milliseconds.
    LogNormal {
        /// Mean of the underlying normal (of ln ms).
        mu: f64,
        /// Standard deviation of the underlying normal.
        sigma: f64,
    },
}

/// Simulated service time of one request: a fixed base plus an optional seeded tail.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Fixed part in milliseconds.
    pub base_ms: f64,
    /// Random part.
    pub tail: LatencyTail,
}

impl Latency {
    /// No delay at all.
    pub const ZERO: Self = Self {
        base_ms: 0.0,
        tail: LatencyTail::None,
    };

    /// A fixed delay.
    pub fn fixed_ms(ms: f64) -> Self {
        Self {
            base_ms: ms,
            tail: LatencyTail::None,
        }
    }

    /// Draws the delay for the request with this sequence number.
    pub fn sample(&self, seed: u64, seq: u64) -> Duration {
        let mut rng = Rng::new(keyed_hash(seed, "latency", &seq.to_le_bytes()));
        let tail = match self.tail {
            LatencyTail::None => 0.0,
            LatencyTail::Exponential { mean_ms } => rng.exponential(mean_ms),
            LatencyTail::LogNormal { mu, sigma } => (mu + sigma * rng.standard_normal()).exp(),
        };
        let ms = (self.base_ms + tail).max(0.0);
        Duration::from_secs_f64(ms / 1000.0).min(MAX_DELAY)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let ok = self.base_ms.is_finite()
            && self.base_ms >= 0.0
            && match self.tail {
                LatencyTail::None => true,
                LatencyTail::Exponential { mean_ms } => mean_ms.is_finite() && mean_ms >= 0.0,
                LatencyTail::LogNormal { mu, sigma } => mu.is_finite() && sigma >= 0.0,
            };
        if !ok {
            bail!("invalid latency {self:?}");
        }
        Ok(())
    }
}

/// Failure modes for testing how the proxy copes with a broken (typically shadow) upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Behave normally.
    None,
    /// Read the request, then reset the connection (RST) without any response.
    Reset,
    /// Answer every prediction with this status and a JSON error body.
    Status(u16),
    /// Answer 200 with a body that is not JSON.
    NonJson,
}

/// Configuration of one simulated model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelServerConfig {
    /// Version name, echoed in `x-model-version` and the body's `model` field.
    pub version: String,
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Seed of predictions, latencies and disagreement.
    pub seed: u64,
    /// Share of predictions answered with 500, spread evenly: after `n` prediction requests,
    /// exactly `floor(n * error_rate)` have failed.
    pub error_rate: f64,
    /// Simulated service time.
    pub latency: Latency,
    /// Distribution of the prediction score.
    pub score: ScoreDistribution,
    /// Label set (at least two when `disagree_rate > 0`).
    pub labels: Vec<String>,
    /// Share of inputs (chosen by hashing `(seed, input id)`) for which the label differs from
    /// the baseline label that a server with the same seed and `disagree_rate = 0` gives.
    pub disagree_rate: f64,
    /// Failure mode.
    pub fault: Fault,
    /// Request header carrying the input id.
    pub input_header: String,
    /// Maximum number of simultaneously open connections; further ones are closed at once.
    pub max_connections: usize,
}

impl Default for ModelServerConfig {
    fn default() -> Self {
        Self {
            version: "v1".into(),
            port: 0,
            seed: 42,
            error_rate: 0.0,
            latency: Latency::ZERO,
            score: ScoreDistribution::Beta { a: 8.0, b: 2.0 },
            labels: ["cat", "dog", "bird", "fish"].map(String::from).to_vec(),
            disagree_rate: 0.0,
            fault: Fault::None,
            input_header: "x-input-id".into(),
            max_connections: 1024,
        }
    }
}

impl ModelServerConfig {
    /// Default configuration for the named version.
    pub fn new(version: impl Into<String>) -> Self {
        Self {
            version: version.into(),
            ..Self::default()
        }
    }

    /// Checks rates, distributions and labels.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.version.is_empty() || !self.version.bytes().all(|b| b.is_ascii_graphic()) {
            bail!(
                "version must be non-empty visible ASCII, got {:?}",
                self.version
            );
        }
        for (name, r) in [
            ("error_rate", self.error_rate),
            ("disagree_rate", self.disagree_rate),
        ] {
            if !(0.0..=1.0).contains(&r) {
                bail!("{name} must be within [0, 1], got {r}");
            }
        }
        if self.labels.is_empty() {
            bail!("at least one label is required");
        }
        if self.disagree_rate > 0.0 && self.labels.len() < 2 {
            bail!("disagree_rate > 0 needs at least two labels");
        }
        if let Fault::Status(s) = self.fault {
            if !(200..=599).contains(&s) {
                bail!("fault status must be within 200..=599, got {s}");
            }
        }
        if self.input_header.is_empty() {
            bail!("input_header must not be empty");
        }
        if self.max_connections == 0 {
            bail!("max_connections must be positive");
        }
        self.score.validate()?;
        self.latency.validate()
    }

    /// The deterministic prediction for an input id.
    pub fn predict(&self, input_id: &str) -> Prediction {
        predict(
            self.seed,
            &self.labels,
            &self.score,
            self.disagree_rate,
            input_id,
        )
    }
}

/// A model output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Predicted class.
    pub label: String,
    /// Confidence in `[0, 1]`, rounded to 4 decimals.
    pub score: f64,
}

/// Index into `labels` of the baseline label for an input; depends only on `(seed, input)`.
pub fn baseline_label_index(seed: u64, n_labels: usize, input_id: &str) -> usize {
    (keyed_hash(seed, "label", input_id.as_bytes()) % n_labels.max(1) as u64) as usize
}

/// Whether a server with this seed and disagreement rate changes the label for this input.
/// Monotone in the rate: an input that disagrees at rate `r` also disagrees at any `r' > r`.
pub fn disagrees(seed: u64, disagree_rate: f64, input_id: &str) -> bool {
    unit_f64(keyed_hash(seed, "disagree", input_id.as_bytes())) < disagree_rate
}

/// The deterministic prediction of a model with these parameters for an input id.
pub fn predict(
    seed: u64,
    labels: &[String],
    score: &ScoreDistribution,
    disagree_rate: f64,
    input_id: &str,
) -> Prediction {
    let n = labels.len();
    if n == 0 {
        return Prediction {
            label: String::new(),
            score: 0.0,
        };
    }
    let mut idx = baseline_label_index(seed, n, input_id);
    if n > 1 && disagrees(seed, disagree_rate, input_id) {
        let shift = 1 + keyed_hash(seed, "shift", input_id.as_bytes()) % (n as u64 - 1);
        idx = (idx + shift as usize) % n;
    }
    let mut rng = Rng::new(keyed_hash(seed, "score", input_id.as_bytes()));
    let s = score.sample(&mut rng);
    Prediction {
        label: labels[idx].clone(),
        score: (s * 10_000.0).round() / 10_000.0,
    }
}

/// Counters of a running model server, as served at `GET /__stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    /// Version name.
    pub version: String,
    /// Prediction requests received (including reset ones; excluding `/__*` routes).
    pub requests: u64,
    /// Responses sent per status code.
    pub by_status: BTreeMap<u16, u64>,
    /// Connections reset on purpose by [`Fault::Reset`].
    pub resets: u64,
}

impl ServerStats {
    /// Responses sent with this status.
    pub fn status(&self, code: u16) -> u64 {
        self.by_status.get(&code).copied().unwrap_or(0)
    }
}

/// A partial update of a running server's behaviour, accepted at `POST /__control`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlUpdate {
    /// New error rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// New disagreement rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disagree_rate: Option<f64>,
    /// New latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
    /// New failure mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

impl ControlUpdate {
    fn apply(&self, config: &mut ModelServerConfig) {
        if let Some(v) = self.error_rate {
            config.error_rate = v;
        }
        if let Some(v) = self.disagree_rate {
            config.disagree_rate = v;
        }
        if let Some(v) = self.latency {
            config.latency = v;
        }
        if let Some(v) = self.fault {
            config.fault = v;
        }
    }
}

const STATUS_SLOTS: usize = 600;

struct Shared {
    config: RwLock<Arc<ModelServerConfig>>,
    stopping: AtomicBool,
    /// Sequence number of prediction requests; drives error spreading and latency draws.
    seq: AtomicU64,
    requests: AtomicU64,
    resets: AtomicU64,
    by_status: Vec<AtomicU64>,
    connections: AtomicUsize,
}

impl Shared {
    fn config(&self) -> Arc<ModelServerConfig> {
        match self.config.read() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn stats(&self) -> ServerStats {
        let by_status = self
            .by_status
            .iter()
            .enumerate()
            .filter_map(|(code, n)| {
                let n = n.load(Ordering::Relaxed);
                (n > 0).then_some((code as u16, n))
            })
            .collect();
        ServerStats {
            version: self.config().version.clone(),
            requests: self.requests.load(Ordering::Relaxed),
            by_status,
            resets: self.resets.load(Ordering::Relaxed),
        }
    }

    fn reset_stats(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.resets.store(0, Ordering::Relaxed);
        for n in &self.by_status {
            n.store(0, Ordering::Relaxed);
        }
    }

    fn count_status(&self, status: u16) {
        if let Some(n) = self.by_status.get(usize::from(status)) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Sleeps for `d`, waking early when the server stops.
    fn sleep(&self, d: Duration) {
        let end = Instant::now() + d;
        while !self.stopping() {
            let now = Instant::now();
            if now >= end {
                break;
            }
            thread::sleep((end - now).min(Duration::from_millis(50)));
        }
    }
}

/// A running model server on 127.0.0.1. Stops (and closes its connections) when dropped.
pub struct ModelServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ModelServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelServer")
            .field("addr", &self.addr)
            .field("version", &self.shared.config().version)
            .finish()
    }
}

impl ModelServer {
    /// Validates the configuration, binds `127.0.0.1:port` and starts serving in background
    /// threads (one per connection).
    pub fn spawn(mut config: ModelServerConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let listener = TcpListener::bind(("127.0.0.1", config.port))
            .with_context(|| format!("binding 127.0.0.1:{}", config.port))?;
        let addr = listener.local_addr()?;
        config.port = addr.port();
        let shared = Arc::new(Shared {
            config: RwLock::new(Arc::new(config)),
            stopping: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            by_status: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            connections: AtomicUsize::new(0),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name(format!("modelserver-accept-{}", addr.port()))
            .spawn(move || accept_loop(listener, accept_shared))?;
        Ok(Self {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// Listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:34567`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Current configuration.
    pub fn config(&self) -> ModelServerConfig {
        (*self.shared.config()).clone()
    }

    /// Changes behaviour while running (the port and listener stay). Invalid updates are
    /// rejected and leave the configuration unchanged.
    pub fn update(&self, f: impl FnOnce(&mut ModelServerConfig)) -> anyhow::Result<()> {
        let mut guard = match self.shared.config.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut next = (**guard).clone();
        f(&mut next);
        next.port = self.addr.port();
        next.validate()?;
        *guard = Arc::new(next);
        Ok(())
    }

    /// Applies a [`ControlUpdate`], as `POST /__control` does.
    pub fn control(&self, update: &ControlUpdate) -> anyhow::Result<()> {
        self.update(|c| update.apply(c))
    }

    /// Snapshot of the counters.
    pub fn stats(&self) -> ServerStats {
        self.shared.stats()
    }

    /// Zeroes the counters.
    pub fn reset_stats(&self) {
        self.shared.reset_stats();
    }

    /// Number of currently open client connections.
    pub fn open_connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Blocks until the server is stopped from another thread (used by the binary, which is
    /// ended by a signal).
    pub fn wait(mut self) {
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }

    /// Stops accepting, closes idle connections and waits (up to 2 s) for in-flight requests.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        // Unblock the accept call; the loop sees the flag and exits.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.shared.connections.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        if self.accept.is_some() {
            self.shutdown();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping() {
            break;
        }
        let Ok(stream) = stream else {
            // Transient errors such as EMFILE: back off instead of spinning.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let max = shared.config().max_connections;
        if shared.connections.fetch_add(1, Ordering::AcqRel) >= max {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        let conn_shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name("modelserver-conn".into())
            .spawn(move || {
                let _ = serve_connection(stream, &conn_shared);
                conn_shared.connections.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, value: &impl Serialize) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(value).unwrap_or_default(),
        }
    }
}

fn serve_connection(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    let idle = |_: bool| !shared.stopping();
    while !shared.stopping() {
        let Some(head) = http::read_head(&mut reader, &idle)? else {
            return Ok(());
        };
        let mut parts = head.start.split(' ');
        let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
            (Some(m), Some(t), Some(v)) if v.starts_with("HTTP/1.") => {
                (m.to_string(), t.to_string(), v.to_string())
            }
            _ => {
                let framing = Framing {
                    keep_alive: false,
                    http10: false,
                    head: false,
                };
                write_reply(
                    reader.get_mut(),
                    &Reply::json(400, &serde_json::json!({"error": "bad request line"})),
                    "",
                    &framing,
                )?;
                return Ok(());
            }
        };
        let kind = http::body_kind(&head.headers, false)?;
        let body = http::read_body(&mut reader, kind, &idle)?;
        let framing = Framing {
            keep_alive: http::keep_alive(&version, &head.headers),
            http10: version.eq_ignore_ascii_case("HTTP/1.0"),
            head: method.eq_ignore_ascii_case("HEAD"),
        };
        let path = target.split('?').next().unwrap_or("");
        let config = shared.config();

        if let Some(reply) = admin_route(shared, &method, path, &body) {
            write_reply(reader.get_mut(), &reply, &config.version, &framing)?;
        } else {
            shared.requests.fetch_add(1, Ordering::Relaxed);
            let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
            shared.sleep(config.latency.sample(config.seed, seq));
            if config.fault == Fault::Reset {
                shared.resets.fetch_add(1, Ordering::Relaxed);
                reset(reader.get_ref());
                return Ok(());
            }
            let reply = prediction_reply(&config, &head.headers, &body, seq);
            shared.count_status(reply.status);
            write_reply(reader.get_mut(), &reply, &config.version, &framing)?;
        }
        if !framing.keep_alive {
            let _ = reader.get_ref().shutdown(Shutdown::Write);
            return Ok(());
        }
    }
    Ok(())
}

fn admin_route(shared: &Shared, method: &str, path: &str, body: &[u8]) -> Option<Reply> {
    let reply = match (method, path) {
        ("GET", "/__stats") => Reply::json(200, &shared.stats()),
        ("POST", "/__stats/reset") => {
            shared.reset_stats();
            Reply::json(200, &shared.stats())
        }
        ("GET", "/__health") => Reply::json(200, &serde_json::json!({"status": "ok"})),
        ("GET", "/__config") => Reply::json(200, &*shared.config()),
        ("POST", "/__control") => match control(shared, body) {
            Ok(config) => Reply::json(200, &config),
            Err(e) => Reply::json(400, &serde_json::json!({"error": format!("{e:#}")})),
        },
        (_, p) if p.starts_with("/__") => {
            Reply::json(404, &serde_json::json!({"error": "unknown admin route"}))
        }
        _ => return None,
    };
    Some(reply)
}

fn control(shared: &Shared, body: &[u8]) -> anyhow::Result<ModelServerConfig> {
    let update: ControlUpdate = serde_json::from_slice(body).context("parsing control update")?;
    let mut guard = match shared.config.write() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    let mut next = (**guard).clone();
    update.apply(&mut next);
    next.validate()?;
    *guard = Arc::new(next.clone());
    Ok(next)
}

/// The input id: the configured header, else a hash of the body, else the request sequence.
fn input_id(config: &ModelServerConfig, headers: &Headers, body: &[u8], seq: u64) -> String {
    if let Some(id) = header(headers, &config.input_header).filter(|v| !v.is_empty()) {
        id.to_string()
    } else if !body.is_empty() {
        format!("body-{:016x}", stable_hash(body))
    } else {
        format!("req-{seq}")
    }
}

/// Whether request `seq` fails under even spreading of `rate`.
fn spread_error(rate: f64, seq: u64) -> bool {
    rate > 0.0 && ((seq + 1) as f64 * rate).floor() > (seq as f64 * rate).floor()
}

fn prediction_reply(config: &ModelServerConfig, headers: &Headers, body: &[u8], seq: u64) -> Reply {
    let input = input_id(config, headers, body, seq);
    let error = |status: u16| {
        Reply::json(
            status,
            &serde_json::json!({
                "model": config.version,
                "error": "simulated failure",
                "input": input,
            }),
        )
    };
    match config.fault {
        Fault::Status(s) => error(s),
        Fault::NonJson => Reply {
            status: 200,
            content_type: "text/html",
            body: format!("<html><body>model {} says hi</body></html>", config.version)
                .into_bytes(),
        },
        _ if spread_error(config.error_rate, seq) => error(500),
        _ => Reply::json(
            200,
            &serde_json::json!({
                "model": config.version,
                "prediction": config.predict(&input),
                "input": input,
            }),
        ),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Per-request framing decisions for the response.
struct Framing {
    keep_alive: bool,
    http10: bool,
    head: bool,
}

fn write_reply(
    stream: &mut TcpStream,
    reply: &Reply,
    version: &str,
    framing: &Framing,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(256 + reply.body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type,
        reply.body.len()
    );
    if !version.is_empty() {
        let _ = write!(out, "x-model-version: {version}\r\n");
    }
    match (framing.keep_alive, framing.http10) {
        (false, _) => out.extend_from_slice(b"connection: close\r\n"),
        (true, true) => out.extend_from_slice(b"connection: keep-alive\r\n"),
        (true, false) => {}
    }
    out.extend_from_slice(b"\r\n");
    if !framing.head {
        out.extend_from_slice(&reply.body);
    }
    stream.write_all(&out)
}

/// Closes with RST rather than FIN, so the peer sees a reset and not a clean close.
fn reset(stream: &TcpStream) {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: the fd is owned by `stream` and valid for this call; the option value is a
        // properly sized `linger` struct.
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_spreading_is_exact() {
        for rate in [0.0, 0.05, 0.1, 0.25, 1.0 / 3.0, 0.5, 1.0] {
            for n in [1u64, 7, 100, 1000] {
                let errors = (0..n).filter(|&s| spread_error(rate, s)).count() as u64;
                assert_eq!(
                    errors,
                    (n as f64 * rate).floor() as u64,
                    "rate {rate} n {n}"
                );
            }
        }
    }

    #[test]
    fn config_validation() {
        assert!(ModelServerConfig::new("v1").validate().is_ok());
        let bad = ModelServerConfig {
            error_rate: 1.5,
            ..ModelServerConfig::new("v1")
        };
        assert!(bad.validate().is_err());
        let bad = ModelServerConfig {
            labels: vec!["only".into()],
            disagree_rate: 0.1,
            ..ModelServerConfig::new("v1")
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn config_round_trips_through_json() {
        let c = ModelServerConfig {
            latency: Latency {
                base_ms: 3.0,
                tail: LatencyTail::LogNormal {
                    mu: 1.0,
                    sigma: 0.5,
                },
            },
            fault: Fault::Status(503),
            ..ModelServerConfig::new("v2")
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<ModelServerConfig>(&json).unwrap(), c);
        let u: ControlUpdate = serde_json::from_str(r#"{"fault":"reset"}"#).unwrap();
        assert_eq!(u.fault, Some(Fault::Reset));
    }
}
