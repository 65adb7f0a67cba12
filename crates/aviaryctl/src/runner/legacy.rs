//! States saved before the records log existed carry their decisions, weight timeline and
//! stages themselves. A driver resuming such a rollout moves them into the records log
//! first, so its report and `status` keep the whole history.

use serde::Deserialize;

use crate::core::step::{Decision, Entry, Record, RolloutState, Stage, WeightPoint};
use crate::edges::records::RecordLog;
use crate::edges::store::StateStore;
use crate::error::Error;

/// The history fields of a state saved before the records log.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LegacyHistory {
    #[serde(default)]
    decisions: Vec<Decision>,
    #[serde(default)]
    timeline: Vec<WeightPoint>,
    #[serde(default)]
    stages: Vec<Stage>,
}

impl LegacyHistory {
    fn into_records(self) -> Vec<Record> {
        let stages = self.stages.into_iter().map(|s| match s.ended_ms {
            Some(_) => Entry::StageEnded(s),
            None => Entry::StageStarted(s),
        });
        let entries = (self.decisions.into_iter().map(Entry::Decision))
            .chain(self.timeline.into_iter().map(Entry::Weight))
            .chain(stages);
        entries
            .zip(0..)
            .map(|(entry, seq)| Record { seq, entry })
            .collect()
    }
}

/// Moves the history of a state saved before the records log into `log`, then saves the
/// state counting it (in that order: a crash in between leaves the old state, and the records
/// it does not count are cut and written again). Returns how many records it moved.
pub(super) fn migrate(
    store: &StateStore,
    state: &mut RolloutState,
    log: &RecordLog,
) -> Result<u64, Error> {
    if state.records > 0 {
        return Ok(0);
    }
    let Some(legacy) = store.load::<LegacyHistory>()? else {
        return Ok(0);
    };
    let records = legacy.into_records();
    if records.is_empty() {
        return Ok(0);
    }
    log.trim(0)?;
    log.append(&records, true)?;
    state.records = records.len() as u64;
    store.save(state)?;
    Ok(state.records)
}
