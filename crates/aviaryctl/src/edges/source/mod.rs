//! Metrics sources: read Aviary's counters from Envoy's admin endpoint or from Prometheus and
//! turn them into a [`Snapshot`]. Any doubt (unreachable, non-200, unparsable, no Aviary series
//! for the service) is an error, which the decision step treats as inconclusive data rather
//! than as zero traffic.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::core::observe::Snapshot;
use crate::core::spec::RolloutSpec;
use crate::edges::http::{body_text, transport_message};
use crate::error::Error;

mod envoy;
mod prometheus;
mod snapshot;
mod text;

pub use envoy::EnvoyAdminSource;
pub use prometheus::{prometheus_selector, PrometheusSource, QueryRows};
pub use snapshot::snapshot_from_samples;
pub use text::{parse_prometheus_text, parse_value, Sample};

/// Default timeout of one metrics request. Short, because a slow source must not delay an
/// abort or a rollback decision; a timeout simply makes that tick inconclusive.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

/// Cap on a scraped body, so a misbehaving endpoint cannot exhaust memory.
const MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;

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

fn read_body(endpoint: &str, resp: ureq::Response) -> Result<String, Error> {
    body_text(resp, MAX_BODY_BYTES)
        .map_err(|e| source_error(endpoint, format!("reading the body: {e}")))
}

fn http_get(agent: &ureq::Agent, endpoint: &str, url: &str) -> Result<String, Error> {
    match agent.get(url).call() {
        Ok(resp) => read_body(endpoint, resp),
        Err(ureq::Error::Status(code, resp)) => {
            let body = resp.into_string().unwrap_or_default();
            Err(source_error(
                endpoint,
                format!("HTTP {code}: {}", text::truncate(body.trim())),
            ))
        }
        Err(ureq::Error::Transport(t)) => Err(source_error(endpoint, transport_message(&t))),
    }
}

fn source_error(endpoint: &str, message: String) -> Error {
    Error::Source {
        source_name: endpoint.to_string(),
        message,
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
