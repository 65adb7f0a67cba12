//! Simulations on the pure gate and step code with a seeded RNG: detection power and the A/A
//! false-rollback rate. Time is simulated; nothing reads the wall clock.

mod core_common;

use aviaryctl::core::gates::ErrorTests;
use aviaryctl::core::spec::ErrorRateGate;
use aviaryctl::core::step::{DecisionKind, Outcome};
use core_common::{run, spec, spec_with, Behaviour, Rng, World};

/// Runs `f(seed)` for `runs` seeds on two threads (the CI box has two cores).
fn par<R: Send>(runs: u64, f: impl Fn(u64) -> R + Sync) -> Vec<R> {
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..2u64)
            .map(|t| s.spawn(move || (0..runs).filter(|i| i % 2 == t).map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

fn percentile(mut v: Vec<u64>, q: f64) -> u64 {
    v.sort_unstable();
    v.get(((v.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(0)
}

/// Numbers: A/A through the full schedule (1, 5, 10, 25, 50 → 100%) at 2000 requests per
/// 30 s interval, fast-track every 1 s, threshold 2, error + latency + drift gates:
/// false rollbacks ≤ 1% of 1000 runs.
#[test]
fn aa_full_schedule_false_rollback_rate_is_at_most_one_percent() {
    let spec = spec();
    let runs = 1000;
    let results = par(runs, |seed| {
        let mut world = World::new(
            seed,
            2000.0 / 30.0,
            Behaviour::healthy(),
            Behaviour::healthy(),
        );
        let r = run(&spec, &mut world, 1_000, 6 * 3_600_000);
        let holds = r
            .history
            .decisions
            .iter()
            .filter(|d| d.kind == DecisionKind::Hold)
            .count();
        (r.outcome, r.ended_ms, holds)
    });
    let rollbacks = results
        .iter()
        .filter(|(o, _, _)| matches!(o, Some(Outcome::RolledBack | Outcome::Aborted)))
        .count();
    let promoted = results
        .iter()
        .filter(|(o, _, _)| *o == Some(Outcome::Promoted))
        .count();
    let mean_s = results.iter().map(|r| r.1).sum::<u64>() / runs / 1000;
    let promote_ms: Vec<u64> = results
        .iter()
        .filter(|r| r.0 == Some(Outcome::Promoted))
        .map(|r| r.1)
        .collect();
    let median_s = percentile(promote_ms.clone(), 0.5) / 1000;
    let p95_s = percentile(promote_ms, 0.95) / 1000;
    let p99_holds = percentile(results.iter().map(|r| r.2 as u64).collect(), 0.99);
    eprintln!(
        "A/A: {rollbacks}/{runs} false rollbacks, {promoted} promoted, time to promotion: mean {mean_s} s, median {median_s} s, p95 {p95_s} s; p99 holds {p99_holds}"
    );
    assert!(
        rollbacks as f64 <= 0.01 * runs as f64,
        "{rollbacks} false rollbacks"
    );
    assert_eq!(promoted + rollbacks, runs as usize, "every run must finish");
}

/// Numbers: a canary at 5% errors against a 0.1% baseline is rolled back by the fast track
/// within 500 canary requests in ≥ 95% of 1000 runs (through `step`, starting at 1%).
#[test]
fn error_regression_detected_within_500_canary_requests() {
    let spec = spec();
    let runs = 1000;
    let bad = Behaviour {
        error_rate: 0.05,
        ..Behaviour::healthy()
    };
    // 1000 rps so the 1% step sees ~10 canary requests per 1 s read.
    let results = par(runs, |seed| {
        let mut world = World::new(seed, 1000.0, Behaviour::healthy(), bad.clone());
        let r = run(&spec, &mut world, 1_000, 600_000);
        let fast = r
            .history
            .decisions
            .last()
            .is_some_and(|d| d.kind == DecisionKind::FastRollback);
        (r.outcome, r.canary_requests, fast)
    });
    let within: Vec<u64> = results
        .iter()
        .filter(|(o, n, fast)| *o == Some(Outcome::RolledBack) && *fast && *n <= 500)
        .map(|r| r.1)
        .collect();
    let detected: Vec<u64> = results
        .iter()
        .filter(|(o, _, _)| *o == Some(Outcome::RolledBack))
        .map(|r| r.1)
        .collect();
    let promoted = results
        .iter()
        .filter(|r| r.0 == Some(Outcome::Promoted))
        .count();
    let rate = within.len() as f64 / runs as f64;
    eprintln!(
        "5% vs 0.1%: detected within 500 canary requests in {:.1}% of runs; canary requests to rollback: median {}, p95 {}, max {}; promoted {promoted}",
        rate * 100.0,
        percentile(detected.clone(), 0.5),
        percentile(detected.clone(), 0.95),
        percentile(detected, 1.0)
    );
    assert!(
        rate >= 0.95,
        "detected within 500 in only {:.1}%",
        rate * 100.0
    );
    assert_eq!(promoted, 0);
}

/// The same on the gate code alone, at several weights, feeding 10 canary requests per look.
#[test]
fn error_regression_detection_is_weight_independent() {
    let spec = spec();
    let gate = ErrorRateGate {
        max: Some(0.01),
        max_relative: Some(2.0),
        alpha: None,
        fast_track: true,
    };
    let budget = spec.alpha_budget();
    for weight in [0.01f64, 0.1, 0.5] {
        let runs = 1000u64;
        let mut needed = Vec::new();
        let mut within = 0;
        for seed in 0..runs {
            let mut rng = Rng::new(seed ^ (weight * 1e6) as u64);
            let mut t = ErrorTests::default();
            let mut n = 0;
            let per_look_b = (10.0 * (1.0 - weight) / weight).round() as u64;
            while n < 5_000 {
                let ce = rng.binomial(10, 0.05);
                let be = rng.binomial(per_look_b, 0.001);
                t.observe_counts(&gate, (ce, 10), (be, per_look_b));
                n += 10;
                if t.absolute.rejected(budget.error_absolute)
                    || t.relative.rejected(budget.error_relative)
                {
                    break;
                }
            }
            if n <= 500 {
                within += 1;
            }
            needed.push(n);
        }
        eprintln!(
            "weight {weight}: within 500 in {:.1}%, median {} p95 {}",
            within as f64 / runs as f64 * 100.0,
            percentile(needed.clone(), 0.5),
            percentile(needed, 0.95)
        );
        assert!(within as f64 >= 0.95 * runs as f64);
    }
}

/// A/A on the sequential error test at its boundary (maxRelative 1, 2% errors on both, 1000
/// looks): the always-valid guarantee keeps false rejections ≤ alpha.
#[test]
fn sequential_error_test_is_valid_under_continuous_monitoring() {
    let gate = ErrorRateGate {
        max: Some(0.02),
        max_relative: Some(1.0),
        alpha: None,
        fast_track: true,
    };
    let alpha = 0.01;
    let runs = 2000u64;
    let results = par(runs, |seed| {
        let mut rng = Rng::new(seed + 77);
        let mut t = ErrorTests::default();
        for _ in 0..1000 {
            let (nc, nb) = (20, 80);
            t.observe_counts(
                &gate,
                (rng.binomial(nc, 0.02), nc),
                (rng.binomial(nb, 0.02), nb),
            );
        }
        (t.absolute.rejected(alpha), t.relative.rejected(alpha))
    });
    let abs = results.iter().filter(|r| r.0).count() as u32;
    let rel = results.iter().filter(|r| r.1).count() as u32;
    eprintln!(
        "boundary A/A over 1000 looks: absolute {:.2}%, relative {:.2}% (alpha 1%)",
        f64::from(abs) / runs as f64 * 100.0,
        f64::from(rel) / runs as f64 * 100.0
    );
    assert!(f64::from(abs) <= alpha * runs as f64 * 1.3);
    assert!(f64::from(rel) <= alpha * runs as f64 * 1.3);
}

fn regression_runs(
    spec: &aviaryctl::core::spec::RolloutSpec,
    canary: Behaviour,
    runs: u64,
) -> (usize, usize, Vec<String>) {
    let results = par(runs, |seed| {
        let mut world = World::new(seed, 2000.0 / 30.0, Behaviour::healthy(), canary.clone());
        let r = run(spec, &mut world, 1_000, 6 * 3_600_000);
        let failed: Vec<String> = r
            .history
            .decisions
            .iter()
            .flat_map(|d| d.gates.iter())
            .filter(|g| g.verdict == aviaryctl::core::gates::Verdict::Fail)
            .map(|g| g.gate.clone())
            .collect();
        (r.outcome, failed)
    });
    let rolled = results
        .iter()
        .filter(|r| r.0 == Some(Outcome::RolledBack))
        .count();
    let promoted = results
        .iter()
        .filter(|r| r.0 == Some(Outcome::Promoted))
        .count();
    let mut gates: Vec<String> = results.into_iter().flat_map(|r| r.1).collect();
    gates.sort();
    gates.dedup();
    (rolled, promoted, gates)
}

#[test]
fn latency_regression_is_rolled_back() {
    let spec = spec();
    let slow = Behaviour {
        median_ms: 80.0,
        ..Behaviour::healthy()
    };
    let (rolled, promoted, gates) = regression_runs(&spec, slow, 100);
    eprintln!("p95 ×2: rolled back {rolled}/100, promoted {promoted}, failing gates {gates:?}");
    assert!(rolled >= 95 && promoted == 0);
    assert!(gates.iter().any(|g| g == "latency.p95.regression"));
}

#[test]
fn latency_slo_breach_is_rolled_back() {
    let spec = spec_with("maxRegression: 1.2", "maxRegression: 100");
    let slow = Behaviour {
        median_ms: 200.0,
        ..Behaviour::healthy()
    };
    let (rolled, promoted, gates) = regression_runs(&spec, slow, 100);
    eprintln!("p95 ≈ 540 ms vs 400 ms SLO: rolled back {rolled}/100, promoted {promoted}, failing gates {gates:?}");
    assert!(rolled >= 95 && promoted == 0);
    assert!(gates.iter().any(|g| g == "latency.p95.slo"));
}

#[test]
fn prediction_drift_is_rolled_back() {
    let spec = spec();
    let drifted = Behaviour {
        scores: vec![0.10, 0.14, 0.16, 0.16, 0.14, 0.10, 0.08, 0.06, 0.04, 0.02],
        ..Behaviour::healthy()
    };
    let (rolled, promoted, gates) = regression_runs(&spec, drifted, 100);
    eprintln!(
        "score drift: rolled back {rolled}/100, promoted {promoted}, failing gates {gates:?}"
    );
    assert!(rolled >= 95 && promoted == 0);
    assert_eq!(gates, vec!["drift".to_string()]);
}

/// Numbers: a canary at 2% errors against a 1% ceiling (too little excess for the sequential
/// test to prove within the first steps: it needs about 2000 canary responses) is never
/// promoted in 100 runs, and no step advances from a check at which the cumulative error
/// estimate was over the ceiling. Before the over-limit rule, an estimate over the ceiling
/// passed at every step but the last (299 such advances in 98 of 100 runs).
#[test]
fn over_limit_but_not_significant_canary_never_advances() {
    use aviaryctl::core::gates::Verdict;
    use aviaryctl::core::stats::over_limit;
    let spec = spec_with(
        "errorRate: {max: 0.01, maxRelative: 2}",
        "errorRate: {max: 0.01}",
    );
    let canary = Behaviour {
        error_rate: 0.02,
        ..Behaviour::healthy()
    };
    let runs = 100;
    let results = par(runs, |seed| {
        let mut world = World::new(seed, 2000.0 / 30.0, Behaviour::healthy(), canary.clone());
        let r = run(&spec, &mut world, 1_000, 6 * 3_600_000);
        let mut bad_advances = 0;
        let mut over_holds = 0;
        let mut point_over = 0;
        for d in &r.history.decisions {
            let Some(g) = d.gates.iter().find(|g| g.gate == "errorRate.max") else {
                continue;
            };
            let k = g.observed.get("canaryErrors").copied().unwrap_or(0.0) as u64;
            let n = g.observed.get("canaryN").copied().unwrap_or(0.0) as u64;
            let over = over_limit(k, n, 0.01);
            if matches!(d.kind, DecisionKind::Advance | DecisionKind::Promote) && over {
                bad_advances += 1;
            }
            if matches!(d.kind, DecisionKind::Advance | DecisionKind::Promote)
                && n > 0
                && k as f64 / n as f64 > 0.01
            {
                point_over += 1;
            }
            if d.kind == DecisionKind::Hold && g.verdict == Verdict::Inconclusive && over {
                over_holds += 1;
            }
        }
        (r.outcome, bad_advances, over_holds, point_over)
    });
    let promoted = results
        .iter()
        .filter(|r| r.0 == Some(Outcome::Promoted))
        .count();
    let bad: u32 = results.iter().map(|r| r.1).sum();
    let holds: u32 = results.iter().map(|r| r.2).sum();
    let point: u32 = results.iter().map(|r| r.3).sum();
    eprintln!("2% vs 1% ceiling: promoted {promoted}/{runs}, advances over the limit {bad}, holds over the limit {holds}; advances with the cumulative point estimate over 1%: {point}");
    assert_eq!(promoted, 0);
    assert_eq!(bad, 0);
    assert_eq!(point, 0, "a fixed ceiling holds on the point estimate");
    assert!(holds > 0, "the over-limit rule never held");
}

/// Runs a slow canary from a 5% first step at 1000 rps; returns (outcome, canary requests,
/// ms from the step's start to the rollback, the fast-rollback gates).
fn slow_canary_runs(
    spec: &aviaryctl::core::spec::RolloutSpec,
    canary: Behaviour,
    runs: u64,
) -> Vec<(Option<Outcome>, u64, u64, Vec<String>)> {
    par(runs, |seed| {
        let mut world = World::new(seed, 1000.0, Behaviour::healthy(), canary.clone());
        let r = run(spec, &mut world, 1_000, 600_000);
        let fast = r
            .history
            .decisions
            .last()
            .filter(|d| d.kind == DecisionKind::FastRollback)
            .map(|d| d.gates.iter().map(|g| g.gate.clone()).collect())
            .unwrap_or_default();
        (r.outcome, r.canary_requests, r.ended_ms, fast)
    })
}

fn report_slow(what: &str, results: &[(Option<Outcome>, u64, u64, Vec<String>)], n: u64) -> f64 {
    let fast: Vec<&(Option<Outcome>, u64, u64, Vec<String>)> = results
        .iter()
        .filter(|r| {
            r.0 == Some(Outcome::RolledBack) && r.3.iter().any(|g| g.starts_with("latency."))
        })
        .collect();
    let within = fast.iter().filter(|r| r.1 <= n).count();
    let reqs: Vec<u64> = fast.iter().map(|r| r.1).collect();
    let secs: Vec<u64> = fast.iter().map(|r| r.2).collect();
    eprintln!(
        "{what}: fast latency rollback in {}/{} runs, within {n} canary requests in {within}; canary requests median {} p95 {} max {}; seconds into the step median {:.0} max {:.0}",
        fast.len(),
        results.len(),
        percentile(reqs.clone(), 0.5),
        percentile(reqs.clone(), 0.95),
        percentile(reqs, 1.0),
        percentile(secs.clone(), 0.5) as f64 / 1000.0,
        percentile(secs, 1.0) as f64 / 1000.0,
    );
    within as f64 / results.len() as f64
}

/// Numbers: a 5× slower canary (median 200 ms against 40 ms) at a 5% first step is rolled
/// back by the latency fast track (share of requests over the regression bound) within 150
/// canary requests in ≥ 95% of 1000 runs, seconds into the step rather than after
/// `threshold × interval` (60 s).
#[test]
fn five_times_slower_canary_is_fast_tracked_within_150_canary_requests() {
    let spec = spec_with(
        "threshold: 2",
        "threshold: 2\n    stepWeights: [5, 25, 50, 100]",
    );
    let slow = Behaviour {
        median_ms: 200.0,
        ..Behaviour::healthy()
    };
    let results = slow_canary_runs(&spec, slow, 1000);
    let rate = report_slow("5× latency at 5%", &results, 150);
    assert!(rate >= 0.95, "{rate}");
    assert!(results.iter().all(|r| r.0 == Some(Outcome::RolledBack)));
}

/// Numbers: a canary whose p95 (≈ 535 ms) is over a 250 ms SLO, with the regression test
/// off, is rolled back by the SLO share test within 150 canary requests in ≥ 95% of 1000 runs.
#[test]
fn p95_over_the_slo_is_fast_tracked_within_150_canary_requests() {
    let spec = core_common::parse(
        &core_common::SPEC
            .replacen("maxMs: 400, maxRegression: 1.2", "maxMs: 250", 1)
            .replacen(
                "threshold: 2",
                "threshold: 2\n    stepWeights: [5, 25, 50, 100]",
                1,
            ),
    );
    let slow = Behaviour {
        median_ms: 200.0,
        ..Behaviour::healthy()
    };
    let results = slow_canary_runs(&spec, slow, 1000);
    let rate = report_slow("p95 over a 250 ms SLO at 5%", &results, 150);
    assert!(rate >= 0.95, "{rate}");
    assert!(results
        .iter()
        .all(|r| r.3.is_empty() || r.3.contains(&"latency.p95.slo".to_string())));
}

/// A strongly shifted score distribution (PSI ≈ 4) is rolled back by the drift fast track,
/// before the first bake interval ends.
#[test]
fn strong_drift_is_fast_tracked() {
    let spec = spec_with(
        "threshold: 2",
        "threshold: 2\n    stepWeights: [5, 25, 50, 100]",
    );
    let drifted = Behaviour {
        scores: vec![
            0.60, 0.30, 0.05, 0.02, 0.01, 0.01, 0.005, 0.003, 0.001, 0.001,
        ],
        ..Behaviour::healthy()
    };
    let results = par(200, |seed| {
        let mut world = World::new(seed, 1000.0, Behaviour::healthy(), drifted.clone());
        let r = run(&spec, &mut world, 1_000, 600_000);
        let fast = r.history.decisions.last().is_some_and(|d| {
            d.kind == DecisionKind::FastRollback && d.gates.iter().any(|g| g.gate == "drift")
        });
        (r.outcome, fast, r.ended_ms)
    });
    let fast: Vec<u64> = results.iter().filter(|r| r.1).map(|r| r.2).collect();
    eprintln!(
        "strong drift at 5%: fast drift rollback in {}/200 runs, seconds into the step median {:.0} max {:.0}",
        fast.len(),
        percentile(fast.clone(), 0.5) as f64 / 1000.0,
        percentile(fast.clone(), 1.0) as f64 / 1000.0
    );
    assert!(fast.len() >= 190);
    assert!(fast.iter().all(|&ms| ms < 30_000));
}
