//! Items 1–3: every variant in its own Envoy, all running at once, measured in interleaved
//! rounds so drift on a shared machine hits every variant alike.

use std::collections::BTreeMap;
use std::path::Path;
use std::thread;
use std::time::Duration;

use anyhow::Context;
use aviary_sim::{EnvoyProcess, LoadConfig};

use crate::procstat::CpuMeter;
use crate::summary::Spread;
use crate::variants::{start_upstream, start_variant, Variant, Wasms};
use crate::wrk::{self, WrkResult};
use crate::Options;

/// One closed-loop run of one variant.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub round: usize,
    pub wrk: WrkResult,
    /// CPU time of the Envoy under test per request, µs.
    pub proxy_cpu_us: f64,
    /// CPU time of the upstream Envoy, as a share of one core over the run.
    pub upstream_load: f64,
    /// Canary's share of the requests the upstream received on stable + canary.
    pub canary_share: f64,
    /// Requests the shadow listener received per request sent.
    pub mirrored: f64,
    /// CPU used by everything but the proxy, the upstream and wrk, in cores: other work on the
    /// machine disturbing the run.
    pub other_load: f64,
}

/// One fixed-rate run of one variant.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyRun {
    pub round: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub rps: f64,
    pub errors: u64,
}

/// Two proxies loaded at the same time, each by its own wrk with half the connections, so
/// both see the same machine: the ratio of their CPU per request cancels most of the drift
/// that dominates one-at-a-time runs on a shared machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub reference: Variant,
    pub variant: Variant,
    /// CPU µs per request of the reference and the variant, per round.
    pub cpu_us: Vec<(f64, f64)>,
    /// Other load per round, as in [`Run::other_load`].
    pub other_load: Vec<f64>,
}

impl Pair {
    /// Reference CPU / variant CPU per round: the variant's throughput relative to the
    /// reference when the proxy's CPU is the limit (it is, at saturation).
    pub fn ratios(&self) -> Spread {
        Spread::of(self.cpu_us.iter().map(|(a, b)| a / b))
    }

    pub fn cpu(&self) -> (Spread, Spread) {
        (
            Spread::of(self.cpu_us.iter().map(|x| x.0)),
            Spread::of(self.cpu_us.iter().map(|x| x.1)),
        )
    }
}

#[derive(Debug, Default)]
pub struct Results {
    pub runs: BTreeMap<&'static str, Vec<Run>>,
    pub pairs: Vec<Pair>,
    pub latency: BTreeMap<&'static str, Vec<LatencyRun>>,
    /// Per variant, the no-op filter's runs made at the same time as its latency runs.
    pub latency_ref: BTreeMap<&'static str, Vec<LatencyRun>>,
    /// The upstream alone, driven directly by wrk: its ceiling.
    pub upstream_alone: Vec<WrkResult>,
    /// Memory of each proxy after its runs: (RSS KiB, Envoy's `server.memory_allocated`).
    pub memory: BTreeMap<&'static str, (u64, u64)>,
    /// `wasm.*` stats of the Aviary split proxy.
    pub wasm_stats: BTreeMap<String, u64>,
    pub problems: Vec<String>,
}

impl Results {
    pub fn rps(&self, v: Variant) -> Spread {
        Spread::of(
            self.runs
                .get(v.key())
                .into_iter()
                .flatten()
                .map(|r| r.wrk.rps),
        )
    }

    pub fn field(&self, v: Variant, f: impl Fn(&Run) -> f64) -> Spread {
        Spread::of(self.runs.get(v.key()).into_iter().flatten().map(f))
    }

    /// The ratio of medians, and the range of the per-round ratios.
    pub fn ratio(&self, v: Variant, base: Variant) -> (f64, Spread) {
        let ratio = self.rps(v).median / self.rps(base).median;
        let (a, b) = (self.runs.get(v.key()), self.runs.get(base.key()));
        let per_round = a.into_iter().flatten().filter_map(|r| {
            let other = b.into_iter().flatten().find(|o| o.round == r.round)?;
            Some(r.wrk.rps / other.wrk.rps)
        });
        (ratio, Spread::of(per_round))
    }

    pub fn latency(&self, v: Variant, f: impl Fn(&LatencyRun) -> f64) -> Spread {
        Spread::of(self.latency.get(v.key()).into_iter().flatten().map(f))
    }

    /// `v`'s p50 minus the no-op filter's measured at the same time, per round.
    pub fn p50_added(&self, v: Variant) -> Spread {
        let (Some(a), Some(b)) = (self.latency.get(v.key()), self.latency_ref.get(v.key())) else {
            return Spread::of(std::iter::once(0.0));
        };
        Spread::of(a.iter().zip(b).map(|(x, y)| x.p50_ms - y.p50_ms))
    }

