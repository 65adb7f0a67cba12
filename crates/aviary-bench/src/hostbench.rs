//! Item 4: time inside the plugin, from the wasmtime test host running the real release .wasm,
//! and config parse/compile time natively and in the test host. wasmtime (with fuel metering,
//! as the test host runs it) is not Envoy's V8: these are relative figures.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aviary_testhost::{Category, Host};
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
    /// `proxy_on_tick` (dispatching the queued copy) and `proxy_on_http_call_response`.
    pub shadow: f64,
}

impl PhaseNs {
    pub fn total(&self) -> f64 {
        self.create + self.request + self.response + self.finish + self.shadow
    }

    fn add(&mut self, o: &PhaseNs) {
        self.create += o.create;
        self.request += o.request;
        self.response += o.response;
        self.finish += o.finish;
        self.shadow += o.shadow;
    }

    fn scaled(&self, k: f64) -> PhaseNs {
        PhaseNs {
            create: self.create * k,
            request: self.request * k,
            response: self.response * k,
            finish: self.finish * k,
            shadow: self.shadow * k,
        }
    }
}

/// How a case drives each stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Headers only, both ways.
    Plain,
    /// The response has a JSON body.
    Body,
    /// A JSON body, then a tick dispatches the shadow copy and the shadow answers.
    Shadow,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RequestCost {
    pub label: String,
    pub rules: Option<usize>,
    pub ns: PhaseNs,
    /// The row this one is compared with ("over" column).
    pub baseline: &'static str,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigCost {
    pub rules: usize,
    pub versions: usize,
    pub config_bytes: usize,
    /// `aviary_contract::config::parse_and_compile`, native, µs.
    pub native_us: f64,
    /// `proxy_on_configure` in the test host (parse, compile, metric definitions), µs.
    pub host_us: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostResults {
    /// Baselines first: the no-op filter, and the mirror probe for the shadow rows.
    pub requests: Vec<RequestCost>,
    pub configs: Vec<ConfigCost>,
}

impl HostResults {
    pub fn get(&self, label: &str) -> Option<&RequestCost> {
        self.requests.iter().find(|c| c.label == label)
    }

    /// Nanoseconds a row adds over its baseline.
    pub fn over_baseline(&self, c: &RequestCost) -> Option<f64> {
        let base = self.get(c.baseline).filter(|b| b.label != c.label)?;
        Some(c.ns.total() - base.ns.total())
    }
}

pub const NOOP: &str = "No-op filter";
pub const PROBE_MIRROR: &str = "Probe: mirror (bare root-context dispatch)";

pub const RULE_SWEEP: [usize; 5] = [0, 5, 10, 100, 1000];
const CONFIG_RULES: [usize; 4] = [1, 10, 100, 1000];
const CONFIG_VERSIONS: [usize; 3] = [2, 8, 64];

pub fn run(
    aviary: &Path,
    noop: &Path,
    requests: usize,
    quick: bool,
) -> anyhow::Result<HostResults> {
    let mut out = HostResults::default();
    let mut case = |label: String,
                    rules: Option<usize>,
                    wasm: &Path,
                    config: Option<String>,
                    flow: Flow,
                    baseline: &'static str|
     -> anyhow::Result<()> {
        let host = load(wasm, config.as_deref())?;
        let ns = stream_cost(&host, requests, flow)?;
        out.requests.push(RequestCost {
            label,
            rules,
            ns,
            baseline,
        });
        Ok(())
    };
    let json = |v: Value| Some(v.to_string());
    case(NOOP.into(), None, noop, None, Flow::Plain, NOOP)?;
    case(
        PROBE_MIRROR.into(),
        None,
        noop,
        Some("mirror".into()),
        Flow::Shadow,
        PROBE_MIRROR,
    )?;
    case(
        "Aviary percentage split 90/10".into(),
        None,
        aviary,
        json(percent_config()),
        Flow::Plain,
        NOOP,
    )?;
    let mut scores = percent_config();
    scores["scores"] = json!({"pointer": "/prediction/score", "bounds": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]});
    case(
        "Aviary split + score extraction".into(),
        None,
        aviary,
        json(scores),
        Flow::Body,
        NOOP,
    )?;
    for compare in [false, true] {
        let mut shadow =
            json!({"targets": [{"version": "canary", "cluster": "shadow"}], "share": 10000});
        if compare {
            shadow["compare"] =
                json!({"labelPointer": "/prediction/label", "scorePointer": "/prediction/score"});
        }
        let cfg = json!({"service": "bench", "versions": [{"name": "stable", "weight": 10000}, {"name": "canary", "weight": 0}], "shadow": shadow});
        let label = if compare {
            "Aviary shadow 100% + compare"
        } else {
            "Aviary shadow 100%"
        };
        case(
            label.into(),
            None,
            aviary,
            json(cfg),
            Flow::Shadow,
            PROBE_MIRROR,
        )?;
    }
    for rules in RULE_SWEEP {
        case(
            format!("Aviary sticky split, {rules} rules"),
            Some(rules),
            aviary,
            json(sticky_config(rules)),
            Flow::Plain,
            NOOP,
        )?;
    }
    let budget = if quick {
        Duration::from_millis(30)
    } else {
        Duration::from_millis(300)
    };
    let host = load(aviary, Some(&percent_config().to_string()))?;
    for versions in CONFIG_VERSIONS {
        for rules in CONFIG_RULES {
            let raw = config_with(rules, versions).to_string();
            let native_us = time_each(budget, || {
                aviary_contract::config::parse_and_compile(raw.as_bytes())
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

fn load(wasm: &Path, config: Option<&str>) -> anyhow::Result<Host> {
    let host = Host::load(wasm)?
        .with_random_seed(7)
        .with_cluster("shadow")
        .with_allowed(Category::HttpCall);
    host.start_vm()?;
    if let Some(c) = config {
        host.configure(c)?.expect_ok()?;
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

/// Runs `requests` streams (after a warm-up) in five blocks and returns the mean time of each
/// callback in the fastest block: other work on the machine only ever adds time.
fn stream_cost(host: &Host, requests: usize, flow: Flow) -> anyhow::Result<PhaseNs> {
    const BODY: &str = crate::variants::PRIMARY_BODY;
    let users: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let content_length = BODY.len().to_string();
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
        let response = [
            (":status", "200"),
            ("content-type", "application/json"),
            ("content-length", content_length.as_str()),
        ];
        let t0 = Instant::now();
        let s = host.http_stream()?;
        let t1 = Instant::now();
        s.request_headers(&request, true)?;
        let t2 = Instant::now();
        if flow == Flow::Plain {
            s.response_headers(&response, true)?;
        } else {
            s.response_headers(&response, false)?;
            s.response_body(BODY, true)?;
        }
        let t3 = Instant::now();
        s.finish()?;
        let t4 = Instant::now();
        if flow != Flow::Shadow && i % 100 == 99 && host.tick_period().is_some() {
            // The root's tick sends the batched counts; Envoy ticks every 50 ms, which at this
            // proxy's rates is many more than 100 requests, so this overstates its share.
            host.tick()?;
        }
        if flow == Flow::Shadow {
            host.tick()?;
            let call = host
                .last_call()
                .ok_or_else(|| anyhow::anyhow!("the plugin dispatched no shadow copy"))?;
            host.respond_to_call(
                call.token,
                200,
                &[("content-type", "application/json")],
                crate::variants::SHADOW_BODY,
            )?;
        }
        let t5 = Instant::now();
        let d = |a: Instant, b: Instant| (b - a).as_nanos() as f64;
        ns.add(&PhaseNs {
            create: d(t0, t1),
            request: d(t1, t2),
            response: d(t2, t3),
            finish: d(t3, t4),
            shadow: d(t4, t5),
        });
        Ok(())
    };
    let mut scratch = PhaseNs::default();
    for i in 0..requests / 10 + 1 {
        one(i, &mut scratch)?;
    }
    let block = (requests / 5).max(1);
    let mut blocks = Vec::new();
    for b in 0..5 {
        let mut ns = PhaseNs::default();
        for i in 0..block {
            one(b * block + i, &mut ns)?;
        }
        blocks.push(ns.scaled(1.0 / block as f64));
    }
    blocks.sort_by(|a, b| a.total().total_cmp(&b.total()));
    Ok(blocks[0])
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
                let compiled = aviary_contract::config::parse_and_compile(c.as_bytes()).unwrap();
                assert_eq!(
                    (compiled.rules.len(), compiled.versions.len()),
                    (rules, versions)
                );
            }
        }
    }
}
