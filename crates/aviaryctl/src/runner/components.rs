//! The edges a runner drives, built from a spec.

use std::sync::Arc;
use std::time::Duration;

use crate::core::spec::{Event, RolloutSpec};
use crate::edges::sink::{sinks_for, ConfigSink};
use crate::edges::source::{
    prometheus_selector, source_for, ApplyProbe, EnvoyAdminSource, MetricsSource, PrometheusSource,
};
use crate::edges::webhook::{Approver, FanoutNotifier, Notifier, WebhookNotifier};
use crate::error::Error;

/// The edges a runner drives.
pub struct Components {
    pub source: Box<dyn MetricsSource + Send>,
    pub sinks: Vec<Box<dyn ConfigSink + Send>>,
    /// Receives every notification (filtering by event is the notifier's business).
    pub notifier: Option<Box<dyn Notifier>>,
    /// Asked on confirmation gates; all that answer for the event must approve.
    pub approvers: Vec<Arc<dyn Approver>>,
    /// Confirms that proxies applied a write; its answers become
    /// [`Input::Applied`](crate::core::step::Input::Applied).
    pub probe: Option<Box<dyn ApplyProbe + Send>>,
}

impl Components {
    /// The source, sinks, webhooks and apply probe a spec declares.
    pub fn from_spec(spec: &RolloutSpec) -> Result<Components, Error> {
        let hooks: Vec<WebhookNotifier> =
            WebhookNotifier::from_specs(&spec.spec.webhooks, spec.spec.report_dir.as_deref())?;
        let approvers: Vec<Arc<dyn Approver>> = hooks
            .iter()
            .filter(|h| {
                h.listens(Event::ConfirmPromotion) || h.listens(Event::ConfirmTrafficIncrease)
            })
            .map(|h| Arc::new(h.clone()) as Arc<dyn Approver>)
            .collect();
        let notifier: Option<Box<dyn Notifier>> = if hooks.is_empty() {
            None
        } else {
            let all: Vec<Box<dyn Notifier>> = hooks
                .into_iter()
                .map(|h| Box::new(h) as Box<dyn Notifier>)
                .collect();
            Some(Box::new(FanoutNotifier(all)))
        };
        Ok(Components {
            source: source_for(spec)?,
            sinks: sinks_for(spec)?,
            notifier,
            approvers,
            probe: probe_for(spec),
        })
    }
}

/// Admin endpoints answer within milliseconds of an update; Prometheus only after its next
/// scrape, but still tells whether every proxy took the config.
fn probe_for(spec: &RolloutSpec) -> Option<Box<dyn ApplyProbe + Send>> {
    let m = &spec.spec.metrics;
    if !m.envoy_admin.is_empty() {
        let timeout = m
            .timeout
            .as_std()
            .clamp(Duration::from_millis(50), Duration::from_millis(500));
        return Some(Box::new(EnvoyAdminSource::with_timeout(
            m.envoy_admin.iter().cloned(),
            timeout,
        )));
    }
    m.prometheus.as_ref().map(|p| {
        Box::new(
            PrometheusSource::new(&p.url)
                .timeout(m.timeout.as_std())
                .selector(prometheus_selector(&p.labels)),
        ) as Box<dyn ApplyProbe + Send>
    })
}
