//! A keyed HTTP/1.1 traffic generator with exact client-side accounting.
//!
//! Requests are numbered by a global ticket counter. Ticket `k` always carries the same user
//! key and input id for a given seed (whichever connection sends it), so a run is a
//! reproducible request set. Every ticket that is sent ends up in exactly one bucket: a
//! response (by status and by the recorded response header) or an error (by kind), so the
//! counts can be compared one-to-one with Envoy's and the model servers' counters.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::http::{is_timeout, HttpConnection, Url};
use crate::rng::{keyed_hash, mix64};

/// Key used in [`LoadSummary::by_served_by`] for responses without the recorded header.
pub const NO_HEADER: &str = "(none)";

/// Hard ceilings that apply whatever the configuration says.
const MAX_REQUESTS: u64 = 50_000_000;
const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Duration bound used when only a request count is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(600);

/// What to send, how much and how fast.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Target URL on a loopback address, e.g. `http://127.0.0.1:10000/predict`.
    pub url: String,
    /// HTTP method; empty means POST when a body is set and GET otherwise.
    pub method: String,
    /// Number of requests to send. At least one of `requests` and `duration` must be set;
    /// with only a count, the run is still cut off after 10 minutes.
    pub requests: Option<u64>,
    /// How long to send for.
    pub duration: Option<Duration>,
    /// Parallel keep-alive connections (one thread each).
    pub connections: usize,
    /// Target total rate in requests per second (open loop); `None` sends as fast as the
    /// connections allow (closed loop). Ticket `k` is due at `k / rate` seconds; when all
    /// connections are busy it goes out late, and its latency is measured from the actual send.
    pub rate: Option<f64>,
    /// Header carrying the user key.
    pub user_header: String,
    /// Size of the user pool; keys are `user_prefix` + index in `0..users`.
    pub users: u64,
    /// Prefix of user keys.
    pub user_prefix: String,
    /// Seed for user and input selection.
    pub seed: u64,
    /// Header carrying the input id, if any.
    pub input_header: Option<String>,
    /// Size of the input pool; 0 gives every request its own input id.
    pub inputs: u64,
    /// Request body; `{{USER}}`, `{{INPUT}}` and `{{SEQ}}` are substituted per request.
    pub body: Option<String>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Response header whose value groups the results (e.g. `x-aviary-served-by`).
    pub record_header: String,
    /// Connect and per-response timeout.
    pub timeout: Duration,
    /// Keep one [`RequestRecord`] per request in the report.
    pub keep_records: bool,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            method: String::new(),
            requests: None,
            duration: None,
            connections: 4,
            rate: None,
            user_header: "x-user-id".into(),
            users: 1000,
            user_prefix: "user-".into(),
            seed: 1,
            input_header: None,
            inputs: 0,
            body: None,
            headers: Vec::new(),
            record_header: "x-aviary-served-by".into(),
            timeout: Duration::from_secs(5),
            keep_records: false,
        }
    }
}

impl LoadConfig {
    /// A closed-loop run of `requests` requests to `url` with defaults otherwise.
    pub fn requests(url: impl Into<String>, requests: u64) -> Self {
        Self {
            url: url.into(),
            requests: Some(requests),
            ..Self::default()
        }
    }

    /// A run of `duration` to `url` with defaults otherwise.
    pub fn duration(url: impl Into<String>, duration: Duration) -> Self {
        Self {
            url: url.into(),
            duration: Some(duration),
            ..Self::default()
        }
    }

    /// User key of ticket `seq`.
    pub fn user_for(&self, seq: u64) -> String {
        let idx = keyed_hash(self.seed, "user", &seq.to_le_bytes()) % self.users.max(1);
        format!("{}{idx}", self.user_prefix)
    }

    /// Input id of ticket `seq`.
    pub fn input_for(&self, seq: u64) -> String {
        let n = if self.inputs == 0 {
            seq
        } else {
            keyed_hash(self.seed, "input", &seq.to_le_bytes()) % self.inputs
        };
        input_name(self.seed, n)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.requests.is_none() && self.duration.is_none() {
            bail!("set a request count, a duration or both");
        }
        if self.connections == 0 || self.connections > 1024 {
            bail!("connections must be within 1..=1024");
        }
        if let Some(r) = self.rate {
            if !(r > 0.0 && r.is_finite()) {
                bail!("rate must be positive, got {r}");
            }
        }
        if self.users == 0 {
            bail!("users must be positive");
        }
        if self.user_header.is_empty() {
            bail!("user_header must not be empty");
        }
        if self.timeout.is_zero() {
            bail!("timeout must be positive");
        }
        Ok(())
    }
}

/// Deterministic input id for index `n` of a seeded pool.
pub fn input_name(seed: u64, n: u64) -> String {
    // mix64 is a bijection, so distinct indices never collide.
    format!("in-{:016x}", mix64(seed ^ mix64(n)))
}

