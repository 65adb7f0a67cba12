//! The shadow phase: mirrored traffic only, judged on the canary's agreement with the
//! baseline, for at least the configured duration.

use super::Driver;
use crate::core::gates::{self, GateResult, Window};
use crate::core::spec::HumanDuration;

impl Driver<'_> {
    /// The shadow-agreement gate on `w` at its next look, with the test's share `alpha`.
    pub(super) fn shadow_gate(&self, w: &Window, alpha: f64) -> GateResult {
        let shadow = self.spec.spec.analysis.shadow.as_ref();
        let floor = self.spec.shadow_floor().unwrap_or(1.0);
        let min = shadow.map_or(1, |s| s.min_comparisons);
        let look = self.s.looks.get("shadowAgreement").copied().unwrap_or(0) + 1;
        gates::shadow_agreement(floor, min, w, alpha, look)
    }

    /// In the shadow phase before its duration is up: why it holds although the gates pass.
    pub(super) fn shadow_still_running(&self) -> Option<String> {
        if self.s.phase != super::Phase::Shadow {
            return None;
        }
        let shadow = self.spec.spec.analysis.shadow.as_ref();
        let min = shadow.map_or(0, |s| s.duration.ms());
        let in_stage = self.now.saturating_sub(self.s.stage_started_ms);
        (in_stage < min).then(|| {
            format!(
                "shadow gates pass; the phase lasts {} ({} so far)",
                HumanDuration(min),
                HumanDuration(in_stage)
            )
        })
    }
}
