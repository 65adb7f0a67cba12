//! A clean terminal: the live progress line never interleaves with other output (the console
//! writer driven with a fake terminal from several threads), and `aviaryctl run --log json`
//! keeps stdout to one JSON event per line, diagnostics on stderr, ending with the evidence
//! and the report paths.

mod edges_support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use aviaryctl::runner::{Console, CLEAR_LINE};
use edges_support::{poll, ChildGuard, TempDir};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_aviaryctl");

/// A buffer shared with the test, standing in for a terminal.
#[derive(Clone, Default)]
struct Screen(Arc<Mutex<Vec<u8>>>);

impl Write for Screen {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("screen").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Screen {
    fn bytes(&self) -> String {
        String::from_utf8(self.0.lock().expect("screen").clone()).expect("utf8")
    }
}

/// Plays `bytes` as a terminal would: `\r` moves to the line's start, erase-line blanks it,
/// `\n` completes it, other characters overwrite at the cursor. Returns the completed lines
/// and what remains on the last line.
fn play(bytes: &str) -> (Vec<String>, String) {
    let clear = CLEAR_LINE.trim_start_matches('\r');
    let mut lines = Vec::new();
    let mut cur: Vec<char> = Vec::new();
    let mut col = 0;
    let mut rest = bytes;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix(clear) {
            cur.clear();
            rest = after;
            continue;
        }
        rest = &rest[c.len_utf8()..];
        match c {
            '\r' => col = 0,
            '\n' => {
                lines.push(cur.iter().collect::<String>().trim_end().to_string());
                cur.clear();
                col = 0;
            }
            c => {
                if col < cur.len() {
                    cur[col] = c;
                } else {
                    cur.push(c);
                }
                col += 1;
            }
        }
    }
    (lines, cur.iter().collect::<String>().trim_end().to_string())
}

fn is_event(l: &str) -> bool {
    let parts: Vec<&str> = l.split(' ').collect();
    matches!(parts.as_slice(), ["event" | "diag", t, i] if t.parse::<u32>().is_ok() && i.parse::<u32>().is_ok())
}

fn is_live(l: &str) -> bool {
    l.strip_prefix("live · step ")
        .is_some_and(|n| n.parse::<u32>().is_ok())
}

#[test]
fn the_live_line_never_interleaves_with_lines_from_other_threads() {
    let screen = Screen::default();
    let console = Arc::new(Console::new(Box::new(screen.clone()), true));
    assert!(console.is_terminal());
    const WRITERS: u32 = 4;
    const LINES: u32 = 200;
    let barrier = Arc::new(Barrier::new(WRITERS as usize + 1));
    let mut threads = Vec::new();
    for t in 0..WRITERS {
        let (c, b) = (console.clone(), barrier.clone());
        threads.push(std::thread::spawn(move || {
            b.wait();
            for i in 0..LINES {
                if t == 0 && i % 3 == 0 {
                    // Diagnostics (a `tracing` line) go through the same writer.
                    c.diag(format!("diag {t} {i}\n").as_bytes());
                } else {
                    c.line(&format!("event {t} {i}"));
                }
            }
        }));
    }
    let (c, b) = (console.clone(), barrier.clone());
    let live = std::thread::spawn(move || {
        b.wait();
        for n in 0..2000 {
            c.set_live(&format!("live · step {n}"));
        }
    });
    for t in threads {
        t.join().expect("writer");
    }
    live.join().expect("live");

    let bytes = screen.bytes();
    let (lines, last) = play(&bytes);
    for l in &lines {
        assert!(
            is_event(l),
            "a completed line is not one whole event: {l:?}"
        );
    }
    assert_eq!(
        lines.len() as u32,
        WRITERS * LINES,
        "every line printed once"
    );
    let mut sorted = lines.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), lines.len(), "no line printed twice");
    assert_eq!(
        last, "live · step 1999",
        "the live line is redrawn below the lines"
    );
    assert!(is_live(&last));

    // Ending the run removes the live line; a last line is then printed on its own.
    console.clear_live();
    console.line("evidence: done");
    let (lines, last) = play(&screen.bytes());
    assert_eq!(lines.last().map(String::as_str), Some("evidence: done"));
    assert_eq!(last, "");
}

#[test]
fn the_check_detects_a_line_printed_into_the_live_line() {
    // Without the console (a print while the live line is drawn) the line mixes both.
    let bytes = format!("{CLEAR_LINE}live · step 1event 0 0\n");
    let (lines, _) = play(&bytes);
    assert!(!is_event(&lines[0]) && !is_live(&lines[0]), "{lines:?}");
    // And a line shorter than the live line, printed after a bare `\r`, keeps its tail.
    let (lines, _) = play("live · step 12345\revent 0 0\n");
    assert!(!is_event(&lines[0]), "{lines:?}");
}

