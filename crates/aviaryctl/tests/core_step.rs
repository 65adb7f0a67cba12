//! Transitions of the pure step function: no I/O, simulated time.

mod core_common;

use aviaryctl::core::gates::Verdict;
use aviaryctl::core::observe::Snapshot;
use aviaryctl::core::spec::{Event, RolloutSpec};
use aviaryctl::core::step::{
    Action, Applied, Command, DecisionKind, Input, Observation, Outcome, Phase, RolloutState,
};
use core_common::{done, parse, spec, spec_with, step, Behaviour, Tracked, World, SPEC};

/// Steps `state` with reads of `world` every `poll_ms` until `until_ms` or the end; returns
/// every action batch with its time.
fn drive(
    spec: &RolloutSpec,
    world: &mut World,
    mut state: Tracked,
    poll_ms: u64,
    until_ms: u64,
) -> (Tracked, Vec<(u64, Vec<Action>)>) {
    let mut log = Vec::new();
    while world.now_ms < until_ms && !state.phase.is_terminal() {
        world.advance(poll_ms);
        let (next, actions) = step(
            spec,
            state,
            &Observation::of(world.snapshot()),
            world.now_ms,
        );
        state = next;
        world.apply(&actions);
        log.push((world.now_ms, actions));
    }
    (state, log)
}

fn start(spec: &RolloutSpec, world: &mut World) -> (Tracked, Vec<Action>) {
    let (state, actions) = step(spec, Tracked::new(spec, 0), &Input::Start, 0);
    world.apply(&actions);
    (state, actions)
}

fn writes(actions: &[Action]) -> Vec<(u32, bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::WriteConfig(w) => Some((w.canary_bps, w.rollback)),
            _ => None,
        })
        .collect()
}

fn write_numbers(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::WriteConfig(w) => Some(w.write),
            _ => None,
        })
        .collect()
}

fn kinds(state: &Tracked) -> Vec<DecisionKind> {
    state.history.decisions.iter().map(|d| d.kind).collect()
}

fn healthy(seed: u64, rps: f64) -> World {
    World::new(seed, rps, Behaviour::healthy(), Behaviour::healthy())
}

#[test]
fn promotes_through_the_schedule_on_good_data() {
    let spec = spec();
    let mut world = healthy(1, 200.0);
    let (state, actions) = start(&spec, &mut world);
    assert_eq!(writes(&actions), vec![(100, false)]);
    assert_eq!(state.phase, Phase::Canary { step: 0 });
    let (state, log) = drive(&spec, &mut world, state, 1_000, 3_600_000);
    assert_eq!(state.phase, Phase::Promoted);
    assert_eq!(state.outcome, Some(Outcome::Promoted));
    let weights: Vec<u32> = state
        .history
        .timeline
        .iter()
        .map(|t| t.canary_bps)
        .collect();
    assert_eq!(weights, vec![100, 500, 1000, 2500, 5000, 10000]);
    let last = &log.last().map(|l| l.1.clone()).unwrap_or_default();
    let Some(Action::WriteConfig(w)) = last.iter().find(|a| matches!(a, Action::WriteConfig(_)))
    else {
        panic!("no final write");
    };
    assert_eq!(
        (w.config.weight_bps(0), w.config.weight_bps(1)),
        (Some(0), Some(10000))
    );
    assert!(w.config.kill_switch.is_none());
    assert_eq!(done(last), Some(Outcome::Promoted));
    let judged = state.history.decisions.iter().filter(|d| d.at_ms > 0);
    for d in judged.filter(|d| matches!(d.kind, DecisionKind::Advance | DecisionKind::Promote)) {
        assert!(
            !d.gates.is_empty() && d.gates.iter().all(|g| g.verdict == Verdict::Pass),
            "{d:?}"
        );
        assert!(d.metrics.is_some());
    }
    // Each step baked at least one interval.
    for s in &state.history.stages {
        if let Some(end) = s.ended_ms {
            assert!(end - s.started_ms >= 30_000, "{s:?}");
        }
    }
    // Persist precedes the write on every weight increase.
    for (_, actions) in &log {
        if let Some(w) = actions
            .iter()
            .position(|a| matches!(a, Action::WriteConfig(_)))
        {
            assert!(actions[..w].contains(&Action::Persist), "{actions:?}");
        }
    }
}