    /// Median other load over every one-at-a-time and side-by-side run.
    pub fn other_load(&self) -> f64 {
        let runs = self.runs.values().flatten().map(|r| r.other_load);
        let pairs = self.pairs.iter().flat_map(|p| p.other_load.iter().copied());
        Spread::of(runs.chain(pairs)).median
    }

    pub fn pair(&self, reference: Variant, variant: Variant) -> Option<&Pair> {
        self.pairs
            .iter()
            .find(|p| p.reference == reference && p.variant == variant)
    }
}

struct Proxy {
    variant: Variant,
    envoy: EnvoyProcess,
    url: String,
}

pub fn run(
    opts: &Options,
    wasms: &Wasms,
    stats: &str,
    script: &Path,
    variants: &[Variant],
    pairs: &[(Variant, Variant)],
) -> anyhow::Result<Results> {
    let (upstream, ports) = start_upstream()?;
    let start = |v: Variant| -> anyhow::Result<Proxy> {
        let envoy = start_variant(v, stats, wasms, ports)?;
        let url = format!(
            "http://127.0.0.1:{}/predict",
            envoy.listener_port("ingress")?
        );
        Ok(Proxy {
            variant: v,
            envoy,
            url,
        })
    };
    // Every variant run one at a time or in a pair, started once.
    let mut proxies = Vec::new();
    for v in variants
        .iter()
        .chain(pairs.iter().flat_map(|(a, b)| [a, b]))
    {
        if !proxies.iter().any(|p: &Proxy| p.variant == *v) {
            proxies.push(start(*v)?);
        }
    }
    // A pair of one variant with itself needs a second instance.
    let twins = pairs
        .iter()
        .filter(|(a, b)| a == b)
        .map(|(a, _)| start(*a))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut res = Results::default();
    let up_url = format!("http://127.0.0.1:{}/predict", ports.stable);
    eprintln!("warming up {} proxies", proxies.len());
    for p in &proxies {
        // V8 compiles the module in tiers; the first seconds run baseline code.
        let w = wrk::run(&p.url, opts.connections, opts.warmup_secs, script)?;
        if w.errors() > 0 {
            res.problems.push(format!(
                "{}: {} errors while warming up",
                p.variant.key(),
                w.errors()
            ));
        }
    }
    for round in 0..opts.rounds {
        for p in proxies.iter().filter(|p| variants.contains(&p.variant)) {
            let r = measure(round, p, &upstream, opts, script)
                .with_context(|| format!("round {} of {}", round + 1, p.variant.key()))?;
            eprintln!(
                "round {} {:<22} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  cpu {:.1} µs/req  canary {:.3}  mirrored {:.3}  other load {:.2}  errors {}",
                round + 1, p.variant.key(), r.wrk.rps, r.wrk.p50_ms, r.wrk.p99_ms, r.proxy_cpu_us,
                r.canary_share, r.mirrored, r.other_load, r.wrk.errors()
            );
            check_run(p.variant, &r, &mut res.problems);
            res.runs.entry(p.variant.key()).or_default().push(r);
        }
        let w = wrk::run(&up_url, opts.connections, opts.run_secs, script)?;
        eprintln!(
            "round {} {:<22} {:>9.0} req/s",
            round + 1,
            "upstream alone",
            w.rps
        );
        res.upstream_alone.push(w);
    }
    side_by_side_rounds(&proxies, &twins, &upstream, pairs, opts, script, &mut res)?;
    fixed_rate_rounds(&proxies, opts, &mut res)?;
    for p in &proxies {
        let rss = p
            .envoy
            .pid()
            .and_then(crate::procstat::rss_kib)
            .unwrap_or(0);
        let allocated = p.envoy.stat("server.memory_allocated")?.unwrap_or(0);
        res.memory.insert(p.variant.key(), (rss, allocated));
        if p.variant == Variant::AviaryPercent {
            res.wasm_stats = p.envoy.stats(Some(r"^wasm\."))?;
        }
        if let Some(problem) = log_problem(&p.envoy) {
            res.problems.push(format!("{}: {problem}", p.variant.key()));
        }
    }
    Ok(res)
}

