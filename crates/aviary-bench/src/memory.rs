//! Item 5: memory per wasm VM. Envoy runs one VM per worker thread (plus one on the main
//! thread), so the memory of a VM is the growth from adding workers, less what the same
//! workers cost without the filter.

use std::time::Duration;

use aviary_sim::HttpRequest;

use crate::variants::{
    aviary_routes, percent_config, proxy_builder, router, start_upstream, wasm_config, Upstreams,
};
use crate::Options;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Footprint {
    pub workers: usize,
    pub vms: u64,
    pub rss_kib: u64,
    pub allocated: u64,
}

#[derive(Debug, Clone, Default)]
pub struct VmMemory {
    /// (filter, footprints at 1 and 3 workers).
    pub setups: Vec<(&'static str, Vec<Footprint>)>,
    pub problems: Vec<String>,
}

impl VmMemory {
    fn get(&self, name: &str) -> Option<&[Footprint]> {
        self.setups
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| f.as_slice())
    }

    /// Bytes per VM by RSS and by Envoy's own allocator, for `name` ("aviary" or "noop").
    pub fn per_vm(&self, name: &str) -> Option<(f64, f64)> {
        let (f, base) = (self.get(name)?, self.get("none")?);
        let (f1, f3, b1, b3) = (f.first()?, f.last()?, base.first()?, base.last()?);
        let vms = f3.vms.checked_sub(f1.vms).filter(|&n| n > 0)? as f64;
        let grow = |a: u64, b: u64| b as f64 - a as f64;
        let rss = (grow(f1.rss_kib, f3.rss_kib) - grow(b1.rss_kib, b3.rss_kib)) * 1024.0 / vms;
        let alloc = (grow(f1.allocated, f3.allocated) - grow(b1.allocated, b3.allocated)) / vms;
        Some((rss, alloc))
    }
}

/// Four extra workers, so four extra VMs stand out from the allocator's noise.
const WORKERS: [usize; 2] = [1, 5];

pub fn run(opts: &Options, stats: &str) -> anyhow::Result<VmMemory> {
    let (_upstream, ports) = start_upstream()?;
    let mut out = VmMemory::default();
    let filters = [
        ("none", serde_json::json!([router()])),
        (
            "noop",
            serde_json::json!([{"name": "noop", "typed_config": wasm_config("noop", &opts.wasms.noop, None)}, router()]),
        ),
        (
            "aviary",
            serde_json::json!([{"name": "aviary", "typed_config": wasm_config("aviary", &opts.wasms.aviary, Some(&percent_config().to_string()))}, router()]),
        ),
    ];
    for (name, f) in filters {
        let mut prints = Vec::new();
        for workers in WORKERS {
            prints.push(footprint(
                stats,
                &f,
                ports,
                workers,
                &mut out.problems,
                name,
            )?);
        }
        out.setups.push((name, prints));
    }
    Ok(out)
}

fn footprint(
    stats: &str,
    filters: &serde_json::Value,
    ports: Upstreams,
    workers: usize,
    problems: &mut Vec<String>,
    name: &str,
) -> anyhow::Result<Footprint> {
    let envoy = proxy_builder(stats, &aviary_routes(), filters, ports)
        .concurrency(workers)
        .start()?;
    let url = format!("http://127.0.0.1:{}", envoy.listener_port("ingress")?);
    // Requests on fresh connections, so every worker has served some.
    for _ in 0..20 * workers {
        let r =
            aviary_sim::http::request(&url, HttpRequest::get("/predict"), Duration::from_secs(2))?;
        if r.status != 200 {
            problems.push(format!("memory run {name}/{workers}: status {}", r.status));
        }
    }
    std::thread::sleep(Duration::from_millis(1200));
    let vms = envoy
        .stat("wasm.envoy.wasm.runtime.v8.active")?
        .unwrap_or(0);
    Ok(Footprint {
        workers,
        vms,
        rss_kib: envoy.pid().and_then(crate::procstat::rss_kib).unwrap_or(0),
        allocated: envoy.stat("server.memory_allocated")?.unwrap_or(0),
    })
}
