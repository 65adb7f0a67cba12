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
    /// The URL, written in the spec. Leave it out and give `urlFrom` for a secret URL.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Where to read a secret URL when the driver starts (`{env: NAME}` or `{file: PATH}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_from: Option<SecretRef>,
    /// Headers sent with every call: a value, or `{env: NAME}` / `{file: PATH}` for a secret
    /// read when the driver starts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderValue>,
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
    /// The body's shape: `json` (the event payload, the default), `slack`, `teams` or
    /// `discord` (a message people read in that chat tool).
    #[serde(default, skip_serializing_if = "WebhookFormat::is_json")]
    pub format: WebhookFormat,
    /// Where the rollout's report can be opened; linked from chat messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_url: Option<String>,
    /// A dashboard for the rollout; linked from chat messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard_url: Option<String>,
}

/// Where a secret is read from when the driver starts; only the reference is ever stored or
/// printed, never the value.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// An environment variable holding the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// A file holding the value (surrounding whitespace is trimmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl SecretRef {
    /// Where the value comes from, for messages (`env AVIARY_HOOK`, `file /run/hook`).
    pub fn describe(&self) -> String {
        match (&self.env, &self.file) {
            (Some(e), None) => format!("env {e}"),
            (None, Some(f)) => format!("file {f}"),
            _ => "an invalid reference".into(),
        }
    }

    /// Whether exactly one of `env` and `file` is given.
    pub fn is_valid(&self) -> bool {
        matches!(
            (&self.env, &self.file),
            (Some(e), None) if !e.is_empty()
        ) || matches!((&self.env, &self.file), (None, Some(f)) if !f.is_empty())
    }
}

/// A header value: literal, or a secret read when the driver starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HeaderValue {
    Value(String),
    From(SecretRef),
}

impl WebhookSpec {
    /// The URL for messages: the literal URL, or where a secret URL is read from.
    pub fn describe_url(&self) -> String {
        match &self.url_from {
            Some(r) => format!("(url from {})", r.describe()),
            None => self.url.clone(),
        }
    }
}

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// The event payload as JSON, unchanged.
    #[default]
    Json,
    /// A Slack incoming-webhook message (`text` plus `blocks`).
    Slack,
    /// A Microsoft Teams workflows message carrying an Adaptive Card.
    Teams,
    /// A Discord webhook message (`content` plus one embed).
    Discord,
}

impl WebhookFormat {
    /// Whether this is the default `json` format.
    pub fn is_json(&self) -> bool {
        *self == WebhookFormat::Json
    }

    /// The name used in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Json => "json",
            WebhookFormat::Slack => "slack",
            WebhookFormat::Teams => "teams",
            WebhookFormat::Discord => "discord",
        }
    }
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
