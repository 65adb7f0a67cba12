//! Envoy's admin endpoint: live counters straight from the proxies, no scrape lag.

use std::time::{Duration, Instant};

use aviary_contract::metrics;

use super::snapshot::{applied_from_samples, SnapshotBuilder, FAMILY};
use super::text::{parse_prometheus_text, Sample};
use super::{http_get, source_error, AppliedConfig, ApplyProbe, MetricsSource, DEFAULT_TIMEOUT};
use crate::clock::system_now_ms;
use crate::core::observe::Snapshot;
use crate::edges::http::{agent, trim_base, url_encode};
use crate::error::Error;

/// Envoy keeps the plugin's metrics under `wasmcustom.<name>` in its internal stat names,
/// which its `/stats/prometheus?filter=` regex is matched against.
const ENVOY_PREFIX: &str = r"^wasmcustom\.";

/// Reads `/stats/prometheus` from the admin endpoint of one or several Envoys (all proxies of
/// the service) and sums them. Every endpoint must answer: a partial sum would bias the
/// comparison between versions.
#[derive(Debug, Clone)]
pub struct EnvoyAdminSource {
    endpoints: Vec<String>,
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
            agent: agent(timeout),
        }
    }

    fn scrape(&self, endpoint: &str, filter: &str) -> Result<Vec<Sample>, Error> {
        let started = Instant::now();
        let url = format!("{endpoint}/stats/prometheus?filter={}", url_encode(filter));
        let body = http_get(&self.agent, endpoint, &url)?;
        let samples = parse_prometheus_text(&body)
            .map_err(|e| source_error(endpoint, format!("not Prometheus text: {e}")))?;
        tracing::trace!(
            endpoint,
            samples = samples.len(),
            bytes = body.len(),
            elapsed_us = aviary_contract::units::micros(started.elapsed()),
            "scraped Envoy admin"
        );
        Ok(samples)
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
        let filter = format!("{ENVOY_PREFIX}{FAMILY}");
        for endpoint in &self.endpoints {
            let samples = self.scrape(endpoint, &filter)?;
            let before = b.series;
            for s in &samples {
                b.add(service, s)
                    .map_err(|e| source_error(endpoint, e.to_string()))?;
            }
            if b.series == before {
                return Err(source_error(
                    endpoint,
                    format!("no Aviary metrics for service {service:?} (is the plugin configured, with the stats_tags?)"),
                ));
            }
        }
        b.finish(system_now_ms())
            .map_err(|e| source_error(&self.endpoints.join(","), e.to_string()))
    }

    fn describe(&self) -> String {
        format!("envoy admin {}", self.endpoints.join(", "))
    }
}

impl ApplyProbe for EnvoyAdminSource {
    fn applied(&self, service: &str) -> Result<Vec<AppliedConfig>, Error> {
        let filter = format!(
            "{ENVOY_PREFIX}({}|{})",
            metrics::CONFIG_DIGEST,
            metrics::WEIGHT
        );
        self.endpoints
            .iter()
            .map(|endpoint| {
                let samples = self.scrape(endpoint, &filter)?;
                Ok(applied_from_samples(endpoint, service, &samples))
            })
            .collect()
    }
}
