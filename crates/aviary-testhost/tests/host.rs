//! Tests of the host itself, against the hand-written ABI fixture in
//! `fixtures/fixture.wat` (see its header for what each `x-op` does).

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;
use aviary_testhost::prelude::*;
use aviary_testhost::{LogSource, MetricKind, Val};

fn fixture() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(
        || match wat::parse_str(include_str!("fixtures/fixture.wat")) {
            Ok(bytes) => bytes,
            Err(e) => panic!("fixture.wat does not compile: {e}"),
        },
    )
}

fn host() -> Result<Host> {
    Ok(Host::from_bytes(fixture())?.with_cluster("backend"))
}

fn configured() -> Result<Host> {
    let host = host()?;
    host.configure("")?.expect_ok()?;
    Ok(host)
}

const GET: [(&str, &str); 3] = [
    (":method", "GET"),
    (":path", "/predict"),
    (":authority", "svc"),
];

fn with_op(op: &str) -> Vec<(&str, &str)> {
    let mut headers = GET.to_vec();
    headers.push(("x-op", op));
    headers
}

#[test]
fn vm_start_runs_initialize_and_logs() -> Result<()> {
    let host = host()?;
    assert!(host
        .exports()
        .iter()
        .any(|e| e == "proxy_abi_version_0_2_1"));
    assert_eq!(
        host.unimplemented_imports(),
        ["env.proxy_not_a_real_function"]
    );
    host.start_vm()?;
    assert_eq!(
        host.call_export(0, "fixture_initialized", &[])?[0].unwrap_i32(),
        1
    );
    host.expect_log_containing(LogLevel::Info, "vm start")?;
    assert_eq!(host.logs()[0].context_id, host.root_context_id());
    assert!(host.start_vm().is_err(), "starting twice is a test bug");
    Ok(())
}

#[test]
fn request_headers_are_read_and_rewritten() -> Result<()> {
    let host = configured()?;
    let s = host.http_stream()?;
    let mut headers = GET.to_vec();
    headers.push(("X-Remove-Me", "gone"));
    s.request_headers(&headers, true).expect_continue()?;

    assert_eq!(
        s.request_header("x-fixture-path").as_deref(),
        Some("/predict")
    );
    assert_eq!(s.request_header("X-Added").as_deref(), Some("1"));
    assert_eq!(s.request_header("x-remove-me"), None);
    assert_eq!(s.request_flow(), FlowState::Flowing);

    s.response_headers(&[(":status", "200")], true)
        .expect_continue()?;
    assert_eq!(s.response_header("x-served-by").as_deref(), Some("fixture"));

    s.finish()?;
    assert!(s.is_deleted());
    assert!(s.logs().iter().any(|l| l.message == "on_log"));
    assert!(
        s.request_headers(&GET, true).is_err(),
        "a deleted stream cannot be driven"
    );
    host.verify()
}

#[test]
fn header_map_pairs_round_trip_through_the_guest() -> Result<()> {
    let host = configured()?;
    let s = host.http_stream()?;
    s.request_headers(&with_op("m"), true).expect_continue()?;
    assert_eq!(s.request_trailer_map(), s.request_header_map());
    assert_eq!(s.request_trailer(":path").as_deref(), Some("/predict"));
    Ok(())
}

#[test]
fn metrics_keep_kinds_values_and_every_sample() -> Result<()> {
    let host = configured()?;
    for latency_ms in [7, 3] {
        let s = host.http_stream()?;
        s.request_headers(&GET, true).expect_continue()?;
        assert_eq!(host.gauge("fixture_inflight"), Some(1));
        host.advance_clock(Duration::from_millis(latency_ms));
        s.response_headers(&[(":status", "200")], true)
            .expect_continue()?;
        s.finish()?;
    }
    assert_eq!(host.counter("fixture_requests_total"), Some(2));
    assert_eq!(host.gauge("fixture_inflight"), Some(0));
    assert_eq!(host.histogram("fixture_latency_ms"), Some(vec![7, 3]));
    assert_eq!(
        host.counter("fixture_latency_ms"),
        None,
        "kinds are kept apart"
    );
    let kinds: Vec<_> = host
        .metrics()
        .into_iter()
        .map(|m| (m.name, m.kind))
        .collect();
    assert!(kinds.contains(&("fixture_ticks_total".into(), MetricKind::Counter)));
    Ok(())
}

#[test]
fn ticks_fire_on_demand_and_with_the_clock() -> Result<()> {
    let host = configured()?;
    assert_eq!(host.tick_period(), Some(Duration::from_secs(1)));
    host.tick()?;
    assert_eq!(host.counter("fixture_ticks_total"), Some(1));
    let before = host.now();
    host.run_for(Duration::from_millis(3500))?;
    assert_eq!(host.counter("fixture_ticks_total"), Some(4));
    assert_eq!(
        host.now().duration_since(before)?,
        Duration::from_millis(3500)
    );
    Ok(())
}

