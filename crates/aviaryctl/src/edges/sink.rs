//! Config sinks: where a new plugin config goes. Every sink validates the config exactly as the
//! plugin will (`parse_and_compile`) before writing anything, so the driver can never push a
//! config that Envoy would reject and silently keep the old one.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aviary_contract::config::{digest, parse_and_compile, PluginConfig};
use aviary_contract::units::{micros, DIGEST48_MASK};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::core::spec::RolloutSpec;
use crate::edges::fs::{replace_file, Durability};
use crate::error::Error;

use crate::core::spec::istio::{FailStrategy, Phase, TrafficMode};

/// What a write produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteReceipt {
    /// FNV-1a 64 of the exact plugin JSON the proxy will receive, when the sink knows those
    /// bytes (ECDS); `None` when a control plane re-encodes the config (Istio).
    pub digest: Option<u64>,
    /// Where it went (a path or `stdout`).
    pub target: String,
    /// Bytes written.
    pub bytes: usize,
    /// From the start of the write until the new file was in place for readers.
    pub visible_us: u64,
    /// Time spent validating, rendering and writing, until durable on disk.
    pub elapsed_us: u64,
}

impl WriteReceipt {
    /// The low 48 bits of the digest, as the plugin's `aviary_config_digest` gauge shows them.
    pub fn digest48(&self) -> Option<u64> {
        self.digest.map(|d| d & DIGEST48_MASK)
    }
}

/// Somewhere a plugin config can be written for the proxies to pick up.
pub trait ConfigSink {
    /// Validates and writes `cfg`.
    fn write(&self, cfg: &PluginConfig) -> Result<WriteReceipt, Error>;
    /// Short description for logs.
    fn describe(&self) -> String;
}

/// Serializes and validates a plugin config as the plugin would parse it.
pub fn validated_json(cfg: &PluginConfig) -> Result<String, Error> {
    let raw = cfg.to_json();
    if raw.is_empty() {
        return Err(Error::Invalid(
            "the plugin config could not be serialized".into(),
        ));
    }
    parse_and_compile(raw.as_bytes())?;
    Ok(raw)
}

/// Replaces a sink file: visible at once, durable right after. The proxy acts on the rename,
/// so fsync must not stand between a rollback decision and the proxy (this disk has shown
/// 100–300 ms fsync stalls under load). A power loss between the rename and the fsync is
/// repaired by the driver, which re-asserts the config when it starts.
fn publish(path: &Path, bytes: &[u8], started: Instant) -> Result<Duration, Error> {
    let before = started.elapsed();
    let visible = replace_file(path, bytes, Durability::VisibleFirst)
        .map(|visible| before + visible)
        .map_err(|e| sink_error(path, e))?;
    tracing::debug!(
        path = %path.display(),
        bytes = bytes.len(),
        visible_us = micros(visible),
        durable_us = micros(started.elapsed()),
        "sink file replaced"
    );
    Ok(visible)
}

fn sink_error(target: &Path, message: impl fmt::Display) -> Error {
    Error::Sink {
        sink: target.display().to_string(),
        message: message.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// ECDS file

/// The plugin's root id (its `root_id` in Envoy, `pluginName` in Istio).
const ROOT_ID: &str = "aviary";

/// Writes the filter's ECDS resource file, which Envoy watches through a
/// `config_discovery: {config_source: {path_config_source: {path}}}` listing. The file is
/// replaced by rename (Envoy does not reliably see in-place edits), and only the plugin JSON
/// changes between writes, so Envoy keeps the VM and applies the update within milliseconds.
#[derive(Debug, Clone)]
pub struct EcdsFileSink {
    path: PathBuf,
    filter_name: String,
    wasm_path: String,
}

impl EcdsFileSink {
    /// A sink writing `path` for the filter named `filter_name` (the name in the listener's
    /// `config_discovery` entry), loading the module at `wasm_path`.
    pub fn new(
        path: impl Into<PathBuf>,
        filter_name: impl Into<String>,
        wasm_path: impl Into<String>,
    ) -> Self {
        let filter_name = filter_name.into();
        EcdsFileSink {
            path: path.into(),
            filter_name,
            wasm_path: wasm_path.into(),
        }
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ECDS resource document for a plugin JSON string. JSON is also YAML, so the same
    /// text serves a `.json` or a `.yaml` path.
    pub fn render(&self, plugin_json: &str) -> Value {
        let vm_config = json!({
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": self.wasm_path}},
        });
        json!({
            "resources": [{
                "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                "name": self.filter_name,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": self.filter_name,
                        "root_id": ROOT_ID,
                        // A dead VM is replaced after 50 ms; requests never bypass the plugin.
                        "failure_policy": "FAIL_RELOAD",
                        "reload_config": {"backoff": {"base_interval": "0.05s", "max_interval": "1s"}},
                        "vm_config": vm_config,
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": plugin_json,
                        },
                    },
                },
            }]
        })
    }
}

