//! Istio types: the `WasmPlugin` a spec may name as a sink, and the enums of its manifest that
//! the spec and the sink share.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An Istio `WasmPlugin` resource written to a file (applied by GitOps or `kubectl apply`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioWasmPlugin {
    pub path: String,
    #[serde(default = "super::default_filter_name")]
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// `spec.url` of the WasmPlugin, e.g. `oci://registry/aviary:1.0`.
    pub image: String,
    /// `spec.selector.matchLabels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// `spec.match[].mode`: `CLIENT` (default: callers' sidecars and gateways, where Istio picks
    /// the subset), `SERVER` or `CLIENT_AND_SERVER`.
    #[serde(default)]
    pub mode: TrafficMode,
}

fn default_namespace() -> String {
    "default".into()
}

/// `spec.failStrategy` of a WasmPlugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailStrategy {
    /// Requests bypass a broken plugin. Without Envoy stripping the routing header natively
    /// (Istio offers no such filter here), a client's own `x-aviary-version` would then reach
    /// the VirtualService and choose the subset.
    FailOpen,
    /// Requests fail (5xx) while the plugin is broken, for good.
    FailClose,
    /// Aviary's default: a failed VM is reloaded after a backoff; requests fail (5xx) in that
    /// window and never bypass the plugin, so no client can choose its version.
    #[default]
    FailReload,
}

/// `spec.phase` of a WasmPlugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    /// Before Istio's authentication filters.
    Authn,
    /// After authentication, before authorization.
    Authz,
    /// After authorization, before Istio's stats filters. Aviary's default: requests denied by
    /// authn/authz are answered locally and never counted against a version, and the
    /// routing header is still set before the router picks a route.
    #[default]
    Stats,
    /// Istio's default position (end of the chain, before the router).
    UnspecifiedPhase,
}

/// `spec.match[].mode` of a WasmPlugin: which side of a connection the plugin runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TrafficMode {
    /// Outbound requests of the selected workloads, and gateways. Aviary's default: Istio picks
    /// the subset where a request leaves (the caller's sidecar or the gateway), so that is
    /// where the routing header must be set.
    #[default]
    Client,
    /// Inbound requests of the selected workloads: too late to choose a subset.
    Server,
    ClientAndServer,
}
