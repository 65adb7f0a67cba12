//! The persisted state of one rollout, keyed by its state file (default `.aviary/state.json`).
//! Next to `<stem>.json` live:
//!
//! - `<stem>.json` itself: the rollout state, replaced atomically (temp file, fsync, rename,
//!   fsync of the directory) after every decision, so a crash at any instant leaves either
//!   the old or the new state, never a torn one;
//! - `<stem>.lock`: held with an OS file lock by the running driver, so two drivers cannot run
//!   the same rollout (the kernel releases it when the process dies, even on SIGKILL);
//! - `<stem>.commands/`: a queue of operator commands (pause, resume, promote, abort) that the
//!   CLI drops in and the runner drains every tick;
//! - `<stem>.acks/`: the runner's answer to each command, which the CLI waits for;
//! - `<stem>.events.jsonl`: an append-only log of config writes, apply confirmations and
//!   commands, with their latencies;
//! - `<stem>.spec.json`: the spec the rollout runs with, so `status`, `report` and the control
//!   commands need only the state path.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::clock::system_now_ms;
use crate::core::step::Command;
use crate::edges::fs::{replace_file, write_atomic, Durability};
use crate::error::Error;

/// Default state directory, relative to the working directory.
pub const DEFAULT_STATE_DIR: &str = ".aviary";
/// State file name inside a state directory.
pub const STATE_FILE: &str = "state.json";

/// Makes command ids unique within one process.
static COMMAND_SEQ: AtomicU64 = AtomicU64::new(0);

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, Error> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| state_error(path, format!("corrupt: {e}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("reading", path, e)),
    }
}

fn io_error(what: &str, path: &Path, e: io::Error) -> Error {
    state_error(path, format!("{what}: {e}"))
}

fn state_error(path: &Path, message: String) -> Error {
    Error::State {
        path: path.display().to_string(),
        message,
    }
}

/// A queued command with its identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedCommand {
    /// Unique id (also the file name stem), ordered by submission time.
    pub id: String,
    pub issued_at_ms: u64,
    pub command: Command,
}

/// The runner's answer to a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandAck {
    pub id: String,
    /// When the runner read the command.
    pub received_at_ms: u64,
    /// When the runner finished acting on it (after any config write).
    pub done_at_ms: u64,
    /// Whether it was accepted.
    pub accepted: bool,
    /// What happened, for the operator.
    pub message: String,
    /// Phase of the rollout afterwards.
    #[serde(default)]
    pub phase: Option<String>,
    /// Write latency of a config write the command caused, in microseconds.
    #[serde(default)]
    pub write_us: Option<u64>,
}

/// Exclusive ownership of a state directory; released on drop or process death.
#[derive(Debug)]
pub struct StateLock {
    file: File,
}

impl Drop for StateLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// The on-disk state of one rollout.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
    state: PathBuf,
    stem: String,
}

