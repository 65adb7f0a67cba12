//! Item 4: time inside the plugin, from the wasmtime test host running the real release .wasm,
//! and config parse/compile time natively and in the test host. wasmtime (with fuel metering,
//! as the test host runs it) is not Envoy's V8: these are relative figures.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aviary_testhost::Host;
use serde_json::{json, Value};

use crate::summary::Spread;
use crate::variants::{non_matching_rules, percent_config, sticky_config};

/// Mean nanoseconds per request in each callback of a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseNs {
    /// `proxy_on_context_create`.
    pub create: f64,
    /// `proxy_on_request_headers`: the decision and the routing header.
    pub request: f64,
    /// `proxy_on_response_headers`: the status read and the stamp.
    pub response: f64,
    /// `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`: the per-request metrics.
    pub finish: f64,
}

impl PhaseNs {
    pub fn total(&self) -> f64 {
        self.create + self.request + self.response + self.finish
    }

    pub fn minus(&self, o: &PhaseNs) -> PhaseNs {
        PhaseNs {
            create: self.create - o.create,
            request: self.request - o.request,
            response: self.response - o.response,
            finish: self.finish - o.finish,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RequestCost {
    pub label: String,
    pub rules: Option<usize>,
    pub ns: PhaseNs,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigCost {
    pub rules: usize,
    pub versions: usize,
    pub config_bytes: usize,
    /// `aviary::config::parse_and_compile`, native, µs.
    pub native_us: f64,
    /// `proxy_on_configure` in the test host (parse, compile, metric definitions), µs.
    pub host_us: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostResults {
    pub noop: PhaseNs,
    pub requests: Vec<RequestCost>,
    pub configs: Vec<ConfigCost>,
}

pub const RULE_SWEEP: [usize; 5] = [0, 5, 10, 100, 1000];
const CONFIG_RULES: [usize; 4] = [1, 10, 100, 1000];
const CONFIG_VERSIONS: [usize; 3] = [2, 8, 64];

pub fn run(aviary: &Path, noop: &Path, requests: usize, quick: bool) -> anyhow::Result<HostResults> {
    let noop_ns = stream_cost(&load(noop, None)?, requests)?;
    let mut out = HostResults {
        noop: noop_ns,
        ..HostResults::default()
    };
    let split = load(aviary, Some(&percent_config()))?;
    out.requests.push(RequestCost {
        label: "Aviary percentage split 90/10".into(),
        rules: None,
        ns: stream_cost(&split, requests)?,
    });
    for rules in RULE_SWEEP {
        let host = load(aviary, Some(&sticky_config(rules)))?;
        out.requests.push(RequestCost {
            label: format!("Aviary sticky split, {rules} rules"),
            rules: Some(rules),
            ns: stream_cost(&host, requests)?,
        });
    }
    let budget = if quick { Duration::from_millis(30) } else { Duration::from_millis(300) };
    let host = load(aviary, Some(&percent_config()))?;
    for versions in CONFIG_VERSIONS {
        for rules in CONFIG_RULES {
            let raw = config_with(rules, versions).to_string();
            let native_us = time_each(budget, || {
                aviary::config::parse_and_compile(raw.as_bytes())
                    .map(drop)
                    .map_err(|e| anyhow::anyhow!("{e}"))
            })?;
            let host_us = time_each(budget, || {
                if !host.configure(&raw)?.is_accepted() {
                    bail!("the plugin rejected the {rules}-rule, {versions}-version config");
                }
                Ok(())
            })?;
            out.configs.push(ConfigCost {
                rules,
                versions,
                config_bytes: raw.len(),
                native_us,
                host_us,
            });
        }
    }
    Ok(out)
}

fn load(wasm: &Path, config: Option<&Value>) -> anyhow::Result<Host> {
    let host = Host::load(wasm)?.with_random_seed(7);
    host.start_vm()?;
    if let Some(c) = config {
        host.configure(c.to_string())?.expect_ok()?;
    }
    Ok(host)
}

/// A config with `versions` versions (the candidates get 1% each) and `rules` rules.
pub fn config_with(rules: usize, versions: usize) -> Value {
    let candidates = versions.saturating_sub(1);
    let mut list = vec![json!({"name": "stable", "weight": 10000 - 100 * candidates})];
    list.extend((1..versions).map(|i| json!({"name": if i == 1 { "canary".to_string() } else { format!("v{i}") }, "weight": 100})));
    json!({"service": "bench", "versions": list, "sticky": {"keys": [{"header": "x-user-id"}]},
           "rules": non_matching_rules(rules)})
}

/// Runs `requests` streams (after a warm-up) and returns the mean time of each callback; the
/// median of three blocks, so one disturbed block does not skew it.
fn stream_cost(host: &Host, requests: usize) -> anyhow::Result<PhaseNs> {
    let users: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let one = |i: usize, ns: &mut PhaseNs| -> anyhow::Result<()> {
        let request = [
            (":method", "GET"),
            (":path", "/predict"),
            (":authority", "bench"),
            (":scheme", "http"),
            ("user-agent", "aviary-bench"),
            ("accept", "*/*"),
            ("x-user-id", users[i % users.len()].as_str()),
            ("x-request-id", "5e1c2d4a-8f3b-4c1e-9a7d-2b6f0e9c3a18"),
        ];
        let response = [(":status", "200"), ("content-type", "application/json"), ("content-length", "44")];
        let t0 = Instant::now();
        let s = host.http_stream()?;
        let t1 = Instant::now();
        s.request_headers(&request, true)?;
        let t2 = Instant::now();
        s.response_headers(&response, true)?;
        let t3 = Instant::now();
        s.finish()?;
        let t4 = Instant::now();
        ns.create += (t1 - t0).as_nanos() as f64;
        ns.request += (t2 - t1).as_nanos() as f64;
        ns.response += (t3 - t2).as_nanos() as f64;
        ns.finish += (t4 - t3).as_nanos() as f64;
        Ok(())
    };
    let mut scratch = PhaseNs::default();
    for i in 0..requests / 10 + 1 {
        one(i, &mut scratch)?;
    }
    let block = (requests / 3).max(1);
    let mut blocks = Vec::new();
    for b in 0..3 {
        let mut ns = PhaseNs::default();
        for i in 0..block {
            one(b * block + i, &mut ns)?;
        }
        let n = block as f64;
        blocks.push(PhaseNs {
            create: ns.create / n,
            request: ns.request / n,
            response: ns.response / n,
            finish: ns.finish / n,
        });
    }
    blocks.sort_by(|a, b| a.total().total_cmp(&b.total()));
    Ok(blocks[1])
}

/// Median µs of `f` over repeated calls for about `budget` (at least 5 calls).
fn time_each(budget: Duration, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < 5 || (start.elapsed() < budget && samples.len() < 10_000) {
        let t = Instant::now();
        f().context("timing a configuration")?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(Spread::of(samples).median)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_configs_compile() {
        for versions in CONFIG_VERSIONS {
            for rules in CONFIG_RULES {
                let c = config_with(rules, versions).to_string();
                let compiled = aviary::config::parse_and_compile(c.as_bytes()).unwrap();
                assert_eq!((compiled.rules.len(), compiled.versions.len()), (rules, versions));
            }
        }
    }
}
