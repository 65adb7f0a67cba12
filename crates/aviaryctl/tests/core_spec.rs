//! Rollout spec parsing and validation: every error carries its field path.

mod core_common;

use aviaryctl::core::spec::{Event, HumanDuration, RolloutSpec};
use aviaryctl::error::Error;
use core_common::{spec, SPEC};

fn errors(yaml: &str) -> Vec<String> {
    match RolloutSpec::parse(yaml) {
        Ok(_) => Vec::new(),
        Err(Error::Spec { errors }) => errors.0.iter().map(ToString::to_string).collect(),
        Err(e) => vec![format!("unexpected error kind: {e}")],
    }
}

fn with(from: &str, to: &str) -> Vec<String> {
    assert!(SPEC.contains(from), "fixture has no `{from}`");
    errors(&SPEC.replacen(from, to, 1))
}

#[test]
fn fixture_is_valid_and_defaults_apply() {
    let s = spec();
    assert_eq!(s.service(), "recsys");
    assert_eq!(s.schedule_bps(), vec![100, 500, 1000, 2500, 5000]);
    assert_eq!(s.interval_ms(), 30_000);
    assert_eq!(s.poll_interval_ms(), 1_000);
    assert_eq!(s.spec.analysis.alpha, 0.01);
    assert_eq!(s.spec.config.filter_name, "aviary");
    assert!(s.validate().is_empty());
}

#[test]
fn durations_parse_and_print() {
    for (text, ms) in [
        ("500ms", 500),
        ("30s", 30_000),
        ("1m", 60_000),
        ("1m30s", 90_000),
        ("2h", 7_200_000),
    ] {
        assert_eq!(HumanDuration::parse(text), Ok(HumanDuration(ms)));
        assert_eq!(HumanDuration(ms).to_string(), text);
    }
    for bad in ["", "30", "3x", "s", "1.5s", "-1s"] {
        assert!(HumanDuration::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn structural_errors_name_the_field() {
    let e = with("threshold: 2", "threshold: 2\n    thresold: 3");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("spec.analysis.thresold: unknown field `thresold`"),
        "{e:?}"
    );
    let e = with("interval: 30s", "interval: 30x");
    assert!(
        e[0].starts_with("spec.analysis.interval: `30x` is not a duration"),
        "{e:?}"
    );
    let e = with("interval: 30s", "interval: 30");
    assert!(
        e[0].starts_with("spec.analysis.interval:") && e[0].contains("no unit"),
        "{e:?}"
    );
}

#[test]
fn plugin_config_errors_are_located_inside_it() {
    let e = with("- {name: v2, weight: 0}", "- {name: v2, weight: 5}");
    assert!(
        e.iter()
            .any(|m| m.starts_with("spec.config.pluginConfig.versions: weights add up to 10005")),
        "{e:?}"
    );
    let e = with("- {name: v2, weight: 0}", "- {name: v2, wieght: 0}");
    assert!(
        e[0].starts_with("spec.config.pluginConfig.versions[1].wieght: unknown field"),
        "{e:?}"
    );
    let e = errors("apiVersion: [");
    assert!(
        e[0].starts_with("not valid YAML:") && e[0].contains("line"),
        "{e:?}"
    );
}

#[test]
fn validate_reports_every_problem_with_its_path() {
    let yaml = SPEC
        .replace("canary: v2", "canary: v3")
        .replace("threshold: 2", "threshold: 0\n    stepWeights: [1, 10, 5, 100, 120]")
        .replace("fastInterval: 1s", "fastInterval: 1m")
        .replace("max: 0.2}", "max: 0.2}\n      custom: [{name: ctr, query: 'sum(x)'}]")
        .replace("maxRelative: 2", "maxRelative: 0.5")
        .replace("envoyAdmin: [\"http://127.0.0.1:9901\"]", "envoyAdmin: [\"127.0.0.1:9901\"]")
        + "  webhooks:\n    - {name: slack, url: 'ftp://x', events: [start, confirm-promotion]}\n    - {name: slack, url: 'http://h/x', events: []}\n";
    let e = errors(&yaml);
    let expect = [
        "spec.canary: `v3` is not a version in pluginConfig.versions",
        "spec.metrics.envoyAdmin[0]: `127.0.0.1:9901` is not an http(s) URL",
        "spec.analysis.fastInterval: must not exceed interval",
        "spec.analysis.threshold: must be at least 1",
        "spec.analysis.stepWeights[2]: weights must increase",
        "spec.analysis.stepWeights[4]: 120 is not a percentage",
        "spec.analysis.gates.errorRate.maxRelative: must be a ratio of at least 1",
        "spec.analysis.gates.custom[0]: give `min` and/or `max`",
        "spec.analysis.gates.custom[0].query: custom queries need spec.metrics.prometheus",
        "spec.webhooks[0].url: `ftp://x` is not an http(s) URL",
        "spec.webhooks[1].name: `slack` is used twice",
        "spec.webhooks[1].events: list at least one event",
    ];
    for x in expect {
        assert!(
            e.iter().any(|m| m.starts_with(x)),
            "missing `{x}` in {e:#?}"
        );
    }
    assert_eq!(e.len(), expect.len(), "{e:#?}");
}

#[test]
fn schedule_from_step_weight_and_max_weight() {
    let s = core_common::spec_with(
        "threshold: 2",
        "threshold: 2\n    stepWeight: 20\n    maxWeight: 60",
    );
    assert_eq!(s.schedule_bps(), vec![2000, 4000, 6000]);
    let e = with(
        "threshold: 2",
        "threshold: 2\n    stepWeight: 20\n    stepWeights: [1]",
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("spec.analysis.stepWeights: give either")),
        "{e:?}"
    );
}

#[test]
fn shadow_phase_requires_a_canary_shadow_target_with_compare() {
    let e = with("threshold: 2", "threshold: 2\n    shadow: {duration: 1m}")
        .into_iter()
        .filter(|m| m.contains("shadow"))
        .count();
    assert_eq!(e, 0, "the fixture mirrors to v2 with compare");
    let e = errors(
        &SPEC
            .replace("threshold: 2", "threshold: 2\n    shadow: {duration: 1m}")
            .replace(
                "{version: v2, cluster: recsys-v2}",
                "{version: v9, cluster: recsys-v9}",
            ),
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("spec.analysis.shadow: the shadow phase needs")),
        "{e:?}"
    );
}

