//! Closed-loop throughput runs with wrk, and the parser of its report.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// What one wrk run reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub non_2xx: u64,
    pub socket_errors: u64,
    /// CPU time wrk itself used, ns.
    pub cpu_ns: u64,
}

impl WrkResult {
    pub fn errors(&self) -> u64 {
        self.non_2xx + self.socket_errors
    }
}

/// Runs `wrk -t1 -c<connections> -d<secs>s --latency` against `url` with the Lua `script`.
/// wrk stops itself after the duration; it is killed if it overruns by 10 s.
pub fn run(url: &str, connections: usize, secs: u64, script: &Path) -> anyhow::Result<WrkResult> {
    static RUN: AtomicU32 = AtomicU32::new(0);
    let out_path = std::env::temp_dir().join(format!(
        "aviary-bench-wrk-{}-{}.out",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let out = std::fs::File::create(&out_path)?;
    let cpu_before = children_cpu_ns();
    let mut child = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "--latency",
        ])
        .args(["--timeout", "2s", "-s"])
        .arg(script)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting wrk (install it with `apt-get install wrk`)")?;
    let deadline = Instant::now() + Duration::from_secs(secs + 10);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("wrk overran its {secs} s run by 10 s");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    if !status.success() {
        bail!("wrk failed ({status}):\n{text}");
    }
    let mut r = parse(&text).with_context(|| format!("parsing wrk output:\n{text}"))?;
    r.cpu_ns = children_cpu_ns().saturating_sub(cpu_before);
    Ok(r)
}

/// CPU time of this process's waited-for children. Envoys are only waited for when stopped,
/// so across wrk runs the difference is wrk's own.
pub fn children_cpu_ns() -> u64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u
    };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    ns(usage.ru_utime) + ns(usage.ru_stime)
}

/// Parses wrk's report (with `--latency`).
pub fn parse(text: &str) -> anyhow::Result<WrkResult> {
    let mut r = WrkResult::default();
    let (mut p50, mut p99) = (None, None);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => p50 = Some(duration_ms(v)?),
            ["99%", v] => p99 = Some(duration_ms(v)?),
            [n, "requests", "in", ..] => r.requests = n.parse()?,
            ["Requests/sec:", v] => r.rps = v.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => r.non_2xx = n.parse()?,
            ["Socket", "errors:", rest @ ..] => {
                r.socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    match (p50, p99) {
        (Some(a), Some(b)) if r.requests > 0 => {
            r.p50_ms = a;
            r.p99_ms = b;
            Ok(r)
        }
        _ => bail!("no requests or no latency distribution in the report"),
    }
}

fn duration_ms(v: &str) -> anyhow::Result<f64> {
    let split = v
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(|| anyhow::anyhow!("duration without unit: {v}"))?;
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse()?;
    Ok(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => bail!("unknown duration unit in {v}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 5s test @ http://127.0.0.1:1/predict
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.23ms  456.00us   12.34ms   90.00%
    Req/Sec    26.12k     1.23k   28.00k    80.00%
  Latency Distribution
     50%  856.00us
     75%    1.30ms
     90%    1.50ms
     99%    2.80ms
  130000 requests in 5.00s, 20.00MB read
  Non-2xx or 3xx responses: 5
  Socket errors: connect 1, read 2, write 0, timeout 3
Requests/sec:  26000.12
Transfer/sec:      4.00MB
";

    #[test]
    fn parses_a_report() {
        let r = parse(REPORT).unwrap();
        assert_eq!(r.requests, 130_000);
        assert_eq!(r.rps, 26000.12);
        assert!((r.p50_ms - 0.856).abs() < 1e-9);
        assert_eq!(r.p99_ms, 2.8);
        assert_eq!((r.non_2xx, r.socket_errors, r.errors()), (5, 6, 11));
        assert!(parse("nothing").is_err());
    }
}
