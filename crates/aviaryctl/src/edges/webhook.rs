//! Webhooks: rollout events pushed to a URL, and the confirmation gates.
//!
//! # Event contract
//! Each event is a JSON `POST` (`content-type: application/json`) of the payload the decision
//! step built ([`Notification::payload`]), e.g. `{"event":"rollback","rollout":"recsys-v2",
//! "service":"recsys","stage":"step 2 (5%)","canaryWeightBps":0,"reason":"...","atMs":...}`.
//! Any 2xx answer is success. Connection errors, timeouts, 408, 429 and 5xx are retried with
//! exponential backoff ([`RetryPolicy`]); other statuses fail at once.
//!
//! Hooks declared in the spec only receive their listed `events`, and their `metadata` map is
//! added to every payload as `"metadata"`.
//!
//! # Formats
//! A hook's `format` shapes the body: `json` (the payload above, byte for byte), or a message
//! people read in a chat tool ([`format`]): `slack` (incoming webhook: `text` plus `blocks`),
//! `teams` (a workflows `message` with an Adaptive Card 1.4 attachment) or `discord` (`content`
//! plus one embed). Each shows the event and rollout, the evidence line (`reason`), the stage,
//! canary weight and outcome, and links to the report (`reportUrl`, else `report.md` in the
//! spec's `reportDir`) and to `dashboardUrl` if given; long text is cut, on character
//! boundaries, to the service's limits. Chat hooks cannot answer confirmation events.
//!
//! # Secrets
//! `urlFrom: {env: NAME}` / `{file: PATH}` and header values `{env: NAME}` / `{file: PATH}` are
//! read once, when the webhooks are built at start; a missing variable or file is a spec error
//! naming the field. The values are kept in memory only: hook names show where a URL comes
//! from, not the URL, and error messages have the values replaced by `<secret>`.
//!
//! # Confirmation contract
//! Before a gated weight increase or promotion the driver `POST`s the same kind of payload
//! with `"event":"confirm-traffic-increase"` or `"confirm-promotion"` to the hooks listening
//! for that event. The receiver answers:
//! - **approve**: HTTP 200 with JSON `{"approved": true}`, or a plain-text body `yes` or
//!   `approved` (case-insensitive);
//! - **reject**: HTTP 200 with `{"approved": false, "reason": "..."}` or a body `no` /
//!   `rejected`;
//! - **not yet**: HTTP 202, or a 2xx with any other body. The driver holds and asks again at
//!   the next analysis interval.
//!
//! Errors (after retries) also hold: a promotion needs a positive answer.

pub mod format;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::spec::{
    Event as SpecEvent, HeaderValue, HumanDuration, SecretRef, WebhookFormat, WebhookSpec,
};
use crate::core::step::Notification;
use crate::edges::http::{agent, transport_message};
use crate::error::{Error, SpecError};

/// The receiver's answer to a confirm-promotion request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "approval", rename_all = "snake_case")]
pub enum Approval {
    Approved,
    Rejected { reason: String },
    Pending,
}

/// Something that hears about rollout events.
pub trait Notifier: Send + Sync {
    /// Delivers one event (blocking, with the notifier's own retries).
    fn notify(&self, event: &Notification) -> Result<(), Error>;
}

/// Something that can approve a promotion.
pub trait Approver: Send + Sync {
    /// Asks whether the gated change may proceed.
    fn confirm(&self, request: &Notification) -> Result<Approval, Error>;
    /// Whether this approver answers for `event`.
    fn answers(&self, event: SpecEvent) -> bool;
}

/// Retry behaviour of a webhook call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total (at least 1).
    pub attempts: u32,
    /// Timeout of one attempt (connect + response).
    pub timeout: Duration,
    /// Backoff before the second attempt; doubles after each failure.
    pub initial_backoff: Duration,
    /// Cap of one backoff.
    pub max_backoff: Duration,
    /// Cap of the whole call including retries.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            timeout: Duration::from_secs(2),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            deadline: Duration::from_secs(10),
        }
    }
}

