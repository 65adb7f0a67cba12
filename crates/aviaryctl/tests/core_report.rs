//! Reports, rendered from the state and the history its records tell: JSON with every
//! decision and statistic and when each write took effect, Markdown, and a well-formed SVG.

mod core_common;

use aviaryctl::core::step::{Action, Applied, History, Input, Observation, Outcome, RolloutState};
use aviaryctl::report::{render_json, render_markdown, render_svg, status, write_reports};
use core_common::{done, run, spec, step, Behaviour, Run, Tracked, World};

fn rolled_back() -> Run {
    let spec = spec();
    let slow = Behaviour {
        median_ms: 120.0,
        ..Behaviour::healthy()
    };
    let mut world = World::new(21, 1000.0, Behaviour::healthy(), slow);
    let r = run(&spec, &mut world, 1_000, 3_600_000);
    assert_eq!(r.outcome, Some(Outcome::RolledBack));
    r
}

fn promoted() -> Run {
    let spec = spec();
    let mut world = World::new(22, 1000.0, Behaviour::healthy(), Behaviour::healthy());
    let r = run(&spec, &mut world, 1_000, 3_600_000);
    assert_eq!(r.outcome, Some(Outcome::Promoted));
    r
}

/// A healthy rollout whose proxies confirm every write 12 ms after it is issued.
fn promoted_with_confirmations() -> Tracked {
    let spec = spec();
    let mut world = World::new(23, 1000.0, Behaviour::healthy(), Behaviour::healthy());
    let (mut t, mut actions) = step(&spec, Tracked::new(&spec, 0), &Input::Start, 0);
    loop {
        world.apply(&actions);
        let confirm: Vec<u64> = actions
            .iter()
            .filter_map(|a| match a {
                Action::WriteConfig(w) => Some(w.write),
                _ => None,
            })
            .collect();
        let ended = done(&actions).is_some();
        for write in confirm {
            let at = world.now_ms + 12;
            (t, _) = step(&spec, t, &Applied::input(write, at, None), at);
        }
        if ended || world.now_ms > 3_600_000 {
            return t;
        }
        world.advance(1_000);
        let input = Observation::of(world.snapshot());
        (t, actions) = step(&spec, t, &input, world.now_ms);
    }
}

