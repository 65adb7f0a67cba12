//! `aviaryctl history`: the finished rollouts recorded in the history file, and how often
//! each gate failed, held or passed at each stage.

use std::path::Path;
use std::process::ExitCode;

use aviaryctl::edges::history::HistoryLog;
use aviaryctl::error::Error;
use aviaryctl::report::{gate_view, render_gate_view, render_history, RunSummary};

use super::status::Output;

/// Prints the history at `path`: the runs, or with `gates` the per-gate view.
pub(crate) fn history(path: &Path, output: Output, gates: bool) -> Result<ExitCode, Error> {
    let log = HistoryLog::new(path);
    let runs: Vec<RunSummary> = log.read()?;
    match (output, gates) {
        (Output::Json, false) => println!("{}", serde_json::to_string_pretty(&runs)?),
        (Output::Json, true) => println!("{}", serde_json::to_string_pretty(&gate_view(&runs))?),
        (Output::Text, false) => print!("{}", render_history(&runs)),
        (Output::Text, true) => print!("{}", render_gate_view(&gate_view(&runs))),
    }
    Ok(ExitCode::SUCCESS)
}
