//! Shared fixtures for the core tests: a spec, a seeded RNG, a simulated Envoy whose
//! cumulative counters the step function reads, and [`step`] with the records it emits folded
//! into a [`History`] (what the runner's records log would hold).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ops::Deref;

use aviaryctl::core::observe::{Snapshot, VersionMetrics};
use aviaryctl::core::spec::RolloutSpec;
use aviaryctl::core::stats::normal_cdf;
use aviaryctl::core::step::{self, Action, History, Input, Observation, Outcome, RolloutState};

pub const SPEC: &str = r#"
apiVersion: aviary.dev/v1
kind: Rollout
metadata: {name: recsys-v2}
spec:
  baseline: stable
  canary: v2
  config:
    jsonFile: out/aviary.json
    pluginConfig:
      service: recsys
      versions:
        - {name: stable, weight: 10000}
        - {name: v2, weight: 0}
      scores: {pointer: /score, bounds: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]}
      shadow:
        targets: [{version: v2, cluster: recsys-v2}]
        share: 10000
        compare: {labelPointer: /label}
  metrics: {envoyAdmin: ["http://127.0.0.1:9901"]}
  analysis:
    interval: 30s
    fastInterval: 1s
    threshold: 2
    maxHold: 10m
    minSamples: 200
    gates:
      errorRate: {max: 0.01, maxRelative: 2}
      latency: {p95: {maxMs: 400, maxRegression: 1.2}}
      drift: {metric: psi, max: 0.2}
"#;

pub fn spec() -> RolloutSpec {
    parse(SPEC)
}

pub fn parse(yaml: &str) -> RolloutSpec {
    match RolloutSpec::parse(yaml) {
        Ok(s) => s,
        Err(e) => panic!("fixture spec invalid: {e}"),
    }
}

/// Replaces `from` with `to` in the fixture, asserting it occurs.
pub fn spec_with(from: &str, to: &str) -> RolloutSpec {
    assert!(SPEC.contains(from), "fixture has no `{from}`");
    parse(&SPEC.replacen(from, to, 1))
}

/// aviary-sim's SplitMix64 with the simulations' seeding, plus the draws they need.
pub struct Rng(aviary_sim::rng::Rng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(aviary_sim::rng::Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0.next_f64()
    }

    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Binomial(n, p): inversion for small means, a rounded normal otherwise.
    pub fn binomial(&mut self, n: u64, p: f64) -> u64 {
        if n == 0 || p <= 0.0 {
            return 0;
        }
        if p >= 1.0 {
            return n;
        }
        if p > 0.5 {
            return n - self.binomial(n, 1.0 - p);
        }
        let mean = n as f64 * p;
        if mean < 25.0 {
            let q = 1.0 - p;
            let mut prob = q.powf(n as f64);
            let mut cdf = prob;
            let u = self.uniform();
            let mut k = 0u64;
            while u > cdf && k < n {
                prob *= (n - k) as f64 / (k + 1) as f64 * p / q;
                k += 1;
                cdf += prob;
                if prob < 1e-300 && cdf > 0.999_999 {
                    break;
                }
            }
            return k;
        }
        let sd = (mean * (1.0 - p)).sqrt();
        (mean + sd * self.normal()).round().clamp(0.0, n as f64) as u64
    }

    /// Multinomial over `probs` (summing to 1) by conditional binomials.
    pub fn multinomial(&mut self, n: u64, probs: &[f64], out: &mut [u64]) {
        let mut left = n;
        let mut mass = 1.0;
        for (i, &p) in probs.iter().enumerate() {
            if left == 0 {
                out[i] = 0;
                continue;
            }
            let k = if i + 1 == probs.len() || mass <= p {
                left
            } else {
                self.binomial(left, (p / mass).clamp(0.0, 1.0))
            };
            out[i] = k;
            left -= k;
            mass -= p;
        }
    }
}

pub const LATENCY_BOUNDS: [f64; 14] = [
    0.5,
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
    10000.0,
    f64::INFINITY,
];
pub const SCORE_BOUNDS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, f64::INFINITY];

/// How one version behaves.
#[derive(Clone, Debug)]
pub struct Behaviour {
    pub error_rate: f64,
    /// Log-normal latency: median (ms) and sigma of the log.
    pub median_ms: f64,
    pub sigma: f64,
    /// Probability of each score bin.
    pub scores: Vec<f64>,
    /// Shadow agreement probability (as a shadow target).
    pub agreement: f64,
}

