//! Metrics sources: read Aviary's counters from Envoy's admin endpoint or from Prometheus and
//! turn them into a [`Snapshot`]. Any doubt (unreachable, non-200, unparsable, no Aviary series
//! for the service) is an error, which the decision step treats as inconclusive data rather
//! than as zero traffic.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::clock::system_now_ms;
use crate::core::observe::{Snapshot, VersionMetrics};
use crate::core::spec::RolloutSpec;
use crate::error::Error;

/// Default timeout of one metrics request. Short, because a slow source must not delay an
/// abort or a rollback decision; a timeout simply makes that tick inconclusive.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

/// Cap on a scraped body, so a misbehaving endpoint cannot exhaust memory.
const MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;

/// Filter for Envoy's `/stats/prometheus`: Envoy matches it against its internal stat names,
/// where the plugin's metrics live under `wasmcustom.aviary_*`.
const ENVOY_FILTER: &str = r"^wasmcustom\.aviary_";

/// Something that can report the cumulative Aviary metrics of a service.
pub trait MetricsSource {
    /// Cumulative metrics of `service` now.
    fn snapshot(&self, service: &str) -> Result<Snapshot, Error>;
    /// Short description for logs, e.g. the endpoints.
    fn describe(&self) -> String;
}

/// What one Envoy reports it is applying for a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedConfig {
    /// The admin endpoint asked.
    pub endpoint: String,
    /// `aviary_config_digest`: the low 48 bits of the FNV-1a digest of the active config.
    pub digest48: Option<u64>,
    /// `aviary_weight_bps` by version.
    pub weights: BTreeMap<String, u64>,
}

/// Something that can tell which plugin config each proxy has applied (to confirm a write).
pub trait ApplyProbe {
    /// The applied config of `service` on every proxy.
    fn applied(&self, service: &str) -> Result<Vec<AppliedConfig>, Error>;
}

// ---------------------------------------------------------------------------------------------
// Prometheus text exposition format

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// Labels in the order written.
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// Optional timestamp in milliseconds.
    pub timestamp_ms: Option<i64>,
}

impl Sample {
    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A syntax error in Prometheus text, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses the Prometheus text exposition format (version 0.0.4): `# HELP`/`# TYPE` and other
/// comments are skipped; label values may contain escaped `\\`, `\"` and `\n`; values may be
/// `NaN`, `+Inf`, `-Inf` or any float notation, and an integer timestamp may follow.
pub fn parse_prometheus_text(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_sample(line).map_err(|message| ParseError {
            line: i + 1,
            message,
        })?;
        out.push(sample);
    }
    Ok(out)
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn skip_blanks(s: &str) -> &str {
    s.trim_start_matches([' ', '\t'])
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
    let name = &line[..name_end];
    if !name.starts_with(is_name_start) {
        return Err(format!("expected a metric name at {:?}", truncate(line)));
    }
    let mut rest = skip_blanks(&line[name_end..]);
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let value_text = fields
        .next()
        .ok_or_else(|| format!("metric {name} has no value"))?;
    let value = parse_value(value_text).ok_or_else(|| format!("bad value {value_text:?}"))?;
    let timestamp_ms = match fields.next() {
        None => None,
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| format!("bad timestamp {t:?}"))?,
        ),
    };
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected {extra:?} after the value"));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
        timestamp_ms,
    })
}