/// Every pair, side by side, once per round.
fn side_by_side_rounds(
    proxies: &[Proxy],
    twins: &[Proxy],
    upstream: &EnvoyProcess,
    pairs: &[(Variant, Variant)],
    opts: &Options,
    script: &Path,
    res: &mut Results,
) -> anyhow::Result<()> {
    for round in 0..opts.rounds {
        for &(a, b) in pairs {
            let pa = proxies.iter().find(|p| p.variant == a);
            let pb = if a == b {
                twins.iter().find(|p| p.variant == b)
            } else {
                proxies.iter().find(|p| p.variant == b)
            };
            let (Some(pa), Some(pb)) = (pa, pb) else {
                continue;
            };
            let (ca, cb, other) = side_by_side(pa, pb, upstream, opts, script, &mut res.problems)?;
            eprintln!(
                "pair round {} {} {ca:.1} µs/req, {} {cb:.1} µs/req: {:.3}  other load {other:.2}",
                round + 1,
                a.key(),
                b.key(),
                ca / cb
            );
            match res
                .pairs
                .iter_mut()
                .find(|p| p.reference == a && p.variant == b)
            {
                Some(p) => {
                    p.cpu_us.push((ca, cb));
                    p.other_load.push(other);
                }
                None => res.pairs.push(Pair {
                    reference: a,
                    variant: b,
                    cpu_us: vec![(ca, cb)],
                    other_load: vec![other],
                }),
            }
        }
    }
    Ok(())
}

/// Latency at a fixed, moderate rate.
fn fixed_rate_rounds(proxies: &[Proxy], opts: &Options, res: &mut Results) -> anyhow::Result<()> {
    let Some(noop) = proxies.iter().find(|p| p.variant == Variant::Noop) else {
        return Ok(());
    };
    let chosen: Vec<&Proxy> = proxies
        .iter()
        .filter(|p| Variant::LATENCY.contains(&p.variant) && p.variant != Variant::Noop)
        .collect();
    for round in 0..opts.latency_rounds {
        for p in &chosen {
            // The variant and the no-op filter at once, each from its own generator, so the
            // round's difference is not the machine's drift between two runs.
            let (r, base) = thread::scope(|s| {
                let a = s.spawn(|| fixed_rate(round, &p.url, opts));
                let b = s.spawn(|| fixed_rate(round, &noop.url, opts));
                (a.join(), b.join())
            });
            let joined = |r: std::thread::Result<anyhow::Result<LatencyRun>>| {
                r.map_err(|_| anyhow::anyhow!("a load thread panicked"))?
            };
            let (r, base) = (joined(r)?, joined(base)?);
            eprintln!(
                "latency round {} {:<22} {:.0} req/s  p50 {:.3} ms  p99 {:.3} ms  errors {}  (no-op at once: p50 {:.3} ms)",
                round + 1,
                p.variant.key(),
                r.rps,
                r.p50_ms,
                r.p99_ms,
                r.errors,
                base.p50_ms
            );
            for (key, run) in [(p.variant.key(), &r), (Variant::Noop.key(), &base)] {
                if run.errors > 0 {
                    res.problems.push(format!(
                        "{key}: {} errors in fixed-rate round {}",
                        run.errors,
                        round + 1
                    ));
                }
            }
            res.latency.entry(p.variant.key()).or_default().push(r);
            res.latency
                .entry(Variant::Noop.key())
                .or_default()
                .push(base.clone());
            res.latency_ref
                .entry(p.variant.key())
                .or_default()
                .push(base);
        }
    }
    Ok(())
}

/// Loads both proxies at once, each with half the connections; returns their CPU µs per
/// request and the other load meanwhile.
fn side_by_side(
    a: &Proxy,
    b: &Proxy,
    upstream: &EnvoyProcess,
    opts: &Options,
    script: &Path,
    problems: &mut Vec<String>,
) -> anyhow::Result<(f64, f64, f64)> {
    let pids: Vec<u32> = [a.envoy.pid(), b.envoy.pid(), upstream.pid()]
        .into_iter()
        .flatten()
        .collect();
    let cpu = CpuMeter::start(&pids);
    let busy = crate::procstat::machine_busy_ns();
    let wrks = wrk::children_cpu_ns();
    let half = (opts.connections / 2).max(1);
    let (wa, wb) = thread::scope(|s| {
        let ta = s.spawn(|| wrk::run(&a.url, half, opts.run_secs, script));
        let tb = s.spawn(|| wrk::run(&b.url, half, opts.run_secs, script));
        (ta.join(), tb.join())
    });
    let used = cpu.stop();
    let busy = crate::procstat::machine_busy_ns().saturating_sub(busy);
    let ours = used.iter().sum::<u64>() + wrk::children_cpu_ns().saturating_sub(wrks);
    let other = busy.saturating_sub(ours) as f64 / (opts.run_secs as f64 * 1e9);
    let joined = |r: std::thread::Result<anyhow::Result<WrkResult>>| {
        r.map_err(|_| anyhow::anyhow!("a wrk thread panicked"))?
    };
    let (wa, wb) = (joined(wa)?, joined(wb)?);
    for (p, w) in [(a, &wa), (b, &wb)] {
        if w.errors() > 0 {
            problems.push(format!(
                "{} (side by side): {} non-2xx or socket errors",
                p.variant.key(),
                w.errors()
            ));
        }
    }
    let per = |ns: Option<&u64>, w: &WrkResult| {
        ns.copied().unwrap_or(0) as f64 / 1000.0 / w.requests.max(1) as f64
    };
    Ok((per(used.first(), &wa), per(used.get(1), &wb), other))
}

