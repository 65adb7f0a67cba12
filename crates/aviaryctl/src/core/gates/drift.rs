//! The drift gate: the canary's score distribution against the baseline's.

use super::{unproven, GateResult, Look, Verdict, Window};
use crate::core::spec::{DriftGate, DriftMetric};
use crate::core::stats;

/// Canary and baseline score-bin counts aligned on the union of their bin bounds.
pub fn aligned_bins(a: &[(f64, u64)], b: &[(f64, u64)]) -> (Vec<u64>, Vec<u64>) {
    let mut bounds: Vec<f64> = a.iter().chain(b).map(|&(x, _)| x).collect();
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    let get = |s: &[(f64, u64)], x: f64| s.iter().find(|(y, _)| *y == x).map_or(0, |&(_, c)| c);
    (
        bounds.iter().map(|&x| get(a, x)).collect(),
        bounds.iter().map(|&x| get(b, x)).collect(),
    )
}

/// The configured divergence between canary and baseline scores, `None` without data.
pub fn divergence(metric: DriftMetric, window: &Window) -> Option<f64> {
    let (c, b) = aligned_bins(&window.canary.score_bins, &window.baseline.score_bins);
    match metric {
        DriftMetric::Psi => stats::psi(&c, &b),
        DriftMetric::Js => stats::js_divergence(&c, &b),
    }
}

/// Prediction drift: fails when the divergence is above `max` and the difference between the
/// two histograms is significant (chi-square test of homogeneity at the look's alpha).
pub fn drift(gate: &DriftGate, window: &Window, look: Look) -> GateResult {
    let Look {
        alpha,
        index: look,
        min_samples,
    } = look;
    let (c, b) = aligned_bins(&window.canary.score_bins, &window.baseline.score_bins);
    let cn: u64 = c.iter().sum();
    let bn: u64 = b.iter().sum();
    let name = "drift";
    if cn < min_samples || bn < min_samples {
        return GateResult::missing(
            name,
            format!("{cn} canary and {bn} baseline scores; need {min_samples} each"),
        )
        .with("canaryN", cn as f64)
        .with("baselineN", bn as f64);
    }
    let div = match gate.metric {
        DriftMetric::Psi => stats::psi(&c, &b),
        DriftMetric::Js => stats::js_divergence(&c, &b),
    };
    let (Some(div), Some((chi, df))) = (div, stats::chi_square_homogeneity(&c, &b)) else {
        return GateResult::missing(name, "score histograms have fewer than two bins with data");
    };
    let crit = stats::chi_square_critical(stats::spent_alpha(alpha, look), df);
    let label = match gate.metric {
        DriftMetric::Psi => "PSI",
        DriftMetric::Js => "JS",
    };
    let max = gate.max;
    let noise = stats::chi_square_critical(stats::OVER_LIMIT_P, df);
    let (v, reason) = if div <= max || chi <= noise {
        (
            Verdict::Pass,
            format!("{label} {div:.4} within {max} (or within noise: χ² {chi:.1} ≤ {noise:.1})"),
        )
    } else if chi > crit {
        (
            Verdict::Fail,
            format!("{label} {div:.4} > {max} and the shift is significant (χ² {chi:.1} > {crit:.1}, df {df})"),
        )
    } else {
        unproven(format!(
            "{label} {div:.4} > {max} (χ² {chi:.1} ≤ {crit:.1})"
        ))
    };
    GateResult::new(name, v, reason)
        .with("divergence", div)
        .with("chiSquare", chi)
        .with("chiSquareCritical", crit)
        .with("df", f64::from(df))
        .with("canaryN", cn as f64)
        .with("baselineN", bn as f64)
        .stat(div, max)
        .look(look)
}
