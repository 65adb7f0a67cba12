//! The gates of the current phase on a window: shadow agreement in the shadow phase; the
//! sample count, then every live-traffic gate, on a live step.

use std::collections::BTreeMap;

use super::{Driver, Phase};
use crate::core::gates::{self, Context, GateResult, MetricPoint, Verdict, Window};

impl Driver<'_> {
    /// The gates of the current phase on `w` (spending their looks), plus the charted values.
    pub(super) fn evaluate(&mut self, w: &Window) -> (Vec<GateResult>, MetricPoint) {
        let ctx = Context::new(self.spec);
        let point = gates::metric_point(self.spec, w, &self.s.error_tests);
        let results = if self.s.phase == Phase::Shadow {
            vec![self.shadow_gate(w, ctx.budget.shadow)]
        } else {
            let mut r = vec![samples_gate(ctx.min_samples, w)];
            r.extend(gates::evaluate(&ctx, w, &self.s.error_tests, &self.s.looks));
            r
        };
        gates::spend_looks(&mut self.s.looks, &results);
        (results, point)
    }
}

/// At least `min` responses per version in the window, else inconclusive.
fn samples_gate(min: u64, w: &Window) -> GateResult {
    let (bn, cn) = (gates::responses(&w.baseline), gates::responses(&w.canary));
    if bn >= min && cn >= min {
        GateResult {
            gate: "samples".into(),
            verdict: Verdict::Pass,
            observed: BTreeMap::new(),
            statistic: Some(cn.min(bn) as f64),
            threshold: Some(min as f64),
            reason: format!("{cn} canary and {bn} baseline responses ≥ {min}"),
            look: None,
        }
    } else {
        GateResult {
            statistic: Some(cn.min(bn) as f64),
            threshold: Some(min as f64),
            ..GateResult::missing(
                "samples",
                format!("{cn} canary and {bn} baseline responses; need {min} each"),
            )
        }
    }
}