impl Behaviour {
    pub fn healthy() -> Self {
        Behaviour {
            error_rate: 0.001,
            median_ms: 40.0,
            sigma: 0.6,
            scores: vec![0.02, 0.05, 0.08, 0.12, 0.15, 0.18, 0.15, 0.12, 0.08, 0.05],
            agreement: 0.995,
        }
    }

    fn latency_probs(&self) -> Vec<f64> {
        let mut prev = 0.0;
        LATENCY_BOUNDS
            .iter()
            .map(|&b| {
                let c = if b.is_infinite() {
                    1.0
                } else {
                    normal_cdf((b.ln() - self.median_ms.ln()) / self.sigma)
                };
                let p = (c - prev).max(0.0);
                prev = c;
                p
            })
            .collect()
    }
}

struct Version {
    behaviour: Behaviour,
    latency_probs: Vec<f64>,
    m: VersionMetrics,
    lat: Vec<u64>,
    scores: Vec<u64>,
}

impl Version {
    fn new(behaviour: Behaviour) -> Self {
        Version {
            latency_probs: behaviour.latency_probs(),
            behaviour,
            m: VersionMetrics::default(),
            lat: vec![0; LATENCY_BOUNDS.len()],
            scores: vec![0; SCORE_BOUNDS.len()],
        }
    }

    fn serve(&mut self, rng: &mut Rng, n: u64, scratch: &mut [u64]) {
        if n == 0 {
            return;
        }
        let errors = rng.binomial(n, self.behaviour.error_rate);
        self.m.requests += n;
        *self.m.responses.entry("2xx".into()).or_insert(0) += n - errors;
        *self.m.responses.entry("5xx".into()).or_insert(0) += errors;
        rng.multinomial(n, &self.latency_probs, &mut scratch[..LATENCY_BOUNDS.len()]);
        for (c, k) in self.lat.iter_mut().zip(scratch.iter()) {
            *c += k;
        }
        self.m.latency_count += n;
        let ok = n - errors;
        rng.multinomial(
            ok,
            &self.behaviour.scores,
            &mut scratch[..SCORE_BOUNDS.len()],
        );
        for (c, k) in self.scores.iter_mut().zip(scratch.iter()) {
            *c += k;
        }
    }

    fn shadow(&mut self, rng: &mut Rng, n: u64) {
        let agree = rng.binomial(n, self.behaviour.agreement);
        self.m.shadow_agree += agree;
        self.m.shadow_disagree += n - agree;
    }

    fn metrics(&self) -> VersionMetrics {
        let mut m = self.m.clone();
        let mut cum = 0;
        m.latency_buckets = LATENCY_BOUNDS
            .iter()
            .zip(&self.lat)
            .map(|(&b, &c)| {
                cum += c;
                (b, cum)
            })
            .collect();
        m.score_bins = SCORE_BOUNDS
            .iter()
            .copied()
            .zip(self.scores.iter().copied())
            .collect();
        m
    }
}

/// A simulated Envoy serving `rps` requests per second, split by the last written config.
pub struct World {
    pub rng: Rng,
    pub now_ms: u64,
    /// Requests per second (total).
    pub rps: f64,
    pub canary_bps: u32,
    pub kill_switch: bool,
    pub shadow: bool,
    baseline: Version,
    canary: Version,
    carry: f64,
    scratch: Vec<u64>,
}

impl World {
    pub fn new(seed: u64, rps: f64, baseline: Behaviour, canary: Behaviour) -> Self {
        World {
            rng: Rng::new(seed),
            now_ms: 0,
            rps,
            canary_bps: 0,
            kill_switch: false,
            shadow: false,
            baseline: Version::new(baseline),
            canary: Version::new(canary),
            carry: 0.0,
            scratch: vec![0; 16],
        }
    }

    /// Applies the config writes among `actions`.
    pub fn apply(&mut self, actions: &[Action]) {
        for a in actions {
            if let Action::WriteConfig(w) = a {
                self.canary_bps = w.canary_bps;
                self.kill_switch = w.config.kill_switch.is_some();
                self.shadow = w
                    .config
                    .shadow
                    .as_ref()
                    .is_some_and(|s| s.targets.iter().any(|t| t.version == "v2"));
            }
        }
    }

