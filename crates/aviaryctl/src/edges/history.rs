//! The rollout history: one JSON line per finished rollout, appended (and fsynced) when a
//! rollout ends and kept across driver restarts and later rollouts. By default it lives in
//! the state directory (`history.jsonl`); several rollouts share one with `--history`.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Error;

/// The history file's name in a state directory.
pub const HISTORY_FILE: &str = "history.jsonl";

/// An append-only JSON-lines file of finished rollouts.
#[derive(Debug, Clone)]
pub struct HistoryLog {
    path: PathBuf,
}

impl HistoryLog {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        HistoryLog { path: path.into() }
    }

    /// The history in state directory `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        HistoryLog::new(dir.join(HISTORY_FILE))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every entry, oldest first; a torn line (a crash mid-append) is skipped.
    pub fn read<T: DeserializeOwned>(&self) -> Result<Vec<T>, Error> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(self.path.display(), e)),
        };
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// Appends `entry` unless an entry with the same `id` field is there already (a driver
    /// restarted after the end appends nothing twice). Returns whether it appended.
    pub fn append_once<T: Serialize>(&self, id: &str, entry: &T) -> Result<bool, Error> {
        let existing: Vec<serde_json::Value> = self.read()?;
        if existing.iter().any(|e| e["id"].as_str() == Some(id)) {
            return Ok(false);
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
        }
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(self.path.display(), e))?;
        // A torn line left by a crash would glue onto this one: start on a fresh line.
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len > 0 {
            let text = fs::read(&self.path).map_err(|e| Error::io(self.path.display(), e))?;
            if text.last() != Some(&b'\n') {
                line.insert(0, b'\n');
            }
        }
        f.write_all(&line)
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io(self.path.display(), e))?;
        Ok(true)
    }
}
