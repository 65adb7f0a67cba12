//! Metrics sources against broken endpoints: every failure is an error naming the endpoint,
//! and none takes longer than the timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use aviaryctl::edges::source::{EnvoyAdminSource, MetricsSource, PrometheusSource};

struct Server {
    base: String,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    /// Answers every request with `status` and `body` after `delay`.
    fn start(status: u16, body: &'static str, delay: Duration) -> Server {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind");
        let port = server.server_addr().to_ip().expect("ip").port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(20)) {
                    thread::spawn(move || {
                        thread::sleep(delay);
                        let _ = req.respond(
                            tiny_http::Response::from_string(body).with_status_code(status),
                        );
                    });
                }
            }
        });
        Server {
            base: format!("http://127.0.0.1:{port}"),
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("http://127.0.0.1:{}", l.local_addr().expect("addr").port())
}

fn assert_err_names(src: &dyn MetricsSource, endpoint: &str, needle: &str, within: Duration) {
    let started = Instant::now();
    let err = src.snapshot("recsys").expect_err("must fail");
    let took = started.elapsed();
    let msg = err.to_string();
    assert!(
        msg.contains(endpoint),
        "error should name {endpoint}: {msg}"
    );
    assert!(
        msg.contains(needle),
        "error should mention {needle:?}: {msg}"
    );
    assert!(took < within, "took {took:?}: {msg}");
}

const GOOD: &str = "aviary_config_digest{service=\"recsys\"} 1\n\
aviary_requests_total{service=\"recsys\",version=\"stable\",reason=\"random\"} 4\n";

#[test]
fn envoy_source_failures_are_errors_naming_the_endpoint() {
    let fast = Duration::from_millis(900);
    let closed = closed_port_url();
    assert_err_names(&EnvoyAdminSource::new([closed.clone()]), &closed, "", fast);

    let garbage = Server::start(200, "<html><body>hello</body></html>", Duration::ZERO);
    assert_err_names(
        &EnvoyAdminSource::new([garbage.base.clone()]),
        &garbage.base,
        "not Prometheus text",
        fast,
    );

    let status = Server::start(503, "no healthy upstream", Duration::ZERO);
    assert_err_names(
        &EnvoyAdminSource::new([status.base.clone()]),
        &status.base,
        "HTTP 503",
        fast,
    );

    let slow = Server::start(200, GOOD, Duration::from_secs(3));
    assert_err_names(
        &EnvoyAdminSource::new([slow.base.clone()]),
        &slow.base,
        "",
        fast,
    );

    let other = Server::start(
        200,
        "aviary_requests_total{service=\"other\",version=\"a\",reason=\"random\"} 1\n",
        Duration::ZERO,
    );
    assert_err_names(
        &EnvoyAdminSource::new([other.base.clone()]),
        &other.base,
        "no Aviary metrics for service \"recsys\"",
        fast,
    );

    // One bad Envoy among good ones fails the whole snapshot: a partial sum would be biased.
    let good = Server::start(200, GOOD, Duration::ZERO);
    let src = EnvoyAdminSource::new([good.base.clone(), closed.clone()]);
    assert_err_names(&src, &closed, "", fast);
    let ok = EnvoyAdminSource::new([good.base.clone(), format!("{}/", good.base)])
        .snapshot("recsys")
        .expect("two good endpoints");
    assert_eq!(ok.versions["stable"].requests, 8);
    assert!(ok.at_ms > 1_700_000_000_000);
}

#[test]
fn prometheus_source_failures_are_errors() {
    let fast = Duration::from_millis(900);
    let closed = closed_port_url();
    assert_err_names(&PrometheusSource::new(&closed), &closed, "", fast);

    let bad_query = Server::start(
        400,
        r#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#,
        Duration::ZERO,
    );
    assert_err_names(
        &PrometheusSource::new(&bad_query.base),
        &bad_query.base,
        "parse error at char 5",
        fast,
    );

    let not_json = Server::start(200, "<html/>", Duration::ZERO);
    assert_err_names(
        &PrometheusSource::new(&not_json.base),
        &not_json.base,
        "not JSON",
        fast,
    );

    let empty = Server::start(
        200,
        r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
        Duration::ZERO,
    );
    assert_err_names(
        &PrometheusSource::new(&empty.base),
        &empty.base,
        "no Aviary series",
        fast,
    );

    let matrix = Server::start(
        200,
        r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
        Duration::ZERO,
    );
    assert_err_names(
        &PrometheusSource::new(&matrix.base),
        &matrix.base,
        "matrix",
        fast,
    );

    let slow = Server::start(200, "{}", Duration::from_secs(3));
    assert_err_names(
        &PrometheusSource::new(&slow.base).timeout(Duration::from_millis(200)),
        &slow.base,
        "",
        Duration::from_millis(500),
    );
}