impl ConfigSink for EcdsFileSink {
    fn write(&self, cfg: &PluginConfig) -> Result<WriteReceipt, Error> {
        let started = Instant::now();
        let raw = validated_json(cfg)?;
        let doc = self.render(&raw);
        let mut text = serde_json::to_string_pretty(&doc).map_err(|e| {
            sink_error(&self.path, format_args!("rendering the ECDS resource: {e}"))
        })?;
        text.push('\n');
        let visible = publish(&self.path, text.as_bytes(), started)?;
        Ok(WriteReceipt {
            digest: Some(digest(raw.as_bytes())),
            target: self.path.display().to_string(),
            bytes: text.len(),
            visible_us: micros(visible),
            elapsed_us: micros(started.elapsed()),
        })
    }

    fn describe(&self) -> String {
        format!("ecds file {}", self.path.display())
    }
}

// ---------------------------------------------------------------------------------------------
// Plain JSON file

/// Writes the plugin JSON alone (compact, exactly the bytes the plugin would digest), for
/// setups that template it into their own Envoy or mesh config.
#[derive(Debug, Clone)]
pub struct JsonFileSink {
    path: PathBuf,
}

impl JsonFileSink {
    /// A sink replacing `path` atomically.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        JsonFileSink { path: path.into() }
    }
}

impl ConfigSink for JsonFileSink {
    fn write(&self, cfg: &PluginConfig) -> Result<WriteReceipt, Error> {
        let started = Instant::now();
        let raw = validated_json(cfg)?;
        let visible = publish(&self.path, raw.as_bytes(), started)?;
        Ok(WriteReceipt {
            digest: Some(digest(raw.as_bytes())),
            target: self.path.display().to_string(),
            bytes: raw.len(),
            visible_us: micros(visible),
            elapsed_us: micros(started.elapsed()),
        })
    }

    fn describe(&self) -> String {
        format!("json file {}", self.path.display())
    }
}

/// The sinks a rollout spec declares, ECDS first (its receipt carries the digest the runner
/// confirms against Envoy).
pub fn sinks_for(spec: &RolloutSpec) -> Result<Vec<Box<dyn ConfigSink + Send>>, Error> {
    let target = &spec.spec.config;
    let mut sinks: Vec<Box<dyn ConfigSink + Send>> = Vec::new();
    if let Some(path) = &target.ecds_file {
        let wasm = target.wasm_file.as_deref().ok_or_else(|| {
            Error::spec(
                "spec.config.wasmFile",
                "required with ecdsFile: the ECDS resource names the module to load",
            )
        })?;
        sinks.push(Box::new(EcdsFileSink::new(path, &target.filter_name, wasm)));
    }
    if let Some(path) = &target.json_file {
        sinks.push(Box::new(JsonFileSink::new(path)));
    }
    if let Some(istio) = &target.istio_wasm_plugin {
        let mut sink = IstioWasmPluginSink::new(
            &istio.name,
            &istio.image,
            ManifestOutput::File(PathBuf::from(&istio.path)),
        );
        sink.namespace = Some(istio.namespace.clone());
        sink.selector = istio.selector.clone();
        sink.mode = istio.mode;
        sinks.push(Box::new(sink));
    }
    if sinks.is_empty() {
        return Err(Error::spec(
            "spec.config",
            "no sink: set ecdsFile, jsonFile or istioWasmPlugin",
        ));
    }
    Ok(sinks)
}

// ---------------------------------------------------------------------------------------------
// Istio WasmPlugin

/// Where rendered manifests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestOutput {
    /// A file, replaced atomically (for GitOps or `kubectl apply -f`).
    File(PathBuf),
    /// Standard output.
    Stdout,
}