#[test]
fn the_live_line_fits_one_row_of_the_terminal() {
    let screen = Screen::default();
    let console = Console::new(Box::new(screen.clone()), true).with_width(20);
    console.set_live("live · step 1 · a line much wider than twenty columns");
    console.line("event 0 0");
    let (lines, last) = play(&screen.bytes());
    assert_eq!(lines, ["event 0 0"]);
    assert_eq!(last.chars().count(), 19, "{last:?}");
    assert!(last.starts_with("live · step 1"), "{last:?}");
}

#[test]
fn not_a_terminal_means_no_live_line_and_no_escapes() {
    let screen = Screen::default();
    let console = Console::new(Box::new(screen.clone()), false);
    console.set_live("live · step 1");
    console.line("event 0 0");
    console.diag(b"diag 0 1\n");
    console.clear_live();
    assert_eq!(screen.bytes(), "event 0 0\ndiag 0 1\n");
}

fn write_spec(dir: &TempDir) -> std::path::PathBuf {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let text = format!(
        r#"apiVersion: aviary.dev/v1
kind: Rollout
metadata: {{name: terminal-test}}
spec:
  baseline: stable
  canary: canary
  config:
    jsonFile: {dir}/plugin.json
    pluginConfig:
      service: recsys
      versions: [{{name: stable, weight: 10000}}, {{name: canary, weight: 0}}]
  metrics: {{envoyAdmin: ["http://127.0.0.1:{port}"], timeout: 200ms}}
  analysis:
    interval: 1s
    fastInterval: 200ms
    stepWeights: [5, 25, 50]
"#,
        dir = dir.path().display(),
    );
    let path = dir.join("rollout.yaml");
    std::fs::write(&path, text).expect("write spec");
    path
}

fn run_to_abort(dir: &TempDir, log: &str) -> (String, String, Option<i32>) {
    let spec = write_spec(dir);
    let state = dir.join("state");
    let report = dir.join("report");
    let out = std::fs::File::create(dir.join("run.out")).expect("out");
    let err = std::fs::File::create(dir.join("run.err")).expect("err");
    let mut run = ChildGuard(Some(
        Command::new(BIN)
            .env("AVIARY_LOG", "debug")
            .arg("--state-dir")
            .arg(&state)
            .args(["run", "--log", log, "--report-dir"])
            .arg(&report)
            .arg(&spec)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("run"),
    ));
    poll(Duration::from_secs(10), Duration::from_millis(20), || {
        let log = std::fs::read_to_string(dir.join("run.out")).ok()?;
        log.contains("metrics read failed").then_some(())
    })
    .expect("the driver reports the unreachable source");
    let abort = Command::new(BIN)
        .arg("--state-dir")
        .arg(&state)
        .args(["abort", "--reason", "terminal test"])
        .output()
        .expect("abort");
    assert!(
        abort.status.success(),
        "{}",
        String::from_utf8_lossy(&abort.stderr)
    );
    let code = poll(Duration::from_secs(15), Duration::from_millis(20), || {
        run.child().try_wait().expect("wait")
    })
    .expect("the driver exits after the abort")
    .code();
    let read = |p: &Path| std::fs::read_to_string(p).expect("read");
    (read(&dir.join("run.out")), read(&dir.join("run.err")), code)
}

#[test]
fn json_output_is_one_event_per_line_with_diagnostics_on_stderr() {
    let dir = TempDir::new("terminal-json");
    let (out, err, code) = run_to_abort(&dir, "json");
    assert_eq!(code, Some(3), "aborted\n{out}\n{err}");
    let mut events = Vec::new();
    for line in out.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(
            v["ts"].is_u64() && v["level"].is_string() && v["event"].is_string(),
            "{line}"
        );
        events.push(v);
    }
    assert!(!out.contains('\x1b') && !out.contains('\r'), "{out:?}");
    let find = |name: &str| {
        events
            .iter()
            .find(|v| v["event"] == name)
            .unwrap_or_else(|| panic!("no {name} event in\n{out}"))
    };
    assert!(
        find("evidence")["reason"]
            .as_str()
            .is_some_and(|r| r.contains("terminal test")),
        "{out}"
    );
    let paths = find("report")["paths"].as_array().expect("paths").clone();
    assert_eq!(paths.len(), 3, "{out}");
    for p in paths {
        assert!(Path::new(p.as_str().expect("path")).is_file(), "{p}");
    }
    // AVIARY_LOG=debug diagnostics went to stderr, not stdout.
    assert!(!err.trim().is_empty(), "diagnostics on stderr");
    assert!(
        err.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_err()),
        "{err}"
    );
}

#[test]
fn human_output_off_a_terminal_has_no_live_line() {
    let dir = TempDir::new("terminal-human");
    let (out, _err, code) = run_to_abort(&dir, "human");
    assert_eq!(code, Some(3), "{out}");
    assert!(!out.contains('\x1b') && !out.contains('\r'), "{out:?}");
    assert!(
        out.contains("evidence: ") && out.contains("terminal test"),
        "{out}"
    );
    assert!(
        out.contains("reports: ") && out.contains("report.md"),
        "{out}"
    );
}