/// Parses `name="value",...}` and returns what follows the closing brace.
fn parse_labels<'a>(mut s: &'a str, labels: &mut Vec<(String, String)>) -> Result<&'a str, String> {
    loop {
        s = skip_blanks(s);
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let end = s.find(|c: char| !is_name_char(c)).unwrap_or(s.len());
        let key = &s[..end];
        if key.is_empty() || key.starts_with(|c: char| c.is_ascii_digit()) || key.contains(':') {
            return Err(format!("expected a label name at {:?}", truncate(s)));
        }
        s = skip_blanks(&s[end..]);
        s = s
            .strip_prefix('=')
            .ok_or_else(|| format!("expected '=' after label {key}"))?;
        s = skip_blanks(s);
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("expected '\"' to open the value of label {key}"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let close = loop {
            match chars.next() {
                None => return Err(format!("unterminated value of label {key}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => return Err(format!("bad escape \\{c} in label {key}")),
                    None => return Err(format!("unterminated value of label {key}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.iter().any(|(k, _)| k == key) {
            return Err(format!("duplicate label {key}"));
        }
        labels.push((key.to_string(), value));
        s = skip_blanks(&s[close + 1..]);
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(format!("expected ',' or '}}' after label {key}"));
        }
    }
}

/// Parses a sample value as Go's `strconv.ParseFloat` would for the values exporters print.
pub fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" | "nan" => Some(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ => {
            let ok = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
            if ok {
                s.parse::<f64>().ok()
            } else {
                None
            }
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

// ---------------------------------------------------------------------------------------------
// Building snapshots

/// Per-version sums across endpoints, keyed by the label text so that equal bucket bounds
/// from different Envoys add up exactly.
#[derive(Default)]
struct VersionAcc {
    requests: f64,
    responses: BTreeMap<String, f64>,
    buckets: BTreeMap<String, f64>,
    count: f64,
    sum: f64,
    score_bins: BTreeMap<String, f64>,
    agree: f64,
    disagree: f64,
    uncompared: BTreeMap<String, f64>,
    /// One weight per endpoint reporting it.
    weights: Vec<u64>,
}

/// Accumulates Aviary samples for one service from any number of endpoints.
#[derive(Default)]
struct SnapshotBuilder {
    versions: BTreeMap<String, VersionAcc>,
    series: usize,
}

impl SnapshotBuilder {
    /// Adds one sample; returns false when it is not an Aviary series of `service`.
    fn add(&mut self, service: &str, s: &Sample) -> Result<bool, String> {
        if s.label("service") != Some(service) || !s.name.starts_with("aviary_") {
            return Ok(false);
        }
        self.series += 1;
        let Some(version) = s.label("version") else {
            return Ok(true);
        };
        let label = |name: &str| -> Result<String, String> {
            s.label(name)
                .map(str::to_string)
                .ok_or_else(|| format!("{} without a {name} label", s.name))
        };
        if s.value.is_nan() {
            return Err(format!("{}{{version={version:?}}} is NaN", s.name));
        }
        let acc = self.versions.entry(version.to_string()).or_default();
        match s.name.as_str() {
            "aviary_requests_total" => acc.requests += s.value,
            "aviary_responses_total" => {
                *acc.responses.entry(label("class")?).or_default() += s.value
            }
            "aviary_request_duration_ms_bucket" => {
                *acc.buckets.entry(label("le")?).or_default() += s.value
            }
            "aviary_request_duration_ms_count" => acc.count += s.value,
            "aviary_request_duration_ms_sum" => acc.sum += s.value,
            "aviary_score_bin_total" => {
                *acc.score_bins.entry(label("bin")?).or_default() += s.value
            }
            "aviary_shadow_comparisons_total" => match s.label("result") {
                Some("agree") => acc.agree += s.value,
                Some("disagree") => acc.disagree += s.value,
                _ => {}
            },
            "aviary_shadow_uncompared_total" => {
                *acc.uncompared.entry(label("reason")?).or_default() += s.value
            }
            "aviary_weight_bps" => acc.weights.push(to_count(s.value, &s.name)?),
            _ => {}
        }
        Ok(true)
    }

    fn finish(self, at_ms: u64) -> Result<Snapshot, String> {
        let mut versions = BTreeMap::new();
        for (name, acc) in self.versions {
            let weight_bps = match acc.weights.split_first() {
                Some((first, rest)) if rest.iter().all(|w| w == first) => Some(*first),
                // Proxies disagree while an update propagates: the applied weight is unknown.
                _ => None,
            };
            let m = VersionMetrics {
                requests: to_count(acc.requests, "aviary_requests_total")?,
                responses: counts(acc.responses, "aviary_responses_total")?,
                latency_buckets: bounds(acc.buckets, "aviary_request_duration_ms_bucket")?,
                latency_count: to_count(acc.count, "aviary_request_duration_ms_count")?,
                latency_sum: acc.sum,
                score_bins: bounds(acc.score_bins, "aviary_score_bin_total")?,
                shadow_agree: to_count(acc.agree, "aviary_shadow_comparisons_total")?,
                shadow_disagree: to_count(acc.disagree, "aviary_shadow_comparisons_total")?,
                shadow_uncompared: counts(acc.uncompared, "aviary_shadow_uncompared_total")?,
                weight_bps,
            };
            versions.insert(name, m);
        }
        Ok(Snapshot {
            at_ms,
            versions,
            custom: BTreeMap::new(),
        })
    }
}

fn to_count(v: f64, name: &str) -> Result<u64, String> {
    if v.is_finite() && v >= 0.0 {
        // Counters are integers; the float round trip of Prometheus keeps them exact to 2^53.
        Ok(v.round() as u64)
    } else {
        Err(format!("{name} has invalid value {v}"))
    }
}

fn counts(m: BTreeMap<String, f64>, name: &str) -> Result<BTreeMap<String, u64>, String> {
    m.into_iter()
        .map(|(k, v)| Ok((k, to_count(v, name)?)))
        .collect()
}

fn bounds(m: BTreeMap<String, f64>, name: &str) -> Result<Vec<(f64, u64)>, String> {
    let mut out = m
        .into_iter()
        .map(|(k, v)| {
            let bound = parse_value(&k)
                .filter(|b| !b.is_nan())
                .ok_or_else(|| format!("{name} has a bad bound {k:?}"))?;
            Ok((bound, to_count(v, name)?))
        })
        .collect::<Result<Vec<_>, String>>()?;
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(out)
}

/// Builds a snapshot of `service` from parsed samples of any number of endpoints, summing
/// counters and histogram buckets. Returns `Ok(None)` when no Aviary series of the service
/// was present.
pub fn snapshot_from_samples<'a>(
    service: &str,
    samples: impl IntoIterator<Item = &'a Sample>,
    at_ms: u64,
) -> Result<Option<Snapshot>, String> {
    let mut b = SnapshotBuilder::default();
    for s in samples {
        b.add(service, s)?;
    }
    if b.series == 0 {
        return Ok(None);
    }
    b.finish(at_ms).map(Some)
}

fn applied_from_samples(endpoint: &str, service: &str, samples: &[Sample]) -> AppliedConfig {
    let mut applied = AppliedConfig {
        endpoint: endpoint.to_string(),
        digest48: None,
        weights: BTreeMap::new(),
    };
    for s in samples
        .iter()
        .filter(|s| s.label("service") == Some(service))
    {
        match s.name.as_str() {
            "aviary_config_digest" => applied.digest48 = to_count(s.value, &s.name).ok(),
            "aviary_weight_bps" => {
                if let (Some(v), Ok(w)) = (s.label("version"), to_count(s.value, &s.name)) {
                    applied.weights.insert(v.to_string(), w);
                }
            }
            _ => {}
        }
    }
    applied
}

// ---------------------------------------------------------------------------------------------
// HTTP

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(timeout)
        .timeout(timeout)
        .build()
}

fn read_body(endpoint: &str, resp: ureq::Response) -> Result<String, Error> {
    use std::io::Read;
    let mut body = String::new();
    resp.into_reader()
        .take(MAX_BODY_BYTES)
        .read_to_string(&mut body)
        .map_err(|e| source_error(endpoint, format!("reading the body: {e}")))?;
    Ok(body)
}

fn http_get(agent: &ureq::Agent, endpoint: &str, url: &str) -> Result<String, Error> {
    match agent.get(url).call() {
        Ok(resp) => read_body(endpoint, resp),
        Err(ureq::Error::Status(code, resp)) => {
            let body = resp.into_string().unwrap_or_default();
            Err(source_error(
                endpoint,
                format!("HTTP {code}: {}", truncate(body.trim())),
            ))
        }
        Err(ureq::Error::Transport(t)) => Err(source_error(endpoint, transport_message(&t))),
    }
}

/// A transport error without its URL (the error already names the endpoint), e.g.
/// `Connection Failed: Connect error: Connection refused (os error 111)`.
pub(crate) fn transport_message(t: &ureq::Transport) -> String {
    let full = t.to_string();
    match t.url() {
        Some(u) => full.replacen(&format!("{u}: "), "", 1),
        None => full,
    }
}

fn source_error(endpoint: &str, message: String) -> Error {
    Error::Source {
        source_name: endpoint.to_string(),
        message,
    }
}

/// Percent-encodes a query parameter value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn trim_base(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}

// ---------------------------------------------------------------------------------------------
// Envoy admin

/// Reads `/stats/prometheus` from the admin endpoint of one or several Envoys (all proxies of
/// the service) and sums them. Every endpoint must answer: a partial sum would bias the
/// comparison between versions.
#[derive(Debug, Clone)]
pub struct EnvoyAdminSource {
    endpoints: Vec<String>,
    timeout: Duration,
    agent: ureq::Agent,
}

impl EnvoyAdminSource {
    /// A source for these admin base URLs (e.g. `http://127.0.0.1:9901`).
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self::with_timeout(endpoints, DEFAULT_TIMEOUT)
    }

    /// The same with a per-request timeout.
    pub fn with_timeout(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
        timeout: Duration,
    ) -> Self {
        EnvoyAdminSource {
            endpoints: endpoints
                .into_iter()
                .map(|e| trim_base(&e.into()))
                .collect(),
            timeout,
            agent: agent(timeout),
        }
    }

    /// The admin base URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn scrape(&self, endpoint: &str, filter: &str) -> Result<Vec<Sample>, Error> {
        let url = format!("{endpoint}/stats/prometheus?filter={}", url_encode(filter));
        let body = http_get(&self.agent, endpoint, &url)?;
        parse_prometheus_text(&body)
            .map_err(|e| source_error(endpoint, format!("not Prometheus text: {e}")))
    }
}

