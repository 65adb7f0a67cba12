//! Statistics behind the gates. All of it is pure and allocation-light so the simulation
//! tests can run thousands of rollouts.
//!
//! # Why these methods
//!
//! The driver looks at the data again at every fast interval and every bake interval, so a
//! fixed-sample test would be checked hundreds of times and its false-alarm rate would grow
//! with every look. Two constructions keep the false-rollback probability of each test below
//! its share of `alpha` *over the whole rollout*, however often it is looked at:
//!
//! * **Error rate — mixture sequential probability ratio test (mSPRT).** [`MixtureSprt`]
//!   holds the likelihood ratio of a Bernoulli stream against its null, for a grid of
//!   alternatives, averaged with equal prior weights. Under the null the average is a
//!   non-negative martingale with mean 1, so by Ville's inequality it ever exceeds `1/α` with
//!   probability at most `α`: the test is valid at every look, and evidence accumulates across
//!   steps. The absolute ceiling tests each canary response (error or not) against
//!   `p0 = max`. The relative test conditions on the errors: if the canary and baseline fail
//!   as Poisson processes proportional to their traffic, an error comes from the canary with
//!   probability `π = n_c·p_c / (n_c·p_c + n_b·p_b)`; the null `p_c ≤ r·p_b` is
//!   `π ≤ π0 = r·n_c / (r·n_c + n_b)`, re-computed from each window's traffic so weight changes
//!   are handled. Alternatives are odds multipliers of `π0` in [`THETAS`].
//! * **Latency, drift and shadow agreement — alpha spending.** These are judged on the
//!   cumulative window of the current step at each bake interval. The `k`-th look of a test
//!   spends `α_k = α·6/(π²k²)`; the `α_k` sum to `α`, so by the union bound the chance of any
//!   false failure over unboundedly many looks is at most `α`. The cost is mild: `z` grows
//!   like `sqrt(2 ln k)` (2.7 at the first look with α = 0.0025, 4.0 at the 30th).
//!
//! Percentile confidence bounds come from ranks (distribution-free, like order-statistic
//! intervals): the true `q`-quantile lies between the empirical quantiles at ranks
//! `q ± z·sqrt(q(1−q)/n)`, read from the histogram by Prometheus' `histogram_quantile`
//! interpolation.

use std::f64::consts::{LN_2, PI};

use serde::{Deserialize, Serialize};

/// Alternatives of the mixture SPRT, as odds multipliers of the null probability.
pub const THETAS: [f64; 7] = [1.5, 2.0, 3.0, 5.0, 10.0, 25.0, 100.0];