/// A small XML well-formedness check: balanced, properly nested tags, quoted attributes,
/// and only known entities.
fn check_xml(doc: &str) -> Result<usize, String> {
    let mut stack: Vec<String> = Vec::new();
    let mut elements = 0;
    let mut rest = doc.trim();
    let check_text = |t: &str| -> Result<(), String> {
        let mut s = t;
        while let Some(i) = s.find('&') {
            let after = &s[i + 1..];
            let ok = ["lt;", "gt;", "amp;", "quot;", "apos;"]
                .iter()
                .any(|e| after.starts_with(e));
            if !ok {
                return Err(format!("bad entity near `{}`", &s[i..(i + 8).min(s.len())]));
            }
            s = after;
        }
        if s.contains('>') && t.contains('>') {
            return Err(format!("stray `>` in `{t}`"));
        }
        Ok(())
    };
    while !rest.is_empty() {
        let Some(open) = rest.find('<') else {
            check_text(rest)?;
            break;
        };
        check_text(&rest[..open])?;
        let Some(close) = rest[open..].find('>') else {
            return Err("unterminated tag".into());
        };
        let tag = &rest[open + 1..open + close];
        rest = &rest[open + close + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            match stack.pop() {
                Some(top) if top == name.trim() => {}
                other => return Err(format!("`</{name}>` closes {other:?}")),
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let body = tag.trim_end_matches('/');
        let name: String = body.chars().take_while(|c| !c.is_whitespace()).collect();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':')
        {
            return Err(format!("bad tag name in `<{tag}>`"));
        }
        // Attributes: name="value" pairs with no `<` inside values.
        let mut attrs = body[name.len()..].trim();
        while !attrs.is_empty() {
            let Some(eq) = attrs.find("=\"") else {
                return Err(format!("bad attributes in `<{tag}>`"));
            };
            let Some(end) = attrs[eq + 2..].find('"') else {
                return Err(format!("unterminated attribute in `<{tag}>`"));
            };
            let value = &attrs[eq + 2..eq + 2 + end];
            if value.contains('<') {
                return Err(format!("`<` in attribute of `<{tag}>`"));
            }
            check_text(value)?;
            attrs = attrs[eq + 2 + end + 1..].trim();
        }
        elements += 1;
        if !self_closing {
            stack.push(name);
        }
    }
    if stack.is_empty() {
        Ok(elements)
    } else {
        Err(format!("unclosed {stack:?}"))
    }
}

#[test]
fn xml_checker_rejects_malformed_documents() {
    assert!(check_xml("<svg><g></g></svg>").is_ok());
    assert!(check_xml("<svg><g></svg>").is_err());
    assert!(check_xml("<svg><text>a & b</text></svg>").is_err());
    assert!(check_xml("<svg x=\"1\" y=2/>").is_err());
}

#[test]
fn svg_is_well_formed_and_has_all_panels() {
    let spec = spec();
    let new = (RolloutState::new(&spec, 0), History::default());
    for (state, history) in [rolled_back().parts(), promoted().parts(), new] {
        let svg = render_svg(&spec, &state, &history);
        let n = check_xml(&svg);
        assert!(n.as_ref().is_ok_and(|&n| n > 10), "{n:?}\n{svg}");
        for title in [
            "Canary weight (%)",
            "Error rate (%)",
            "p95 latency (ms)",
            "Drift",
        ] {
            assert!(svg.contains(title), "{title}");
        }
    }
    let (state, history) = rolled_back().parts();
    let svg = render_svg(&spec, &state, &history);
    assert!(svg.contains("rollback") && svg.contains("<polyline"));
}

#[test]
fn json_report_records_decisions_with_statistics_timeline_and_stage_times() {
    let spec = spec();
    let (state, history) = rolled_back().parts();
    let j = render_json(&spec, &state, &history);
    assert_eq!(j["outcome"], "rolledBack");
    let decisions = j["decisions"].as_array().cloned().unwrap_or_default();
    assert_eq!(decisions.len(), history.decisions.len());
    let judged = decisions
        .iter()
        .filter(|d| d["gates"].as_array().is_some_and(|g| !g.is_empty()))
        .count();
    assert!(judged >= 2);
    let fail = decisions
        .iter()
        .flat_map(|d| d["gates"].as_array().cloned().unwrap_or_default())
        .find(|g| g["verdict"] == "fail")
        .unwrap_or_default();
    assert_eq!(fail["gate"], "latency.p95.regression");
    assert!(fail["statistic"].is_f64() && fail["threshold"].is_f64());
    assert!(fail["observed"]["canary"].is_f64() && fail["observed"]["baseline"].is_f64());
    let timeline = j["timeline"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        timeline.last().map(|t| t["killSwitch"].clone()),
        Some(true.into())
    );
    let stages = j["stages"].as_array().cloned().unwrap_or_default();
    assert!(!stages.is_empty() && stages.iter().all(|s| s["durationMs"].is_u64()));
    assert!(j["durationMs"].is_u64());
    // The report is plain JSON (no NaN or infinity).
    let text = serde_json::to_string(&j).unwrap_or_default();
    assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
}

#[test]
fn markdown_summarises_stages_and_decisions() {
    let spec = spec();
    let (state, history) = promoted().parts();
    let md = render_markdown(&spec, &state, &history);
    assert!(md.starts_with("# Rollout `recsys-v2`: stable → v2 (promoted)"));
    assert!(md.contains("## Stages") && md.contains("## Decisions"));
    assert!(md.contains("| step 1 (1%) | 1% |"));
    assert!(md.contains("Promote"));
    let (state, history) = rolled_back().parts();
    let md = render_markdown(&spec, &state, &history);
    assert!(md.contains("(rolled back)"));
    assert!(md.contains("| latency.p95.regression |"));
}

#[test]
fn status_shows_stage_and_last_decision() {
    let spec = spec();
    let (state, history) = rolled_back().parts();
    let s = status(
        &spec,
        &state,
        &history,
        state.finished_ms.unwrap_or(0) + 5_000,
    );
    assert_eq!(s.outcome, Some(Outcome::RolledBack));
    let text = s.to_string();
    assert!(
        text.contains("rolled back") && text.contains("latency.p95.regression"),
        "{text}"
    );
    let json = serde_json::to_value(&s).unwrap_or_default();
    assert_eq!(json["canaryWeight"], "0%");
}

#[test]
fn reports_are_written_to_a_directory() {
    let spec = spec();
    let dir = std::env::temp_dir().join(format!("aviaryctl-core-report-{}", std::process::id()));
    let (state, history) = promoted().parts();
    let paths = write_reports(&spec, &state, &history, &dir).unwrap_or_default();
    assert_eq!(paths.len(), 3);
    assert!(paths.iter().all(|p| p.exists()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reports_say_when_each_write_took_effect() {
    let spec = spec();
    let t = promoted_with_confirmations();
    assert_eq!(t.outcome, Some(Outcome::Promoted));
    let j = render_json(&spec, &t.state, &t.history);
    let timeline = j["timeline"].as_array().cloned().unwrap_or_default();
    assert!(timeline.len() >= 6);
    for p in &timeline {
        let (issued, applied) = (p["atMs"].as_u64(), p["appliedMs"].as_u64());
        assert_eq!(applied, issued.map(|i| i + 12), "{p}");
    }
    let stages = j["stages"].as_array().cloned().unwrap_or_default();
    assert!(stages.iter().all(|s| s["applyLagMs"] == 12), "{stages:?}");
    let md = render_markdown(&spec, &t.state, &t.history);
    assert!(
        md.contains("| Took effect |") && md.contains("| +12ms |"),
        "{md}"
    );
    assert!(md.contains("took effect at the proxies 12ms later"), "{md}");
    // Unconfirmed writes say so.
    let (state, history) = promoted().parts();
    let md = render_markdown(&spec, &state, &history);
    assert!(md.contains("was not confirmed by the proxies"), "{md}");
}

/// A fast rollback's evidence is the same everywhere: the decision's headline, its webhook,
/// the Markdown, the JSON and the chart all carry the rollout's cumulative error counts (not
/// the last read's), and the headline has no e-values or log statistics.
#[test]
fn fast_rollback_evidence_is_the_same_in_headline_webhook_markdown_json_and_chart() {
    let spec = spec();
    let bad = Behaviour {
        error_rate: 0.06,
        ..Behaviour::healthy()
    };
    let mut world = World::new(31, 1000.0, Behaviour::healthy(), bad);
    let (mut t, mut actions) = step(&spec, Tracked::new(&spec, 0), &Input::Start, 0);
    let mut webhook = None;
    while done(&actions).is_none() && world.now_ms < 600_000 {
        world.apply(&actions);
        world.advance(1_000);
        (t, actions) = step(&spec, t, &Observation::of(world.snapshot()), world.now_ms);
        for a in &actions {
            if let Action::Notify(n) = a {
                if n.event == aviaryctl::core::spec::Event::Rollback {
                    webhook = Some(n.payload.clone());
                }
            }
        }
    }
    let d = t.history.decisions.last().cloned().expect("a decision");
    assert_eq!(d.kind, aviaryctl::core::step::DecisionKind::FastRollback);
    let m = d
        .metrics
        .clone()
        .expect("a fast rollback carries its numbers");
    let (k, n) = (
        m.canary_errors.unwrap_or(0),
        m.canary_responses.unwrap_or(0),
    );
    let (bk, bn) = (
        m.baseline_errors.unwrap_or(0),
        m.baseline_responses.unwrap_or(0),
    );
    assert_eq!(
        (k, n),
        t.state.error_tests.canary,
        "cumulative canary counts"
    );
    // More than one read's worth (1000 rps at 1% is about 10 canary responses a read).
    assert!(
        n >= m.canary_n && n > 20,
        "cumulative, not the last read: {n}"
    );
    let counts = format!("canary errors {k}/{n}");
    let base = format!("baseline {bk}/{bn}");
    eprintln!("headline: {}", d.reason);
    // The headline (terminal line) states the counts and the verdict in words.
    assert!(
        d.reason.contains(&counts) && d.reason.contains(&base),
        "{}",
        d.reason
    );
    assert!(
        d.reason.contains("strong evidence of a breach"),
        "{}",
        d.reason
    );
    assert!(
        !d.reason.contains("e-value") && !d.reason.contains("logE"),
        "{}",
        d.reason
    );
    // The webhook: same reason, same counts in its gates and metrics.
    let hook = webhook.expect("a rollback webhook");
    assert_eq!(hook["reason"].as_str(), Some(d.reason.as_str()));
    assert_eq!(hook["metrics"]["canaryErrors"].as_u64(), Some(k));
    assert_eq!(hook["metrics"]["canaryResponses"].as_u64(), Some(n));
    let g = &hook["gates"][0]["observed"];
    assert_eq!(g["canaryErrors"].as_f64(), Some(k as f64));
    assert_eq!(g["canaryN"].as_f64(), Some(n as f64));
    // The JSON report: the same decision, counts and the e-value kept for machines.
    let json = render_json(&spec, &t.state, &t.history);
    let jd = json["decisions"].as_array().and_then(|a| a.last()).cloned();
    let jd = jd.expect("decisions");
    assert_eq!(jd["metrics"]["canaryErrors"].as_u64(), Some(k));
    assert_eq!(
        jd["gates"][0]["observed"]["canaryN"].as_f64(),
        Some(n as f64)
    );
    assert!(jd["gates"][0]["observed"]["logE"].is_f64());
    // The Markdown: the headline and the counts in the decision row.
    let md = render_markdown(&spec, &t.state, &t.history);
    assert!(md.contains(&counts), "{md}");
    assert!(md.contains(&format!("({k}/{n})")), "{md}");
    assert!(!md.contains("| Statistic |"));
    // The chart: at the rollback, the error rate that caused it with its counts.
    let svg = render_svg(&spec, &t.state, &t.history);
    assert!(
        svg.contains(&format!("({k}/{n})</text>")),
        "chart lacks the rollback's numbers"
    );
}