#[test]
fn insufficient_samples_hold_and_never_promote_then_max_hold_rolls_back() {
    let spec = spec();
    // 1 rps: the 1% step sees ~0.3 canary requests per interval.
    let mut world = healthy(2, 1.0);
    let (state, _) = start(&spec, &mut world);
    let (state, log) = drive(&spec, &mut world, state, 1_000, 9 * 60_000);
    assert_eq!(state.phase, Phase::Canary { step: 0 });
    assert!(log.iter().all(|(_, a)| writes(a).is_empty()));
    let holds: Vec<_> = state
        .history
        .decisions
        .iter()
        .filter(|d| d.kind == DecisionKind::Hold)
        .collect();
    assert!(holds.len() >= 16);
    for h in holds {
        let samples = h.gates.iter().find(|g| g.gate == "samples");
        assert_eq!(samples.map(|g| g.verdict), Some(Verdict::Inconclusive));
    }
    let (state, log) = drive(&spec, &mut world, state, 1_000, 20 * 60_000);
    assert_eq!(state.outcome, Some(Outcome::RolledBack));
    let last = state
        .history
        .decisions
        .last()
        .map(|d| d.reason.clone())
        .unwrap_or_default();
    assert!(last.contains("maxHold 10m"), "{last}");
    // Held from the first inconclusive check (30 s) for 10 minutes.
    assert_eq!(log.last().map(|l| l.0), Some(30_000 + 600_000));
}

#[test]
fn max_hold_alert_keeps_holding_and_alerts_every_max_hold() {
    let spec = spec_with("maxHold: 10m", "maxHold: 10m\n    onMaxHold: alert");
    let mut world = healthy(3, 1.0);
    let (state, _) = start(&spec, &mut world);
    let (state, log) = drive(&spec, &mut world, state, 1_000, 25 * 60_000);
    assert_eq!(state.phase, Phase::Canary { step: 0 });
    let alerts: Vec<u64> = log
        .iter()
        .filter(|(_, a)| {
            a.iter()
                .any(|x| matches!(x, Action::Notify(n) if n.event == Event::Alert))
        })
        .map(|l| l.0)
        .collect();
    assert_eq!(alerts, vec![630_000, 1_230_000]);
}

#[test]
fn source_errors_hold_and_do_not_promote() {
    let spec = spec();
    let mut world = healthy(4, 200.0);
    let (mut state, _) = start(&spec, &mut world);
    for t in 1..=120u64 {
        let (next, actions) = step(
            &spec,
            state,
            &Observation::failed("connection refused"),
            t * 1000,
        );
        state = next;
        assert!(writes(&actions).is_empty());
    }
    assert_eq!(state.phase, Phase::Canary { step: 0 });
    assert_eq!(state.source_errors, 120);
    let d = state.history.decisions.last().cloned();
    assert_eq!(d.as_ref().map(|d| d.kind), Some(DecisionKind::Hold));
    assert!(d.is_some_and(|d| d.gates[0].reason.contains("connection refused")));
}

