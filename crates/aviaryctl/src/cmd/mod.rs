//! The subcommands of `aviaryctl`, one module each.

use std::path::Path;

use aviaryctl::core::spec::RolloutSpec;
use aviaryctl::core::step::RolloutState;
use aviaryctl::edges::store::StateStore;
use aviaryctl::error::Error;

/// An [`Error::Usage`] with a `format!` message.
macro_rules! usage {
    ($($arg:tt)*) => {
        aviaryctl::error::Error::Usage(format!($($arg)*))
    };
}

pub(crate) mod control;
pub(crate) mod history;
pub(crate) mod istio;
pub(crate) mod run;
pub(crate) mod status;
pub(crate) mod validate;

/// The store and the spec of a rollout that has run from `state_path`.
pub(crate) fn open_existing(state_path: &Path) -> Result<(StateStore, RolloutSpec), Error> {
    let store = StateStore::open(state_path)?;
    let spec = store
        .load_spec::<RolloutSpec>()?
        .ok_or_else(|| {
            usage!(
                "no rollout state at {} (start one with `aviaryctl run <rollout.yaml>`, or pass --state-dir)",
                state_path.display()
            )
        })?;
    Ok((store, spec))
}

/// The state at `state_path` if it belongs to `spec`'s rollout.
pub(crate) fn load_state_if_present(
    state_path: &Path,
    spec: &RolloutSpec,
) -> Result<Option<RolloutState>, Error> {
    if !state_path.exists() {
        return Ok(None);
    }
    let store = StateStore::open(state_path)?;
    Ok(store
        .load::<RolloutState>()?
        .filter(|s| s.name == spec.metadata.name))
}
