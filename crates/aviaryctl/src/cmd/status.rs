//! `aviaryctl status` and `aviaryctl report`: where a rollout is, and its reports.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use aviaryctl::clock::system_now_ms;
use aviaryctl::core::step::{pct, RolloutState};
use aviaryctl::edges::records::RecordLog;
use aviaryctl::error::Error;
use aviaryctl::report;
use aviaryctl::runner::RunnerEvent;
use clap::ValueEnum;

use super::open_existing;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
/// Output format of `status`.
pub(crate) enum Output {
    Text,
    Json,
}

/// Prints where the rollout is, whether a driver runs, and the last write and apply.
pub(crate) fn status(state_path: &Path, output: Output) -> Result<ExitCode, Error> {
    let (store, spec) = open_existing(state_path)?;
    let state = store
        .load::<RolloutState>()?
        .ok_or_else(|| usage!("{} has a spec but no state yet", state_path.display()))?;
    let history = RecordLog::beside(&store).history(state.records)?;
    let st = report::status(&spec, &state, &history, system_now_ms());
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

/// Writes the reports and prints their paths.
pub(crate) fn report_cmd(state_path: &Path, out: Option<PathBuf>) -> Result<ExitCode, Error> {
    let (store, spec) = open_existing(state_path)?;
    let state = store
        .load::<RolloutState>()?
        .ok_or_else(|| usage!("{} has no state yet", state_path.display()))?;
    let dir = out
        .or_else(|| spec.spec.report_dir.as_ref().map(PathBuf::from))
        .unwrap_or_else(|| store.dir().join("report"));
    let history = RecordLog::beside(&store).history(state.records)?;
    for p in report::write_reports(&spec, &state, &history, &dir)? {
        println!("{}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}