/// Posts JSON to one URL with retries.
#[derive(Clone)]
pub struct WebhookNotifier {
    name: String,
    url: String,
    headers: Vec<(String, String)>,
    policy: RetryPolicy,
    agent: ureq::Agent,
    /// Events this hook receives; `None` means all.
    events: Option<Vec<SpecEvent>>,
    /// Copied into every payload as `metadata`.
    metadata: BTreeMap<String, String>,
    /// The body's shape.
    format: WebhookFormat,
    /// Links chat messages carry.
    links: format::Links,
    /// Values read from `urlFrom` and `{env}`/`{file}` headers, scrubbed from every message.
    secrets: Vec<String>,
}

impl std::fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("headers", &self.headers.len())
            .finish_non_exhaustive()
    }
}

/// Reads a secret; the error names `field` and where the value was to come from, never a value.
fn read_secret(field: &str, r: &SecretRef) -> Result<String, SpecError> {
    let value = match (&r.env, &r.file) {
        (Some(name), None) => match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => v,
            Ok(_) => {
                return Err(SpecError::new(
                    field,
                    format!("environment variable {name} is empty"),
                ))
            }
            Err(_) => {
                return Err(SpecError::new(
                    field,
                    format!("environment variable {name} is not set"),
                ))
            }
        },
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(v) if !v.trim().is_empty() => v,
            Ok(_) => return Err(SpecError::new(field, format!("file {path} is empty"))),
            Err(e) => {
                return Err(SpecError::new(
                    field,
                    format!("cannot read file {path}: {}", e.kind()),
                ))
            }
        },
        _ => {
            return Err(SpecError::new(
                field,
                "give exactly one of `env: NAME` or `file: PATH`",
            ))
        }
    };
    Ok(value.trim().to_string())
}

/// What one attempt produced.
enum Attempt {
    Done(u16, String),
    Retry(String),
    Fail(String),
}

impl WebhookNotifier {
    /// A webhook posting to `url` with the default [`RetryPolicy`].
    pub fn new(url: impl Into<String>) -> Self {
        Self::with_policy(url, RetryPolicy::default())
    }

    /// A webhook with this retry policy.
    pub fn with_policy(url: impl Into<String>, policy: RetryPolicy) -> Self {
        let url = url.into();
        WebhookNotifier {
            name: url.clone(),
            url,
            headers: Vec::new(),
            policy,
            agent: agent(policy.timeout),
            events: None,
            metadata: BTreeMap::new(),
            format: WebhookFormat::Json,
            links: format::Links::default(),
            secrets: Vec::new(),
        }
    }

