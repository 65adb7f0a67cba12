//! Runs one simulated model version until killed. See `aviary-modelserver --help`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use aviary_sim::modelserver::{
    Fault, Latency, LatencyTail, ModelServer, ModelServerConfig, ScoreDistribution,
};
use clap::Parser;

/// Simulated ML model server (HTTP/1.1 on 127.0.0.1).
///
/// Every request other than /__* is a prediction. GET /__stats returns counters,
/// POST /__stats/reset zeroes them, POST /__control changes error_rate, disagree_rate,
/// latency or fault at runtime.
#[derive(Parser, Debug)]
#[command(name = "aviary-modelserver")]
struct Args {
    /// Start from this JSON ModelServerConfig; flags given on the command line override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model version name, echoed in x-model-version.
    #[arg(long = "model-version", visible_alias = "version")]
    model_version: Option<String>,
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long)]
    port: Option<u16>,
    /// Write the actual port to this file once listening.
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// Seed of predictions, latency and disagreement.
    #[arg(long)]
    seed: Option<u64>,
    /// Share of predictions answered with 500 (spread evenly).
    #[arg(long)]
    error_rate: Option<f64>,
    /// Fixed part of the latency in milliseconds.
    #[arg(long)]
    latency_ms: Option<f64>,
    /// Random latency tail: none, exp:MEAN_MS or lognormal:MU,SIGMA (of ln ms).
    #[arg(long)]
    latency_tail: Option<String>,
    /// Score distribution: beta:A,B, normal:MEAN,SD or uniform.
    #[arg(long)]
    score: Option<String>,
    /// Comma-separated label set.
    #[arg(long, value_delimiter = ',')]
    labels: Option<Vec<String>>,
    /// Share of inputs whose label differs from the same-seed baseline.
    #[arg(long)]
    disagree_rate: Option<f64>,
    /// Header carrying the input id.
    #[arg(long)]
    input_header: Option<String>,
    /// Maximum simultaneous connections.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Fault: reset every prediction connection without a response.
    #[arg(long, conflicts_with_all = ["always_status", "non_json"])]
    reset: bool,
    /// Fault: answer every prediction with this status (e.g. 503).
    #[arg(long, conflicts_with = "non_json")]
    always_status: Option<u16>,
    /// Fault: answer 200 with a non-JSON body.
    #[arg(long)]
    non_json: bool,
    /// Fault: fixed slow latency in milliseconds (same as --latency-ms with no tail).
    #[arg(long, conflicts_with_all = ["latency_ms", "latency_tail"])]
    slow_ms: Option<f64>,
}

fn pair(spec: &str, what: &str) -> anyhow::Result<(f64, f64)> {
    let (a, b) = spec
        .split_once(',')
        .with_context(|| format!("{what} needs two comma-separated numbers, got {spec:?}"))?;
    Ok((
        a.trim().parse().with_context(|| format!("{what}: {a:?}"))?,
        b.trim().parse().with_context(|| format!("{what}: {b:?}"))?,
    ))
}

fn parse_tail(spec: &str) -> anyhow::Result<LatencyTail> {
    Ok(match spec.split_once(':') {
        None if spec == "none" => LatencyTail::None,
        Some(("exp", mean)) => LatencyTail::Exponential {
            mean_ms: mean.parse().context("exp mean")?,
        },
        Some(("lognormal", params)) => {
            let (mu, sigma) = pair(params, "lognormal")?;
            LatencyTail::LogNormal { mu, sigma }
        }
        _ => bail!("unknown latency tail {spec:?} (none, exp:MEAN_MS, lognormal:MU,SIGMA)"),
    })
}

fn parse_score(spec: &str) -> anyhow::Result<ScoreDistribution> {
    Ok(match spec.split_once(':') {
        None if spec == "uniform" => ScoreDistribution::Uniform,
        Some(("beta", params)) => {
            let (a, b) = pair(params, "beta")?;
            ScoreDistribution::Beta { a, b }
        }
        Some(("normal", params)) => {
            let (mean, std_dev) = pair(params, "normal")?;
            ScoreDistribution::Normal { mean, std_dev }
        }
        _ => bail!("unknown score distribution {spec:?} (beta:A,B, normal:MEAN,SD, uniform)"),
    })
}

fn build_config(args: Args) -> anyhow::Result<(ModelServerConfig, Option<PathBuf>)> {
    let mut c = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => ModelServerConfig::default(),
    };
    if let Some(v) = args.model_version {
        c.version = v;
    }
    if let Some(v) = args.port {
        c.port = v;
    }
    if let Some(v) = args.seed {
        c.seed = v;
    }
    if let Some(v) = args.error_rate {
        c.error_rate = v;
    }
    if let Some(v) = args.latency_ms {
        c.latency.base_ms = v;
    }
    if let Some(v) = &args.latency_tail {
        c.latency.tail = parse_tail(v)?;
    }
    if let Some(v) = args.slow_ms {
        c.latency = Latency::fixed_ms(v);
    }
    if let Some(v) = &args.score {
        c.score = parse_score(v)?;
    }
    if let Some(v) = args.labels {
        c.labels = v;
    }
    if let Some(v) = args.disagree_rate {
        c.disagree_rate = v;
    }
    if let Some(v) = args.input_header {
        c.input_header = v;
    }
    if let Some(v) = args.max_connections {
        c.max_connections = v;
    }
    if args.reset {
        c.fault = Fault::Reset;
    } else if let Some(s) = args.always_status {
        c.fault = Fault::Status(s);
    } else if args.non_json {
        c.fault = Fault::NonJson;
    }
    c.validate()?;
    Ok((c, args.port_file))
}

fn main() -> anyhow::Result<()> {
    let (config, port_file) = build_config(Args::parse())?;
    let server = ModelServer::spawn(config)?;
    if let Some(path) = port_file {
        // Write then rename, so a watcher never reads a half-written file.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, server.port().to_string())?;
        std::fs::rename(&tmp, &path)?;
    }
    let config = server.config();
    println!(
        "aviary-modelserver {} listening on {} (seed {}, error_rate {}, disagree_rate {}, fault {:?})",
        config.version,
        server.addr(),
        config.seed,
        config.error_rate,
        config.disagree_rate,
        config.fault
    );
    std::io::stdout().flush()?;
    server.wait();
    Ok(())
}