#[test]
fn repeated_gate_failures_roll_back_at_the_threshold() {
    // The threshold path: with the latency fast track on, a 3× slower canary is rolled back
    // by the share test before the first check (see core_sim's fast-track tests).
    let spec = spec_with(
        "latency: {p95: {maxMs: 400, maxRegression: 1.2}}",
        "latency: {p95: {maxMs: 400, maxRegression: 1.2}, fastTrack: false}",
    );
    let slow = Behaviour {
        median_ms: 120.0,
        ..Behaviour::healthy()
    };
    let mut world = World::new(5, 1000.0, Behaviour::healthy(), slow);
    let (state, _) = start(&spec, &mut world);
    let (state, log) = drive(&spec, &mut world, state, 1_000, 3_600_000);
    assert_eq!(state.outcome, Some(Outcome::RolledBack));
    let k = kinds(&state);
    assert_eq!(
        &k[k.len() - 2..],
        &[DecisionKind::Fail, DecisionKind::Rollback]
    );
    let fail = &state.history.decisions[state.history.decisions.len() - 2];
    assert_eq!(fail.failed_checks, 1);
    assert!(fail
        .gates
        .iter()
        .any(|g| g.gate == "latency.p95.regression" && g.verdict == Verdict::Fail));
    // The failed check restarted the window: the rollback judged fresh data.
    let rb = &state.history.decisions[state.history.decisions.len() - 1];
    assert!(rb.window_ms.is_some_and(|w| w <= 31_000));
    let (_, actions) = log.last().cloned().unwrap_or_default();
    let Some(Action::WriteConfig(w)) = actions.first() else {
        panic!("rollback must write first: {actions:?}");
    };
    assert!(w.rollback);
    assert_eq!(w.config.kill_switch.as_deref(), Some("stable"));
    assert_eq!(
        (w.config.weight_bps(0), w.config.weight_bps(1)),
        (Some(10000), Some(0))
    );
}

#[test]
fn fast_track_rolls_back_at_once_and_writes_first() {
    let spec = spec();
    let bad = Behaviour {
        error_rate: 0.5,
        ..Behaviour::healthy()
    };
    let mut world = World::new(6, 500.0, Behaviour::healthy(), bad);
    let (state, _) = start(&spec, &mut world);
    let (state, log) = drive(&spec, &mut world, state, 1_000, 60_000);
    assert_eq!(state.outcome, Some(Outcome::RolledBack));
    let (at, actions) = log.last().cloned().unwrap_or_default();
    assert!(
        at < 30_000,
        "fast track acted at {at} ms, before the first bake interval"
    );
    assert!(
        matches!(&actions[0], Action::WriteConfig(w) if w.rollback && w.config.kill_switch.as_deref() == Some("stable"))
    );
    assert_eq!(actions[1], Action::Persist);
    assert!(matches!(&actions[2], Action::Notify(n) if n.event == Event::Rollback));
    assert_eq!(actions[3], Action::Done(Outcome::RolledBack));
    assert_eq!(
        state.history.decisions.last().map(|d| d.kind),
        Some(DecisionKind::FastRollback)
    );
    assert!(state
        .history
        .timeline
        .last()
        .is_some_and(|t| t.kill_switch && t.canary_bps == 0));
}

#[test]
fn abort_is_an_instant_rollback() {
    let spec = spec();
    let mut world = healthy(7, 1000.0);
    let (state, _) = start(&spec, &mut world);
    let (state, _) = drive(&spec, &mut world, state, 1_000, 95_000);
    assert!(matches!(state.phase, Phase::Canary { step } if step >= 1));
    let (state, actions) = step(
        &spec,
        state,
        &Input::Command(Command::Abort {
            reason: Some("bad demo".into()),
        }),
        95_500,
    );
    assert!(matches!(&actions[0], Action::WriteConfig(w) if w.rollback && w.canary_bps == 0));
    assert_eq!(state.phase, Phase::Aborted);
    assert_eq!(done(&actions), Some(Outcome::Aborted));
    assert!(state
        .history
        .decisions
        .last()
        .is_some_and(|d| d.reason.contains("bad demo")));
    let (_, again) = step(
        &spec,
        state,
        &Input::Command(Command::Abort { reason: None }),
        96_000,
    );
    assert!(again.iter().any(|a| matches!(a, Action::Rejected { .. })));
}

#[test]
fn pause_freezes_weights_but_keeps_observing_and_resume_continues() {
    let spec = spec();
    let mut world = healthy(8, 1000.0);
    let (state, _) = start(&spec, &mut world);
    let (state, actions) = step(&spec, state, &Input::Command(Command::Pause), 0);
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Notify(n) if n.event == Event::Pause)));
    let (state, log) = drive(&spec, &mut world, state, 1_000, 300_000);
    assert_eq!(state.phase, Phase::Canary { step: 0 });
    assert!(log.iter().all(|(_, a)| writes(a).is_empty()));
    let last = state.history.decisions.last().cloned();
    assert!(last.is_some_and(|d| d.kind == DecisionKind::Hold && d.reason.contains("paused")));
    let (state, _) = step(&spec, state, &Input::Command(Command::Resume), 300_500);
    let (state, _) = drive(&spec, &mut world, state, 1_000, 331_000);
    assert_eq!(state.phase, Phase::Canary { step: 1 });
}