impl StateStore {
    /// Opens the store of the state file `state_path`, creating its directory and queues.
    pub fn open(state_path: impl Into<PathBuf>) -> Result<Self, Error> {
        let state: PathBuf = state_path.into();
        let stem = state
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| state_error(&state, "the state path needs a file name".into()))?;
        let dir = match state.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let store = StateStore { dir, state, stem };
        for d in [store.dir.clone(), store.commands_dir(), store.acks_dir()] {
            fs::create_dir_all(&d).map_err(|e| io_error("creating", &d, e))?;
        }
        Ok(store)
    }

    /// Opens the store of `dir/state.json`.
    pub fn in_dir(dir: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open(dir.as_ref().join(STATE_FILE))
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}.{suffix}", self.stem))
    }

    fn commands_dir(&self) -> PathBuf {
        self.sibling("commands")
    }

    fn acks_dir(&self) -> PathBuf {
        self.sibling("acks")
    }

    /// The directory holding the state file.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the state file.
    pub fn state_path(&self) -> PathBuf {
        self.state.clone()
    }

    /// Path of the event log.
    pub fn events_path(&self) -> PathBuf {
        self.sibling("events.jsonl")
    }

    /// Path of the saved spec.
    pub fn spec_path(&self) -> PathBuf {
        self.sibling("spec.json")
    }

    fn lock_path(&self) -> PathBuf {
        self.sibling("lock")
    }

    /// Saves the spec the rollout runs with.
    pub fn save_spec<T: Serialize>(&self, spec: &T) -> Result<(), Error> {
        let path = self.spec_path();
        let bytes = serde_json::to_vec_pretty(spec)
            .map_err(|e| state_error(&path, format!("serializing the spec: {e}")))?;
        write_atomic(&path, &bytes).map_err(|e| io_error("writing", &path, e))
    }

    /// Loads the saved spec, `None` if the rollout was never run from this state.
    pub fn load_spec<T: DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        read_json(&self.spec_path())
    }

    /// Takes the rollout lock, failing at once if another driver holds it.
    pub fn lock(&self) -> Result<StateLock, Error> {
        let path = self.lock_path();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_error("opening", &path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&path).unwrap_or_default();
                return Err(state_error(
                    &path,
                    format!(
                        "another driver is running this rollout (lock held by pid {})",
                        holder.trim()
                    ),
                ));
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_error("locking", &path, e)),
        }
        // The pid is informational only; the OS lock is what excludes.
        let _ = file
            .set_len(0)
            .and_then(|()| file.write_all(std::process::id().to_string().as_bytes()))
            .and_then(|()| file.flush());
        tracing::debug!(path = %path.display(), "took the rollout lock");
        Ok(StateLock { file })
    }

    /// Whether a driver currently holds the lock.
    pub fn is_locked(&self) -> bool {
        let path = self.lock_path();
        let Ok(file) = OpenOptions::new().read(true).write(true).open(&path) else {
            return false;
        };
        match file.try_lock() {
            Ok(()) => {
                let _ = file.unlock();
                false
            }
            Err(_) => true,
        }
    }

    /// Loads the state, `None` if none was saved yet.
    pub fn load<T: DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        read_json(&self.state)
    }

    /// Saves the state atomically and durably.
    pub fn save<T: Serialize>(&self, state: &T) -> Result<(), Error> {
        self.save_with(state, true)
    }

    /// Saves the state atomically; durably (fsync) only with `durable`. The runner saves
    /// routine observations without fsync, so the disk never paces its loop, and every
    /// decision that changes traffic with it.
    pub fn save_with<T: Serialize>(&self, state: &T, durable: bool) -> Result<(), Error> {
        let path = self.state_path();
        let mut bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| state_error(&self.dir, format!("serializing the state: {e}")))?;
        bytes.push(b'\n');
        let durability = if durable {
            Durability::Durable
        } else {
            Durability::Atomic
        };
        tracing::trace!(path = %path.display(), durable, bytes = bytes.len(), "saving the state");
        replace_file(&path, &bytes, durability)
            .map(|_| ())
            .map_err(|e| io_error("writing", &path, e))
    }

    /// Appends one JSON line to the event log.
    pub fn append_event<T: Serialize>(&self, event: &T) -> Result<(), Error> {
        let path = self.events_path();
        let mut line = serde_json::to_vec(event)
            .map_err(|e| state_error(&self.dir, format!("serializing an event: {e}")))?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_error("opening", &path, e))?;
        // One write call per line keeps lines whole under O_APPEND.
        f.write_all(&line)
            .map_err(|e| io_error("appending to", &path, e))
    }

    /// Reads the event log (skipping a torn last line after a crash).
    pub fn read_events<T: DeserializeOwned>(&self) -> Result<Vec<T>, Error> {
        let path = self.events_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("reading", &path, e)),
        };
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// Queues a command for the runner and returns its id.
    pub fn submit(&self, command: Command) -> Result<QueuedCommand, Error> {
        let now = system_now_ms();
        let id = format!(
            "{now:013}-{:07}-{:04}",
            std::process::id(),
            COMMAND_SEQ.fetch_add(1, Ordering::Relaxed) % 10_000
        );
        let queued = QueuedCommand {
            id: id.clone(),
            issued_at_ms: now,
            command,
        };
        let path = self.commands_dir().join(format!("{id}.json"));
        let bytes = serde_json::to_vec(&queued)
            .map_err(|e| state_error(&self.dir, format!("serializing a command: {e}")))?;
        write_atomic(&path, &bytes).map_err(|e| io_error("writing", &path, e))?;
        Ok(queued)
    }

    /// Removes and returns the queued commands in submission order. Unreadable command files
    /// are removed and reported as errors next to the good ones.
    pub fn drain_commands(&self) -> Result<Vec<Result<QueuedCommand, Error>>, Error> {
        let dir = self.commands_dir();
        let entries = fs::read_dir(&dir).map_err(|e| io_error("listing", &dir, e))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                name.is_some_and(|n| !n.starts_with('.') && n.ends_with(".json"))
            })
            .collect();
        paths.sort();
        let mut out = Vec::with_capacity(paths.len());
        for p in paths {
            let bad = |message: String| Error::Command {
                path: p.display().to_string(),
                message,
            };
            let parsed = fs::read(&p).map_err(|e| bad(e.to_string())).and_then(|b| {
                serde_json::from_slice::<QueuedCommand>(&b).map_err(|e| bad(e.to_string()))
            });
            // Removing before acting means a crash drops the command rather than replaying it
            // after restart, when it may no longer be what the operator wants.
            fs::remove_file(&p).map_err(|e| io_error("removing", &p, e))?;
            out.push(parsed);
        }
        Ok(out)
    }

    /// Records the answer to a command.
    pub fn ack(&self, ack: &CommandAck) -> Result<(), Error> {
        let path = self.acks_dir().join(format!("{}.json", ack.id));
        let bytes = serde_json::to_vec(ack)
            .map_err(|e| state_error(&self.dir, format!("serializing an ack: {e}")))?;
        write_atomic(&path, &bytes).map_err(|e| io_error("writing", &path, e))
    }

    /// Waits for the answer to command `id`, polling every 5 ms, for at most `timeout`.
    pub fn wait_ack(&self, id: &str, timeout: Duration) -> Result<Option<CommandAck>, Error> {
        let path = self.acks_dir().join(format!("{id}.json"));
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match fs::read(&path) {
                Ok(b) => {
                    let ack = serde_json::from_slice(&b)
                        .map_err(|e| state_error(&path, format!("corrupt: {e}")))?;
                    let _ = fs::remove_file(&path);
                    return Ok(Some(ack));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("reading", &path, e)),
            }
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
