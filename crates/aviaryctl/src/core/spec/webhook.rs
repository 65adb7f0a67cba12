//! `spec.webhooks` and the rollout events they receive.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::HumanDuration;

/// A webhook called with a JSON POST on the listed events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSpec {
    pub name: String,
    pub url: String,
    /// Events sent to this hook; defaults to every notification (not the confirm gates).
    #[serde(default = "default_events")]
    pub events: Vec<Event>,
    #[serde(default = "default_webhook_timeout")]
    pub timeout: HumanDuration,
    /// Retries after the first attempt.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Extra fields copied into every payload (Flagger's `metadata`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

fn default_events() -> Vec<Event> {
    Event::NOTIFICATIONS.to_vec()
}
fn default_webhook_timeout() -> HumanDuration {
    HumanDuration(5_000)
}
fn default_retries() -> u32 {
    3
}

/// Rollout events, as named in webhook `events` and in notification payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// The rollout started (or the driver resumed it after a restart).
    Start,
    /// The canary moved to a new weight.
    Step,
    /// The canary got all traffic; the rollout succeeded.
    Promote,
    /// Traffic went back to the baseline (gate failure, max hold, or abort).
    Rollback,
    /// Something needs a person: max hold reached with `onMaxHold: alert`, or a breach while
    /// paused.
    Alert,
    Pause,
    Resume,
    /// Gate: must answer yes before each weight increase.
    ConfirmTrafficIncrease,
    /// Gate: must answer yes before the final promotion to 100%.
    ConfirmPromotion,
}

impl Event {
    /// Events that are notifications (fire and forget), as opposed to confirmation gates.
    pub const NOTIFICATIONS: [Event; 7] = [
        Event::Start,
        Event::Step,
        Event::Promote,
        Event::Rollback,
        Event::Alert,
        Event::Pause,
        Event::Resume,
    ];

    /// Whether this event is a confirmation gate.
    pub fn is_confirmation(self) -> bool {
        matches!(
            self,
            Event::ConfirmTrafficIncrease | Event::ConfirmPromotion
        )
    }

    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Start => "start",
            Event::Step => "step",
            Event::Promote => "promote",
            Event::Rollback => "rollback",
            Event::Alert => "alert",
            Event::Pause => "pause",
            Event::Resume => "resume",
            Event::ConfirmTrafficIncrease => "confirm-traffic-increase",
            Event::ConfirmPromotion => "confirm-promotion",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