#[test]
fn tick_without_a_period_is_an_error() -> Result<()> {
    let host = host()?;
    host.start_vm()?;
    let err = host.tick().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("tick period"), "{err}");
    Ok(())
}

#[test]
fn local_responses_must_be_expected() -> Result<()> {
    let host = configured()?;
    let s = host.http_stream()?;
    let err = s
        .request_headers(&with_op("d"), true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unexpected local response"), "{err}");
    assert!(err.contains("403 denied nope"), "{err}");

    let host = configured()?;
    host.expect(Category::LocalResponse, 1);
    let s = host.http_stream()?;
    s.request_headers(&with_op("d"), true).expect_pause()?;
    let reply = s.local_response().expect("a local response");
    assert_eq!((reply.status, reply.details.as_str()), (403, "denied"));
    assert_eq!(reply.body_text(), "nope");
    assert_eq!(reply.header("x-fixture"), Some("deny"));
    assert_eq!(reply.grpc_status, -1);
    host.verify()
}

#[test]
fn http_call_is_captured_and_answered() -> Result<()> {
    let host = configured()?;
    host.expect_matching(Category::HttpCall, "backend GET /lookup", 1);
    let s = host.http_stream()?;
    s.request_headers(&with_op("c"), true).expect_pause()?;
    assert_eq!(s.request_header("x-dispatch-status").as_deref(), Some("0"));
    assert_eq!(s.request_flow(), FlowState::Paused);

    let call = host.last_call().expect("a dispatched call");
    assert_eq!(call.upstream, "backend");
    assert_eq!(call.header(":path"), Some("/lookup"));
    assert_eq!(call.header(":authority"), Some("backend"));
    assert_eq!(call.body_text(), "q");
    assert_eq!(call.timeout, Duration::from_millis(500));
    assert_eq!(
        (call.context_id, call.root_context_id),
        (s.id(), host.root_context_id())
    );
    assert_eq!(s.http_calls(), vec![call.clone()]);
    assert_eq!(host.pending_calls().len(), 1);

    host.respond_to_call(call.token, 200, &[("X-Answer", "42")], "body!")?;
    assert_eq!(s.request_header("x-answer").as_deref(), Some("42"));
    assert_eq!(s.request_header("x-body").as_deref(), Some("body!"));
    assert_eq!(
        s.request_flow(),
        FlowState::Flowing,
        "the guest resumed the request"
    );
    assert_eq!(
        host.http_call(call.token).map(|c| c.outcome),
        Some(CallOutcome::Responded { status: Some(200) })
    );
    assert!(
        host.respond_to_call(call.token, 200, &[], "").is_err(),
        "answered twice"
    );
    assert!(host.fail_call(999).is_err(), "unknown token");
    host.verify()
}

#[test]
fn failed_and_timed_out_calls_arrive_without_headers() -> Result<()> {
    let host = configured()?;
    host.allow(Category::HttpCall).expect_matching(
        Category::LocalResponse,
        "503 upstream failed",
        2,
    );

    let s = host.http_stream()?;
    s.request_headers(&with_op("c"), true).expect_pause()?;
    host.fail_call(host.last_call().expect("call").token)?;
    assert_eq!(s.local_response().map(|r| r.status), Some(503));
    assert_eq!(
        host.last_call().map(|c| c.outcome),
        Some(CallOutcome::Failed)
    );

    let s = host.http_stream()?;
    s.request_headers(&with_op("c"), true).expect_pause()?;
    host.run_for(Duration::from_millis(499))?;
    assert!(host.last_call().expect("call").is_pending());
    host.run_for(Duration::from_millis(1))?;
    assert_eq!(
        host.last_call().map(|c| c.outcome),
        Some(CallOutcome::TimedOut)
    );
    assert_eq!(s.local_response().map(|r| r.status), Some(503));
    host.verify()
}

#[test]
fn dispatch_to_an_unknown_cluster_is_bad_argument() -> Result<()> {
    let host = configured()?;
    host.allow(Category::HttpCall);
    let s = host.http_stream()?;
    let mut headers = with_op("c");
    headers.push(("x-cluster", "nowhere"));
    s.request_headers(&headers, true).expect_continue()?;
    assert_eq!(s.request_header("x-dispatch-status").as_deref(), Some("2"));
    assert!(host.http_calls().is_empty());
    let attempt = &host.dispatch_attempts()[0];
    assert_eq!(
        (attempt.upstream.as_str(), attempt.status, attempt.token),
        ("nowhere", Status::BadArgument, None)
    );
    host.expect_log_containing(LogLevel::Warn, "dispatch refused")?;

    host.fail_next_dispatch(Status::InternalFailure);
    let s = host.http_stream()?;
    s.request_headers(&with_op("c"), true).expect_continue()?;
    assert_eq!(host.dispatch_attempts()[1].status, Status::InternalFailure);
    Ok(())
}

#[test]
fn dispatching_is_strict_by_default() -> Result<()> {
    let host = configured()?;
    let s = host.http_stream()?;
    let err = s
        .request_headers(&with_op("c"), true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unexpected http call") && err.contains("backend GET /lookup"),
        "{err}"
    );
    Ok(())
}

#[test]
fn call_answered_after_the_stream_is_gone_still_reaches_the_root() -> Result<()> {
    let host = configured()?;
    host.allow(Category::HttpCall);
    let s = host.http_stream()?;
    s.request_headers(&with_op("c"), true).expect_pause()?;
    s.finish()?;
    let call = host.last_call().expect("call");
    host.respond_to_call(call.token, 200, &[], "")?;
    let log = host
        .logs()
        .into_iter()
        .find(|l| l.message == "call for a deleted stream")
        .expect("the root context got the response");
    assert_eq!(log.context_id, host.root_context_id());
    Ok(())
}

#[test]
fn guest_trap_fails_with_panic_message_and_poisons_the_instance() -> Result<()> {
    let host = configured()?;
    let s = host.http_stream()?;
    let err = format!("{:#}", s.request_headers(&with_op("p"), true).unwrap_err());
    assert!(err.contains("trapped in proxy_on_request_headers"), "{err}");
    assert!(err.contains("boom"), "{err}");
    assert!(err.contains("unreachable"), "{err}");
    let again = host.http_stream().unwrap_err().to_string();
    assert!(again.contains("unusable"), "{again}");
    assert_eq!(host.logs_at_least(LogLevel::Critical).len(), 1);
    Ok(())
}

#[test]
fn unimplemented_import_traps_and_is_named() -> Result<()> {
    let host = configured()?;
    let s = host.http_stream()?;
    let err = s
        .request_headers(&with_op("u"), true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("env.proxy_not_a_real_function"), "{err}");
    assert!(host.violations()[0].contains("env.proxy_not_a_real_function"));
    Ok(())
}

#[test]
fn properties_come_from_host_then_stream_and_unknown_reads_are_strict() -> Result<()> {
    let host = configured()?.with_property(["source", "address"], "10.0.0.1");
    let s = host.http_stream()?;
    s.request_headers(&with_op("s"), true).expect_continue()?;
    assert_eq!(s.request_header("x-source").as_deref(), Some("10.0.0.1"));

    let s = host.http_stream()?;
    s.set_property("source\0address", "192.168.1.9");
    s.request_headers(&with_op("s"), true).expect_continue()?;
    assert_eq!(s.request_header("x-source").as_deref(), Some("192.168.1.9"));

    let host = configured()?;
    let s = host.http_stream()?;
    let err = s
        .request_headers(&with_op("s"), true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown property read") && err.contains("source.address"),
        "{err}"
    );

    let host = configured()?;
    host.allow_matching(Category::UnknownProperty, "source.address");
    let s = host.http_stream()?;
    s.request_headers(&with_op("s"), true).expect_continue()?;
    assert_eq!(s.request_header("x-source"), None);
    Ok(())
}

#[test]
fn error_logs_must_be_expected() -> Result<()> {
    let host = configured()?;
    let s = host.http_stream()?;
    let err = s
        .request_headers(&with_op("e"), true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unexpected error-level log: boom"), "{err}");

    let host = configured()?;
    host.expect_matching(Category::ErrorLog, "boom", 1);
    host.http_stream()?
        .request_headers(&with_op("e"), true)
        .expect_continue()?;
    host.expect_log_containing(LogLevel::Error, "boom")?;
    host.verify()
}

#[test]
fn unmet_expectations_fail_verify_and_drop() -> Result<()> {
    let host = configured()?;
    host.expect(Category::LocalResponse, 1);
    let err = host.verify().unwrap_err().to_string();
    assert!(err.contains("expected 1 × local response"), "{err}");

    let dropped = std::panic::catch_unwind(|| {
        let host = configured().expect("fixture configures");
        host.expect(Category::HttpCall, 1);
    });
    assert!(
        dropped.is_err(),
        "dropping a host with unmet expectations panics"
    );
    Ok(())
}

#[test]
fn configuration_can_be_rejected() -> Result<()> {
    let host = host()?;
    host.expect_matching(Category::ErrorLog, "bad config", 1);
    let configured = host.configure("x-not-valid")?;
    assert!(!configured.is_accepted());
    assert!(configured.logs().iter().any(|l| l.message == "bad config"));
    configured.expect_rejected()?;
    host.allow(Category::ErrorLog);
    let err = host.configure("x").expect_ok().unwrap_err().to_string();
    assert!(
        err.contains("rejected") && err.contains("bad config"),
        "{err}"
    );
    host.verify()
}

#[test]
fn bodies_buffer_while_paused_and_can_be_replaced() -> Result<()> {
    let host = configured()?;
    let s = host.http_stream()?;
    s.request_headers(&GET, false).expect_continue()?;
    s.request_body("abc", false).expect_pause()?;
    s.request_body("def", true).expect_continue()?;
    assert_eq!(s.request_body_bytes(), b"replaced");
    Ok(())
}

#[test]
fn stdout_is_captured_as_info_lines() -> Result<()> {
    let host = configured()?;
    host.http_stream()?
        .request_headers(&with_op("o"), true)
        .expect_continue()?;
    assert_eq!(host.stdout(), "hello from stdout\n");
    let line = host
        .logs()
        .into_iter()
        .find(|l| l.source == LogSource::Stdout);
    assert_eq!(
        line.map(|l| (l.level, l.message)),
        Some((LogLevel::Info, "hello from stdout".into()))
    );
    Ok(())
}

#[test]
fn stream_resets_must_be_allowed() -> Result<()> {
    let host = configured()?;
    host.allow(Category::StreamReset);
    let s = host.http_stream()?;
    s.request_headers(&with_op("r"), true).expect_pause()?;
    assert_eq!(s.resets(), vec![StreamType::HttpRequest]);
    assert_eq!(s.request_flow(), FlowState::Reset);
    Ok(())
}

#[test]
fn shared_data_and_queues() -> Result<()> {
    let host = configured()?;
    assert_eq!(host.shared_data("fixture_key"), Some((b"v1".to_vec(), 1)));
    host.enqueue("fixture_q", "hello queue")?;
    host.expect_log_containing(LogLevel::Info, "hello queue")?;
    assert_eq!(host.dequeue("fixture_q"), None, "the guest consumed it");
    assert!(host.enqueue("no_such_queue", "x").is_err());
    Ok(())
}

#[test]
fn randomness_is_seeded_and_deterministic() -> Result<()> {
    let random = |seed| -> Result<Option<i64>> {
        let host = Host::from_bytes(fixture())?.with_random_seed(seed);
        host.configure("")?.expect_ok()?;
        Ok(host.gauge("fixture_random"))
    };
    assert_eq!(random(7)?, random(7)?);
    assert_ne!(random(7)?, random(8)?);
    Ok(())
}

#[test]
fn clock_starts_fixed_and_is_settable() -> Result<()> {
    let host = host()?;
    assert_eq!(
        host.now().duration_since(UNIX_EPOCH)?.as_secs(),
        1_704_067_200
    );
    host.set_time(UNIX_EPOCH + Duration::from_secs(2_000_000_000));
    host.advance_clock(Duration::from_secs(1));
    assert_eq!(
        host.now().duration_since(UNIX_EPOCH)?.as_secs(),
        2_000_000_001
    );
    Ok(())
}

#[test]
fn raw_calls_check_signatures() -> Result<()> {
    let host = configured()?;
    assert!(host
        .call_export(0, "fixture_initialized", &[Val::I32(1)])
        .is_err());
    assert!(host.call_export(0, "no_such_export", &[]).is_err());
    let root = host.root_context_id() as i32;
    host.call_export(1, "proxy_on_tick", &[Val::I32(root)])?;
    assert_eq!(host.counter("fixture_ticks_total"), Some(1));
    Ok(())
}

#[test]
fn release_wasm_explains_how_to_build_it() {
    match release_wasm() {
        Ok(path) => {
            assert!(path.ends_with("aviary.wasm") || std::env::var_os("AVIARY_WASM").is_some())
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("make build") || msg.contains("AVIARY_WASM"),
                "{msg}"
            );
        }
    }
}

/// When the real filter is built, check that the host implements every
/// import it may call and that the VM starts. The SDK's `Context` trait
/// drags the gRPC imports in even for filters that never use gRPC; they stay
/// traps, so a call to one would still fail the test that made it.
#[test]
fn release_module_links_and_starts() -> Result<()> {
    let Ok(path) = release_wasm() else {
        eprintln!("skipped: the release wasm is not built");
        return Ok(());
    };
    let host = Host::load(&path)?;
    assert!(host
        .exports()
        .iter()
        .any(|e| e == "proxy_abi_version_0_2_1"));
    let missing: Vec<_> = host
        .unimplemented_imports()
        .into_iter()
        .filter(|i| !i.starts_with("env.proxy_grpc_"))
        .collect();
    assert_eq!(missing, Vec::<String>::new());
    host.start_vm()
}
