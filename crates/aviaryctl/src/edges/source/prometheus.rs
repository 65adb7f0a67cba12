//! Prometheus' HTTP API: Aviary's series summed over every scraped proxy, and the custom KPI
//! queries of business gates.

use std::collections::BTreeMap;
use std::time::Duration;

use aviary_contract::metrics::{self, Comparison, ResponseClass, Uncompared};
use serde_json::Value;

use super::snapshot::{snapshot_from_samples, to_count, Series, BIN, LE, SERVICE, VERSION};
use super::text::{parse_value, truncate, Sample};
use super::{read_body, source_error, AppliedConfig, ApplyProbe, MetricsSource, DEFAULT_TIMEOUT};
use crate::clock::system_now_ms;
use crate::core::observe::Snapshot;
use crate::edges::http::{agent, transport_message, trim_base, url_encode};
use crate::error::Error;

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
        tracing::trace!(endpoint, promql, bytes = body.len(), "queried Prometheus");
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
        let mut m = format!("{SERVICE}=\"{}\"", promql_escape(service));
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
                labels.insert(SERVICE.into(), service.to_string());
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
        let digests = self.query(&format!("{}{{{m}}}", metrics::CONFIG_DIGEST))?;
        let weights = self.query(&format!("{}{{{m}}}", metrics::WEIGHT))?;
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
            entry.digest48 = to_count(*v, Series::ConfigDigest).ok();
        }
        for (labels, v) in &weights {
            let (Some(version), Ok(w)) = (labels.get(VERSION), to_count(*v, Series::Weight)) else {
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
            "sum by (__name__, {VERSION}, {}, {}, {LE}, {BIN}, {}) ({{__name__=~\"({})\",{m}}})",
            Uncompared::KEY,
            ResponseClass::KEY,
            Comparison::KEY,
            Series::summed_regex()
        ))?;
        // Gauges must not be summed over proxies; min and max tell whether they agree.
        let weight = metrics::WEIGHT;
        let wmin = self.query(&format!("min by (version) ({weight}{{{m}}})"))?;
        let wmax = self.query(&format!("max by (version) ({weight}{{{m}}})"))?;
        let mut samples = self.samples(None, summed, service);
        let weights = self.samples(Some(weight), wmin, service);
        let max_by_version: BTreeMap<String, f64> = self
            .samples(Some(weight), wmax, service)
            .into_iter()
            .filter_map(|s| Some((s.label(VERSION)?.to_string(), s.value)))
            .collect();
        for mut w in weights {
            let Some(version) = w.label(VERSION).map(str::to_string) else {
                continue;
            };
            if max_by_version.get(&version) != Some(&w.value) {
                // Proxies disagree while an update propagates: keep the version, drop the
                // weight (the builder ignores this name).
                w.name = format!("{weight}_disagree");
                w.value = 0.0;
            }
            samples.push(w);
        }
        let mut snap = snapshot_from_samples(service, &samples, at_ms)
            .map_err(|e| source_error(&self.base, e.to_string()))?
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
