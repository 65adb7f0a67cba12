//! Aviary's benchmark suite: the plugin against native Envoy and a no-op wasm filter, in the
//! real Envoy, on 127.0.0.1. `make bench` runs [`run`] with [`Options::full`] and writes
//! BENCHMARKS.md; the smoke test runs [`Options::quick`] and checks only that nothing failed.

pub mod control;
pub mod hostbench;
pub mod machine;
pub mod memory;
pub mod procstat;
pub mod report;
pub mod summary;
pub mod throughput;
pub mod variants;
pub mod wrk;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};

/// How much to measure.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub rounds: usize,
    /// Seconds per closed-loop run (wrk counts whole seconds).
    pub run_secs: u64,
    pub warmup_secs: u64,
    /// wrk connections.
    pub connections: usize,
    /// Fixed-rate latency runs: rounds, rate and seconds.
    pub latency_rounds: usize,
    pub latency_rate: f64,
    pub latency_secs: u64,
    /// Streams per point in the test host.
    pub host_requests: usize,
    pub ecds_reps: usize,
    pub rollback_reps: usize,
    pub wasms: variants::Wasms,
    pub root: PathBuf,
}

impl Options {
    /// What `make bench` runs (about 7 minutes).
    pub fn full(root: PathBuf) -> Options {
        Options {
            quick: false,
            rounds: 5,
            run_secs: 2,
            warmup_secs: 1,
            connections: 32,
            latency_rounds: 5,
            latency_rate: 1000.0,
            latency_secs: 3,
            host_requests: 15_000,
            ecds_reps: 20,
            rollback_reps: 5,
            wasms: default_wasms(&root),
            root,
        }
    }

    /// The CI smoke check: every variant once, about a second each.
    pub fn quick(root: PathBuf) -> Options {
        Options {
            quick: true,
            rounds: 1,
            latency_rounds: 1,
            run_secs: 1,
            warmup_secs: 1,
            latency_secs: 1,
            host_requests: 600,
            ecds_reps: 4,
            rollback_reps: 1,
            ..Options::full(root)
        }
    }
}

fn default_wasms(root: &std::path::Path) -> variants::Wasms {
    let dir = root.join("target/wasm32-wasip1/release");
    variants::Wasms {
        aviary: dir.join("aviary.wasm"),
        noop: dir.join("aviary_noop.wasm"),
        alt: None,
    }
}

/// Everything one benchmark run measured.
#[derive(Debug)]
pub struct Report {
    pub opts: Options,
    pub machine: machine::Machine,
    pub throughput: throughput::Results,
    pub host: hostbench::HostResults,
    pub memory: memory::VmMemory,
    pub control: control::Results,
    pub sizes: (u64, u64),
    pub elapsed_s: f64,
}

impl Report {
    /// Everything that went wrong (errors, wrong splits, missing copies); empty on a clean run.
    pub fn problems(&self) -> Vec<String> {
        let mut p = self.throughput.problems.clone();
        p.extend(self.memory.problems.iter().cloned());
        p.extend(self.control.problems.iter().cloned());
        p
    }
}

pub fn run(opts: Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    for w in [&opts.wasms.aviary, &opts.wasms.noop] {
        if !w.is_file() {
            bail!("{} is missing: run `make build` and `cargo build --release --target wasm32-wasip1 -p aviary-noop`", w.display());
        }
    }
    let size = |p: &PathBuf| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .with_context(|| p.display().to_string())
    };
    let sizes = (size(&opts.wasms.aviary)?, size(&opts.wasms.noop)?);
    let machine = machine::Machine::detect();
    let stats = variants::stats_config(&opts.root)?;
    let script = opts.root.join("crates/aviary-bench/envoy/user-keys.lua");
    eprintln!("== throughput and latency (items 1-3)");
    let throughput = throughput::run(
        &opts,
        &opts.wasms,
        &stats,
        &script,
        &variants::Variant::ALL,
        &variants::Variant::PAIRS,
    )?;
    eprintln!("== memory per VM (item 5)");
    let memory = memory::run(&opts, &stats)?;
    eprintln!("== ECDS apply and rollback (item 6)");
    let control = control::run(&opts, &stats)?;
    eprintln!("== test host (item 4)");
    let host = hostbench::run(
        &opts.wasms.aviary,
        &opts.wasms.noop,
        opts.host_requests,
        opts.quick,
    )?;
    Ok(Report {
        machine,
        throughput,
        host,
        memory,
        control,
        sizes,
        elapsed_s: started.elapsed().as_secs_f64(),
        opts,
    })
}

