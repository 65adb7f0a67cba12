//! The control state: what decides the next step, and nothing else. It is persisted after
//! every decision, so it stays small; what happened (decisions, the weight timeline, stage
//! summaries) leaves the step as records, for the append-only records log.

use std::collections::BTreeMap;

use aviary_contract::config::PluginConfig;
use serde::{Deserialize, Serialize};

use super::action::{ConfigWrite, Outcome};
use crate::core::gates::{ErrorTests, FastTests};
use crate::core::observe::Snapshot;
use crate::core::spec::{Event, RolloutSpec};

/// Where the rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// Not started.
    Pending,
    /// Mirrored traffic only.
    Shadow,
    /// Live traffic at `schedule[step]`.
    Canary {
        step: usize,
    },
    Promoted,
    RolledBack,
    Aborted,
}

impl Phase {
    /// Whether the rollout is over.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack | Phase::Aborted)
    }
}

/// A pending confirmation: where the rollout goes when it is approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingConfirmation {
    pub event: Event,
    /// Target step index, or `None` for the final promotion.
    pub target_step: Option<usize>,
    pub asked_ms: u64,
}

/// Everything the next decision depends on; persisted after every decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutState {
    pub name: String,
    pub phase: Phase,
    pub paused: bool,
    /// Canary weight now applied, basis points of all traffic.
    pub canary_bps: u32,
    /// Baked step weights (bps), fixed at start so an edited spec cannot make a restart jump.
    pub schedule: Vec<u32>,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// When the current stage (shadow or step) began: its config write was issued.
    pub stage_started_ms: u64,
    /// When the current bake window began.
    pub window_started_ms: u64,
    /// Snapshot at the start of the bake window (first read after it began).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "json_safe")]
    pub window_start: Option<Snapshot>,
    /// Last snapshot fed into the sequential tests.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "json_safe")]
    pub last: Option<Snapshot>,
    /// Time of the last regular evaluation (or the window start).
    pub last_check_ms: u64,
    pub failed_checks: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_since_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting: Option<PendingConfirmation>,
    /// Sequential error-rate tests over the whole rollout.
    pub error_tests: ErrorTests,
    /// Fast-track latency and drift tests over the whole rollout.
    #[serde(default)]
    pub fast_tests: FastTests,
    /// Looks spent per alpha-spending test.
    pub looks: BTreeMap<String, u32>,
    /// A breach while paused has been alerted (not repeated).
    pub breach_alerted: bool,
    pub source_errors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_source_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Config writes issued so far: the number of the last one.
    #[serde(default)]
    pub writes: u64,
    /// The write that put the current stage's config in place.
    #[serde(default)]
    pub stage_write: u64,
    /// When the proxies confirmed the current stage's write, if they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_applied_ms: Option<u64>,
    /// The highest write number the proxies confirmed.
    #[serde(default)]
    pub applied_write: u64,
    /// Records emitted so far: the sequence number of the next one. The records log holds
    /// exactly the records numbered below it.
    #[serde(default)]
    pub records: u64,
}

impl RolloutState {
    /// A rollout that has not started.
    pub fn new(spec: &RolloutSpec, now_ms: u64) -> RolloutState {
        RolloutState {
            name: spec.metadata.name.clone(),
            phase: Phase::Pending,
            paused: false,
            canary_bps: 0,
            schedule: spec.schedule_bps(),
            created_ms: now_ms,
            started_ms: None,
            finished_ms: None,
            stage_started_ms: now_ms,
            window_started_ms: now_ms,
            window_start: None,
            last: None,
            last_check_ms: now_ms,
            failed_checks: 0,
            hold_since_ms: None,
            awaiting: None,
            error_tests: ErrorTests::default(),
            fast_tests: FastTests::default(),
            looks: BTreeMap::new(),
            breach_alerted: false,
            source_errors: 0,
            last_source_error: None,
            outcome: None,
            writes: 0,
            stage_write: 0,
            stage_applied_ms: None,
            applied_write: 0,
            records: 0,
        }
    }

    /// The plugin config the current phase wants in place.
    pub fn desired_config(&self, spec: &RolloutSpec) -> PluginConfig {
        match self.phase {
            Phase::RolledBack | Phase::Aborted => spec.render_config(0, true, false),
            Phase::Shadow => spec.render_config(0, false, true),
            _ => spec.render_config(self.canary_bps, false, false),
        }
    }

    /// The write that puts the proxies where the rollout is. The one place that says a
    /// rollback or abort writes the kill switch to the baseline and 0 bps.
    pub fn config_write(&self, spec: &RolloutSpec, write: u64, reason: String) -> ConfigWrite {
        let rollback = matches!(self.phase, Phase::RolledBack | Phase::Aborted);
        ConfigWrite {
            write,
            config: self.desired_config(spec),
            canary_bps: if rollback { 0 } else { self.canary_bps },
            rollback,
            reason,
        }
    }

    /// Label of the current stage.
    pub fn stage_label(&self) -> String {
        match self.phase {
            Phase::Pending => "pending".into(),
            Phase::Shadow => "shadow".into(),
            Phase::Canary { step } => format!("step {} ({})", step + 1, pct(self.canary_bps)),
            Phase::Promoted => "promoted".into(),
            Phase::RolledBack => "rolled back".into(),
            Phase::Aborted => "aborted".into(),
        }
    }

    /// Whether a stage (shadow or a live step) is open.
    pub fn in_stage(&self) -> bool {
        matches!(self.phase, Phase::Shadow | Phase::Canary { .. })
    }
}

/// Formats basis points as a percentage (`12.5%`).
pub fn pct(bps: u32) -> String {
    let whole = bps / 100;
    let frac = bps % 100;
    if frac == 0 {
        format!("{whole}%")
    } else if frac.is_multiple_of(10) {
        format!("{whole}.{}%", frac / 10)
    } else {
        format!("{whole}.{frac:02}%")
    }
}

/// JSON has no infinity (serde_json writes `null` and cannot read it back), but histogram
/// snapshots end with a `+Inf` bucket; persisted snapshots store it as `f64::MAX`.
mod json_safe {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::core::observe::Snapshot;

    fn map_bounds(snap: &mut Snapshot, f: impl Fn(f64) -> f64) {
        for v in snap.versions.values_mut() {
            for b in v.latency_buckets.iter_mut().chain(v.score_bins.iter_mut()) {
                b.0 = f(b.0);
            }
        }
    }

    pub fn serialize<S: Serializer>(snap: &Option<Snapshot>, s: S) -> Result<S::Ok, S::Error> {
        let safe = snap.clone().map(|mut snap| {
            map_bounds(&mut snap, |b| if b == f64::INFINITY { f64::MAX } else { b });
            snap
        });
        safe.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Snapshot>, D::Error> {
        Ok(Option::<Snapshot>::deserialize(d)?.map(|mut snap| {
            map_bounds(&mut snap, |b| if b == f64::MAX { f64::INFINITY } else { b });
            snap
        }))
    }
}