#[test]
fn error_gate_is_on_by_default_and_can_be_disabled() {
    let s = core_common::spec_with("errorRate: {max: 0.01, maxRelative: 2}", "errorRate: null");
    assert!(s.spec.analysis.gates.error_rate.is_none());
    let yaml = SPEC.replace("      errorRate: {max: 0.01, maxRelative: 2}\n", "");
    let s = core_common::parse(&yaml);
    assert_eq!(
        s.spec
            .analysis
            .gates
            .error_rate
            .and_then(|g| g.max_relative),
        Some(2.0)
    );
}

#[test]
fn render_config_moves_weight_and_pins_baseline_on_rollback() {
    let s = spec();
    let c = s.render_config(500, false, false);
    assert_eq!((c.weight_bps(0), c.weight_bps(1)), (Some(9500), Some(500)));
    assert!(c.kill_switch.is_none() && c.shadow.is_none());
    let c = s.render_config(0, false, true);
    assert!(c.shadow.is_some());
    let c = s.render_config(2500, true, true);
    assert_eq!((c.weight_bps(0), c.weight_bps(1)), (Some(10000), Some(0)));
    assert_eq!(c.kill_switch.as_deref(), Some("stable"));
    assert!(c.shadow.is_none());
    let raw = c.to_json();
    assert!(aviary_contract::config::parse_and_compile(raw.as_bytes()).is_ok());
}

#[test]
fn webhook_events_default_to_notifications() {
    let s = core_common::parse(&format!(
        "{SPEC}  webhooks:\n    - {{name: ops, url: 'http://hooks/ops'}}\n"
    ));
    assert_eq!(s.spec.webhooks[0].events, Event::NOTIFICATIONS.to_vec());
    assert!(!s.has_webhook(Event::ConfirmPromotion));
    assert_eq!(s.spec.webhooks[0].retries, 3);
    assert_eq!(s.spec.webhooks[0].timeout, HumanDuration(5_000));
}

#[test]
fn spec_round_trips_through_yaml() {
    let s = spec();
    let text = serde_yaml::to_string(&s).unwrap_or_default();
    let back = RolloutSpec::parse(&text);
    assert!(back.as_ref().is_ok_and(|b| *b == s), "{back:?}\n{text}");
}