#[test]
fn breach_while_paused_alerts_once_without_rollback() {
    let spec = spec();
    let bad = Behaviour {
        error_rate: 0.5,
        ..Behaviour::healthy()
    };
    let mut world = World::new(9, 500.0, Behaviour::healthy(), bad);
    let (state, _) = start(&spec, &mut world);
    let (state, _) = step(&spec, state, &Input::Command(Command::Pause), 0);
    let (state, log) = drive(&spec, &mut world, state, 1_000, 20_000);
    assert_eq!(state.phase, Phase::Canary { step: 0 });
    let alerts = log
        .iter()
        .filter(|(_, a)| {
            a.iter()
                .any(|x| matches!(x, Action::Notify(n) if n.event == Event::Alert))
        })
        .count();
    assert_eq!(alerts, 1);
    let (state, _) = step(&spec, state, &Input::Command(Command::Resume), 20_500);
    let (state, _) = drive(&spec, &mut world, state, 1_000, 22_000);
    assert_eq!(state.outcome, Some(Outcome::RolledBack));
}

#[test]
fn manual_promote_skips_a_step_or_goes_to_full() {
    let spec = spec();
    let mut world = healthy(10, 200.0);
    let (state, _) = start(&spec, &mut world);
    let (state, actions) = step(
        &spec,
        state,
        &Input::Command(Command::Promote { to_full: false }),
        1_000,
    );
    assert_eq!(state.phase, Phase::Canary { step: 1 });
    assert_eq!(writes(&actions), vec![(500, false)]);
    assert_eq!(
        state.history.decisions.last().map(|d| d.kind),
        Some(DecisionKind::ManualPromote)
    );
    let (state, actions) = step(
        &spec,
        state,
        &Input::Command(Command::Promote { to_full: true }),
        2_000,
    );
    assert_eq!(state.phase, Phase::Promoted);
    assert_eq!(writes(&actions), vec![(10000, false)]);
    assert_eq!(done(&actions), Some(Outcome::Promoted));
    let (_, actions) = step(
        &spec,
        state,
        &Input::Command(Command::Promote { to_full: true }),
        3_000,
    );
    assert!(actions.iter().any(|a| matches!(a, Action::Rejected { .. })));
}

#[test]
fn restart_from_serialized_state_decides_identically() {
    let spec = spec();
    let mut world = healthy(11, 1000.0);
    let (state, _) = start(&spec, &mut world);
    let (state, _) = drive(&spec, &mut world, state, 1_000, 77_500);
    let json = serde_json::to_string(&state.state).unwrap_or_default();
    let restored: RolloutState = match serde_json::from_str(&json) {
        Ok(s) => s,
        Err(e) => panic!("state does not round-trip: {e}"),
    };
    assert_eq!(restored, state.state);
    // The restarted driver re-asserts the current weight under the same write number: no
    // jump, and the proxies' confirmation of it refers to the write they already have.
    let (restored, actions) = step(&spec, Tracked::from(restored), &Input::Start, 78_000);
    assert_eq!(writes(&actions), vec![(state.canary_bps, false)]);
    assert_eq!(write_numbers(&actions), vec![state.writes]);
    assert_eq!(restored.phase, state.phase);
    // Same inputs from here on give the same actions and records (numbered one later: the
    // restart's own decision).
    let h = &state.history;
    let (from_a, from_b) = (h.decisions.len(), restored.history.decisions.len());
    let (timeline_a, stage_a) = (h.timeline.len(), h.stages.len() - 1);
    let mut a = state;
    let mut b = restored;
    for t in 0..200u64 {
        world.advance(1_000);
        let input = Observation::of(world.snapshot());
        let (na, xa) = step(&spec, a, &input, world.now_ms);
        let (nb, xb) = step(&spec, b, &input, world.now_ms);
        assert_eq!(xa, xb, "tick {t}");
        world.apply(&xa);
        a = na;
        b = nb;
    }
    assert_eq!(a.phase, b.phase);
    assert_eq!(a.phase, Phase::Promoted);
    assert_eq!(a.records + 1, b.records);
    let (ha, hb) = (&a.history, &b.history);
    assert!(ha.decisions.len() >= from_a + 3);
    assert_eq!(ha.decisions[from_a..], hb.decisions[from_b..]);
    assert!(ha.timeline.len() >= timeline_a + 3);
    assert_eq!(ha.timeline[timeline_a..], hb.timeline[..]);
    // The stage open at the restart ends with the same summary in both.
    assert_eq!(ha.stages[stage_a..], hb.stages[..]);
}

