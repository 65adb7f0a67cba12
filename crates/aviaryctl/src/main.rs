//! `aviaryctl`: the command-line driver. Errors are `anyhow` here only.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use aviaryctl::clock::{system_now_ms, SystemClock};
use aviaryctl::core::spec::istio::{FailStrategy, Phase};
use aviaryctl::core::spec::{percent_to_bps, RolloutSpec};
use aviaryctl::core::step::{pct, Command, Outcome, RolloutState};
use aviaryctl::edges::sink::{
    sinks_for, validated_json, ConfigSink, IstioWasmPluginSink, ManifestOutput,
};
use aviaryctl::edges::source::source_for;
use aviaryctl::edges::store::{
    CommandAck, QueuedCommand, StateStore, DEFAULT_STATE_DIR, STATE_FILE,
};
use aviaryctl::error::Error;
use aviaryctl::report;
use aviaryctl::runner::{desired_config, Components, LogMode, Runner, RunnerEvent, RunnerOptions};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Metric-gated canary rollouts for ML models behind Envoy with the Aviary filter.
///
/// `run` walks the canary through the spec's schedule, judging gates against the baseline at
/// every interval and rewriting the plugin config (ECDS file, JSON file or Istio WasmPlugin)
/// to promote, hold or roll back. The other commands talk to a running driver through the
/// state directory, or act on the state directly when no driver is running.
#[derive(Debug, Parser)]
#[command(name = "aviaryctl", version)]
struct Cli {
    /// Directory holding the rollout state (`state.json` and its queues). Default: `.aviary`,
    /// or for `run` the spec's `stateFile` when set.
    #[arg(long, global = true, value_name = "DIR", conflicts_with = "state_file")]
    state_dir: Option<PathBuf>,
    /// The rollout state file itself, when not named `state.json`.
    #[arg(long, global = true, value_name = "FILE")]
    state_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Check a rollout spec, and every plugin config it would write, without touching anything.
    Validate {
        /// The rollout spec (YAML).
        spec: PathBuf,
    },
    /// Run a rollout in the foreground until it is promoted, rolled back or aborted.
    ///
    /// Exit status: 0 promoted, 2 rolled back, 3 aborted. Killing the driver is safe: the
    /// state is saved after every decision, and `run` again resumes at the same step.
    Run {
        /// The rollout spec (YAML).
        spec: PathBuf,
        /// Where to write the reports at the end (default: the spec's `reportDir`).
        #[arg(long, value_name = "DIR")]
        report_dir: Option<PathBuf>,
        /// Log format: JSON lines (default when stdout is not a terminal) or a live display.
        #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
        log: LogFormat,
    },
    /// Show where the rollout is.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Hold the current step: no promotion; a breach is alerted but not rolled back.
    Pause(Control),
    /// Continue after `pause`.
    Resume(Control),
    /// Skip the rest of the bake: go to the next step now.
    Promote {
        /// Go straight to 100 % instead of the next step.
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        control: Control,
    },
    /// Send all traffic to the baseline now (kill switch) and end the rollout.
    Abort {
        /// Why, for the decision log and the webhooks.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        control: Control,
    },
    /// Write report.json, report.md and report.svg for the rollout.
    Report {
        /// Output directory (default: the spec's `reportDir`, else `<state dir>/report`).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Print an Istio WasmPlugin manifest carrying the rollout's plugin config.
    ///
    /// The config is the one the rollout state wants now (or the spec's initial config when
    /// the rollout has not run, or the canary at `--weight`). Fields default to the spec's
    /// `config.istioWasmPlugin`.
    RenderIstio {
        /// The rollout spec (YAML).
        spec: PathBuf,
        /// Canary weight in percent, instead of the state's.
        #[arg(long)]
        weight: Option<f64>,
        /// Module URL (`oci://…`, `https://…`, `file://…`).
        #[arg(long)]
        url: Option<String>,
        /// `metadata.name`.
        #[arg(long)]
        name: Option<String>,
        /// `metadata.namespace`.
        #[arg(long)]
        namespace: Option<String>,
        /// SHA-256 of the module (64 lowercase hex digits).
        #[arg(long)]
        sha256: Option<String>,
        /// Behaviour when the module cannot load. FAIL_OPEN (default) lets traffic bypass the
        /// plugin, which routes to the baseline: the same place a rollback sends it.
        #[arg(long, value_enum, default_value_t = FailArg::Open)]
        fail_strategy: FailArg,
        /// Filter-chain phase (default STATS: after authn/authz, before Istio stats).
        #[arg(long, value_enum, default_value_t = PhaseArg::Stats)]
        phase: PhaseArg,
        /// `spec.priority` within the phase.
        #[arg(long)]
        priority: Option<i32>,
        /// Write to this file (atomically) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct Control {
    /// Seconds to wait for the running driver to act on the command.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    wait: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Auto,
    Json,
    Human,
    Quiet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FailArg {
    #[value(name = "fail-open")]
    Open,
    #[value(name = "fail-close")]
    Close,
    #[value(name = "fail-reload")]
    Reload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PhaseArg {
    Authn,
    Authz,
    Stats,
    Unspecified,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let explicit_state = cli
        .state_file
        .clone()
        .or_else(|| cli.state_dir.as_ref().map(|d| d.join(STATE_FILE)));
    let state_path = explicit_state
        .clone()
        .unwrap_or_else(|| Path::new(DEFAULT_STATE_DIR).join(STATE_FILE));
    match cli.command {
        Cmd::Validate { spec } => validate(&spec),
        Cmd::Run {
            spec,
            report_dir,
            log,
        } => run(&spec, explicit_state, report_dir, log),
        Cmd::Status { output } => status(&state_path, output),
        Cmd::Pause(c) => control(&state_path, Command::Pause, &c),
        Cmd::Resume(c) => control(&state_path, Command::Resume, &c),
        Cmd::Promote { full, control: c } => {
            control(&state_path, Command::Promote { to_full: full }, &c)
        }
        Cmd::Abort { reason, control: c } => control(&state_path, Command::Abort { reason }, &c),
        Cmd::Report { out } => report_cmd(&state_path, out),
        Cmd::RenderIstio {
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
        } => {
            let spec = RolloutSpec::load(&spec)?;
            let state = load_state_if_present(&state_path, &spec)?;
            let config = match weight {
                Some(w) => {
                    let bps = percent_to_bps(w).filter(|&b| b <= 10_000).ok_or_else(|| {
                        anyhow!("--weight must be 0–100 with at most two decimals")
                    })?;
                    spec.render_config(bps, false, false)
                }
                None => desired_config(&spec, state.as_ref()).config,
            };
            let istio = spec.spec.config.istio_wasm_plugin.as_ref();
            let url = url
                .or_else(|| istio.map(|i| i.image.clone()))
                .ok_or_else(|| {
                    anyhow!("--url is required (the spec has no config.istioWasmPlugin.image)")
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
    }
}

fn validate(path: &Path) -> anyhow::Result<ExitCode> {
    let spec = match RolloutSpec::load(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return Ok(ExitCode::from(1));
        }
    };
    // Every config the rollout can write must pass the plugin's own validation.
    let mut configs = vec![(
        "initial".to_string(),
        spec.spec.config.plugin_config.clone(),
    )];
    for bps in spec.schedule_bps() {
        configs.push((
            format!("step {}", pct(bps)),
            spec.render_config(bps, false, false),
        ));
    }
    configs.push((
        "promoted".into(),
        spec.render_config(spec.pool_bps(), false, false),
    ));
    configs.push(("rollback".into(), spec.render_config(0, true, false)));
    if spec.spec.analysis.shadow.is_some() {
        configs.push(("shadow".into(), spec.render_config(0, false, true)));
    }
    let mut problems = Vec::new();
    for (label, cfg) in &configs {
        if let Err(e) = validated_json(cfg) {
            problems.push(format!("{label} config: {e}"));
        }
    }
    let sinks = sinks_for(&spec)
        .map_err(|e| problems.push(e.to_string()))
        .ok();
    let source = source_for(&spec)
        .map_err(|e| problems.push(e.to_string()))
        .ok();
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{}: {p}", path.display());
        }
        return Ok(ExitCode::from(1));
    }
    let a = &spec.spec.analysis;
    println!("{}: valid", path.display());
    println!(
        "rollout   {} ({} → {}, service {})",
        spec.metadata.name,
        spec.spec.baseline,
        spec.spec.canary,
        spec.service()
    );
    let schedule: Vec<String> = spec.schedule_bps().into_iter().map(pct).collect();
    println!(
        "schedule  {}{} → 100%",
        if a.shadow.is_some() {
            "shadow → "
        } else {
            ""
        },
        schedule.join(" → ")
    );
    println!(
        "timing    interval {}, fast-track {}, threshold {}, maxHold {}",
        a.interval,
        a.fast_interval
            .map_or_else(|| "off".to_string(), |f| f.to_string()),
        a.threshold,
        a.max_hold
    );
    if let Some(s) = source {
        println!("metrics   {}", s.describe());
    }
    for s in sinks.into_iter().flatten() {
        println!("sink      {}", s.describe());
    }
    for w in &spec.spec.webhooks {
        let events: Vec<&str> = w.events.iter().map(|e| e.as_str()).collect();
        println!("webhook   {} {} [{}]", w.name, w.url, events.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

fn log_mode(f: LogFormat) -> LogMode {
    match f {
        LogFormat::Auto => LogMode::detect(),
        LogFormat::Json => LogMode::Json,
        LogFormat::Human => LogMode::Human,
        LogFormat::Quiet => LogMode::Quiet,
    }
}

fn run(
    spec_path: &Path,
    explicit_state: Option<PathBuf>,
    report_dir: Option<PathBuf>,
    log: LogFormat,
) -> anyhow::Result<ExitCode> {
    let spec = RolloutSpec::load(spec_path)?;
    let state_path = explicit_state
        .or_else(|| spec.spec.state_file.as_ref().map(PathBuf::from))
        .unwrap_or_else(|| Path::new(DEFAULT_STATE_DIR).join(STATE_FILE));
    let store = StateStore::open(&state_path)?;
    let components = Components::from_spec(&spec)?;
    let opts = RunnerOptions {
        log: log_mode(log),
        report_dir,
        ..RunnerOptions::default()
    };
    let runner = Runner::new(spec, store, components, Arc::new(SystemClock), opts)?;
    Ok(match runner.run()? {
        Some(Outcome::Promoted) => ExitCode::SUCCESS,
        Some(Outcome::RolledBack) => ExitCode::from(2),
        Some(Outcome::Aborted) => ExitCode::from(3),
        None => ExitCode::from(4),
    })
}

fn open_existing(state_path: &Path) -> anyhow::Result<(StateStore, RolloutSpec)> {
    let store = StateStore::open(state_path)?;
    let spec = store
        .load_spec::<RolloutSpec>()?
        .ok_or_else(|| {
            anyhow!(
                "no rollout state at {} (start one with `aviaryctl run <rollout.yaml>`, or pass --state-dir)",
                state_path.display()
            )
        })?;
    Ok((store, spec))
}

fn load_state_if_present(
    state_path: &Path,
    spec: &RolloutSpec,
) -> anyhow::Result<Option<RolloutState>> {
    if !state_path.exists() {
        return Ok(None);
    }
    let store = StateStore::open(state_path)?;
    Ok(store
        .load::<RolloutState>()?
        .filter(|s| s.name == spec.metadata.name))
}

fn status(state_path: &Path, output: Output) -> anyhow::Result<ExitCode> {
    let (store, spec) = open_existing(state_path)?;
    let state = store
        .load::<RolloutState>()?
        .ok_or_else(|| anyhow!("{} has a spec but no state yet", state_path.display()))?;
    let st = report::status(&spec, &state, system_now_ms());
    let running = store.is_locked();
    let events: Vec<RunnerEvent> = store.read_events()?;
    let last_write = events.iter().rev().find_map(|e| match e {
        RunnerEvent::Write(w) => Some(w.clone()),
        _ => None,
    });
    let last_apply = events.iter().rev().find_map(|e| match e {
        RunnerEvent::Applied(a) => Some(a.clone()),
        _ => None,
    });
    match output {
        Output::Json => {
            let mut v = serde_json::to_value(&st)?;
            v["driverRunning"] = serde_json::json!(running);
            v["statePath"] = serde_json::json!(store.state_path());
            v["lastWrite"] = serde_json::to_value(&last_write)?;
            v["lastApply"] = serde_json::to_value(&last_apply)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Text => {
            print!("{st}");
            println!(
                "driver    {}",
                if running { "running" } else { "not running" }
            );
            if let Some(w) = last_write {
                println!(
                    "last write canary {}{} ({}), sink {:.2} ms",
                    pct(w.canary_bps),
                    if w.rollback { " kill switch" } else { "" },
                    w.trigger,
                    w.write_us as f64 / 1e3
                );
            }
            if let Some(a) = last_apply {
                if a.applied {
                    println!("applied   {:.1} ms after the write", a.apply_ms);
                } else {
                    println!("applied   no: {}", a.detail);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_ack(ack: &CommandAck, issued_at_ms: u64) -> ExitCode {
    let took = ack.done_at_ms.saturating_sub(issued_at_ms);
    let write = ack
        .write_us
        .map(|us| format!(", config written in {:.2} ms", us as f64 / 1e3))
        .unwrap_or_default();
    if ack.accepted {
        println!(
            "{} (done {took} ms after the command{write}; now {})",
            ack.message,
            ack.phase.as_deref().unwrap_or("?")
        );
        ExitCode::SUCCESS
    } else {
        eprintln!("rejected: {}", ack.message);
        ExitCode::from(1)
    }
}

fn control(state_path: &Path, command: Command, c: &Control) -> anyhow::Result<ExitCode> {
    let (store, spec) = open_existing(state_path)?;
    if !store.is_locked() {
        // No driver: act on the state directly, so `abort` works even after a crash.
        let components = Components::from_spec(&spec)?;
        let opts = RunnerOptions {
            inline_source: true,
            log: if std::io::stderr().is_terminal() {
                LogMode::Quiet
            } else {
                LogMode::Json
            },
            ..RunnerOptions::default()
        };
        match Runner::new(spec, store.clone(), components, Arc::new(SystemClock), opts) {
            Ok(mut runner) => {
                let q = QueuedCommand {
                    id: format!("offline-{}", std::process::id()),
                    issued_at_ms: system_now_ms(),
                    command,
                };
                let ack = runner.apply_command(&q)?;
                runner.finish()?;
                eprintln!("no driver was running; applied to the state directly");
                return Ok(print_ack(&ack, q.issued_at_ms));
            }
            Err(Error::State { message, .. }) if message.contains("another driver") => {}
            Err(e) => return Err(e.into()),
        }
    }
    let q = store.submit(command)?;
    let wait = Duration::try_from_secs_f64(c.wait.max(0.0)).context("--wait")?;
    match store.wait_ack(&q.id, wait)? {
        Some(ack) => Ok(print_ack(&ack, q.issued_at_ms)),
        None => bail!(
            "the driver did not answer within {:.1} s; the command stays queued in {}",
            c.wait,
            store.dir().display()
        ),
    }
}

fn report_cmd(state_path: &Path, out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let (store, spec) = open_existing(state_path)?;
    let state = store
        .load::<RolloutState>()?
        .ok_or_else(|| anyhow!("{} has no state yet", state_path.display()))?;
    let dir = out
        .or_else(|| spec.spec.report_dir.as_ref().map(PathBuf::from))
        .unwrap_or_else(|| store.dir().join("report"));
    for p in report::write_reports(&spec, &state, &dir)? {
        println!("{}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}
