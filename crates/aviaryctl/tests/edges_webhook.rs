//! Webhook delivery against in-process receivers: retries with backoff, timeouts, permanent
//! failures, the confirm-promotion contract and background delivery.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use aviaryctl::core::spec::{Event as Kind, HumanDuration, WebhookSpec};
use aviaryctl::core::step::Notification;
use aviaryctl::edges::webhook::{
    parse_approval, Approval, Approver, BackgroundNotifier, Notifier, RetryPolicy, WebhookNotifier,
};
use serde_json::json;

/// What the receiver does with the n-th request (0-based): status, body and delay.
type Behaviour = dyn Fn(usize) -> (u16, String, Duration) + Send + Sync;

struct Receiver {
    url: String,
    hits: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start(behaviour: Arc<Behaviour>) -> Self {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind");
        let port = server.server_addr().to_ip().expect("ip").port();
        let hits = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, b, s) = (hits.clone(), bodies.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok(Some(mut req)) = server.recv_timeout(Duration::from_millis(20)) else {
                    continue;
                };
                let n = h.fetch_add(1, Ordering::SeqCst);
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                b.lock().expect("lock").push((Instant::now(), body));
                let (status, text, delay) = behaviour(n);
                // Each answer on its own thread, so a slow answer does not block the next.
                thread::spawn(move || {
                    thread::sleep(delay);
                    let _ = req
                        .respond(tiny_http::Response::from_string(text).with_status_code(status));
                });
            }
        });
        Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            hits,
            bodies,
            stop,
            thread: Some(thread),
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn event(kind: Kind) -> Notification {
    Notification {
        event: kind,
        payload: json!({
            "event": kind.as_str(),
            "rollout": "recsys-v2",
            "service": "recsys",
            "stage": "step 2 (5%)",
            "canaryWeightBps": 0,
            "reason": "error rate 4.1% > 1%",
            "atMs": 1_795_316_245_514u64,
        }),
    }
}

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        timeout: Duration::from_millis(300),
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        deadline: Duration::from_secs(5),
    }
}

#[test]
fn delivers_event_json() {
    let rx = Receiver::start(Arc::new(|_| (200, "ok".into(), Duration::ZERO)));
    let hook = WebhookNotifier::new(&rx.url).header("authorization", "Bearer t");
    hook.notify(&event(Kind::Rollback)).expect("delivered");
    assert_eq!(rx.hits(), 1);
    let body = rx.bodies.lock().expect("lock")[0].1.clone();
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["event"], "rollback");
    assert_eq!(v["rollout"], "recsys-v2");
    assert_eq!(v["canaryWeightBps"], 0);
    assert_eq!(v["reason"], "error rate 4.1% > 1%");
    assert!(v.get("metadata").is_none());
}