/// The variant named `key`.
pub fn variant(key: &str) -> anyhow::Result<variants::Variant> {
    let every = || {
        variants::Variant::ALL
            .into_iter()
            .chain(variants::Variant::PROBES)
            .chain([variants::Variant::AviarySplitAlt])
    };
    every().find(|v| v.key() == key).ok_or_else(|| {
        let keys: Vec<&str> = every().map(|v| v.key()).collect();
        anyhow::anyhow!("unknown variant {key}; one of: {}", keys.join(", "))
    })
}

/// Throughput runs of chosen variants only, interleaved, with a one-line summary per variant:
/// for checking a difference the full run leaves inside its noise.
pub fn compare(opts: &Options, keys: &[String]) -> anyhow::Result<throughput::Results> {
    let chosen = keys
        .iter()
        .map(|k| variant(k))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let res = throughput_only(opts, &chosen, &[])?;
    let base = chosen[0];
    for &v in &chosen {
        let (ratio, per_round) = res.ratio(v, base);
        let cpu = res.field(v, |r| r.proxy_cpu_us);
        println!(
            "{:<22} req/s {:>7.0} [{:.0}–{:.0}]  vs {} {ratio:.3}x (per round {:.2}–{:.2})  CPU {:.1} µs/req [{:.1}–{:.1}]",
            v.key(), res.rps(v).median, res.rps(v).min, res.rps(v).max, base.key(), per_round.min, per_round.max,
            cpu.median, cpu.min, cpu.max
        );
    }
    Ok(res)
}

/// One-at-a-time runs of `chosen` and side-by-side `pairs`, without the fixed-rate rounds.
fn throughput_only(
    opts: &Options,
    chosen: &[variants::Variant],
    pairs: &[(variants::Variant, variants::Variant)],
) -> anyhow::Result<throughput::Results> {
    let stats = variants::stats_config(&opts.root)?;
    let script = opts.root.join("crates/aviary-bench/envoy/user-keys.lua");
    throughput::run(
        &Options {
            latency_rounds: 0,
            ..opts.clone()
        },
        &opts.wasms,
        &stats,
        &script,
        chosen,
        pairs,
    )
}

/// Side-by-side pairs only (`reference:variant`), each with a one-line summary.
pub fn pairs(opts: &Options, specs: &[String]) -> anyhow::Result<throughput::Results> {
    let chosen = specs
        .iter()
        .map(|s| {
            let (a, b) = s
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("{s}: write a pair as reference:variant"))?;
            Ok((variant(a)?, variant(b)?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let res = throughput_only(opts, &[], &chosen)?;
    for &(a, b) in &chosen {
        if let Some(p) = res.pair(a, b) {
            let r = p.ratios();
            println!(
                "{} → {}: {:.3}x [{:.3}–{:.3}]",
                a.key(),
                b.key(),
                r.median,
                r.min,
                r.max
            );
        }
    }
    Ok(res)
}

/// Starts the upstream and one variant's Envoy, prints where they are, and keeps them up for
/// `secs`: for profiling a variant by hand (perf, wrk).
pub fn serve(opts: &Options, key: &str, secs: std::time::Duration) -> anyhow::Result<()> {
    let v = variant(key)?;
    let stats = variants::stats_config(&opts.root)?;
    let (upstream, ports) = variants::start_upstream()?;
    let envoy = variants::start_variant(v, &stats, &opts.wasms, ports)?;
    println!(
        "url http://127.0.0.1:{}/predict pid {} admin {} upstream-pid {}",
        envoy.listener_port("ingress")?,
        envoy.pid().unwrap_or(0),
        envoy.admin_url(),
        upstream.pid().unwrap_or(0)
    );
    std::thread::sleep(secs);
    Ok(())
}