#[test]
fn restart_keeps_bake_progress() {
    let spec = spec();
    let mut world = healthy(12, 1000.0);
    let (state, _) = start(&spec, &mut world);
    let (state, _) = drive(&spec, &mut world, state, 1_000, 20_000);
    let json = serde_json::to_vec(&state.state).unwrap_or_default();
    let restored: RolloutState =
        serde_json::from_slice(&json).unwrap_or_else(|_| RolloutState::new(&spec, 0));
    let (restored, _) = step(&spec, Tracked::from(restored), &Input::Start, 25_000);
    // The window started before the restart, so the step advances at 30 s as planned.
    let (state, _) = drive(&spec, &mut world, restored, 1_000, 31_000);
    assert_eq!(state.phase, Phase::Canary { step: 1 });
}

#[test]
fn confirmation_gate_must_answer_yes_before_a_step() {
    let spec = parse(&format!(
        "{SPEC}  webhooks:\n    - {{name: approver, url: 'http://hooks/ok', events: [confirm-traffic-increase]}}\n"
    ));
    let mut world = healthy(13, 1000.0);
    let (state, actions) = step(&spec, Tracked::new(&spec, 0), &Input::Start, 0);
    // Even the first live step needs a yes.
    assert!(writes(&actions).is_empty());
    assert!(actions.iter().any(
        |a| matches!(a, Action::AskConfirmation(n) if n.event == Event::ConfirmTrafficIncrease)
    ));
    let (state, actions) = step(
        &spec,
        state,
        &Input::Confirmation {
            approved: true,
            detail: None,
        },
        10,
    );
    assert_eq!(writes(&actions), vec![(100, false)]);
    world.apply(&actions);
    let (state, log) = drive(&spec, &mut world, state, 1_000, 31_000);
    let asked = log
        .iter()
        .any(|(_, a)| a.iter().any(|x| matches!(x, Action::AskConfirmation(_))));
    assert!(asked);
    assert_eq!(state.phase, Phase::Canary { step: 0 });
    let (state, actions) = step(
        &spec,
        state,
        &Input::Confirmation {
            approved: false,
            detail: Some("freeze".into()),
        },
        31_500,
    );
    assert!(writes(&actions).is_empty());
    assert_eq!(
        state.history.decisions.last().map(|d| d.kind),
        Some(DecisionKind::Denied)
    );
    let (state, log) = drive(&spec, &mut world, state, 1_000, 62_000);
    assert!(log
        .iter()
        .any(|(_, a)| a.iter().any(|x| matches!(x, Action::AskConfirmation(_)))));
    let (state, actions) = step(
        &spec,
        state,
        &Input::Confirmation {
            approved: true,
            detail: None,
        },
        62_500,
    );
    assert_eq!(writes(&actions), vec![(500, false)]);
    assert_eq!(state.phase, Phase::Canary { step: 1 });
}

