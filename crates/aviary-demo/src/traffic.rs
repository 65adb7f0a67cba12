//! The demo's client traffic: keyed requests at a fixed rate through Envoy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use aviary_sim::{run_load, LoadConfig};

/// Keyed traffic in bounded 1-second runs until stopped, tallying what the client saw.
pub(crate) struct Traffic {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(u64, u64)>>,
}

impl Traffic {
    /// Starts sending `rate` requests per second to `url`.
    pub(crate) fn start(url: String, rate: f64) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut total, mut errors) = (0, 0);
            let mut round = 0;
            while !st.load(Ordering::SeqCst) {
                let mut cfg = LoadConfig::duration(&url, Duration::from_secs(1));
                cfg.rate = Some(rate);
                cfg.connections = 8;
                cfg.users = 20_000;
                cfg.seed = round;
                cfg.input_header = Some("x-input-id".into());
                round += 1;
                match run_load(&cfg) {
                    Ok(r) => {
                        total += r.summary.total;
                        errors += r.summary.errors;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
            (total, errors)
        });
        Traffic {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops and returns (requests, transport errors).
    pub(crate) fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or((0, 0))
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