impl MetricsSource for EnvoyAdminSource {
    fn snapshot(&self, service: &str) -> Result<Snapshot, Error> {
        if self.endpoints.is_empty() {
            return Err(source_error(
                "envoy",
                "no admin endpoints configured".into(),
            ));
        }
        let mut b = SnapshotBuilder::default();
        for endpoint in &self.endpoints {
            let samples = self.scrape(endpoint, ENVOY_FILTER)?;
            let before = b.series;
            for s in &samples {
                b.add(service, s).map_err(|m| source_error(endpoint, m))?;
            }
            if b.series == before {
                return Err(source_error(
                    endpoint,
                    format!("no Aviary metrics for service {service:?} (is the plugin configured, with the stats_tags?)"),
                ));
            }
        }
        b.finish(system_now_ms())
            .map_err(|m| source_error(&self.endpoints.join(","), m))
    }

    fn describe(&self) -> String {
        format!("envoy admin {}", self.endpoints.join(", "))
    }
}

impl ApplyProbe for EnvoyAdminSource {
    fn applied(&self, service: &str) -> Result<Vec<AppliedConfig>, Error> {
        self.endpoints
            .iter()
            .map(|endpoint| {
                let samples =
                    self.scrape(endpoint, r"^wasmcustom\.aviary_(config_digest|weight_bps)")?;
                Ok(applied_from_samples(endpoint, service, &samples))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus HTTP API

/// Reads Aviary metrics through the Prometheus HTTP API (`/api/v1/query`, instant queries),
/// plus named custom PromQL queries (business KPIs) whose scalar results land in
/// [`Snapshot::custom`].
#[derive(Debug, Clone)]
pub struct PrometheusSource {
    base: String,
    timeout: Duration,
    agent: ureq::Agent,
    custom: BTreeMap<String, String>,
    vars: BTreeMap<String, String>,
    /// Extra label matchers added to every Aviary query, e.g. `namespace="prod"`.
    selector: String,
}

/// Rows of an instant query result: labels and value of each series.
pub type QueryRows = Vec<(BTreeMap<String, String>, f64)>;

/// The cumulative Aviary series summed over all proxies, in one query.
const AVIARY_SUMMED: &str = "aviary_(requests_total|responses_total|request_duration_ms_bucket|request_duration_ms_count|request_duration_ms_sum|score_bin_total|shadow_comparisons_total|shadow_uncompared_total)";

impl PrometheusSource {
    /// A source for the Prometheus at `base` (e.g. `http://127.0.0.1:9090`).
    pub fn new(base: impl Into<String>) -> Self {
        let timeout = DEFAULT_TIMEOUT;
        PrometheusSource {
            base: trim_base(&base.into()),
            timeout,
            agent: agent(timeout),
            custom: BTreeMap::new(),
            vars: BTreeMap::new(),
            selector: String::new(),
        }
    }

    /// Sets the per-request timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self.agent = agent(timeout);
        self
    }

    /// Adds a custom KPI: `query` must return a scalar or a single-element vector.
    pub fn custom_query(mut self, name: impl Into<String>, query: impl Into<String>) -> Self {
        self.custom.insert(name.into(), query.into());
        self
    }

    /// Sets values substituted into custom queries: `$name` becomes `value` (`$service` is
    /// always the snapshot's service).
    pub fn var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// Evaluates the custom KPI queries. A failed or non-scalar query leaves its KPI absent,
    /// which its gate reports as inconclusive.
    pub fn custom_values(&self, service: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (name, q) in &self.custom {
            let mut promql = q.replace("$service", service);
            // Longest names first, so `$canary_x` is not clobbered by `$canary`.
            let mut vars: Vec<_> = self.vars.iter().collect();
            vars.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
            for (k, v) in vars {
                promql = promql.replace(&format!("${k}"), v);
            }
            if let Ok(rows) = self.query(&promql) {
                if let [(_, v)] = rows.as_slice() {
                    if v.is_finite() {
                        out.insert(name.clone(), *v);
                    }
                }
            }
        }
        out
    }

    /// Adds label matchers (PromQL syntax, without braces) to every Aviary query.
    pub fn selector(mut self, matchers: impl Into<String>) -> Self {
        self.selector = matchers.into();
        self
    }

    /// Runs an instant query and returns the result as (labels, value) pairs; a scalar result
    /// has no labels.
    pub fn query(&self, promql: &str) -> Result<QueryRows, Error> {
        let url = format!("{}/api/v1/query?query={}", self.base, url_encode(promql));
        let endpoint = self.base.as_str();
        let body = match self.agent.get(&url).call() {
            Ok(resp) => read_body(endpoint, resp)?,
            // Prometheus answers 400/422 with a JSON error body worth showing.
            Err(ureq::Error::Status(code, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                let detail = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or_else(|| truncate(body.trim()));
                return Err(source_error(
                    endpoint,
                    format!("HTTP {code} for {promql:?}: {detail}"),
                ));
            }
            Err(ureq::Error::Transport(t)) => {
                return Err(source_error(endpoint, transport_message(&t)))
            }
        };
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| source_error(endpoint, format!("not JSON: {e}")))?;
        if v["status"] != "success" {
            return Err(source_error(
                endpoint,
                format!("query {promql:?} failed: {}", v["error"]),
            ));
        }
        let data = &v["data"];
        let value_of = |pair: &Value| -> Result<f64, Error> {
            pair.get(1)
                .and_then(Value::as_str)
                .and_then(parse_value)
                .ok_or_else(|| source_error(endpoint, format!("bad sample value {pair}")))
        };
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    let labels = r["metric"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                        .collect();
                    Ok((labels, value_of(&r["value"])?))
                })
                .collect(),
            Some("scalar") => Ok(vec![(BTreeMap::new(), value_of(&data["result"])?)]),
            other => Err(source_error(
                endpoint,
                format!("query {promql:?} returned {other:?}, expected a vector or scalar"),
            )),
        }
    }

    fn matchers(&self, service: &str) -> String {
        let mut m = format!("service=\"{}\"", promql_escape(service));
        if !self.selector.is_empty() {
            m.push(',');
            m.push_str(&self.selector);
        }
        m
    }

    fn samples(&self, name: Option<&str>, rows: QueryRows, service: &str) -> Vec<Sample> {
        rows.into_iter()
            .filter_map(|(mut labels, value)| {
                let name = match name {
                    Some(n) => n.to_string(),
                    None => labels.remove("__name__")?,
                };
                labels.insert("service".into(), service.to_string());
                Some(Sample {
                    name,
                    labels: labels.into_iter().collect(),
                    value,
                    timestamp_ms: None,
                })
            })
            .collect()
    }
}

/// PromQL label matchers (`k="v",…`, without braces) for a label map.
pub fn prometheus_selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", promql_escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Escapes a PromQL double-quoted string.
fn promql_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

impl ApplyProbe for PrometheusSource {
    /// What each scraped proxy (Prometheus `instance`) last reported. Lags by up to a scrape
    /// interval, so confirmations through Prometheus are slower than through Envoy's admin.
    fn applied(&self, service: &str) -> Result<Vec<AppliedConfig>, Error> {
        let m = self.matchers(service);
        let digests = self.query(&format!("aviary_config_digest{{{m}}}"))?;
        let weights = self.query(&format!("aviary_weight_bps{{{m}}}"))?;
        let mut by_instance: BTreeMap<String, AppliedConfig> = BTreeMap::new();
        let instance =
            |labels: &BTreeMap<String, String>| labels.get("instance").cloned().unwrap_or_default();
        for (labels, v) in &digests {
            let i = instance(labels);
            let entry = by_instance
                .entry(i.clone())
                .or_insert_with(|| AppliedConfig {
                    endpoint: i,
                    digest48: None,
                    weights: BTreeMap::new(),
                });
            entry.digest48 = to_count(*v, "aviary_config_digest").ok();
        }
        for (labels, v) in &weights {
            let (Some(version), Ok(w)) = (labels.get("version"), to_count(*v, "aviary_weight_bps"))
            else {
                continue;
            };
            let i = instance(labels);
            by_instance
                .entry(i.clone())
                .or_insert_with(|| AppliedConfig {
                    endpoint: i,
                    digest48: None,
                    weights: BTreeMap::new(),
                })
                .weights
                .insert(version.clone(), w);
        }
        Ok(by_instance.into_values().collect())
    }
}

impl MetricsSource for PrometheusSource {
    fn snapshot(&self, service: &str) -> Result<Snapshot, Error> {
        let at_ms = system_now_ms();
        let m = self.matchers(service);
        let summed = self.query(&format!(
            "sum by (__name__, version, reason, class, le, bin, result) ({{__name__=~\"{AVIARY_SUMMED}\",{m}}})"
        ))?;
        // Gauges must not be summed over proxies; min and max tell whether they agree.
        let wmin = self.query(&format!("min by (version) (aviary_weight_bps{{{m}}})"))?;
        let wmax = self.query(&format!("max by (version) (aviary_weight_bps{{{m}}})"))?;
        let mut samples = self.samples(None, summed, service);
        let weights = self.samples(Some("aviary_weight_bps"), wmin, service);
        let max_by_version: BTreeMap<String, f64> = self
            .samples(Some("aviary_weight_bps"), wmax, service)
            .into_iter()
            .filter_map(|s| Some((s.label("version")?.to_string(), s.value)))
            .collect();
        for mut w in weights {
            let Some(version) = w.label("version").map(str::to_string) else {
                continue;
            };
            if max_by_version.get(&version) != Some(&w.value) {
                // Proxies disagree while an update propagates: keep the version, drop the
                // weight (the builder ignores this name).
                w.name = "aviary_weight_bps_disagree".into();
                w.value = 0.0;
            }
            samples.push(w);
        }
        let mut snap = snapshot_from_samples(service, &samples, at_ms)
            .map_err(|e| source_error(&self.base, e))?
            .ok_or_else(|| {
                source_error(
                    &self.base,
                    format!("no Aviary series for service {service:?} (is Prometheus scraping Envoy's /stats/prometheus?)"),
                )
            })?;
        snap.custom = self.custom_values(service);
        Ok(snap)
    }

