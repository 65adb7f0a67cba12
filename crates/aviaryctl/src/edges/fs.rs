//! Files: crash-safe replacement (shared by the state store and the file sinks) and reading a
//! rollout spec.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::core::spec::RolloutSpec;
use crate::error::Error;

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// How far [`replace_file`] goes to make a replacement survive a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Atomic rename only: survives a crash of this process (the page cache outlives it),
    /// not a power loss.
    Atomic,
    /// fsync the data, rename, fsync the directory: the classic durable replace.
    Durable,
    /// Rename first, then fsync the data and the directory. Readers (Envoy's file watch) see
    /// the new content as soon as it is renamed, so a stalled disk cannot delay a rollback;
    /// durability follows a moment later.
    VisibleFirst,
}

/// Replaces `path` with `bytes` atomically and durably: a temp file in the same directory is
/// written and fsynced, renamed over `path`, and the directory is fsynced so the rename itself
/// survives a power loss.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_file(path, bytes, Durability::Durable).map(|_| ())
}

/// Replaces `path` with `bytes` through a temp file in the same directory and a rename, never
/// leaving a torn file. Returns the time from the call until the new content was in place.
pub fn replace_file(path: &Path, bytes: &[u8], durability: Durability) -> io::Result<Duration> {
    let started = std::time::Instant::now();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?
        .to_string_lossy();
    let tmp = dir.join(format!(
        ".{file_name}.{}.{}.tmp",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let sync_dir = || {
        // Directory fsync is what makes the rename durable; not all filesystems support it.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
    };
    let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let result = (|| {
        f.write_all(bytes)?;
        if durability == Durability::Durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        Ok(started.elapsed())
    })();
    match result {
        Ok(visible) => {
            match durability {
                Durability::Atomic => {}
                Durability::Durable => sync_dir(),
                Durability::VisibleFirst => {
                    f.sync_all()?;
                    sync_dir();
                }
            }
            Ok(visible)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Reads, parses and validates a rollout spec file.
pub fn read_spec(path: &Path) -> Result<RolloutSpec, Error> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))?;
    RolloutSpec::parse(&text)
}