fn measure(
    round: usize,
    p: &Proxy,
    upstream: &EnvoyProcess,
    opts: &Options,
    script: &Path,
) -> anyhow::Result<Run> {
    let pids: Vec<u32> = [p.envoy.pid(), upstream.pid()]
        .into_iter()
        .flatten()
        .collect();
    let before = received(upstream)?;
    let cpu = CpuMeter::start(&pids);
    let busy = crate::procstat::machine_busy_ns();
    let w = wrk::run(&p.url, opts.connections, opts.run_secs, script)?;
    let used = cpu.stop();
    let busy = crate::procstat::machine_busy_ns().saturating_sub(busy);
    let ours = used.iter().sum::<u64>() + w.cpu_ns;
    // Queued shadow copies go out on the plugin's next tick; let them land before counting.
    thread::sleep(Duration::from_millis(300));
    let after = received(upstream)?;
    let delta = |k: &str| {
        after
            .get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(k).copied().unwrap_or(0)) as f64
    };
    let (stable, canary, shadow) = (delta("stable"), delta("canary"), delta("shadow"));
    let requests = w.requests.max(1) as f64;
    Ok(Run {
        round,
        proxy_cpu_us: used.first().copied().unwrap_or(0) as f64 / 1000.0 / requests,
        upstream_load: used.get(1).copied().unwrap_or(0) as f64 / (opts.run_secs as f64 * 1e9),
        canary_share: canary / (stable + canary).max(1.0),
        mirrored: shadow / requests,
        other_load: busy.saturating_sub(ours) as f64 / (opts.run_secs as f64 * 1e9),
        wrk: w,
    })
}

/// Requests each upstream listener has answered.
fn received(upstream: &EnvoyProcess) -> anyhow::Result<BTreeMap<String, u64>> {
    let stats = upstream.stats(Some(
        r"^http\.(stable|canary|shadow)\.downstream_rq_completed$",
    ))?;
    Ok(stats
        .into_iter()
        .filter_map(|(k, v)| Some((k.split('.').nth(1)?.to_string(), v)))
        .collect())
}

fn check_run(v: Variant, r: &Run, problems: &mut Vec<String>) {
    let key = v.key();
    if r.wrk.errors() > 0 {
        problems.push(format!(
            "{key} round {}: {} non-2xx or socket errors",
            r.round + 1,
            r.wrk.errors()
        ));
    }
    let share = v.canary_share();
    if (r.canary_share - share).abs() > 0.05 {
        problems.push(format!(
            "{key} round {}: canary got {:.3} of requests, expected {share}",
            r.round + 1,
            r.canary_share
        ));
    }
    let mirror = if v.mirrors() { 1.0 } else { 0.0 };
    if (r.mirrored - mirror).abs() > 0.05 {
        problems.push(format!(
            "{key} round {}: {:.3} copies per request reached the shadow, expected {mirror}",
            r.round + 1,
            r.mirrored
        ));
    }
}

/// Errors and critical lines in an Envoy log (the plugin logs its panics as critical).
fn log_problem(envoy: &EnvoyProcess) -> Option<String> {
    let bad: Vec<String> = envoy
        .log_tail(2000)
        .lines()
        .filter(|l| l.contains("[error]") || l.contains("[critical]"))
        .take(3)
        .map(str::to_string)
        .collect();
    (!bad.is_empty()).then(|| format!("Envoy logged errors: {}", bad.join(" | ")))
}

fn fixed_rate(round: usize, url: &str, opts: &Options) -> anyhow::Result<LatencyRun> {
    let cfg = LoadConfig {
        connections: 4,
        rate: Some(opts.latency_rate),
        users: 100_000,
        timeout: Duration::from_secs(2),
        ..LoadConfig::duration(url, Duration::from_secs(opts.latency_secs))
    };
    let s = aviary_sim::run_load(&cfg)?.summary;
    let non_2xx: u64 = s
        .by_status
        .iter()
        .filter(|(c, _)| !(200..300).contains(*c))
        .map(|(_, n)| n)
        .sum();
    Ok(LatencyRun {
        round,
        p50_ms: s.latency_ms.p50,
        p99_ms: s.latency_ms.p99,
        rps: s.rps,
        errors: s.errors + non_2xx,
    })
}
