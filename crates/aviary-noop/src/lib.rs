//! A proxy-wasm HTTP filter that does nothing: the baseline of Aviary's benchmarks. Envoy still
//! calls every stream callback, so it measures the wasm boundary alone, the part of a filter's
//! cost no plugin can avoid.
//!
//! Given a configuration, it becomes a probe that makes chosen host calls per request, so the
//! benchmarks can price each kind of call in the real Envoy. The configuration is a
//! comma-separated list of: `headers` (read all request headers), `lookups` (read the six
//! request headers the benchmark's sticky config reads, one call each), `route` (set the routing
//! header), `count` (increment a counter), `clock` (read the time), `status` (read `:status`),
//! `stamp` (set a response header), `record` (record a histogram value), `mirror` (read the
//! request headers, queue them, and copy the request to cluster `shadow` from the root context
//! on a 5 ms tick, ignoring the answer), `mirror-now` (the same copy, dispatched at once from
//! the stream's own context). Calls happen where Aviary makes them: `headers`,
//! `lookups`, `route`, `count`, `clock`, `mirror` on request headers; `status` and `stamp` on response
//! headers; `count`, `clock` and `record` again when the stream is logged.

#[cfg(target_arch = "wasm32")]
mod filter {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

    #[derive(Default)]
    struct Probe {
        headers: bool,
        lookups: bool,
        route: bool,
        count: bool,
        clock: bool,
        status: bool,
        stamp: bool,
        record: bool,
        mirror: bool,
        mirror_now: bool,
        counter: u32,
        histogram: u32,
        queue: RefCell<Vec<Vec<(String, String)>>>,
    }

    #[derive(Default)]
    struct NoopRoot {
        probe: Option<Rc<Probe>>,
    }

    impl Context for NoopRoot {}

    impl RootContext for NoopRoot {
        fn on_configure(&mut self, _: usize) -> bool {
            let Some(raw) = self.get_plugin_configuration() else {
                return true;
            };
            let text = String::from_utf8_lossy(&raw);
            let mut p = Probe::default();
            for op in text.split(',').map(str::trim).filter(|o| !o.is_empty()) {
                match op {
                    "headers" => p.headers = true,
                    "lookups" => p.lookups = true,
                    "route" => p.route = true,
                    "count" => p.count = true,
                    "clock" => p.clock = true,
                    "status" => p.status = true,
                    "stamp" => p.stamp = true,
                    "record" => p.record = true,
                    "mirror" => p.mirror = true,
                    "mirror-now" => p.mirror_now = true,
                    _ => return false,
                }
            }
            p.counter = hostcalls::define_metric(MetricType::Counter, "probe_count").unwrap_or(0);
            p.histogram =
                hostcalls::define_metric(MetricType::Histogram, "probe_record").unwrap_or(0);
            if p.mirror {
                self.set_tick_period(Duration::from_millis(5));
            }
            self.probe = Some(Rc::new(p));
            true
        }

        fn on_tick(&mut self) {
            let Some(p) = &self.probe else {
                return;
            };
            let jobs = std::mem::take(&mut *p.queue.borrow_mut());
            for headers in jobs {
                let pairs: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let _ =
                    self.dispatch_http_call("shadow", pairs, None, vec![], Duration::from_secs(1));
            }
        }

        fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
            match &self.probe {
                Some(p) => Some(Box::new(ProbeStream(p.clone()))),
                None => Some(Box::new(NoopStream)),
            }
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct NoopStream;

    impl Context for NoopStream {}

    impl HttpContext for NoopStream {}

    struct ProbeStream(Rc<Probe>);

    impl ProbeStream {
        fn count_and_clock(&self) {
            if self.0.count {
                let _ = hostcalls::increment_metric(self.0.counter, 1);
            }
            if self.0.clock {
                let _ = self.get_current_time();
            }
        }
    }

    impl Context for ProbeStream {}

    impl HttpContext for ProbeStream {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            if self.0.headers {
                let _ = self.get_http_request_headers();
            }
            if self.0.lookups {
                for name in [
                    "x-user-id",
                    "x-canary",
                    "x-region",
                    "x-internal-user",
                    "cookie",
                    ":path",
                ] {
                    let _ = self.get_http_request_header(name);
                }
            }
            if self.0.route {
                self.set_http_request_header("x-aviary-version", Some("stable"));
            }
            self.count_and_clock();
            if self.0.mirror || self.0.mirror_now {
                let mut headers = self.get_http_request_headers();
                headers.push(("x-aviary-shadow".into(), "probe".into()));
                if self.0.mirror_now {
                    let pairs: Vec<(&str, &str)> = headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let _ = self.dispatch_http_call(
                        "shadow",
                        pairs,
                        None,
                        vec![],
                        Duration::from_secs(1),
                    );
                } else {
                    self.0.queue.borrow_mut().push(headers);
                }
            }
            Action::Continue
        }

        fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
            if self.0.status {
                let _ = self.get_http_response_header(":status");
            }
            if self.0.stamp {
                self.set_http_response_header("x-aviary-served-by", Some("stable"));
            }
            Action::Continue
        }

        fn on_log(&mut self) {
            self.count_and_clock();
            if self.0.record {
                let _ = hostcalls::record_metric(self.0.histogram, 1);
            }
        }
    }

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::<NoopRoot>::default() });
    }}
}
