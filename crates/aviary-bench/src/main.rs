//! `aviary-bench [--quick] [--out BENCHMARKS.md]`: runs the benchmark suite and writes the report.

use std::path::PathBuf;
use std::process::ExitCode;

use aviary_bench::{report, run, Options};

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
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--out" => out = args.next().map(PathBuf::from),
            _ => anyhow::bail!("usage: aviary-bench [--quick] [--out FILE]"),
        }
    }
    let root = aviary_sim::workspace_root().ok_or_else(|| anyhow::anyhow!("workspace root not found"))?;
    let opts = if quick { Options::quick(root) } else { Options::full(root) };
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
    Ok(if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