    /// Serves traffic for `ms`.
    pub fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
        let exact = self.rps * ms as f64 / 1000.0 + self.carry;
        let n = exact.floor() as u64;
        self.carry = exact - n as f64;
        let w = if self.kill_switch {
            0.0
        } else {
            f64::from(self.canary_bps) / 10_000.0
        };
        let nc = self.rng.binomial(n, w);
        let mut scratch = std::mem::take(&mut self.scratch);
        self.baseline.serve(&mut self.rng, n - nc, &mut scratch);
        self.canary.serve(&mut self.rng, nc, &mut scratch);
        self.scratch = scratch;
        if self.shadow {
            self.canary.shadow(&mut self.rng, n - nc);
        }
    }

    pub fn canary_requests(&self) -> u64 {
        self.canary.m.requests
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut versions = BTreeMap::new();
        versions.insert("stable".to_string(), self.baseline.metrics());
        versions.insert("v2".to_string(), self.canary.metrics());
        Snapshot {
            at_ms: self.now_ms,
            versions,
            custom: BTreeMap::new(),
        }
    }
}

/// A rollout as the tests follow it: the control state, and the history folded from every
/// record the step emitted. Reads as its state.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracked {
    pub state: RolloutState,
    pub history: History,
}

impl Tracked {
    /// A rollout that has not started, at `now_ms`.
    pub fn new(spec: &RolloutSpec, now_ms: u64) -> Tracked {
        Tracked::from(RolloutState::new(spec, now_ms))
    }
}

impl From<RolloutState> for Tracked {
    /// A state as restored from disk: its history is elsewhere.
    fn from(state: RolloutState) -> Tracked {
        Tracked {
            state,
            history: History::default(),
        }
    }
}

impl Deref for Tracked {
    type Target = RolloutState;
    fn deref(&self) -> &RolloutState {
        &self.state
    }
}

/// [`step::step`], folding the records into the history. Checks that the records continue
/// the state's numbering without a gap and that the new state counts them, and that a step
/// which records something also persists.
pub fn step(spec: &RolloutSpec, t: Tracked, input: &Input, now_ms: u64) -> (Tracked, Vec<Action>) {
    let first = t.state.records;
    let out = step::step(spec, t.state, input, now_ms);
    let seqs: Vec<u64> = out.records.iter().map(|r| r.seq).collect();
    let want: Vec<u64> = (first..first + seqs.len() as u64).collect();
    assert_eq!(seqs, want, "records numbered from the state's count");
    assert_eq!(out.state.records, first + seqs.len() as u64);
    if !seqs.is_empty() {
        assert!(out.actions.contains(&Action::Persist), "{:?}", out.actions);
    }
    let mut history = t.history;
    history.extend(&out.records);
    let t = Tracked {
        state: out.state,
        history,
    };
    (t, out.actions)
}

/// How a simulated rollout went.
#[derive(Debug, Clone)]
pub struct Run {
    pub outcome: Option<Outcome>,
    pub state: RolloutState,
    pub history: History,
    /// Canary requests served when the rollout ended.
    pub canary_requests: u64,
    pub ended_ms: u64,
}

impl Run {
    /// The state and its history.
    pub fn parts(self) -> (RolloutState, History) {
        (self.state, self.history)
    }
}

/// Runs a rollout against `world`, reading metrics every `poll_ms`, until it ends or
/// `limit_ms` passes.
pub fn run(spec: &RolloutSpec, world: &mut World, poll_ms: u64, limit_ms: u64) -> Run {
    let (mut state, actions) = step(spec, Tracked::new(spec, 0), &Input::Start, 0);
    world.apply(&actions);
    let mut outcome = done(&actions);
    while outcome.is_none() && world.now_ms < limit_ms {
        world.advance(poll_ms);
        let input = Observation::of(world.snapshot());
        let (next, actions) = step(spec, state, &input, world.now_ms);
        state = next;
        world.apply(&actions);
        outcome = done(&actions);
    }
    Run {
        outcome,
        canary_requests: world.canary_requests(),
        ended_ms: world.now_ms,
        state: state.state,
        history: state.history,
    }
}

pub fn done(actions: &[Action]) -> Option<Outcome> {
    actions.iter().find_map(|a| match a {
        Action::Done(o) => Some(*o),
        _ => None,
    })
}