#[test]
fn counter_reset_restarts_the_window_without_rollback() {
    let spec = spec();
    let mut world = healthy(14, 200.0);
    let (state, _) = start(&spec, &mut world);
    let (state, _) = drive(&spec, &mut world, state, 1_000, 10_000);
    let reset = Snapshot {
        at_ms: 11_000,
        ..Snapshot::default()
    };
    let mut reset = reset;
    for (name, v) in world.snapshot().versions {
        let mut v = v;
        v.requests /= 2;
        v.responses.values_mut().for_each(|c| *c /= 2);
        reset.versions.insert(name, v);
    }
    let (state, actions) = step(&spec, state, &Observation::of(reset), 11_000);
    assert!(writes(&actions).is_empty());
    assert_eq!(
        state.history.decisions.last().map(|d| d.kind),
        Some(DecisionKind::CounterReset)
    );
    assert_eq!(state.window_started_ms, 11_000);
    assert_eq!(state.phase, Phase::Canary { step: 0 });
}

#[test]
fn shadow_phase_gates_live_traffic_on_agreement() {
    let spec = spec_with(
        "threshold: 2",
        "threshold: 2\n    shadow: {duration: 1m, minComparisons: 500, minAgreement: 0.98}",
    );
    let mut world = healthy(15, 100.0);
    let (state, actions) = start(&spec, &mut world);
    let Some(Action::WriteConfig(w)) = actions.iter().find(|a| matches!(a, Action::WriteConfig(_)))
    else {
        panic!("no write");
    };
    assert_eq!(w.canary_bps, 0);
    assert!(w
        .config
        .shadow
        .as_ref()
        .is_some_and(|s| s.targets.iter().any(|t| t.version == "v2")));
    assert_eq!(state.phase, Phase::Shadow);
    let (state, _) = drive(&spec, &mut world, state, 1_000, 59_000);
    assert_eq!(state.phase, Phase::Shadow, "the phase lasts at least 1m");
    let (state, log) = drive(&spec, &mut world, state, 1_000, 91_000);
    assert_eq!(state.phase, Phase::Canary { step: 0 });
    let write = log
        .iter()
        .flat_map(|(_, a)| a.iter())
        .find_map(|a| match a {
            Action::WriteConfig(w) => Some(w.clone()),
            _ => None,
        });
    assert!(write.is_some_and(|w| w.canary_bps == 100 && w.config.shadow.is_none()));

    let disagreeing = Behaviour {
        agreement: 0.9,
        ..Behaviour::healthy()
    };
    let mut world = World::new(16, 100.0, Behaviour::healthy(), disagreeing);
    let (state, _) = start(&spec, &mut world);
    let (state, _) = drive(&spec, &mut world, state, 1_000, 300_000);
    assert_eq!(state.outcome, Some(Outcome::RolledBack));
    assert!(state.history.decisions.iter().any(|d| d
        .gates
        .iter()
        .any(|g| g.gate == "shadowAgreement" && g.verdict == Verdict::Fail)));
}

#[test]
fn inputs_after_the_end_change_nothing_but_start_reasserts() {
    let spec = spec();
    let mut world = healthy(17, 200.0);
    let (state, _) = start(&spec, &mut world);
    let (state, _) = step(
        &spec,
        state,
        &Input::Command(Command::Abort { reason: None }),
        1_000,
    );
    let before = state.clone();
    let (state, actions) = step(&spec, state, &Observation::of(world.snapshot()), 2_000);
    assert!(actions.is_empty());
    assert_eq!(state, before);
    let (_, actions) = step(&spec, state, &Input::Start, 3_000);
    assert_eq!(writes(&actions), vec![(0, true)]);
    assert_eq!(done(&actions), Some(Outcome::Aborted));
}

