//! The runner's side of the records log: the records a step emitted wait here until its
//! persist appends them, before the state that counts them is saved (see
//! [`crate::edges::records`] for why that order makes the log crash-safe).

use serde_json::json;

use super::legacy;
use super::output::{emit, LogMode};
use crate::core::step::{Decision, Entry, History, Record, RolloutState};
use crate::edges::records::{RecordLog, Trimmed};
use crate::edges::store::StateStore;
use crate::error::Error;

pub(super) struct Journal {
    log: RecordLog,
    /// Emitted but not in the log yet (no persist since, or the append failed).
    pending: Vec<Record>,
    /// The last decision that judged gates, for the progress line.
    last_judged: Option<Decision>,
}

impl Journal {
    /// Opens the records log of the rollout in `store`: moves the history of a state saved
    /// before the log existed into it, then cuts what the saved `state` does not count.
    pub(super) fn open(
        store: &StateStore,
        state: &mut RolloutState,
        mode: LogMode,
    ) -> Result<Journal, Error> {
        let log = RecordLog::beside(store);
        let migrated = legacy::migrate(store, state, &log)?;
        if migrated > 0 {
            let msg = format!("moved {migrated} records from the state into the records log");
            emit(
                mode,
                "info",
                "records_migrated",
                &msg,
                json!({"records": migrated}),
            );
        }
        let trimmed = log.trim(state.records)?;
        log_trim(mode, &trimmed, state.records);
        let last_judged = log.history(state.records)?.last_judged().cloned();
        Ok(Journal {
            log,
            pending: Vec::new(),
            last_judged,
        })
    }

    /// Takes a step's records, to append at the next flush.
    pub(super) fn push(&mut self, records: Vec<Record>) {
        for r in &records {
            if let Entry::Decision(d) = &r.entry {
                if !d.gates.is_empty() {
                    self.last_judged = Some(d.clone());
                }
            }
        }
        self.pending.extend(records);
    }

    /// Appends the pending records (fsynced with `durable`). On failure they stay pending.
    pub(super) fn flush(&mut self, durable: bool) -> Result<(), Error> {
        self.log.append(&self.pending, durable)?;
        self.pending.clear();
        Ok(())
    }

    /// Whether records wait for a flush.
    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The history of `state`: the log, plus what is still pending.
    pub(super) fn history(&self, state: &RolloutState) -> Result<History, Error> {
        let mut h = self.log.history(state.records)?;
        h.extend(&self.pending);
        Ok(h)
    }

    pub(super) fn last_judged(&self) -> Option<&Decision> {
        self.last_judged.as_ref()
    }
}

/// Says what the trim cut (leftovers of a crash), and warns when records the state counts
/// are missing.
fn log_trim(mode: LogMode, t: &Trimmed, counted: u64) {
    let missing = t.next < counted;
    if t.cut_bytes == 0 && !missing {
        return;
    }
    let mut msg = format!(
        "records log: kept {} records, cut {} bytes the saved state does not count",
        t.kept, t.cut_bytes
    );
    if missing {
        msg.push_str(&format!("; records {}..{counted} are missing", t.next));
    }
    let level = if missing { "warn" } else { "info" };
    let fields = json!({"kept": t.kept, "cutBytes": t.cut_bytes, "counted": counted});
    emit(mode, level, "records_trimmed", &msg, fields);
}