/// Latency percentiles in milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Minimum.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl LatencyStats {
    /// Computes statistics from latencies in microseconds.
    pub fn from_micros(samples: &mut [u32]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let n = samples.len();
        let ms = |us: u32| f64::from(us) / 1000.0;
        let rank = |q: f64| {
            let r = (q * n as f64).ceil() as usize;
            ms(samples[r.clamp(1, n) - 1])
        };
        let sum: u64 = samples.iter().map(|&s| u64::from(s)).sum();
        Self {
            count: n as u64,
            mean: sum as f64 / n as f64 / 1000.0,
            min: ms(samples[0]),
            p50: rank(0.50),
            p90: rank(0.90),
            p95: rank(0.95),
            p99: rank(0.99),
            max: ms(samples[n - 1]),
        }
    }
}

/// Results for one value of the recorded response header.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// Responses with this header value.
    pub count: u64,
    /// Of those, per status code.
    pub by_status: BTreeMap<u16, u64>,
    /// Their latency.
    pub latency_ms: LatencyStats,
}

/// Outcome of one request, kept when [`LoadConfig::keep_records`] is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Ticket number.
    pub seq: u64,
    /// User key sent.
    pub user: String,
    /// Input id sent, if an input header was configured.
    pub input: Option<String>,
    /// Status, when a response arrived.
    pub status: Option<u16>,
    /// Value of the recorded header, when present.
    pub served_by: Option<String>,
    /// Error kind, when no response arrived.
    pub error: Option<String>,
    /// Time from sending to the complete response (or the error), in microseconds.
    pub latency_us: u64,
}

/// Aggregated results of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadSummary {
    /// Requests attempted (responses + errors).
    pub total: u64,
    /// Requests that got a complete HTTP response.
    pub responses: u64,
    /// Requests without a response.
    pub errors: u64,
    /// Errors per kind: `connect`, `timeout`, `reset`, `protocol`, `io`.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Responses per status code.
    pub by_status: BTreeMap<u16, u64>,
    /// Responses per value of the recorded header ([`NO_HEADER`] when absent).
    pub by_served_by: BTreeMap<String, GroupSummary>,
    /// Latency over all responses.
    pub latency_ms: LatencyStats,
    /// Distinct users that got at least one response.
    pub users_seen: u64,
    /// Users whose responses carried more than one distinct header value (stickiness check).
    pub users_split: u64,
    /// Wall time of the run in seconds.
    pub elapsed_s: f64,
    /// Achieved throughput (total / elapsed).
    pub rps: f64,
}

impl LoadSummary {
    /// Responses with this status.
    pub fn status(&self, code: u16) -> u64 {
        self.by_status.get(&code).copied().unwrap_or(0)
    }

    /// Responses whose recorded header had this value.
    pub fn served_by(&self, value: &str) -> u64 {
        self.by_served_by.get(value).map_or(0, |g| g.count)
    }

    /// Writes the summary as pretty JSON.
    pub fn write_json(&self, path: impl AsRef<Path>) -> anyhow::Result<()> {
        let path = path.as_ref();
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

impl fmt::Display for LoadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.latency_ms;
        writeln!(
            f,
            "{} requests in {:.2}s ({:.0} req/s): {} responses, {} errors",
            self.total, self.elapsed_s, self.rps, self.responses, self.errors
        )?;
        writeln!(
            f,
            "latency ms: p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
            l.p50, l.p95, l.p99, l.max
        )?;
        let statuses: Vec<String> = self
            .by_status
            .iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect();
        writeln!(f, "status: {}", statuses.join(" "))?;
        for (kind, n) in &self.errors_by_kind {
            writeln!(f, "error {kind}: {n}")?;
        }
        for (value, g) in &self.by_served_by {
            writeln!(
                f,
                "served-by {value}: {} ({:.1}%)  p50 {:.2}  p95 {:.2}  p99 {:.2}",
                g.count,
                100.0 * g.count as f64 / self.responses.max(1) as f64,
                g.latency_ms.p50,
                g.latency_ms.p95,
                g.latency_ms.p99
            )?;
        }
        write!(
            f,
            "users: {} seen, {} split across served-by values",
            self.users_seen, self.users_split
        )
    }
}

/// Summary plus optional per-request records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Aggregates.
    pub summary: LoadSummary,
    /// Per-request records, ordered by ticket (empty unless requested).
    pub records: Vec<RequestRecord>,
}

/// Per-thread accumulation, merged at the end so the hot path takes no locks.
#[derive(Default)]
struct Tally {
    total: u64,
    errors_by_kind: BTreeMap<String, u64>,
    by_status: BTreeMap<u16, u64>,
    latencies: Vec<u32>,
    groups: HashMap<String, (BTreeMap<u16, u64>, Vec<u32>)>,
    /// User key -> first header value and whether another value was seen.
    users: HashMap<String, (String, bool)>,
    records: Vec<RequestRecord>,
}

