//! `aviaryctl validate`: the spec and every plugin config it can write, checked without
//! touching anything.

use std::path::Path;
use std::process::ExitCode;

use aviaryctl::core::step::pct;
use aviaryctl::edges::fs::read_spec;
use aviaryctl::edges::sink::{sinks_for, validated_json};
use aviaryctl::edges::source::source_for;
use aviaryctl::edges::webhook::WebhookNotifier;
use aviaryctl::error::Error;

/// Checks the spec and every config it can write; prints a summary or every problem.
pub(crate) fn validate(path: &Path) -> Result<ExitCode, Error> {
    let spec = match read_spec(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return Ok(ExitCode::from(1));
        }
    };
    // Every config the rollout can write must pass the plugin's own validation.
    let mut configs = vec![(
        "initial".to_string(),
        spec.spec.config.plugin_config.clone(),
    )];
    for bps in spec.schedule_bps() {
        configs.push((
            format!("step {}", pct(bps)),
            spec.render_config(bps, false, false),
        ));
    }
    configs.push((
        "promoted".into(),
        spec.render_config(spec.pool_bps(), false, false),
    ));
    configs.push(("rollback".into(), spec.render_config(0, true, false)));
    if spec.spec.analysis.shadow.is_some() {
        configs.push(("shadow".into(), spec.render_config(0, false, true)));
    }
    let mut problems = Vec::new();
    for (label, cfg) in &configs {
        if let Err(e) = validated_json(cfg) {
            problems.push(format!("{label} config: {e}"));
        }
    }
    let sinks = sinks_for(&spec)
        .map_err(|e| problems.push(e.to_string()))
        .ok();
    let source = source_for(&spec)
        .map_err(|e| problems.push(e.to_string()))
        .ok();
    // Secret URLs and headers must be readable (their values are never printed).
    if let Err(e) = WebhookNotifier::from_specs(&spec.spec.webhooks, None) {
        problems.push(e.to_string());
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{}: {p}", path.display());
        }
        return Ok(ExitCode::from(1));
    }
    let a = &spec.spec.analysis;
    println!("{}: valid", path.display());
    println!(
        "rollout   {} ({} → {}, service {})",
        spec.metadata.name,
        spec.spec.baseline,
        spec.spec.canary,
        spec.service()
    );
    let schedule: Vec<String> = spec.schedule_bps().into_iter().map(pct).collect();
    println!(
        "schedule  {}{} → 100%",
        if a.shadow.is_some() {
            "shadow → "
        } else {
            ""
        },
        schedule.join(" → ")
    );
    println!(
        "timing    interval {}, fast-track {}, threshold {}, maxHold {}",
        a.interval,
        a.fast_interval
            .map_or_else(|| "off".to_string(), |f| f.to_string()),
        a.threshold,
        a.max_hold
    );
    if let Some(s) = source {
        println!("metrics   {}", s.describe());
    }
    for s in sinks.into_iter().flatten() {
        println!("sink      {}", s.describe());
    }
    for w in &spec.spec.webhooks {
        let events: Vec<&str> = w.events.iter().map(|e| e.as_str()).collect();
        println!(
            "webhook   {} {} [{}]",
            w.name,
            w.describe_url(),
            events.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