    /// The webhooks a rollout spec declares (see [`WebhookNotifier::from_spec`]); every
    /// secret that cannot be read is reported, each naming its field. Chat messages of hooks
    /// without a `reportUrl` point to `report.md` in `report_dir` (the spec's `reportDir`).
    pub fn from_specs(specs: &[WebhookSpec], report_dir: Option<&str>) -> Result<Vec<Self>, Error> {
        let mut hooks = Vec::new();
        let mut errors = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            match Self::resolve(spec, &format!("spec.webhooks[{i}]")) {
                Ok(mut h) => {
                    if h.links.report.is_none() {
                        h.links.report =
                            report_dir.map(|d| format!("{}/report.md", d.trim_end_matches('/')));
                    }
                    hooks.push(h)
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if errors.is_empty() {
            Ok(hooks)
        } else {
            Err(errors.into())
        }
    }

    /// A webhook as declared in a rollout spec: `retries` after the first attempt, each
    /// bounded by `timeout`, only for the listed `events`, with its `metadata`, `format` and
    /// links. A `urlFrom` URL and `{env}`/`{file}` headers are read now; a missing variable or
    /// file is a spec error naming the field.
    pub fn from_spec(spec: &WebhookSpec) -> Result<Self, Error> {
        Self::resolve(spec, &format!("webhook {}", spec.name)).map_err(Error::from)
    }

    fn resolve(spec: &WebhookSpec, at: &str) -> Result<Self, Vec<SpecError>> {
        let mut errors = Vec::new();
        let mut secrets = Vec::new();
        let url = match &spec.url_from {
            Some(r) => match read_secret(&format!("{at}.urlFrom"), r) {
                Ok(u) => {
                    secrets.push(u.clone());
                    u
                }
                Err(e) => {
                    errors.push(e);
                    String::new()
                }
            },
            None => spec.url.clone(),
        };
        let mut headers = Vec::new();
        for (name, value) in &spec.headers {
            match value {
                HeaderValue::Value(v) => headers.push((name.clone(), v.clone())),
                HeaderValue::From(r) => match read_secret(&format!("{at}.headers.{name}"), r) {
                    Ok(v) => {
                        secrets.push(v.clone());
                        headers.push((name.clone(), v));
                    }
                    Err(e) => errors.push(e),
                },
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let timeout = HumanDuration::as_std(spec.timeout).max(Duration::from_millis(1));
        let attempts = spec.retries.saturating_add(1);
        let policy = RetryPolicy {
            attempts,
            timeout,
            deadline: timeout * attempts + Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        let mut hook = Self::with_policy(url, policy);
        hook.name = format!("{} ({})", spec.name, spec.describe_url());
        hook.headers = headers;
        hook.events = Some(spec.events.clone());
        hook.metadata = spec.metadata.clone();
        hook.format = spec.format;
        hook.links = format::Links {
            report: spec.report_url.clone(),
            dashboard: spec.dashboard_url.clone(),
        };
        hook.secrets = secrets;
        Ok(hook)
    }

    /// Sends bodies in this format (default `json`).
    pub fn format(mut self, format: WebhookFormat, links: format::Links) -> Self {
        self.format = format;
        self.links = links;
        self
    }

    /// Whether this hook receives `event`.
    pub fn listens(&self, event: SpecEvent) -> bool {
        self.events.as_ref().is_none_or(|e| e.contains(&event))
    }

    /// Adds a header to every request (e.g. `authorization`).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn error(&self, message: String) -> Error {
        Error::Webhook {
            name: self.name.clone(),
            message: self.scrub(message),
        }
    }

    /// `message` with every secret value replaced by `<secret>`.
    fn scrub(&self, mut message: String) -> String {
        for s in &self.secrets {
            if !s.is_empty() {
                message = message.replace(s.as_str(), "<secret>");
            }
        }
        message
    }

    fn payload(&self, body: &impl Serialize) -> Result<String, Error> {
        if !self.format.is_json() {
            let v = serde_json::to_value(body)
                .map_err(|e| self.error(format!("serializing the payload: {e}")))?;
            if let Some(msg) = format::render(self.format, &v, &self.links) {
                return Ok(msg.to_string());
            }
        }
        let mut v = serde_json::to_value(body)
            .map_err(|e| self.error(format!("serializing the payload: {e}")))?;
        if !self.metadata.is_empty() {
            if let Some(o) = v.as_object_mut() {
                o.insert("metadata".into(), serde_json::json!(self.metadata));
            }
        }
        Ok(v.to_string())
    }

    fn attempt(&self, body: &str) -> Attempt {
        let mut req = self
            .agent
            .post(&self.url)
            .set("content-type", "application/json");
        for (k, v) in &self.headers {
            req = req.set(k, v);
        }
        match req.send_string(body) {
            Ok(resp) => {
                let status = resp.status();
                Attempt::Done(status, resp.into_string().unwrap_or_default())
            }
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let msg = format!(
                    "HTTP {code}: {}",
                    text.chars().take(200).collect::<String>()
                );
                if code == 408 || code == 429 || code >= 500 {
                    Attempt::Retry(msg)
                } else {
                    Attempt::Fail(msg)
                }
            }
            Err(ureq::Error::Transport(t)) => Attempt::Retry(transport_message(&t)),
        }
    }

    /// Posts `body`, retrying per the policy; returns the status and body of the 2xx answer.
    pub fn post(&self, body: &str) -> Result<(u16, String), Error> {
        let started = Instant::now();
        let mut backoff = self.policy.initial_backoff;
        let attempts = self.policy.attempts.max(1);
        let mut last = String::new();
        let mut attempts_made = 0;
        for n in 1..=attempts {
            attempts_made = n;
            match self.attempt(body) {
                Attempt::Done(status, text) => return Ok((status, text)),
                Attempt::Fail(msg) => return Err(self.error(msg)),
                Attempt::Retry(msg) => {
                    tracing::debug!(webhook = %self.name, attempt = n, error = %self.scrub(msg.clone()), "webhook attempt failed");
                    last = msg
                }
            }
            if n == attempts || started.elapsed() + backoff >= self.policy.deadline {
                break;
            }
            thread::sleep(backoff);
            backoff = (backoff * 2).min(self.policy.max_backoff);
        }
        Err(self.error(format!(
            "failed after {attempts_made} attempts in {:?}: {last}",
            started.elapsed()
        )))
    }
}

impl Notifier for WebhookNotifier {
    fn notify(&self, event: &Notification) -> Result<(), Error> {
        if !self.listens(event.event) {
            return Ok(());
        }
        let body = self.payload(&event.payload)?;
        self.post(&body).map(|_| ())
    }
}

impl Approver for WebhookNotifier {
    fn confirm(&self, request: &Notification) -> Result<Approval, Error> {
        let body = self.payload(&request.payload)?;
        let (status, text) = self.post(&body)?;
        Ok(parse_approval(status, &text))
    }

    fn answers(&self, event: SpecEvent) -> bool {
        self.listens(event)
    }
}

/// Interprets a confirm-promotion answer (see the module docs for the contract).
pub fn parse_approval(status: u16, body: &str) -> Approval {
    if status != 200 {
        return Approval::Pending;
    }
    let trimmed = body.trim();
    if let Ok(v) = serde_json::from_str::<Value>(trimmed) {
        return match v.get("approved").and_then(Value::as_bool) {
            Some(true) => Approval::Approved,
            Some(false) => Approval::Rejected {
                reason: v
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("rejected by the approver")
                    .to_string(),
            },
            None => Approval::Pending,
        };
    }
    match trimmed.to_ascii_lowercase().as_str() {
        "yes" | "approved" => Approval::Approved,
        "no" | "rejected" => Approval::Rejected {
            reason: "rejected by the approver".into(),
        },
        _ => Approval::Pending,
    }
}

enum Job {
    Event(Box<Notification>),
    Flush(SyncSender<()>),
}

/// Delivers events from a background thread, so slow or failing webhooks (with their retries)
/// never delay the runner's loop. The queue is bounded; when it is full, new events are
/// dropped and counted.
pub struct BackgroundNotifier {
    tx: SyncSender<Job>,
    dropped: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl BackgroundNotifier {
    /// Starts the delivery thread for `inner` with a queue of `capacity` events. Delivery
    /// errors are passed to `on_error` (e.g. the runner's logger).
    pub fn spawn(
        inner: Box<dyn Notifier>,
        capacity: usize,
        on_error: impl Fn(&Notification, &Error) + Send + 'static,
    ) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Job>(capacity.max(1));
        let failed = Arc::new(AtomicU64::new(0));
        let failed_in = failed.clone();
        thread::spawn(move || deliver(rx, inner, failed_in, on_error));
        BackgroundNotifier {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            failed,
        }
    }

    /// Queues an event; never blocks.
    pub fn send(&self, event: Notification) {
        match self.tx.try_send(Job::Event(Box::new(event))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits until every event queued so far was delivered (or failed), for at most `timeout`.
    /// Returns whether the queue drained in time.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        let deadline = Instant::now() + timeout;
        let mut job = Job::Flush(done_tx);
        loop {
            match self.tx.try_send(job) {
                Ok(()) => break,
                Err(TrySendError::Full(j)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    job = j;
                    thread::sleep(Duration::from_millis(5));
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        !matches!(
            done_rx.recv_timeout(left),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected)
        )
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events whose delivery failed after retries.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

fn deliver(
    rx: Receiver<Job>,
    inner: Box<dyn Notifier>,
    failed: Arc<AtomicU64>,
    on_error: impl Fn(&Notification, &Error),
) {
    for job in rx {
        match job {
            Job::Event(e) => {
                if let Err(err) = inner.notify(&e) {
                    failed.fetch_add(1, Ordering::Relaxed);
                    on_error(&e, &err);
                }
            }
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

impl std::fmt::Debug for BackgroundNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackgroundNotifier")
            .field("dropped", &self.dropped())
            .field("failed", &self.failed())
            .finish()
    }
}

/// Sends every event to several notifiers, reporting the first error after trying all.
pub struct FanoutNotifier(pub Vec<Box<dyn Notifier>>);

impl Notifier for FanoutNotifier {
    fn notify(&self, event: &Notification) -> Result<(), Error> {
        let mut first = None;
        for n in &self.0 {
            if let Err(e) = n.notify(event) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}
