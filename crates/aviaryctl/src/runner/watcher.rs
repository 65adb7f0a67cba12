//! The apply watcher: after each config write, polls the proxies until they report the new
//! config (digest or weights) and records how long that took. A confirmation goes back to the
//! step as [`Input::Applied`](crate::core::step::Input::Applied).

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use aviary_contract::config::PluginConfig;
use serde::{Deserialize, Serialize};

use crate::clock::system_now_ms;
use crate::edges::source::ApplyProbe;

/// The proxies' confirmation of a write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyRecord {
    /// The [`WriteRecord::seq`](super::WriteRecord::seq) confirmed.
    pub seq: u64,
    /// The step's number of the write confirmed.
    #[serde(default)]
    pub write: u64,
    pub at_ms: u64,
    /// Whether every proxy reported the config.
    pub applied: bool,
    /// From the write completing to the last proxy reporting it, milliseconds.
    pub apply_ms: f64,
    /// From the trigger to the last proxy reporting it, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_to_apply_ms: Option<f64>,
    /// The config digest the proxies reported, when the write was matched by digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest48: Option<u64>,
    pub detail: String,
}

/// The watcher's answer about one write.
pub(super) struct Answer {
    pub(super) record: ApplyRecord,
    /// When the answer was known.
    pub(super) confirmed: Instant,
    /// [`ApplyJob::written_ms`].
    pub(super) written_ms: u64,
}

impl Answer {
    /// When the write took effect on a clock reading `now_ms` now: that, less how long ago
    /// the proxies confirmed it, and never before the write.
    pub(super) fn applied_ms(&self, now_ms: u64) -> u64 {
        let ago = u64::try_from(self.confirmed.elapsed().as_millis()).unwrap_or(u64::MAX);
        now_ms.saturating_sub(ago).max(self.written_ms)
    }
}

/// What the proxies must report for a write to count as applied.
#[derive(Debug, Clone)]
pub(super) enum Expect {
    Digest(u64),
    Weights(BTreeMap<String, u64>),
}

/// One write for the watcher to confirm.
pub(super) struct ApplyJob {
    pub(super) seq: u64,
    pub(super) write: u64,
    /// When the write was done, on the runner's clock.
    pub(super) written_ms: u64,
    pub(super) expect: Expect,
    pub(super) written: Instant,
    pub(super) trigger: Option<Instant>,
}

/// The weight of every version in `cfg`, as the proxies' weight gauges show them.
pub(super) fn weights_of(cfg: &PluginConfig) -> BTreeMap<String, u64> {
    cfg.versions
        .iter()
        .enumerate()
        .filter_map(|(i, v)| Some((v.name.clone(), u64::from(cfg.weight_bps(i)?))))
        .collect()
}

pub(super) fn spawn_watcher(
    probe: Box<dyn ApplyProbe + Send>,
    service: String,
    timeout: Duration,
) -> (Sender<ApplyJob>, Receiver<Answer>) {
    let (job_tx, job_rx) = mpsc::channel::<ApplyJob>();
    let (res_tx, res_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut next: Option<ApplyJob> = None;
        loop {
            let job = match next.take() {
                Some(j) => j,
                None => match job_rx.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                },
            };
            let record = |applied: bool, detail: String| {
                let now = Instant::now();
                let rec = ApplyRecord {
                    seq: job.seq,
                    write: job.write,
                    at_ms: system_now_ms(),
                    applied,
                    apply_ms: now.saturating_duration_since(job.written).as_secs_f64() * 1e3,
                    trigger_to_apply_ms: job
                        .trigger
                        .map(|t| now.saturating_duration_since(t).as_secs_f64() * 1e3),
                    digest48: match job.expect {
                        Expect::Digest(d) if applied => Some(d),
                        _ => None,
                    },
                    detail,
                };
                Answer {
                    record: rec,
                    confirmed: now,
                    written_ms: job.written_ms,
                }
            };
            let mut last;
            let result = loop {
                match job_rx.try_recv() {
                    Ok(newer) => {
                        next = Some(newer);
                        break record(false, "superseded by a newer write".into());
                    }
                    // The runner is gone: nobody will read the answer.
                    Err(mpsc::TryRecvError::Disconnected) => return,
                    Err(mpsc::TryRecvError::Empty) => {}
                }
                match probe.applied(&service) {
                    Ok(list) if !list.is_empty() => {
                        let pending: Vec<String> = list
                            .iter()
                            .filter(|a| match &job.expect {
                                Expect::Digest(d) => a.digest48 != Some(*d),
                                Expect::Weights(w) => {
                                    w.iter().any(|(v, bps)| a.weights.get(v) != Some(bps))
                                }
                            })
                            .map(|a| a.endpoint.clone())
                            .collect();
                        if pending.is_empty() {
                            break record(true, format!("{} proxies", list.len()));
                        }
                        last = format!("waiting for {}", pending.join(", "));
                    }
                    Ok(_) => last = "no proxies".into(),
                    Err(e) => last = e.to_string(),
                }
                if job.written.elapsed() >= timeout {
                    break record(false, format!("not applied after {timeout:?}: {last}"));
                }
                thread::sleep(Duration::from_millis(2));
            };
            if res_tx.send(result).is_err() {
                return;
            }
        }
    });
    (job_tx, res_rx)
}