/// Renders an Istio `WasmPlugin` (extensions.istio.io/v1alpha1) carrying the plugin config as
/// `spec.pluginConfig`. Istio re-encodes the config for Envoy, so the receipt has no digest
/// and the runner confirms an apply by the weight gauges instead.
#[derive(Debug, Clone)]
pub struct IstioWasmPluginSink {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, if any.
    pub namespace: Option<String>,
    /// `spec.url`: `oci://`, `https://`, `http://` or `file://` URL of the module.
    pub url: String,
    /// `spec.sha256` of the module, lowercase hex.
    pub sha256: Option<String>,
    pub fail_strategy: FailStrategy,
    pub phase: Phase,
    /// `spec.priority` within the phase.
    pub priority: Option<i32>,
    /// `spec.selector.matchLabels` (workloads to apply to); empty means all in the namespace.
    pub selector: BTreeMap<String, String>,
    /// `spec.match[0].mode`.
    pub mode: TrafficMode,
    /// `spec.pluginName` (the root id).
    pub plugin_name: String,
    pub output: ManifestOutput,
}

impl IstioWasmPluginSink {
    /// A sink with Aviary's defaults (FAIL_RELOAD, STATS phase, plugin name `aviary`).
    pub fn new(name: impl Into<String>, url: impl Into<String>, output: ManifestOutput) -> Self {
        IstioWasmPluginSink {
            name: name.into(),
            namespace: None,
            url: url.into(),
            sha256: None,
            fail_strategy: FailStrategy::default(),
            phase: Phase::default(),
            priority: None,
            selector: BTreeMap::new(),
            mode: TrafficMode::default(),
            plugin_name: ROOT_ID.into(),
            output,
        }
    }

    /// The manifest as a JSON value (validated plugin config included).
    pub fn manifest(&self, cfg: &PluginConfig) -> Result<Value, Error> {
        let raw = validated_json(cfg)?;
        let plugin_config: Value = serde_json::from_str(&raw)
            .map_err(|e| Error::Invalid(format!("re-reading the plugin JSON: {e}")))?;
        if let Some(sha) = &self.sha256 {
            if sha.len() != 64
                || !sha
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(Error::Invalid(format!(
                    "sha256 must be 64 lowercase hex digits, got {sha:?}"
                )));
            }
        }
        let mut metadata = json!({"name": self.name});
        if let Some(ns) = &self.namespace {
            metadata["namespace"] = json!(ns);
        }
        let mut spec = json!({
            "url": self.url,
            "pluginName": self.plugin_name,
            "failStrategy": self.fail_strategy,
            "phase": self.phase,
            "type": "HTTP",
            "match": [{"mode": self.mode}],
            "pluginConfig": plugin_config,
        });
        if let Some(sha) = &self.sha256 {
            spec["sha256"] = json!(sha);
        }
        if let Some(p) = self.priority {
            spec["priority"] = json!(p);
        }
        if !self.selector.is_empty() {
            spec["selector"] = json!({"matchLabels": self.selector});
        }
        Ok(json!({
            "apiVersion": "extensions.istio.io/v1alpha1",
            "kind": "WasmPlugin",
            "metadata": metadata,
            "spec": spec,
        }))
    }

    /// The manifest as YAML text.
    pub fn render(&self, cfg: &PluginConfig) -> Result<String, Error> {
        let manifest = self.manifest(cfg)?;
        serde_yaml::to_string(&manifest).map_err(|e| {
            sink_error(
                Path::new(&self.name),
                format_args!("rendering the WasmPlugin: {e}"),
            )
        })
    }
}

impl ConfigSink for IstioWasmPluginSink {
    fn write(&self, cfg: &PluginConfig) -> Result<WriteReceipt, Error> {
        let started = Instant::now();
        let text = self.render(cfg)?;
        let mut visible = Duration::ZERO;
        let target = match &self.output {
            ManifestOutput::File(path) => {
                visible = publish(path, text.as_bytes(), started)?;
                path.display().to_string()
            }
            ManifestOutput::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(b"---\n")
                    .and_then(|()| out.write_all(text.as_bytes()))
                    .and_then(|()| out.flush())
                    .map_err(|e| sink_error(Path::new("stdout"), e))?;
                "stdout".to_string()
            }
        };
        let elapsed = started.elapsed();
        Ok(WriteReceipt {
            digest: None,
            target,
            bytes: text.len(),
            visible_us: micros(if visible.is_zero() { elapsed } else { visible }),
            elapsed_us: micros(elapsed),
        })
    }

    fn describe(&self) -> String {
        match &self.output {
            ManifestOutput::File(p) => format!("istio WasmPlugin {}", p.display()),
            ManifestOutput::Stdout => "istio WasmPlugin (stdout)".into(),
        }
    }
}
