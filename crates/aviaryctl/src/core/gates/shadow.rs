//! The shadow agreement gate: how often the canary, as a shadow, answers like the baseline.

use super::{GateResult, Verdict, Window};
use crate::core::stats;

/// Shadow agreement: passes when the Wilson lower bound is at or above the floor, fails when
/// the upper bound is below it, else inconclusive.
pub fn shadow_agreement(
    floor: f64,
    min_comparisons: u64,
    window: &Window,
    alpha: f64,
    look: u32,
) -> GateResult {
    let name = "shadowAgreement";
    let agree = window.canary.shadow_agree;
    let n = agree + window.canary.shadow_disagree;
    let uncompared: u64 = window.canary.shadow_uncompared.values().sum();
    if n < min_comparisons {
        return GateResult::missing(
            name,
            format!("{n} shadow comparisons; need {min_comparisons}"),
        )
        .with("comparisons", n as f64)
        .with("uncompared", uncompared as f64);
    }
    let z = stats::look_z(alpha, look);
    let (lo, hi) = stats::wilson(agree, n, z);
    let rate = agree as f64 / n as f64;
    let (v, reason) = if lo >= floor {
        (
            Verdict::Pass,
            format!("agreement {rate:.4} (lower bound {lo:.4}) ≥ {floor}"),
        )
    } else if hi < floor {
        (
            Verdict::Fail,
            format!("agreement {rate:.4} (upper bound {hi:.4}) < {floor}"),
        )
    } else {
        (
            Verdict::Inconclusive,
            format!(
                "agreement {rate:.4} in [{lo:.4}, {hi:.4}] does not settle the {floor} floor yet"
            ),
        )
    };
    GateResult::new(name, v, reason)
        .with("agreement", rate)
        .with("lower", lo)
        .with("upper", hi)
        .with("comparisons", n as f64)
        .with("uncompared", uncompared as f64)
        .with("z", z)
        .stat(lo, floor)
        .look(look)
}
