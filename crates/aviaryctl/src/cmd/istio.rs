//! `aviaryctl render-istio`: the Istio WasmPlugin carrying the rollout's plugin config.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use aviary_contract::units::{percent_to_bps, BUCKETS};
use aviaryctl::core::spec::istio::{FailStrategy, Phase};
use aviaryctl::edges::fs::read_spec;
use aviaryctl::edges::sink::{ConfigSink, IstioWasmPluginSink, ManifestOutput};
use aviaryctl::error::Error;
use aviaryctl::runner::desired_config;
use clap::{Args, ValueEnum};

use super::load_state_if_present;

// The arguments of `render-istio` (its help is the `Cmd::RenderIstio` doc comment).
#[derive(Debug, Args)]
pub(crate) struct RenderIstio {
    /// The rollout spec (YAML).
    pub(crate) spec: PathBuf,
    /// Canary weight in percent, instead of the state's.
    #[arg(long)]
    pub(crate) weight: Option<f64>,
    /// Module URL (`oci://…`, `https://…`, `file://…`).
    #[arg(long)]
    pub(crate) url: Option<String>,
    /// `metadata.name`.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// `metadata.namespace`.
    #[arg(long)]
    pub(crate) namespace: Option<String>,
    /// SHA-256 of the module (64 lowercase hex digits).
    #[arg(long)]
    pub(crate) sha256: Option<String>,
    /// Behaviour when the plugin fails. FAIL_RELOAD (default) reloads it after a backoff, and
    /// requests fail meanwhile instead of bypassing it; FAIL_OPEN would let a client's own
    /// routing header reach the VirtualService.
    #[arg(long, value_enum, default_value_t = FailArg::Reload)]
    pub(crate) fail_strategy: FailArg,
    /// Filter-chain phase (default STATS: after authn/authz, before Istio stats).
    #[arg(long, value_enum, default_value_t = PhaseArg::Stats)]
    pub(crate) phase: PhaseArg,
    /// `spec.priority` within the phase.
    #[arg(long)]
    pub(crate) priority: Option<i32>,
    /// Write to this file (atomically) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
/// `--fail-strategy`.
pub(crate) enum FailArg {
    #[value(name = "fail-open")]
    Open,
    #[value(name = "fail-close")]
    Close,
    #[value(name = "fail-reload")]
    Reload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
/// `--phase`.
pub(crate) enum PhaseArg {
    Authn,
    Authz,
    Stats,
    Unspecified,
}

/// Writes the manifest to stdout or `--out`.
pub(crate) fn render_istio(state_path: &Path, args: RenderIstio) -> Result<ExitCode, Error> {
    let RenderIstio {
        spec,
        weight,
        url,
        name,
        namespace,
        sha256,
        fail_strategy,
        phase,
        priority,
        out,
    } = args;
    let spec = read_spec(&spec)?;
    let state = load_state_if_present(state_path, &spec)?;
    let config = match weight {
        Some(w) => {
            let bps = percent_to_bps(w)
                .filter(|&b| b <= BUCKETS)
                .ok_or_else(|| usage!("--weight must be 0–100 with at most two decimals"))?;
            spec.render_config(bps, false, false)
        }
        None => desired_config(&spec, state.as_ref()).config,
    };
    let istio = spec.spec.config.istio_wasm_plugin.as_ref();
    let url = url
        .or_else(|| istio.map(|i| i.image.clone()))
        .ok_or_else(|| {
            usage!("--url is required (the spec has no config.istioWasmPlugin.image)")
        })?;
    let name = name
        .or_else(|| istio.map(|i| i.name.clone()))
        .unwrap_or_else(|| spec.spec.config.filter_name.clone());
    let output = match out {
        Some(p) => ManifestOutput::File(p),
        None => ManifestOutput::Stdout,
    };
    let mut sink = IstioWasmPluginSink::new(name, url, output);
    sink.namespace = namespace.or_else(|| istio.map(|i| i.namespace.clone()));
    sink.selector = istio.map(|i| i.selector.clone()).unwrap_or_default();
    sink.mode = istio.map(|i| i.mode).unwrap_or_default();
    sink.sha256 = sha256;
    sink.priority = priority;
    sink.fail_strategy = match fail_strategy {
        FailArg::Open => FailStrategy::FailOpen,
        FailArg::Close => FailStrategy::FailClose,
        FailArg::Reload => FailStrategy::FailReload,
    };
    sink.phase = match phase {
        PhaseArg::Authn => Phase::Authn,
        PhaseArg::Authz => Phase::Authz,
        PhaseArg::Stats => Phase::Stats,
        PhaseArg::Unspecified => Phase::UnspecifiedPhase,
    };
    let receipt = sink.write(&config)?;
    if receipt.target != "stdout" {
        eprintln!("wrote {}", receipt.target);
    }
    Ok(ExitCode::SUCCESS)
}
