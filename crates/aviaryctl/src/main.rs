//! `aviaryctl`: the command-line driver. The commands live in `cmd/`; errors become `anyhow`
//! here only, for printing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use aviaryctl::core::step::Command;
use aviaryctl::edges::history::HISTORY_FILE;
use aviaryctl::edges::store::{DEFAULT_STATE_DIR, STATE_FILE};
use aviaryctl::error::Error;
use clap::{Parser, Subcommand};

mod cmd;

use cmd::control::{control, Control};
use cmd::history::history;
use cmd::istio::{render_istio, RenderIstio};
use cmd::run::{run, LogFormat};
use cmd::status::{report_cmd, status, Output};
use cmd::validate::validate;

/// Environment variable naming the level of internal diagnostics on stderr (`error`, `warn`,
/// `info`, `debug` or `trace`); unset, there are none.
const LOG_ENV: &str = "AVIARY_LOG";

/// Metric-gated canary rollouts for ML models behind Envoy with the Aviary filter.
///
/// `run` walks the canary through the spec's schedule, judging gates against the baseline at
/// every interval and rewriting the plugin config (ECDS file, JSON file or Istio WasmPlugin)
/// to promote, hold or roll back. The other commands talk to a running driver through the
/// state directory, or act on the state directly when no driver is running.
///
/// Set AVIARY_LOG=debug (or error, warn, info, trace) for internal diagnostics on stderr.
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
    /// The history of finished rollouts (JSON lines), shared by rollouts that name the same
    /// file. Default: `history.jsonl` in the state directory.
    #[arg(long, global = true, value_name = "FILE")]
    history: Option<PathBuf>,
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
    /// List finished rollouts: outcome, duration, stage reached, the deciding gate and its
    /// numbers, report path.
    History {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// How often each gate failed, held or passed, per stage, across the runs.
        #[arg(long)]
        gates: bool,
    },
    /// Print an Istio WasmPlugin manifest carrying the rollout's plugin config.
    ///
    /// The config is the one the rollout state wants now (or the spec's initial config when
    /// the rollout has not run, or the canary at `--weight`). Fields default to the spec's
    /// `config.istioWasmPlugin`.
    RenderIstio(RenderIstio),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::from(1)
        }
    }
}

/// Internal diagnostics (`tracing`) go to stderr at the level `AVIARY_LOG` names; without it
/// nothing is installed, so what users see is only the commands' own output.
fn init_tracing() {
    let Some(level) = std::env::var(LOG_ENV)
        .ok()
        .and_then(|v| v.parse::<tracing_subscriber::filter::LevelFilter>().ok())
    else {
        return;
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(aviaryctl::runner::diag_writer)
        .with_ansi(false)
        .init();
}

fn dispatch(cli: Cli) -> Result<ExitCode, Error> {
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
        } => run(&spec, explicit_state, report_dir, log, cli.history),
        Cmd::History { output, gates } => {
            let dir = state_path.parent().unwrap_or(Path::new("."));
            let path = cli.history.unwrap_or_else(|| dir.join(HISTORY_FILE));
            history(&path, output, gates)
        }
        Cmd::Status { output } => status(&state_path, output),
        Cmd::Pause(c) => control(&state_path, Command::Pause, &c),
        Cmd::Resume(c) => control(&state_path, Command::Resume, &c),
        Cmd::Promote { full, control: c } => {
            control(&state_path, Command::Promote { to_full: full }, &c)
        }
        Cmd::Abort { reason, control: c } => control(&state_path, Command::Abort { reason }, &c),
        Cmd::Report { out } => report_cmd(&state_path, out),
        Cmd::RenderIstio(args) => render_istio(&state_path, args),
    }
}