#[test]
fn retries_with_exponential_backoff_until_success() {
    let rx = Receiver::start(Arc::new(|n| {
        if n < 2 {
            (503, "busy".into(), Duration::ZERO)
        } else {
            (200, String::new(), Duration::ZERO)
        }
    }));
    let hook = WebhookNotifier::with_policy(&rx.url, fast_policy());
    let started = Instant::now();
    hook.notify(&event(Kind::Step))
        .expect("third attempt succeeds");
    let elapsed = started.elapsed();
    assert_eq!(rx.hits(), 3);
    let times: Vec<Instant> = rx
        .bodies
        .lock()
        .expect("lock")
        .iter()
        .map(|b| b.0)
        .collect();
    let gap1 = times[1] - times[0];
    let gap2 = times[2] - times[1];
    assert!(gap1 >= Duration::from_millis(50), "{gap1:?}");
    assert!(
        gap2 >= Duration::from_millis(100),
        "backoff doubles: {gap2:?}"
    );
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[test]
fn gives_up_after_bounded_attempts_on_timeouts() {
    let rx = Receiver::start(Arc::new(|_| (200, String::new(), Duration::from_secs(3))));
    let policy = RetryPolicy {
        attempts: 3,
        timeout: Duration::from_millis(200),
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(40),
        deadline: Duration::from_secs(5),
    };
    let hook = WebhookNotifier::with_policy(&rx.url, policy);
    let started = Instant::now();
    let err = hook.notify(&event(Kind::Alert)).expect_err("times out");
    let elapsed = started.elapsed();
    assert_eq!(rx.hits(), 3);
    // 3 x 200 ms timeouts + 20 + 40 ms backoff, nowhere near the receiver's 3 s.
    assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    let msg = err.to_string();
    assert!(msg.contains(&rx.url) && msg.contains("3 attempts"), "{msg}");
}

#[test]
fn deadline_bounds_the_whole_call() {
    let rx = Receiver::start(Arc::new(|_| (500, String::new(), Duration::ZERO)));
    let policy = RetryPolicy {
        attempts: 50,
        timeout: Duration::from_millis(200),
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(100),
        deadline: Duration::from_millis(450),
    };
    let started = Instant::now();
    WebhookNotifier::with_policy(&rx.url, policy)
        .notify(&event(Kind::Step))
        .expect_err("always 500");
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    assert!(rx.hits() <= 5, "{}", rx.hits());
}

#[test]
fn client_errors_are_not_retried() {
    let rx = Receiver::start(Arc::new(|_| (400, "bad payload".into(), Duration::ZERO)));
    let err = WebhookNotifier::with_policy(&rx.url, fast_policy())
        .notify(&event(Kind::Rollback))
        .expect_err("400");
    assert_eq!(rx.hits(), 1);
    assert!(err.to_string().contains("400"), "{err}");
}

#[test]
fn unreachable_receiver_fails_fast_and_names_the_url() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}/hook");
    let started = Instant::now();
    let err = WebhookNotifier::with_policy(&url, fast_policy())
        .notify(&event(Kind::Start))
        .expect_err("refused");
    assert!(err.to_string().contains(&url), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

fn confirm_request() -> Notification {
    event(Kind::ConfirmPromotion)
}

#[test]
fn confirm_promotion_contract() {
    let answers: Vec<(u16, &str, Approval)> = vec![
        (200, r#"{"approved": true}"#, Approval::Approved),
        (200, "yes\n", Approval::Approved),
        (200, "Approved", Approval::Approved),
        (
            200,
            r#"{"approved": false, "reason": "freeze"}"#,
            Approval::Rejected {
                reason: "freeze".into(),
            },
        ),
        (
            200,
            "no",
            Approval::Rejected {
                reason: "rejected by the approver".into(),
            },
        ),
        (202, r#"{"approved": true}"#, Approval::Pending),
        (200, "maybe later", Approval::Pending),
        (200, r#"{"status": "queued"}"#, Approval::Pending),
    ];
    for (status, body, expected) in &answers {
        assert_eq!(&parse_approval(*status, body), expected, "{status} {body}");
    }

    let rx = Receiver::start(Arc::new(|n| match n {
        0 => (503, String::new(), Duration::ZERO),
        _ => (200, r#"{"approved":true}"#.into(), Duration::ZERO),
    }));
    let approver = WebhookNotifier::with_policy(&rx.url, fast_policy());
    assert_eq!(
        approver.confirm(&confirm_request()).expect("answer"),
        Approval::Approved
    );
    let body = rx.bodies.lock().expect("lock")[1].1.clone();
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["event"], "confirm-promotion");
    assert!(approver.answers(Kind::ConfirmPromotion));
}

#[test]
fn background_delivery_never_blocks_the_caller() {
    let rx = Receiver::start(Arc::new(|n| {
        if n == 0 {
            (503, String::new(), Duration::from_millis(100))
        } else {
            (200, String::new(), Duration::from_millis(100))
        }
    }));
    let errors = Arc::new(AtomicUsize::new(0));
    let e2 = errors.clone();
    let bg = BackgroundNotifier::spawn(
        Box::new(WebhookNotifier::with_policy(&rx.url, fast_policy())),
        2,
        move |_, _| {
            e2.fetch_add(1, Ordering::SeqCst);
        },
    );
    let started = Instant::now();
    for kind in [Kind::Start, Kind::Step, Kind::Alert, Kind::Promote] {
        bg.send(event(kind));
    }
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "{:?}",
        started.elapsed()
    );
    assert!(bg.flush(Duration::from_secs(5)), "drains");
    // Capacity 2 with one in flight: at most one event could have been dropped.
    let delivered = rx
        .bodies
        .lock()
        .expect("lock")
        .iter()
        .filter(|b| !b.1.is_empty())
        .count();
    assert_eq!(delivered as u64 + bg.dropped(), 5, "4 events + 1 retry");
    assert_eq!(errors.load(Ordering::SeqCst), 0);
    assert_eq!(bg.failed(), 0);
}

#[test]
fn spec_hooks_filter_events_and_carry_metadata() {
    let rx = Receiver::start(Arc::new(|_| (200, String::new(), Duration::ZERO)));
    let spec = WebhookSpec {
        name: "pager".into(),
        url: rx.url.clone(),
        url_from: None,
        headers: BTreeMap::new(),
        events: vec![Kind::Rollback, Kind::Alert],
        timeout: HumanDuration(300),
        retries: 1,
        metadata: BTreeMap::from([("team".into(), "ml-platform".into())]),
        format: Default::default(),
        report_url: None,
        dashboard_url: None,
    };
    let hook = WebhookNotifier::from_spec(&spec).expect("resolved");
    assert!(hook.listens(Kind::Rollback) && !hook.listens(Kind::Step));
    hook.notify(&event(Kind::Step)).expect("skipped");
    hook.notify(&event(Kind::Rollback)).expect("sent");
    assert_eq!(rx.hits(), 1);
    let body = rx.bodies.lock().expect("lock")[0].1.clone();
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["event"], "rollback");
    assert_eq!(v["metadata"]["team"], "ml-platform");

    let err = WebhookNotifier::from_spec(&WebhookSpec {
        url: "http://127.0.0.1:9/never".into(),
        ..spec
    })
    .expect("resolved")
    .notify(&event(Kind::Rollback))
    .expect_err("unreachable");
    assert!(
        err.to_string().contains("pager") && err.to_string().contains("2 attempts"),
        "{err}"
    );
}
