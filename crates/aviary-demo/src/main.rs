//! `aviary-demo`: real Envoy with the plugin over ECDS, two model servers and keyed traffic; a
//! good v2 is promoted step by step, then a bad v2 is rolled back. Errors are `anyhow` here
//! only.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use aviary_demo::DemoOptions;
use clap::Parser;

/// Run the demo: real Envoy with the plugin over ECDS, two model servers and keyed traffic; a
/// good v2 is promoted step by step, then a bad v2 is rolled back.
#[derive(Debug, Parser)]
#[command(name = "aviary-demo", version)]
struct Cli {
    /// Where the rollout specs, states, reports and webhook log go.
    #[arg(long, value_name = "DIR", default_value = "out/demo")]
    out: PathBuf,
    /// The repository root (for envoy/aviary-ecds.yaml and the built .wasm).
    #[arg(long, value_name = "DIR", default_value = ".")]
    root: PathBuf,
    /// Shorter bake times, no live display (what the end-to-end test runs).
    #[arg(long)]
    quick: bool,
    /// The history of every demo run (kept across runs). Default: `<out>-history.jsonl`.
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Cli) -> anyhow::Result<ExitCode> {
    let root = args.root.canonicalize().context("--root")?;
    let mut opts = DemoOptions::new(&root, args.out);
    if args.quick {
        opts = opts.quick();
    }
    if let Some(h) = args.history {
        opts.history = h;
    }
    let results = aviary_demo::run(&opts)?;
    let expected = [Some("promoted"), Some("rolled back")];
    let ok = results
        .iter()
        .zip(expected)
        .all(|(r, want)| r.outcome.as_deref() == want);
    if !ok {
        bail!("the demo did not end as expected: {results:#?}");
    }
    Ok(ExitCode::SUCCESS)
}
