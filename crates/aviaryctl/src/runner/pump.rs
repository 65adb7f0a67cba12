//! The metric pump: reads the metrics source on a background thread, paced by real time, or
//! inline on the runner's thread, paced by its clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::core::observe::Snapshot;
use crate::edges::source::MetricsSource;

/// Where the runner's metrics reads come from.
pub(super) enum Pump {
    Inline {
        source: Box<dyn MetricsSource + Send>,
        next_due_ms: u64,
    },
    Background {
        rx: Receiver<(Result<Snapshot, String>, Instant)>,
        stop: Arc<AtomicBool>,
        handle: Option<JoinHandle<()>>,
    },
}

pub(super) fn spawn_pump(
    source: Box<dyn MetricsSource + Send>,
    service: String,
    every: Duration,
) -> Pump {
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_in = stop.clone();
    let handle = thread::spawn(move || {
        while !stop_in.load(Ordering::SeqCst) {
            let started = Instant::now();
            let r = source.snapshot(&service).map_err(|e| e.to_string());
            if tx.send((r, Instant::now())).is_err() {
                return;
            }
            // Sleep in small slices so shutdown is prompt.
            while started.elapsed() < every && !stop_in.load(Ordering::SeqCst) {
                thread::sleep((every - started.elapsed()).min(Duration::from_millis(20)));
            }
        }
    });
    Pump::Background {
        rx,
        stop,
        handle: Some(handle),
    }
}
