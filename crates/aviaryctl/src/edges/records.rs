//! The records log, `<stem>.records.jsonl` beside the state file: the step's numbered
//! [`Record`]s (decisions, the weight timeline, stage summaries, the proxies' confirmations),
//! one JSON object a line, append-only. The report and `status` read it; the state only
//! counts it ([`RolloutState::records`]).
//!
//! Crash safety rests on the runner's order: append the records of a step (fsynced when the
//! state save is), then save the state that counts them. So the state never counts a record
//! the log lacks. What a crash can leave is a torn last line, or records of a step whose
//! state was never saved (the restarted driver does not know that step happened, and will
//! decide again). [`RecordLog::trim`], run by a driver before it steps, cuts both, so the
//! numbering continues where the saved state says: no record lost, none twice. Readers
//! ([`RecordLog::read`]) take only the records the state counts, each once, so a `status`
//! during an append sees the history of the state it read.
//!
//! [`RolloutState::records`]: crate::core::step::RolloutState::records

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::core::step::{History, Record};
use crate::edges::store::StateStore;
use crate::error::Error;

/// What [`RecordLog::trim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trimmed {
    /// Records kept (those the state counts).
    pub kept: u64,
    /// The number after the last kept record: the state's count unless records were lost.
    pub next: u64,
    /// Bytes cut from the end (a torn line, records the state does not count).
    pub cut_bytes: u64,
}

/// The append-only records log of one rollout.
#[derive(Debug, Clone)]
pub struct RecordLog {
    path: PathBuf,
}

impl RecordLog {
    /// The log at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RecordLog { path: path.into() }
    }

    /// The log of the rollout in `store`: `<stem>.records.jsonl` beside its state file.
    pub fn beside(store: &StateStore) -> Self {
        RecordLog::new(store.state_path().with_extension("records.jsonl"))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `records` in one write; with `durable`, fsyncs them (and, when the write
    /// created the log, its directory). A failed append is cut back, leaving no partial line.
    pub fn append(&self, records: &[Record], durable: bool) -> Result<(), Error> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for r in records {
            serde_json::to_writer(&mut buf, r)?;
            buf.push(b'\n');
        }
        let created = !self.path.exists();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        let before = f.metadata().map_err(|e| self.io(e))?.len();
        let written = f.write_all(&buf).and_then(|()| match durable {
            true => f.sync_data(),
            false => Ok(()),
        });
        if let Err(e) = written {
            let _ = f.set_len(before);
            return Err(self.io(e));
        }
        if created && durable {
            self.sync_dir();
        }
        Ok(())
    }

    /// The records of a state that counts `count`: numbered below it, each once, in order.
    /// Unreadable lines (a torn last line) are skipped.
    pub fn read(&self, count: u64) -> Result<Vec<Record>, Error> {
        let bytes = self.bytes()?;
        let mut out: Vec<Record> = Vec::new();
        for line in bytes.split(|&b| b == b'\n') {
            let Ok(r) = serde_json::from_slice::<Record>(line) else {
                continue;
            };
            if r.seq < count && out.last().is_none_or(|l| r.seq > l.seq) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// [`read`](Self::read), folded.
    pub fn history(&self, count: u64) -> Result<History, Error> {
        Ok(History::from_records(&self.read(count)?))
    }

    /// Cuts the log after the last whole record numbered below `count` (the saved state's),
    /// dropping a torn last line and the records of a step whose state was never saved.
    pub fn trim(&self, count: u64) -> Result<Trimmed, Error> {
        let bytes = self.bytes()?;
        let mut t = Trimmed::default();
        let mut keep_end = 0usize;
        let mut at = 0usize;
        while let Some(n) = bytes[at..].iter().position(|&b| b == b'\n') {
            let line = &bytes[at..at + n];
            at += n + 1;
            match serde_json::from_slice::<Record>(line) {
                Ok(r) if r.seq >= count => break,
                Ok(r) if r.seq >= t.next => {
                    t.kept += 1;
                    t.next = r.seq + 1;
                    keep_end = at;
                }
                // A repeated number or an unreadable line inside the log: left for readers
                // to skip.
                _ => keep_end = at,
            }
        }
        t.cut_bytes = (bytes.len() - keep_end) as u64;
        if t.cut_bytes > 0 {
            let f = OpenOptions::new()
                .write(true)
                .open(&self.path)
                .map_err(|e| self.io(e))?;
            f.set_len(keep_end as u64)
                .and_then(|()| f.sync_data())
                .map_err(|e| self.io(e))?;
        }
        Ok(t)
    }

    fn bytes(&self) -> Result<Vec<u8>, Error> {
        match fs::read(&self.path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.io(e)),
        }
    }

    fn sync_dir(&self) {
        // Makes the new file's name durable; not every filesystem supports it.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
    }

    fn io(&self, e: io::Error) -> Error {
        Error::io(self.path.display(), e)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::core::step::{Applied, Entry};

    fn record(seq: u64) -> Record {
        Record {
            seq,
            entry: Entry::Applied(Applied {
                write: seq + 1,
                at_ms: seq * 10,
                digest48: None,
            }),
        }
    }

    fn temp_log(name: &str) -> RecordLog {
        let dir = std::env::temp_dir().join(format!("aviaryctl-records-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = RecordLog::new(dir.join(format!("{name}.records.jsonl")));
        let _ = fs::remove_file(log.path());
        log
    }

    fn seqs(records: &[Record]) -> Vec<u64> {
        records.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn trim_cuts_uncounted_records_and_a_torn_line() {
        let log = temp_log("trim");
        log.append(&[record(0), record(1), record(2), record(3)], true)
            .unwrap();
        let mut f = OpenOptions::new().append(true).open(log.path()).unwrap();
        f.write_all(b"{\"seq\":4,\"type\":\"app").unwrap();
        // The saved state counts two records: 2 and 3 belong to a step it never saved.
        let t = log.trim(2).unwrap();
        assert_eq!((t.kept, t.next), (2, 2));
        assert!(t.cut_bytes > 0);
        let text = fs::read_to_string(log.path()).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.ends_with('\n'));
        // The next step's records continue the numbering.
        log.append(&[record(2)], false).unwrap();
        assert_eq!(seqs(&log.read(3).unwrap()), vec![0, 1, 2]);
        assert_eq!(log.trim(3).unwrap().cut_bytes, 0);
    }

    #[test]
    fn read_takes_each_counted_record_once_in_order() {
        let log = temp_log("read");
        log.append(
            &[record(0), record(1), record(1), record(0), record(2)],
            false,
        )
        .unwrap();
        assert_eq!(seqs(&log.read(2).unwrap()), vec![0, 1]);
        assert_eq!(seqs(&log.read(10).unwrap()), vec![0, 1, 2]);
        assert!(RecordLog::new(log.path().with_extension("none"))
            .read(5)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_log_missing_counted_records_says_so() {
        let log = temp_log("missing");
        log.append(&[record(0)], true).unwrap();
        let t = log.trim(3).unwrap();
        assert_eq!((t.kept, t.next, t.cut_bytes), (1, 1, 0));
    }
}
