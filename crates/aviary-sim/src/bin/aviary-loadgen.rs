//! Sends keyed HTTP/1.1 load and prints a summary. See `aviary-loadgen --help`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use aviary_sim::loadgen::{run, LoadConfig};
use clap::Parser;

/// Keyed HTTP/1.1 load generator with exact per-status and per-header counts.
///
/// At least one of --requests and --duration is required.
#[derive(Parser, Debug)]
#[command(name = "aviary-loadgen")]
struct Args {
    /// Target URL on 127.0.0.1, e.g. http://127.0.0.1:10000/predict
    #[arg(long)]
    url: String,
    /// Number of requests.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Duration in seconds.
    #[arg(short = 'd', long)]
    duration: Option<f64>,
    /// Parallel keep-alive connections.
    #[arg(short = 'c', long, default_value_t = 4)]
    connections: usize,
    /// Target total rate in requests per second (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// HTTP method (default: POST with a body, else GET).
    #[arg(long)]
    method: Option<String>,
    /// Header carrying the user key.
    #[arg(long, default_value = "x-user-id")]
    user_header: String,
    /// Size of the user pool.
    #[arg(long, default_value_t = 1000)]
    users: u64,
    /// Prefix of user keys.
    #[arg(long, default_value = "user-")]
    user_prefix: String,
    /// Seed for user and input selection.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Header carrying an input id (none by default).
    #[arg(long)]
    input_header: Option<String>,
    /// Size of the input pool (0: a fresh input per request).
    #[arg(long, default_value_t = 0)]
    inputs: u64,
    /// Request body; {{USER}}, {{INPUT}} and {{SEQ}} are substituted.
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// Read the request body from a file.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Extra header "name: value" (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Response header to group results by.
    #[arg(long, default_value = "x-aviary-served-by")]
    record_header: String,
    /// Connect and response timeout in seconds.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Write the summary as JSON to this file ("-" for stdout; the text summary then goes to
    /// stderr).
    #[arg(long)]
    json: Option<String>,
    /// Write one JSON record per request (JSON Lines) to this file.
    #[arg(long)]
    records: Option<PathBuf>,
}

fn seconds(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("invalid {what} {s}"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let body = match &args.body_file {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => args.body.clone(),
    };
    let headers = args
        .headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("header {h:?} is not \"name: value\""))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = LoadConfig {
        url: args.url,
        method: args.method.unwrap_or_default(),
        requests: args.requests,
        duration: args.duration.map(|d| seconds(d, "duration")).transpose()?,
        connections: args.connections,
        rate: args.rate,
        user_header: args.user_header,
        users: args.users,
        user_prefix: args.user_prefix,
        seed: args.seed,
        input_header: args.input_header,
        inputs: args.inputs,
        body,
        headers,
        record_header: args.record_header,
        timeout: seconds(args.timeout, "timeout")?,
        keep_records: args.records.is_some(),
    };
    let report = run(&config)?;
    if let Some(path) = &args.records {
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        for r in &report.records {
            serde_json::to_writer(&mut out, r)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    match args.json.as_deref() {
        Some("-") => {
            eprintln!("{}", report.summary);
            println!("{}", serde_json::to_string_pretty(&report.summary)?);
        }
        Some(path) => {
            report.summary.write_json(path)?;
            println!("{}", report.summary);
        }
        None => println!("{}", report.summary),
    }
    Ok(())
}