    fn describe(&self) -> String {
        format!("prometheus {}", self.base)
    }
}

/// Aviary metrics from Envoy's admin endpoints (live counters, no scrape lag) with custom
/// KPIs from Prometheus.
#[derive(Debug, Clone)]
pub struct EnvoyWithKpis {
    pub envoy: EnvoyAdminSource,
    pub prometheus: PrometheusSource,
}

impl MetricsSource for EnvoyWithKpis {
    fn snapshot(&self, service: &str) -> Result<Snapshot, Error> {
        let mut snap = self.envoy.snapshot(service)?;
        snap.custom = self.prometheus.custom_values(service);
        Ok(snap)
    }

    fn describe(&self) -> String {
        format!(
            "{} (KPIs from {})",
            self.envoy.describe(),
            self.prometheus.describe()
        )
    }
}

/// The metrics source a rollout spec declares: Envoy admin endpoints when listed (live
/// counters, so fast-track rollback is not delayed by a scrape interval), else Prometheus;
/// custom KPI gates always read Prometheus.
pub fn source_for(spec: &RolloutSpec) -> Result<Box<dyn MetricsSource + Send>, Error> {
    let m = &spec.spec.metrics;
    let timeout = m.timeout.as_std().max(Duration::from_millis(1));
    let prometheus = m.prometheus.as_ref().map(|p| {
        let selector = prometheus_selector(&p.labels);
        let mut src = PrometheusSource::new(&p.url)
            .timeout(timeout)
            .selector(selector)
            .var("canary", &spec.spec.canary)
            .var("baseline", &spec.spec.baseline)
            .var("interval", format!("{}ms", spec.interval_ms()));
        for g in &spec.spec.analysis.gates.custom {
            src = src.custom_query(&g.name, &g.query);
        }
        src
    });
    match (m.envoy_admin.is_empty(), prometheus) {
        (false, None) => Ok(Box::new(EnvoyAdminSource::with_timeout(
            m.envoy_admin.iter().cloned(),
            timeout,
        ))),
        (false, Some(prometheus)) => Ok(Box::new(EnvoyWithKpis {
            envoy: EnvoyAdminSource::with_timeout(m.envoy_admin.iter().cloned(), timeout),
            prometheus,
        })),
        (true, Some(p)) => Ok(Box::new(p)),
        (true, None) => Err(Error::spec(
            "spec.metrics",
            "no metrics source: list envoyAdmin endpoints or set prometheus.url",
        )),
    }
}
