//! What users see: one JSON object per line (for log collectors), or readable lines and a
//! live progress line (for a terminal).

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Runner, RunnerEvent};
use crate::clock::system_now_ms;
use crate::core::gates::Verdict;
use crate::core::spec::RolloutSpec;
use crate::core::step::{pct, Decision, Phase, RolloutState};

/// How often an unchanged metrics read error is logged again.
const SOURCE_ERROR_EVERY: Duration = Duration::from_secs(10);

/// How the runner reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogMode {
    /// One JSON object per line on stdout (for log collectors).
    Json,
    /// Readable lines plus a live progress line (for a terminal).
    Human,
    /// Nothing on stdout.
    Quiet,
}

impl LogMode {
    /// `Human` when stdout is a terminal, else `Json`.
    pub fn detect() -> LogMode {
        if std::io::stdout().is_terminal() {
            LogMode::Human
        } else {
            LogMode::Json
        }
    }
}

/// Clears the current terminal line: carriage return, then erase the whole line.
pub const CLEAR_LINE: &str = "\r\x1b[2K";

/// The one writer of a run's terminal output. Every full line (events, webhook results,
/// diagnostics, the demo's own prints) goes through it; on a terminal it clears the live
/// progress line before the line and redraws it after, so the two never interleave.
pub struct Console {
    inner: Mutex<ConsoleState>,
}

struct ConsoleState {
    out: Box<dyn Write + Send>,
    /// Where diagnostics go (stderr); `None` writes them to `out`.
    err: Option<Box<dyn Write + Send>>,
    tty: bool,
    /// The terminal's width in columns, when known: the live line is cut to fit one row
    /// (a wrapped live line could not be cleared with one erase-line).
    width: Option<usize>,
    /// The live line, when one is on screen.
    live: Option<String>,
}

impl ConsoleState {
    fn clear(&mut self) {
        if self.tty && self.live.is_some() {
            let _ = self.out.write_all(CLEAR_LINE.as_bytes());
        }
    }

    fn redraw(&mut self) {
        if self.tty {
            if let Some(l) = &self.live {
                let _ = write!(self.out, "{l}");
            }
        }
        let _ = self.out.flush();
    }
}

impl Console {
    /// A console over `out`; `tty` says whether it is a terminal (only then a live line is
    /// drawn). Diagnostics go to `out` too.
    pub fn new(out: Box<dyn Write + Send>, tty: bool) -> Console {
        Console {
            inner: Mutex::new(ConsoleState {
                out,
                err: None,
                tty,
                width: None,
                live: None,
            }),
        }
    }

    /// The same console, with the live line cut to fit a terminal `columns` wide.
    pub fn with_width(self, columns: usize) -> Console {
        self.state().width = Some(columns);
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ConsoleState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the output is a terminal.
    pub fn is_terminal(&self) -> bool {
        self.state().tty
    }

    /// Prints one full line (a trailing newline is added), keeping the live line below it.
    pub fn line(&self, text: &str) {
        let mut st = self.state();
        st.clear();
        let _ = writeln!(st.out, "{}", text.trim_end_matches('\n'));
        st.redraw();
    }

    /// Writes diagnostics (whole lines) to stderr, clearing the live line first.
    pub fn diag(&self, bytes: &[u8]) {
        let mut st = self.state();
        st.clear();
        let _ = st.out.flush();
        match &mut st.err {
            Some(e) => {
                let _ = e.write_all(bytes);
                let _ = e.flush();
            }
            None => {
                let _ = st.out.write_all(bytes);
            }
        }
        st.redraw();
    }

    /// Sets and draws the live line (terminal only).
    pub fn set_live(&self, line: &str) {
        let mut st = self.state();
        if !st.tty {
            return;
        }
        let line: String = match st.width {
            Some(w) => line.chars().take(w.saturating_sub(1)).collect(),
            None => line.to_string(),
        };
        let _ = write!(st.out, "{CLEAR_LINE}{line}");
        let _ = st.out.flush();
        st.live = Some(line);
    }

    /// Removes the live line from the screen.
    pub fn clear_live(&self) {
        let mut st = self.state();
        st.clear();
        let _ = st.out.flush();
        st.live = None;
    }
}

/// The process's console: stdout, diagnostics to stderr.
pub fn console() -> &'static Console {
    static CONSOLE: OnceLock<Console> = OnceLock::new();
    CONSOLE.get_or_init(|| {
        let c = Console::new(Box::new(std::io::stdout()), std::io::stdout().is_terminal());
        {
            let mut st = c.state();
            st.err = Some(Box::new(std::io::stderr()));
            if st.tty {
                st.width = terminal_width();
            }
        }
        c
    })
}

/// The controlling terminal's width: `COLUMNS`, else `stty size` on `/dev/tty`.
fn terminal_width() -> Option<usize> {
    if let Some(w) = std::env::var("COLUMNS").ok().and_then(|v| v.parse().ok()) {
        return Some(w);
    }
    let tty = std::fs::File::open("/dev/tty").ok()?;
    let out = std::process::Command::new("stty")
        .arg("size")
        .stdin(tty)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    text.split_whitespace()
        .nth(1)?
        .parse()
        .ok()
        .filter(|w| *w > 0)
}

