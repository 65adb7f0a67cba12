//! What the step learns about the world: starts, metrics reads, the proxies' confirmation that
//! a config write took effect, operator commands and confirmation answers.

use serde::{Deserialize, Serialize};

use crate::core::observe::Snapshot;

/// Something that happened: the step's only way to learn about the world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Input {
    /// Begin the rollout, or resume it after a driver restart (re-asserts the current config).
    Start,
    /// A metrics read (or its failure).
    Observation(Observation),
    /// Time passed without a read; lets time-based rules (bake, max hold) run.
    Tick,
    /// The proxies report that config write `write` (the [`ConfigWrite::write`] number) is
    /// in effect.
    ///
    /// [`ConfigWrite::write`]: super::ConfigWrite::write
    Applied(Applied),
    /// An operator command.
    Command(Command),
    /// The confirmation webhooks' answer to an [`Action::AskConfirmation`].
    ///
    /// [`Action::AskConfirmation`]: super::Action::AskConfirmation
    Confirmation {
        approved: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
}

/// One read of the metrics source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_error: Option<String>,
}

impl Observation {
    /// A successful read.
    pub fn of(snapshot: Snapshot) -> Input {
        Input::Observation(Observation {
            snapshot: Some(snapshot),
            source_error: None,
        })
    }

    /// A failed read.
    pub fn failed(error: impl Into<String>) -> Input {
        Input::Observation(Observation {
            snapshot: None,
            source_error: Some(error.into()),
        })
    }
}

/// Every proxy reports config write `write` in effect (the confirm leg of a write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    /// The [`ConfigWrite::write`](super::ConfigWrite::write) number confirmed.
    pub write: u64,
    /// When the last proxy reported it, on the step's clock.
    pub at_ms: u64,
    /// The config digest the proxies report (low 48 bits), when they report one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest48: Option<u64>,
}

impl Applied {
    /// The input for a confirmed write.
    pub fn input(write: u64, at_ms: u64, digest48: Option<u64>) -> Input {
        Input::Applied(Applied {
            write,
            at_ms,
            digest48,
        })
    }
}

/// Operator commands (`aviaryctl pause|resume|promote|abort`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Command {
    /// Stop automatic weight changes; keep observing and recording.
    Pause,
    Resume,
    /// Manual gate: go to the next step now, or straight to 100% with `to_full`.
    Promote {
        to_full: bool,
    },
    /// Instant manual rollback.
    Abort {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}