/// Standard normal quantile (inverse CDF), Acklam's rational approximation with one Halley
/// refinement step (relative error < 1e-12 over (0, 1)).
pub fn normal_quantile(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let lo = 0.02425;
    let x = if p < lo {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - lo {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    let e = normal_cdf(x) - p;
    let u = e * (2.0 * PI).sqrt() * (x * x / 2.0).exp();
    x - u / (1.0 + x * u / 2.0)
}

/// Standard normal CDF.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// Complementary error function (Numerical Recipes `erfcc`, fractional error < 1.2e-7,
/// refined by the Halley step in [`normal_quantile`]).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// The share of `alpha` spent at the `look`-th look (1-based): `α·6/(π²k²)`, summing to `α`.
pub fn spent_alpha(alpha: f64, look: u32) -> f64 {
    let k = f64::from(look.max(1));
    alpha * 6.0 / (PI * PI * k * k)
}

/// One-sided normal critical value for the `look`-th look at level `alpha`.
pub fn look_z(alpha: f64, look: u32) -> f64 {
    normal_quantile(1.0 - spent_alpha(alpha, look))
}

/// Wilson score interval for a binomial proportion; `(lower, upper)`, `(0, 1)` when `n = 0`.
pub fn wilson(successes: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let p = successes as f64 / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Total count of a cumulative histogram (its `+Inf` bucket, or the largest count).
pub fn histogram_total(buckets: &[(f64, u64)]) -> u64 {
    buckets.iter().map(|&(_, c)| c).max().unwrap_or(0)
}

/// The `q`-quantile of a cumulative histogram, as Prometheus' `histogram_quantile`: linear
/// interpolation inside the bucket holding rank `q·total`, the first bucket starting at 0.
/// A rank in the `+Inf` bucket returns the largest finite bound. `None` without samples.
pub fn histogram_quantile(q: f64, buckets: &[(f64, u64)]) -> Option<f64> {
    quantile_at_rank(q, buckets, false)
}

fn quantile_at_rank(q: f64, buckets: &[(f64, u64)], inf_is_unbounded: bool) -> Option<f64> {
    let total = histogram_total(buckets);
    if total == 0 || q.is_nan() {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let b = buckets
        .iter()
        .position(|&(_, c)| c > 0 && c as f64 >= rank)?;
    let (upper, count) = buckets[b];
    let (lower, below) = if b == 0 {
        (if upper <= 0.0 { upper } else { 0.0 }, 0)
    } else {
        buckets[b - 1]
    };
    if upper.is_infinite() {
        return Some(if inf_is_unbounded {
            f64::INFINITY
        } else {
            lower
        });
    }
    let in_bucket = count.saturating_sub(below) as f64;
    if in_bucket <= 0.0 {
        return Some(upper);
    }
    Some(lower + (upper - lower) * ((rank - below as f64) / in_bucket).clamp(0.0, 1.0))
}

/// A percentile with a rank-based confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantileBounds {
    /// Point estimate (`histogram_quantile`).
    pub point: f64,
    /// Lower bound: the quantile at rank `q − z·sqrt(q(1−q)/n)`.
    pub lower: f64,
    /// Upper bound: the quantile at rank `q + z·sqrt(q(1−q)/n)`; `+∞` if it falls in the
    /// `+Inf` bucket, since the histogram cannot bound it.
    pub upper: f64,
    /// Samples in the histogram.
    pub n: u64,
}

/// The `q`-quantile of a cumulative histogram with a distribution-free interval of half-width
/// `z` standard errors in rank.
pub fn quantile_bounds(q: f64, buckets: &[(f64, u64)], z: f64) -> Option<QuantileBounds> {
    let n = histogram_total(buckets);
    let point = histogram_quantile(q, buckets)?;
    let half = z * (q * (1.0 - q) / n as f64).sqrt();
    let lower = quantile_at_rank((q - half).max(0.0), buckets, false)?;
    let upper = if q + half >= 1.0 {
        f64::INFINITY
    } else {
        quantile_at_rank(q + half, buckets, true)?
    };
    Some(QuantileBounds {
        point,
        lower,
        upper,
        n,
    })
}

/// Pseudo-count added to every bin before PSI so empty bins do not give infinite divergence.
pub const SMOOTHING: f64 = 0.5;

/// Population stability index between two binned distributions (same bins, counts):
/// `Σ (a_i − b_i)·ln(a_i / b_i)` over proportions smoothed with [`SMOOTHING`]. Bins empty in
/// both are ignored. `None` if either side is empty.
pub fn psi(a: &[u64], b: &[u64]) -> Option<f64> {
    let (pa, pb) = smoothed(a, b)?;
    Some(
        pa.iter()
            .zip(&pb)
            .map(|(&x, &y)| (x - y) * (x / y).ln())
            .sum(),
    )
}

/// Jensen-Shannon divergence in bits (0 = identical, 1 = disjoint) between two binned
/// distributions. Needs no smoothing; `None` if either side is empty.
pub fn js_divergence(a: &[u64], b: &[u64]) -> Option<f64> {
    let ta: u64 = a.iter().sum();
    let tb: u64 = b.iter().sum();
    if ta == 0 || tb == 0 || a.len() != b.len() {
        return None;
    }
    let kl_half = |p: f64, m: f64| if p > 0.0 { p * (p / m).ln() } else { 0.0 };
    let mut js = 0.0;
    for (&x, &y) in a.iter().zip(b) {
        let p = x as f64 / ta as f64;
        let q = y as f64 / tb as f64;
        let m = (p + q) / 2.0;
        js += 0.5 * kl_half(p, m) + 0.5 * kl_half(q, m);
    }
    Some((js / LN_2).clamp(0.0, 1.0))
}

fn smoothed(a: &[u64], b: &[u64]) -> Option<(Vec<f64>, Vec<f64>)> {
    if a.len() != b.len() {
        return None;
    }
    let keep: Vec<usize> = (0..a.len()).filter(|&i| a[i] + b[i] > 0).collect();
    let ta: u64 = a.iter().sum();
    let tb: u64 = b.iter().sum();
    if ta == 0 || tb == 0 {
        return None;
    }
    let k = keep.len() as f64;
    let pa = keep
        .iter()
        .map(|&i| (a[i] as f64 + SMOOTHING) / (ta as f64 + SMOOTHING * k))
        .collect();
    let pb = keep
        .iter()
        .map(|&i| (b[i] as f64 + SMOOTHING) / (tb as f64 + SMOOTHING * k))
        .collect();
    Some((pa, pb))
}

/// Pearson chi-square test of homogeneity of two binned samples: `(statistic, df)`. Bins
/// empty in both are dropped. `None` if either side is empty or fewer than two bins remain.
pub fn chi_square_homogeneity(a: &[u64], b: &[u64]) -> Option<(f64, u32)> {
    if a.len() != b.len() {
        return None;
    }
    let ta: u64 = a.iter().sum();
    let tb: u64 = b.iter().sum();
    if ta == 0 || tb == 0 {
        return None;
    }
    let n = (ta + tb) as f64;
    let mut stat = 0.0;
    let mut bins = 0u32;
    for (&x, &y) in a.iter().zip(b) {
        let col = (x + y) as f64;
        if col == 0.0 {
            continue;
        }
        bins += 1;
        let ea = col * ta as f64 / n;
        let eb = col * tb as f64 / n;
        stat += (x as f64 - ea).powi(2) / ea + (y as f64 - eb).powi(2) / eb;
    }
    (bins >= 2).then_some((stat, bins - 1))
}

/// Upper `1 − p` critical value of the chi-square distribution with `df` degrees of freedom
/// (Wilson–Hilferty cube approximation; within 1% for df ≥ 2 at the levels used here).
pub fn chi_square_critical(alpha: f64, df: u32) -> f64 {
    let k = f64::from(df.max(1));
    let z = normal_quantile(1.0 - alpha);
    let a = 2.0 / (9.0 * k);
    (k * (1.0 - a + z * a.sqrt()).powi(3)).max(0.0)
}

/// `P(X ≥ k)` for `X ~ Binomial(n, p)`: exact summation while the mean is small, a
/// continuity-corrected normal approximation otherwise.
pub fn binomial_sf(k: u64, n: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n || p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let mean = n as f64 * p;
    if k > 2000 || mean > 200.0 {
        let sd = (mean * (1.0 - p)).sqrt();
        return 1.0 - normal_cdf((k as f64 - 0.5 - mean) / sd);
    }
    // P(X < k) = Σ_{i<k} pmf(i), pmf in log space so (1 − p)^n does not underflow.
    let mut log_pmf = n as f64 * (-p).ln_1p();
    let ratio = (p / (1.0 - p)).ln();
    let mut below = 0.0;
    for i in 0..k {
        below += log_pmf.exp();
        log_pmf += ((n - i) as f64 / (i + 1) as f64).ln() + ratio;
    }
    (1.0 - below).clamp(0.0, 1.0)
}

/// The one-sided p-value below which an estimate counts as over its limit (weak evidence of
/// a breach): the step then holds rather than advancing. Above it the excess is within
/// sampling noise (one error among an expected 0.8 is not a breach).
pub const OVER_LIMIT_P: f64 = 0.1;

/// The normal quantile matching [`OVER_LIMIT_P`] (bounds for "over the limit").
pub fn over_limit_z() -> f64 {
    normal_quantile(1.0 - OVER_LIMIT_P)
}

/// Whether `k` events out of `n` are over a limit `p0` on the evidence:
/// `P(X ≥ k) < OVER_LIMIT_P` under `Binomial(n, p0)`.
pub fn over_limit(k: u64, n: u64, p0: f64) -> bool {
    n > 0 && binomial_sf(k, n, p0) < OVER_LIMIT_P
}

/// Mixture SPRT for "a Bernoulli probability exceeds its null". See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixtureSprt {
    /// Log likelihood ratio of each alternative in [`THETAS`].
    pub log_lr: Vec<f64>,
    /// Largest log e-value seen.
    pub peak_log_e: f64,
    /// Trials and successes fed in so far (for reporting).
    pub trials: u64,
    pub successes: u64,
    /// Successes expected at the null boundary: `Σ trials·p0` over the updates.
    #[serde(default)]
    pub null_successes: f64,
}

impl Default for MixtureSprt {
    fn default() -> Self {
        MixtureSprt {
            log_lr: vec![0.0; THETAS.len()],
            peak_log_e: 0.0,
            trials: 0,
            successes: 0,
            null_successes: 0.0,
        }
    }
}

impl MixtureSprt {
    /// Feeds `successes` out of `trials` Bernoulli outcomes whose null probability is at
    /// most `p0` (0 < p0 < 1). Outcomes with another `p0` can follow in later calls.
    pub fn update(&mut self, successes: u64, trials: u64, p0: f64) {
        if trials == 0 || !(p0 > 0.0 && p0 < 1.0) {
            return;
        }
        let k = successes.min(trials) as f64;
        let m = (trials - successes.min(trials)) as f64;
        for (lr, &theta) in self.log_lr.iter_mut().zip(THETAS.iter()) {
            let p1 = theta * p0 / (1.0 - p0 + theta * p0);
            *lr += k * (p1 / p0).ln() + m * ((1.0 - p1) / (1.0 - p0)).ln();
        }
        self.trials += trials;
        self.successes += successes.min(trials);
        self.null_successes += trials as f64 * p0;
        self.peak_log_e = self.peak_log_e.max(self.log_e_value());
    }

    /// Feeds one window of a two-sample comparison: `H0: p_c ≤ ratio·p_b`, conditioning on
    /// the errors (a success is an error from the canary).
    pub fn update_two_sample(&mut self, canary: (u64, u64), baseline: (u64, u64), ratio: f64) {
        let (c_err, c_n) = canary;
        let (b_err, b_n) = baseline;
        if c_n == 0 || b_n == 0 {
            return;
        }
        let p0 = ratio * c_n as f64 / (ratio * c_n as f64 + b_n as f64);
        self.update(c_err.min(c_n), c_err.min(c_n) + b_err.min(b_n), p0);
    }

    /// Log of the mixture likelihood ratio (the e-value).
    pub fn log_e_value(&self) -> f64 {
        let max = self
            .log_lr
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        if !max.is_finite() {
            return 0.0;
        }
        let sum: f64 = self.log_lr.iter().map(|l| (l - max).exp()).sum();
        max + (sum / self.log_lr.len() as f64).ln()
    }

    /// The null probability averaged over the trials so far (`None` before any).
    pub fn null_rate(&self) -> Option<f64> {
        (self.trials > 0).then(|| self.null_successes / self.trials as f64)
    }

    /// Whether the successes so far are over the null boundary on the evidence
    /// ([`over_limit`] at the average null probability).
    pub fn over_null(&self) -> bool {
        self.null_rate()
            .is_some_and(|p0| over_limit(self.successes, self.trials, p0))
    }

    /// Whether the rate so far is above the average null probability (the point estimate).
    pub fn point_over_null(&self) -> bool {
        self.null_rate()
            .is_some_and(|p0| self.successes as f64 > p0 * self.trials as f64)
    }

    /// Whether the null has been rejected at level `alpha` at any look so far.
    pub fn rejected(&self, alpha: f64) -> bool {
        self.peak_log_e >= log_threshold(alpha)
    }
}

/// The log e-value at which a level-`alpha` sequential test rejects: `ln(1/α)`.
pub fn log_threshold(alpha: f64) -> f64 {
    -alpha.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantile_matches_known_values() {
        for (p, z) in [
            (0.5, 0.0),
            (0.975, 1.959_963_985),
            (0.995, 2.575_829_304),
            (0.05, -1.644_853_627),
        ] {
            assert!((normal_quantile(p) - z).abs() < 1e-6, "{p}");
        }
    }

    #[test]
    fn spending_sums_to_alpha() {
        let s: f64 = (1..200_000).map(|k| spent_alpha(0.01, k)).sum();
        assert!(s < 0.01 && s > 0.00999);
    }

    #[test]
    fn histogram_quantile_interpolates_like_prometheus() {
        let b = [(10.0, 50), (20.0, 100), (f64::INFINITY, 100)];
        assert_eq!(histogram_quantile(0.5, &b), Some(10.0));
        assert_eq!(histogram_quantile(0.75, &b), Some(15.0));
        assert_eq!(histogram_quantile(0.25, &b), Some(5.0));
        let tail = [(10.0, 50), (f64::INFINITY, 100)];
        assert_eq!(histogram_quantile(0.9, &tail), Some(10.0));
        let qb = quantile_bounds(0.9, &tail, 2.0);
        assert_eq!(qb.map(|q| q.upper), Some(f64::INFINITY));
        assert_eq!(
            histogram_quantile(0.5, &[(10.0, 0), (f64::INFINITY, 0)]),
            None
        );
    }

    #[test]
    fn divergences() {
        let a = [100, 100, 100, 100];
        assert!(psi(&a, &a).is_some_and(|v| v.abs() < 1e-12));
        assert!(js_divergence(&a, &a).is_some_and(|v| v.abs() < 1e-12));
        let js = js_divergence(&[10, 0], &[0, 10]);
        assert!(js.is_some_and(|v| (v - 1.0).abs() < 1e-12));
        let p = psi(&[90, 10], &[10, 90]);
        assert!(p.is_some_and(|v| v > 2.0 && v.is_finite()));
        assert!(psi(&[10, 0], &[0, 10]).is_some_and(f64::is_finite));
        let (chi, df) = chi_square_homogeneity(&[50, 50], &[50, 50]).unwrap_or((f64::NAN, 0));
        assert_eq!((chi, df), (0.0, 1));
        assert!((chi_square_critical(0.05, 9) - 16.919).abs() < 0.2);
    }

    #[test]
    fn binomial_tail() {
        assert!((binomial_sf(1, 10, 0.1) - (1.0 - 0.9f64.powi(10))).abs() < 1e-12);
        assert_eq!(binomial_sf(0, 10, 0.1), 1.0);
        assert!((binomial_sf(500, 1000, 0.5) - 0.5125).abs() < 0.002);
        assert!(!over_limit(1, 400, 0.002));
        assert!(over_limit(3, 400, 0.002));
        assert!(!over_limit(2, 400, 0.002));
        assert!(over_limit(11, 200, 0.03));
        assert!(!over_limit(6, 200, 0.03));
    }

    #[test]
    fn wilson_interval() {
        let (lo, hi) = wilson(98, 100, 1.96);
        assert!((lo - 0.9300).abs() < 1e-3 && (hi - 0.9945).abs() < 1e-3);
    }

    #[test]
    fn sprt_rejects_large_effects_and_not_nulls() {
        let mut t = MixtureSprt::default();
        t.update(25, 500, 0.01);
        assert!(t.rejected(0.01));
        let mut n = MixtureSprt::default();
        n.update(5, 500, 0.01);
        assert!(!n.rejected(0.01));
    }
}
