//! `aviary-bench [--quick] [--out BENCHMARKS.md]`: runs the benchmark suite and writes the report.

use std::path::PathBuf;
use std::process::ExitCode;

use aviary_bench::{report, run, Options};

const USAGE: &str = "usage: aviary-bench [--quick] [--out FILE]
       aviary-bench --variants A,B,... [--rounds N] [--secs S]   (throughput of these only, vs A)
       aviary-bench --pairs A:B,C:D,... [--rounds N] [--alt-wasm PATH]   (side by side: B relative to A;
                    `aviary-split-alt` is the 90/10 split run by the aviary.wasm at PATH)
       aviary-bench --serve VARIANT SECONDS   (runs one variant and its upstream, for profiling)";

fn main() -> ExitCode {
    match main_inner() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("aviary-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main_inner() -> anyhow::Result<ExitCode> {
    let mut quick = false;
    let mut out = None;
    let mut serve = None;
    let mut compare: Option<Vec<String>> = None;
    let mut pairs: Option<Vec<String>> = None;
    let mut alt = None;
    let (mut rounds, mut secs) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--out" => out = args.next().map(PathBuf::from),
            "--serve" => serve = args.next().zip(args.next()),
            "--variants" => {
                compare = args
                    .next()
                    .map(|v| v.split(',').map(str::to_string).collect())
            }
            "--pairs" => {
                pairs = args
                    .next()
                    .map(|v| v.split(',').map(str::to_string).collect())
            }
            "--alt-wasm" => alt = args.next().map(PathBuf::from),
            "--rounds" => rounds = args.next().map(|v| v.parse()).transpose()?,
            "--secs" => secs = args.next().map(|v| v.parse()).transpose()?,
            _ => anyhow::bail!("{USAGE}"),
        }
    }
    let root =
        aviary_sim::workspace_root().ok_or_else(|| anyhow::anyhow!("workspace root not found"))?;
    if let Some((variant, secs)) = serve {
        aviary_bench::serve(
            &Options::full(root),
            &variant,
            std::time::Duration::from_secs(secs.parse()?),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut opts = if quick {
        Options::quick(root)
    } else {
        Options::full(root)
    };
    opts.rounds = rounds.unwrap_or(opts.rounds);
    opts.wasms.alt = alt;
    opts.run_secs = secs.unwrap_or(opts.run_secs);
    let partial = match (pairs, compare) {
        (Some(pairs), _) => Some(aviary_bench::pairs(&opts, &pairs)?),
        (None, Some(keys)) => Some(aviary_bench::compare(&opts, &keys)?),
        (None, None) => None,
    };
    if let Some(res) = partial {
        for p in &res.problems {
            eprintln!("problem: {p}");
        }
        return Ok(if res.problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let r = run(opts)?;
    let text = report::markdown(&r);
    match out {
        Some(path) => {
            std::fs::write(&path, &text)?;
            eprintln!("wrote {} in {:.0} s", path.display(), r.elapsed_s);
        }
        None => println!("{text}"),
    }
    let problems = r.problems();
    for p in &problems {
        eprintln!("problem: {p}");
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