/// A `tracing` writer that sends diagnostics through [`console`] (to stderr, clearing the
/// live line first): `tracing_subscriber::fmt().with_writer(diag_writer)`.
pub fn diag_writer() -> DiagWriter {
    DiagWriter
}

/// See [`diag_writer`].
pub struct DiagWriter;

impl Write for DiagWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        console().diag(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes one log record in the given mode.
pub(super) fn emit(mode: LogMode, level: &str, event: &str, msg: &str, fields: Value) {
    match mode {
        LogMode::Quiet => {}
        LogMode::Json => {
            let mut o = json!({"ts": system_now_ms(), "level": level, "event": event, "msg": msg});
            if let (Some(obj), Value::Object(extra)) = (o.as_object_mut(), fields) {
                for (k, v) in extra {
                    obj.entry(k).or_insert(v);
                }
            }
            console().line(&o.to_string());
        }
        LogMode::Human => {
            let secs = system_now_ms() / 1000;
            let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
            let tag = match level {
                "error" => "ERROR ",
                "warn" => "warn  ",
                _ => "",
            };
            console().line(&format!("{h:02}:{m:02}:{s:02} {tag}{msg}"));
        }
    }
}

/// The live progress line: step, canary weight, bake progress, failed checks and the verdicts
/// of the last decision that judged gates.
pub(super) fn progress_line(
    spec: &RolloutSpec,
    state: &RolloutState,
    last_judged: Option<&Decision>,
    now: u64,
) -> String {
    let s = state;
    let interval = spec.interval_ms().max(1);
    let baked = now.saturating_sub(s.window_started_ms).min(interval);
    let frac = baked as f64 / interval as f64;
    let filled = (frac * 20.0).round() as usize;
    let bar: String = "#".repeat(filled) + &"-".repeat(20 - filled.min(20));
    let step_info = match s.phase {
        Phase::Canary { step } => format!("step {}/{}", step + 1, s.schedule.len()),
        _ => s.stage_label(),
    };
    let gates = last_judged
        .map(|d| {
            d.gates
                .iter()
                .map(|g| {
                    let mark = match g.verdict {
                        Verdict::Pass => "ok",
                        Verdict::Fail => "FAIL",
                        Verdict::Inconclusive => "?",
                    };
                    format!("{} {mark}", g.gate)
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    format!(
        "{step_info} · canary {}{} · bake [{bar}] {:>3.0}% · checks {}/{} · {gates}",
        pct(s.canary_bps),
        if s.paused { " [paused]" } else { "" },
        frac * 100.0,
        s.failed_checks,
        spec.spec.analysis.threshold,
    )
}

impl Runner {
    pub(super) fn record_event(&self, event: &RunnerEvent) {
        if let Err(e) = self.store.append_event(event) {
            self.log(
                "error",
                "event_log",
                &e.to_string(),
                json!({"error": e.to_string()}),
            );
        }
    }

    /// Logs a failed read, but the same error again only every 10 s (with a count), so a
    /// source that is down does not flood the log at the fast-track cadence.
    pub(super) fn log_source_error(&mut self, e: &str) {
        let now = Instant::now();
        let repeat = self
            .last_source_error
            .as_ref()
            .is_some_and(|(last, at, _)| last == e && now.duration_since(*at) < SOURCE_ERROR_EVERY);
        if repeat {
            if let Some((_, _, n)) = &mut self.last_source_error {
                *n += 1;
            }
            return;
        }
        let suppressed = match &self.last_source_error {
            Some((last, _, n)) if last == e => *n,
            _ => 0,
        };
        let msg = if suppressed > 0 {
            format!("metrics read failed ({suppressed} more since): {e}")
        } else {
            format!("metrics read failed: {e}")
        };
        self.log(
            "warn",
            "source_error",
            &msg,
            json!({"error": e, "repeated": suppressed}),
        );
        self.last_source_error = Some((e.to_string(), now, 0));
    }

    pub(super) fn log(&self, level: &str, event: &str, msg: &str, fields: Value) {
        emit(self.opts.log, level, event, msg, fields);
    }

    pub(super) fn clear_progress(&mut self) {
        if self.progress_shown {
            console().clear_live();
            self.progress_shown = false;
        }
    }

    /// Redraws the live progress line (terminal only), at most 4 times a second.
    pub(super) fn progress(&mut self) {
        if self.opts.log != LogMode::Human {
            return;
        }
        if self
            .last_progress
            .is_some_and(|t| t.elapsed() < Duration::from_millis(250))
        {
            return;
        }
        self.last_progress = Some(Instant::now());
        let now = self.clock.now_ms();
        let line = progress_line(&self.spec, &self.state, self.journal.last_judged(), now);
        let width = 160;
        let line: String = line.chars().take(width).collect();
        console().set_live(&line);
        self.progress_shown = true;
    }
}