fn error_kind(e: &io::Error, connecting: bool) -> &'static str {
    if connecting {
        return if is_timeout(e) { "timeout" } else { "connect" };
    }
    match e.kind() {
        _ if is_timeout(e) => "timeout",
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::NotConnected => "reset",
        io::ErrorKind::InvalidData => "protocol",
        _ => "io",
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

struct Plan {
    config: LoadConfig,
    url: Url,
    method: String,
    max_requests: u64,
    start: Instant,
    deadline: Instant,
    next: AtomicU64,
}

impl Plan {
    fn encode(&self, seq: u64, user: &str, input: Option<&str>) -> Vec<u8> {
        let c = &self.config;
        let mut req = crate::http::HttpRequest {
            method: self.method.clone(),
            path: self.url.path.clone(),
            headers: Vec::with_capacity(c.headers.len() + 2),
            body: Vec::new(),
        };
        req.headers.push((c.user_header.clone(), user.to_string()));
        if let (Some(h), Some(i)) = (&c.input_header, input) {
            req.headers.push((h.clone(), i.to_string()));
        }
        req.headers.extend(c.headers.iter().cloned());
        if let Some(body) = &c.body {
            req.body = body
                .replace("{{USER}}", user)
                .replace("{{INPUT}}", input.unwrap_or(""))
                .replace("{{SEQ}}", &seq.to_string())
                .into_bytes();
        }
        req.encode(&self.url.authority)
    }
}

fn worker(plan: &Plan) -> Tally {
    let c = &plan.config;
    let mut tally = Tally::default();
    let mut conn: Option<HttpConnection> = None;
    let head_request = plan.method.eq_ignore_ascii_case("HEAD");
    loop {
        let seq = plan.next.fetch_add(1, Ordering::Relaxed);
        if seq >= plan.max_requests {
            break;
        }
        if let Some(rate) = c.rate {
            let due = plan.start + Duration::from_secs_f64(seq as f64 / rate);
            // The second check ends a run that lags behind its schedule on time as well.
            if due >= plan.deadline || Instant::now() >= plan.deadline {
                break;
            }
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
        } else if Instant::now() >= plan.deadline {
            break;
        }
        let user = c.user_for(seq);
        let input = c.input_header.as_ref().map(|_| c.input_for(seq));
        let bytes = plan.encode(seq, &user, input.as_deref());

        tally.total += 1;
        let sent = Instant::now();
        let mut connecting = false;
        let result = match conn.as_mut().filter(|k| k.is_open()) {
            Some(k) => k.send_encoded(&bytes, head_request),
            None => {
                connecting = true;
                HttpConnection::connect(plan.url.addr, &plan.url.authority, c.timeout).and_then(
                    |mut k| {
                        connecting = false;
                        let r = k.send_encoded(&bytes, head_request);
                        conn = Some(k);
                        r
                    },
                )
            }
        };
        let elapsed = sent.elapsed();
        let mut record = c.keep_records.then(|| RequestRecord {
            seq,
            user: user.clone(),
            input: input.clone(),
            status: None,
            served_by: None,
            error: None,
            latency_us: elapsed.as_micros() as u64,
        });
        match result {
            Ok(resp) => {
                let value = resp.header(&c.record_header).map(str::to_string);
                let key = value.clone().unwrap_or_else(|| NO_HEADER.to_string());
                *tally.by_status.entry(resp.status).or_default() += 1;
                tally.latencies.push(micros(elapsed));
                let group = tally.groups.entry(key.clone()).or_default();
                *group.0.entry(resp.status).or_default() += 1;
                group.1.push(micros(elapsed));
                match tally.users.get_mut(&user) {
                    Some((first, split)) => *split |= *first != key,
                    None => {
                        tally.users.insert(user, (key, false));
                    }
                }
                if let Some(r) = record.as_mut() {
                    r.status = Some(resp.status);
                    r.served_by = value;
                }
            }
            Err(e) => {
                let kind = error_kind(&e, connecting);
                *tally.errors_by_kind.entry(kind.to_string()).or_default() += 1;
                conn = None;
                if let Some(r) = record.as_mut() {
                    r.error = Some(kind.to_string());
                }
                if connecting {
                    // Avoid a hot loop of refused connects while the target is down.
                    thread::sleep(Duration::from_millis(5));
                }
            }
        }
        if let Some(r) = record {
            tally.records.push(r);
        }
    }
    tally
}

/// Runs the load described by `config` and returns the summary and, if asked, the records.
///
/// Blocks until the count is reached or the duration has passed; each request is bounded by
/// `config.timeout`, so the run ends at most one timeout after the deadline.
pub fn run(config: &LoadConfig) -> anyhow::Result<LoadReport> {
    config.validate()?;
    let url = Url::parse(&config.url)?;
    let method = match (config.method.is_empty(), config.body.is_some()) {
        (false, _) => config.method.to_ascii_uppercase(),
        (true, true) => "POST".to_string(),
        (true, false) => "GET".to_string(),
    };
    let duration = config
        .duration
        .unwrap_or(DEFAULT_DURATION)
        .min(MAX_DURATION);
    let start = Instant::now();
    let plan = Arc::new(Plan {
        config: config.clone(),
        url,
        method,
        max_requests: config.requests.unwrap_or(MAX_REQUESTS).min(MAX_REQUESTS),
        start,
        deadline: start + duration,
        next: AtomicU64::new(0),
    });
    let handles = (0..config.connections)
        .map(|i| {
            let plan = Arc::clone(&plan);
            thread::Builder::new()
                .name(format!("loadgen-{i}"))
                .spawn(move || worker(&plan))
        })
        .collect::<io::Result<Vec<_>>>()?;
    let mut tallies = Vec::with_capacity(handles.len());
    for h in handles {
        match h.join() {
            Ok(t) => tallies.push(t),
            Err(_) => bail!("a load generator thread panicked"),
        }
    }
    let elapsed = start.elapsed();
    Ok(merge(tallies, elapsed))
}

fn merge(tallies: Vec<Tally>, elapsed: Duration) -> LoadReport {
    let mut s = LoadSummary::default();
    let mut latencies = Vec::new();
    let mut groups: BTreeMap<String, (BTreeMap<u16, u64>, Vec<u32>)> = BTreeMap::new();
    let mut users: HashMap<String, (String, bool)> = HashMap::new();
    let mut records = Vec::new();
    for t in tallies {
        s.total += t.total;
        for (k, n) in t.errors_by_kind {
            *s.errors_by_kind.entry(k).or_default() += n;
        }
        for (k, n) in t.by_status {
            *s.by_status.entry(k).or_default() += n;
        }
        latencies.extend(t.latencies);
        for (key, (statuses, lat)) in t.groups {
            let g = groups.entry(key).or_default();
            for (k, n) in statuses {
                *g.0.entry(k).or_default() += n;
            }
            g.1.extend(lat);
        }
        for (user, (first, split)) in t.users {
            match users.get_mut(&user) {
                Some((f, sp)) => *sp |= split || *f != first,
                None => {
                    users.insert(user, (first, split));
                }
            }
        }
        records.extend(t.records);
    }
    s.responses = s.by_status.values().sum();
    s.errors = s.errors_by_kind.values().sum();
    s.latency_ms = LatencyStats::from_micros(&mut latencies);
    s.by_served_by = groups
        .into_iter()
        .map(|(key, (by_status, mut lat))| {
            let g = GroupSummary {
                count: by_status.values().sum(),
                by_status,
                latency_ms: LatencyStats::from_micros(&mut lat),
            };
            (key, g)
        })
        .collect();
    s.users_seen = users.len() as u64;
    s.users_split = users.values().filter(|(_, split)| *split).count() as u64;
    s.elapsed_s = elapsed.as_secs_f64();
    s.rps = if s.elapsed_s > 0.0 {
        s.total as f64 / s.elapsed_s
    } else {
        0.0
    };
    records.sort_by_key(|r: &RequestRecord| r.seq);
    LoadReport {
        summary: s,
        records,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<u32> = (1..=100).map(|x| x * 1000).collect();
        let s = LatencyStats::from_micros(&mut v);
        assert_eq!(
            (s.p50, s.p95, s.p99, s.max, s.min),
            (50.0, 95.0, 99.0, 100.0, 1.0)
        );
        assert_eq!(LatencyStats::from_micros(&mut []).count, 0);
    }

    #[test]
    fn keys_are_deterministic_and_pooled() {
        let c = LoadConfig {
            users: 10,
            inputs: 5,
            ..LoadConfig::requests("http://127.0.0.1:1/", 1)
        };
        assert_eq!(c.user_for(7), c.user_for(7));
        let users: std::collections::HashSet<_> = (0..1000).map(|k| c.user_for(k)).collect();
        assert_eq!(users.len(), 10);
        let inputs: std::collections::HashSet<_> = (0..1000).map(|k| c.input_for(k)).collect();
        assert_eq!(inputs.len(), 5);
        let unique = LoadConfig { inputs: 0, ..c };
        assert_ne!(unique.input_for(1), unique.input_for(2));
    }

    #[test]
    fn requires_a_bound() {
        let c = LoadConfig {
            url: "http://127.0.0.1:1/".into(),
            ..LoadConfig::default()
        };
        assert!(run(&c).is_err());
    }
}
