//! The runner's side of the records log: the records a step emitted wait here until its
//! persist appends them, before the state that counts them is saved (see
//! [`crate::edges::records`] for why that order makes the log crash-safe).

use crate::core::step::{Decision, Entry, History, Record, RolloutState};
use crate::edges::records::{RecordLog, Trimmed};
use crate::error::Error;

pub(super) struct Journal {
    log: RecordLog,
    /// Emitted but not in the log yet (no persist since, or the append failed).
    pending: Vec<Record>,
    /// The last decision that judged gates, for the progress line.
    last_judged: Option<Decision>,
}

impl Journal {
    /// Opens the log of `state`, cutting what the saved state does not count.
    pub(super) fn open(log: RecordLog, state: &RolloutState) -> Result<(Journal, Trimmed), Error> {
        let trimmed = log.trim(state.records)?;
        let last_judged = log.history(state.records)?.last_judged().cloned();
        let journal = Journal {
            log,
            pending: Vec::new(),
            last_judged,
        };
        Ok((journal, trimmed))
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
