//! `aviaryctl run`: a rollout in the foreground.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use aviaryctl::clock::SystemClock;
use aviaryctl::core::step::Outcome;
use aviaryctl::edges::fs::read_spec;
use aviaryctl::edges::store::{StateStore, DEFAULT_STATE_DIR, STATE_FILE};
use aviaryctl::error::Error;
use aviaryctl::runner::{Components, LogMode, Runner, RunnerOptions};
use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
/// How `run` reports progress.
pub(crate) enum LogFormat {
    Auto,
    Json,
    Human,
    Quiet,
}

fn log_mode(f: LogFormat) -> LogMode {
    match f {
        LogFormat::Auto => LogMode::detect(),
        LogFormat::Json => LogMode::Json,
        LogFormat::Human => LogMode::Human,
        LogFormat::Quiet => LogMode::Quiet,
    }
}

/// Runs the rollout until it ends; the exit status tells how (0 promoted, 2 rolled back,
/// 3 aborted, 4 stopped).
pub(crate) fn run(
    spec_path: &Path,
    explicit_state: Option<PathBuf>,
    report_dir: Option<PathBuf>,
    log: LogFormat,
    history: Option<PathBuf>,
) -> Result<ExitCode, Error> {
    let spec = read_spec(spec_path)?;
    let state_path = explicit_state
        .or_else(|| spec.spec.state_file.as_ref().map(PathBuf::from))
        .unwrap_or_else(|| Path::new(DEFAULT_STATE_DIR).join(STATE_FILE));
    let store = StateStore::open(&state_path)?;
    let components = Components::from_spec(&spec)?;
    let opts = RunnerOptions {
        log: log_mode(log),
        report_dir,
        history,
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