#[test]
fn the_bake_window_starts_when_the_proxies_applied_the_write() {
    let spec = spec();
    let mut world = healthy(18, 1000.0);
    let (state, actions) = start(&spec, &mut world);
    assert_eq!(write_numbers(&actions), vec![1]);
    let (state, _) = drive(&spec, &mut world, state, 1_000, 1_000);
    // The first read (at 1 s) opened the window; the proxies confirm the write at 1.5 s, so
    // that read may hold traffic at the old weight: the window opens again after it.
    let (state, actions) = step(&spec, state, &Applied::input(1, 1_500, Some(42)), 1_510);
    assert_eq!(actions, vec![Action::Persist]);
    assert_eq!(state.stage_applied_ms, Some(1_500));
    assert_eq!(state.window_start, None);
    assert_eq!(
        (state.window_started_ms, state.last_check_ms),
        (1_500, 1_500)
    );
    // A repeated or unknown confirmation changes nothing and records nothing.
    let mut state = state;
    for write in [1, 7, 0] {
        let before = state.clone();
        let (after, actions) = step(&spec, state, &Applied::input(write, 1_600, None), 1_700);
        assert!(actions.is_empty(), "{actions:?}");
        assert_eq!(after, before);
        state = after;
    }
    // The first check comes a full interval after the write took effect, on reads from
    // after it.
    let (state, _) = drive(&spec, &mut world, state, 1_000, 31_000);
    assert_eq!(
        state.phase,
        Phase::Canary { step: 0 },
        "not 30 s since 1.5 s"
    );
    let (state, _) = drive(&spec, &mut world, state, 1_000, 32_000);
    assert_eq!(state.phase, Phase::Canary { step: 1 });
    let advance = state.history.decisions.last().cloned();
    assert!(
        advance.is_some_and(|d| d.kind == DecisionKind::Advance && d.window_ms == Some(30_000)),
        "judged reads 2 s → 32 s"
    );
    // The records say when each write was issued and when it took effect.
    let h = &state.history;
    assert_eq!(h.timeline[0].write, 1);
    assert_eq!(
        (h.timeline[0].at_ms, h.timeline[0].applied_ms),
        (0, Some(1_500))
    );
    assert_eq!((h.timeline[1].write, h.timeline[1].applied_ms), (2, None));
    assert_eq!(h.stages[0].applied_ms, Some(1_500));
    assert_eq!(h.stages[0].ended_ms, Some(32_000));
    assert_eq!(h.applied.len(), 1);
    assert_eq!(h.applied[0].digest48, Some(42));
}

#[test]
fn a_confirmation_after_the_end_is_recorded_only() {
    let spec = spec();
    let mut world = healthy(19, 200.0);
    let (state, _) = start(&spec, &mut world);
    let abort = Input::Command(Command::Abort { reason: None });
    let (state, actions) = step(&spec, state, &abort, 1_000);
    assert_eq!(write_numbers(&actions), vec![2]);
    let before = state.state.clone();
    let (state, actions) = step(&spec, state, &Applied::input(2, 1_012, None), 1_020);
    assert_eq!(actions, vec![Action::Persist]);
    assert_eq!(state.phase, Phase::Aborted);
    assert_eq!(state.applied_write, 2);
    assert_eq!(state.records, before.records + 1);
    let rollback = state.history.timeline.last().cloned();
    assert!(rollback.is_some_and(|p| p.kill_switch && p.applied_ms == Some(1_012)));
    // The first write's confirmation, arriving late, is older news: ignored.
    let (_, actions) = step(&spec, state, &Applied::input(1, 1_030, None), 1_040);
    assert!(actions.is_empty());
}

#[test]
fn the_state_keeps_no_history() {
    let spec = spec();
    // 1 rps: every check holds, so decisions pile up.
    let mut world = healthy(20, 1.0);
    let (state, _) = start(&spec, &mut world);
    let (early, _) = drive(&spec, &mut world, state, 1_000, 60_000);
    let early_len = serde_json::to_string(&early.state).map_or(0, |j| j.len());
    let (late, _) = drive(&spec, &mut world, early, 1_000, 9 * 60_000);
    assert!(late.history.decisions.len() >= 16);
    assert_eq!(late.records as usize, count_records(&late));
    let json = serde_json::to_value(&late.state).unwrap_or_default();
    for key in ["decisions", "timeline", "stages"] {
        assert!(json.get(key).is_none(), "{key} in the state");
    }
    let late_len = json.to_string().len();
    assert!(
        late_len < early_len + 200,
        "the state grew from {early_len} to {late_len} bytes"
    );
}

/// Records the history folds (one per decision, weight point, stage start or end, apply).
fn count_records(t: &Tracked) -> usize {
    let h = &t.history;
    let ended = h.stages.iter().filter(|s| s.ended_ms.is_some()).count();
    h.decisions.len() + h.timeline.len() + h.stages.len() + ended + h.applied.len()
}
