//! Model server behaviour over real sockets: determinism, disagreement share, error spreading,
//! admin routes and failure modes.

use std::time::{Duration, Instant};

use aviary_sim::http::{self, HttpConnection, HttpRequest};
use aviary_sim::loadgen::input_name;
use aviary_sim::modelserver::{
    predict, ControlUpdate, Fault, Latency, ModelServer, ModelServerConfig, ScoreDistribution,
    ServerStats,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(5);

fn connect(server: &ModelServer) -> HttpConnection {
    HttpConnection::connect(server.addr(), "model", T).unwrap()
}

fn predict_over_http(conn: &mut HttpConnection, input: &str) -> Value {
    let resp = conn
        .send(&HttpRequest::post("/predict", "{}").header("x-input-id", input))
        .unwrap();
    assert_eq!(resp.status, 200);
    resp.json().unwrap()
}

#[test]
fn same_seed_servers_agree_and_match_the_pure_function() {
    let a = ModelServer::spawn(ModelServerConfig::new("v1")).unwrap();
    let b = ModelServer::spawn(ModelServerConfig::new("v2")).unwrap();
    let (mut ca, mut cb) = (connect(&a), connect(&b));
    for i in 0..300 {
        let input = input_name(9, i);
        let ja = predict_over_http(&mut ca, &input);
        let jb = predict_over_http(&mut cb, &input);
        assert_eq!(ja["prediction"], jb["prediction"], "input {input}");
        assert_eq!(ja["input"], input.as_str());
        assert_eq!(ja["model"], "v1");
        assert_eq!(jb["model"], "v2");
        let expected = serde_json::to_value(a.config().predict(&input)).unwrap();
        assert_eq!(ja["prediction"], expected);
    }
    let resp = ca
        .send(&HttpRequest::get("/x").header("x-input-id", "k"))
        .unwrap();
    assert_eq!(resp.header("x-model-version"), Some("v1"));
    assert_eq!(resp.header("content-type"), Some("application/json"));
}

#[test]
fn other_seed_gives_other_predictions() {
    let labels: Vec<String> = ModelServerConfig::default().labels;
    let score = ScoreDistribution::Beta { a: 8.0, b: 2.0 };
    let differ = (0..1000)
        .filter(|&i| {
            let input = input_name(1, i);
            predict(1, &labels, &score, 0.0, &input) != predict(2, &labels, &score, 0.0, &input)
        })
        .count();
    assert!(differ > 900, "{differ}");
}

#[test]
fn disagreement_share_is_within_statistical_bounds() {
    let labels: Vec<String> = ModelServerConfig::default().labels;
    let score = ScoreDistribution::Uniform;
    let n = 20_000u64;
    for rate in [0.02, 0.1, 0.3] {
        let mut disagree = 0u64;
        for i in 0..n {
            let input = input_name(3, i);
            let base = predict(42, &labels, &score, 0.0, &input);
            let shadow = predict(42, &labels, &score, rate, &input);
            assert_eq!(base.score, shadow.score);
            if base.label != shadow.label {
                disagree += 1;
                // Monotone: disagreeing at this rate implies disagreeing at any higher rate.
                assert_ne!(
                    predict(42, &labels, &score, rate + 0.1, &input).label,
                    base.label
                );
            }
        }
        let share = disagree as f64 / n as f64;
        let sd = (rate * (1.0 - rate) / n as f64).sqrt();
        assert!(
            (share - rate).abs() < 5.0 * sd,
            "rate {rate}: observed {share} (sd {sd})"
        );
    }
}

#[test]
fn shadow_server_disagrees_over_http_on_the_seeded_share() {
    let base = ModelServer::spawn(ModelServerConfig::new("v1")).unwrap();
    let shadow = ModelServer::spawn(ModelServerConfig {
        disagree_rate: 0.25,
        ..ModelServerConfig::new("v2")
    })
    .unwrap();
    let (mut cb, mut cs) = (connect(&base), connect(&shadow));
    let n = 800;
    let disagree = (0..n)
        .filter(|&i| {
            let input = input_name(5, i);
            predict_over_http(&mut cb, &input)["prediction"]["label"]
                != predict_over_http(&mut cs, &input)["prediction"]["label"]
        })
        .count();
    let share = disagree as f64 / n as f64;
    assert!((share - 0.25).abs() < 0.08, "share {share}");
}

#[test]
fn scores_follow_the_configured_distribution() {
    let labels = vec!["a".to_string(), "b".to_string()];
    let mean = |dist: ScoreDistribution| {
        (0..5000)
            .map(|i| predict(1, &labels, &dist, 0.0, &input_name(1, i)).score)
            .sum::<f64>()
            / 5000.0
    };
    assert!((mean(ScoreDistribution::Beta { a: 8.0, b: 2.0 }) - 0.8).abs() < 0.01);
    let normal = mean(ScoreDistribution::Normal {
        mean: 0.3,
        std_dev: 0.05,
    });
    assert!((normal - 0.3).abs() < 0.01, "{normal}");
}

#[test]
fn input_id_falls_back_to_body_hash_then_counter() {
    let server = ModelServer::spawn(ModelServerConfig::new("v1")).unwrap();
    let mut c = connect(&server);
    let a: Value = c
        .send(&HttpRequest::post("/", r#"{"x":1}"#))
        .unwrap()
        .json()
        .unwrap();
    let b: Value = c
        .send(&HttpRequest::post("/", r#"{"x":1}"#))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(a, b);
    assert!(a["input"].as_str().unwrap().starts_with("body-"));
    let g: Value = c.send(&HttpRequest::get("/")).unwrap().json().unwrap();
    assert_eq!(g["input"], "req-2");
}

#[test]
fn errors_are_spread_exactly_and_counted() {
    let server = ModelServer::spawn(ModelServerConfig {
        error_rate: 0.2,
        ..ModelServerConfig::new("v3")
    })
    .unwrap();
    let mut c = connect(&server);
    for i in 0..100 {
        let resp = c.send(&HttpRequest::get(format!("/p{i}"))).unwrap();
        assert_eq!(resp.status == 500, i % 5 == 4, "request {i}");
        assert_eq!(resp.header("x-model-version"), Some("v3"));
    }
    let stats: ServerStats = c
        .send(&HttpRequest::get("/__stats"))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(stats.requests, 100);
    assert_eq!(stats.status(200), 80);
    assert_eq!(stats.status(500), 20);
    assert_eq!(stats, server.stats());
    let raw: Value = http::get(&format!("{}/__stats", server.url()), T)
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(raw["by_status"]["500"], 20);
    c.send(&HttpRequest::post("/__stats/reset", "")).unwrap();
    assert_eq!(server.stats().requests, 0);
}

#[test]
fn control_changes_behaviour_at_runtime() {
    let server = ModelServer::spawn(ModelServerConfig::new("v1")).unwrap();
    let mut c = connect(&server);
    assert_eq!(c.send(&HttpRequest::get("/")).unwrap().status, 200);
    let update = ControlUpdate {
        fault: Some(Fault::Status(503)),
        ..ControlUpdate::default()
    };
    let resp = c
        .send(&HttpRequest::post(
            "/__control",
            serde_json::to_vec(&update).unwrap(),
        ))
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(c.send(&HttpRequest::get("/")).unwrap().status, 503);
    let bad = c
        .send(&HttpRequest::post("/__control", r#"{"error_rate": 2}"#))
        .unwrap();
    assert_eq!(bad.status, 400);
    server
        .control(&ControlUpdate {
            fault: Some(Fault::None),
            ..ControlUpdate::default()
        })
        .unwrap();
    assert_eq!(c.send(&HttpRequest::get("/")).unwrap().status, 200);
    assert!(server.update(|cfg| cfg.disagree_rate = -1.0).is_err());
}

#[test]
fn failure_modes() {
    let reset = ModelServer::spawn(ModelServerConfig {
        fault: Fault::Reset,
        ..ModelServerConfig::new("r")
    })
    .unwrap();
    let err = connect(&reset).send(&HttpRequest::get("/")).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::UnexpectedEof
        ),
        "{err:?}"
    );
    assert_eq!(reset.stats().resets, 1);

    let non_json = ModelServer::spawn(ModelServerConfig {
        fault: Fault::NonJson,
        ..ModelServerConfig::new("n")
    })
    .unwrap();
    let resp = connect(&non_json).send(&HttpRequest::get("/")).unwrap();
    assert_eq!(resp.status, 200);
    assert!(serde_json::from_slice::<Value>(&resp.body).is_err());

    let slow = ModelServer::spawn(ModelServerConfig {
        latency: Latency::fixed_ms(300.0),
        ..ModelServerConfig::new("s")
    })
    .unwrap();
    let started = Instant::now();
    assert_eq!(
        connect(&slow).send(&HttpRequest::get("/")).unwrap().status,
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn stop_closes_idle_keep_alive_connections() {
    let server = ModelServer::spawn(ModelServerConfig::new("v1")).unwrap();
    let mut c = connect(&server);
    assert_eq!(c.send(&HttpRequest::get("/")).unwrap().status, 200);
    assert_eq!(server.open_connections(), 1);
    let started = Instant::now();
    server.stop();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(c.send(&HttpRequest::get("/")).is_err());
}

#[test]
fn head_and_http10_framing() {
    use std::io::{Read, Write};

    let server = ModelServer::spawn(ModelServerConfig::new("v1")).unwrap();
    let mut c = connect(&server);
    let head = HttpRequest {
        method: "HEAD".into(),
        path: "/".into(),
        ..HttpRequest::default()
    };
    let resp = c.send(&head).unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.body.is_empty());
    assert!(
        resp.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 0
    );
    assert_eq!(c.send(&HttpRequest::get("/")).unwrap().status, 200);

    let mut raw = std::net::TcpStream::connect(server.addr()).unwrap();
    raw.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    raw.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("connection: close\r\n"));
    assert!(text.ends_with('}'));
}
