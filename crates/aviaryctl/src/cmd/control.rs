//! `aviaryctl pause|resume|promote|abort`: commands for the running driver, or applied to the
//! state directly when none runs.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use aviaryctl::clock::{system_now_ms, SystemClock};
use aviaryctl::core::step::Command;
use aviaryctl::edges::store::{CommandAck, QueuedCommand};
use aviaryctl::error::Error;
use aviaryctl::runner::{Components, LogMode, Runner, RunnerOptions};
use clap::Args;

use super::open_existing;

#[derive(Debug, Args)]
pub(crate) struct Control {
    /// Seconds to wait for the running driver to act on the command.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub(crate) wait: f64,
}

/// Prints the driver's answer; the exit status says whether it accepted the command.
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

/// Sends `command` to the running driver and waits for its answer, or applies it to the
/// state directly when no driver runs.
pub(crate) fn control(state_path: &Path, command: Command, c: &Control) -> Result<ExitCode, Error> {
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
            Err(e) => return Err(e),
        }
    }
    let q = store.submit(command)?;
    let wait = Duration::try_from_secs_f64(c.wait.max(0.0)).map_err(|e| usage!("--wait: {e}"))?;
    match store.wait_ack(&q.id, wait)? {
        Some(ack) => Ok(print_ack(&ack, q.issued_at_ms)),
        None => Err(usage!(
            "the driver did not answer within {:.1} s; the command stays queued in {}",
            c.wait,
            store.dir().display()
        )),
    }
}
