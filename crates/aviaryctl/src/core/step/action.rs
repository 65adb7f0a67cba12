//! What the step asks the runner to do, in order.

use aviary_contract::config::PluginConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::spec::Event;

/// What the runner must do, in the order given.
// A step returns a handful of actions and they are consumed at once; boxing the config
// would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// Write this plugin config to every sink.
    WriteConfig(ConfigWrite),
    /// Append the step's records to the records log, then persist the returned state
    /// atomically (in that order, so the state never counts a record the log lacks).
    Persist,
    /// Send a notification to the webhooks subscribed to `event`.
    Notify(Notification),
    /// Call the webhooks subscribed to `event` and answer with [`Input::Confirmation`]
    /// (approved only if all of them answer yes).
    ///
    /// [`Input::Confirmation`]: super::Input::Confirmation
    AskConfirmation(Notification),
    /// The rollout is over; write the report and exit.
    Done(Outcome),
    /// The input was not applicable (e.g. `promote` after the end); tell the operator.
    Rejected { reason: String },
}

/// A config to write, with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigWrite {
    /// Number of this write within the rollout (1, 2, …). A restart re-asserting the current
    /// config, or the runner retrying a failed write, repeats the number; the proxies'
    /// confirmation comes back as [`Input::Applied`](super::Input::Applied) with it.
    #[serde(default)]
    pub write: u64,
    /// The full plugin config (same type and validation as the plugin).
    pub config: PluginConfig,
    /// Canary weight in basis points of all traffic.
    pub canary_bps: u32,
    /// True when this pins all traffic to the baseline (kill switch set).
    pub rollback: bool,
    pub reason: String,
}

/// A webhook event and its JSON payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub event: Event,
    pub payload: Value,
}

/// How a rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    Promoted,
    RolledBack,
    Aborted,
}
