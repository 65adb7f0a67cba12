//! Property tests of the sticky split's monotone ramp (native, on the same code the .wasm runs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aviary::request::RequestView;
use aviary::routing::{decide, Peer};
use aviary_contract::config::{parse_and_compile, Compiled};
use aviary_contract::hash::SplitMix64;
use proptest::prelude::*;

fn config(weights: &[u32]) -> Compiled {
    let versions: Vec<String> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| format!(r#"{{"name":"v{i}","weight":{w}}}"#))
        .collect();
    let json = format!(
        r#"{{"versions":[{}],"sticky":{{"keys":[{{"header":"x-user-id"}}],"seed":7}}}}"#,
        versions.join(",")
    );
    parse_and_compile(json.as_bytes()).unwrap()
}

fn version_of(cfg: &Compiled, key: &str) -> usize {
    let req = RequestView::from_pairs(&[("x-user-id", key)]);
    decide(
        cfg,
        &req,
        &mut Peer::new(&mut || None),
        &mut SplitMix64::new(1),
    )
    .version
}

/// Weights (basis points) for `n` versions that add up to 10000, baseline first.
fn weights(n: usize) -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(0u32..=10_000, n - 1).prop_map(move |mut cuts| {
        cuts.sort_unstable();
        let mut out = Vec::with_capacity(n);
        let mut prev = 0;
        for c in &cuts {
            out.push(c - prev);
            prev = *c;
        }
        out.push(10_000 - prev);
        out
    })
}

fn keys() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[a-z0-9]{1,24}", 200)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Two versions: raising the canary never moves a canary user back; lowering it never
    /// moves a stable user onto the canary. Checked along a random ramp.
    #[test]
    fn two_version_ramp_is_monotone(steps in prop::collection::vec(0u32..=10_000, 2..8), keys in keys()) {
        let mut prev: Option<(u32, Vec<usize>)> = None;
        for w in steps {
            let cfg = config(&[10_000 - w, w]);
            let now: Vec<usize> = keys.iter().map(|k| version_of(&cfg, k)).collect();
            if let Some((pw, before)) = &prev {
                for (b, a) in before.iter().zip(&now) {
                    if w >= *pw && *b == 1 { prop_assert_eq!(*a, 1, "canary user left at {}→{}", pw, w); }
                    if w <= *pw && *b == 0 { prop_assert_eq!(*a, 0, "stable user moved at {}→{}", pw, w); }
                }
            }
            prev = Some((w, now));
        }
    }

    /// A/B/n: the set of users on any candidate only grows while no candidate weight decreases,
    /// and only shrinks while none increases.
    #[test]
    fn candidate_set_is_monotone(n in 3usize..6, a in weights(5), b in weights(5), keys in keys()) {
        let (a, b) = (&a[..n.min(a.len())], &b[..n.min(b.len())]);
        let fix = |w: &[u32]| { let mut w = w.to_vec(); let s: u32 = w[1..].iter().sum(); w[0] = 10_000u32.saturating_sub(s); w };
        let (a, b) = (fix(a), fix(b));
        prop_assume!(a.iter().sum::<u32>() == 10_000 && b.iter().sum::<u32>() == 10_000);
        let (ca, cb) = (config(&a), config(&b));
        let grows = a[1..].iter().zip(&b[1..]).all(|(x, y)| y >= x);
        let shrinks = a[1..].iter().zip(&b[1..]).all(|(x, y)| y <= x);
        for k in &keys {
            let (va, vb) = (version_of(&ca, k), version_of(&cb, k));
            if grows && va != 0 { prop_assert_ne!(vb, 0, "{:?}→{:?} moved {} to baseline", a, b, k); }
            if shrinks && va == 0 { prop_assert_eq!(vb, 0, "{:?}→{:?} moved {} off baseline", a, b, k); }
        }
    }

    /// A/B/n: a user on version k stays on k when versions 1..k keep their weights and w_k
    /// does not decrease (the baseline and later versions absorb the change).
    #[test]
    fn version_k_is_sticky(a in weights(4), k in 1usize..4, extra in 0u32..=10_000, keys in keys()) {
        let mut b = a.clone();
        let room = b[0];
        let add = extra.min(room);
        b[k] += add;
        b[0] -= add;
        let (ca, cb) = (config(&a), config(&b));
        for key in &keys {
            if version_of(&ca, key) == k {
                prop_assert_eq!(version_of(&cb, key), k, "{:?}→{:?} moved {}", a, b, key);
            }
        }
    }
}

#[test]
fn shares_follow_the_weights() {
    let cfg = config(&[7000, 2000, 1000]);
    let mut counts = [0u32; 3];
    for i in 0..20_000 {
        counts[version_of(&cfg, &format!("user-{i}"))] += 1;
    }
    // 4 sigma of a binomial with n = 20000.
    for (c, p) in counts.iter().zip([0.7f64, 0.2, 0.1]) {
        let sd: f64 = (20_000.0 * p * (1.0 - p)).sqrt();
        assert!(
            (f64::from(*c) - 20_000.0 * p).abs() < 4.0 * sd,
            "{counts:?}"
        );
    }
}
