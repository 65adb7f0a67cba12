//! Copies in flight when their VM dies are counted once, by a VM that lives on.
//!
//! A VM's shadow copies, queued or awaiting their answer, live in its memory; a crash (Envoy
//! then loads a fresh VM under `FAIL_RELOAD`) or a VM that goes away takes them along, with no
//! outcome counted. So at every flush of its counts a VM writes its open copies (counted as
//! sent, no outcome yet), by service and shadow version, into one process-wide shared-data
//! entry that outlives VMs, with the time after which its row counts as stale. Written right
//! after the flush, a row agrees with what Envoy's counters hold. Any live VM that finds a
//! stale row removes it and counts its copies as `vm_lost`, with a compare-and-swap so that
//! exactly one VM does. A VM with nothing open keeps no row.
//!
//! The entry is text, one row per VM: `id expires_ms (service version count)*`, in decimal.

use crate::host::{Host, LogLevel};
use crate::shadow::Open;
use aviary_contract::units::decimal;

pub const KEY: &str = "aviary.shadow_ledger";

/// Write attempts per sync when other VMs write the entry at the same time.
const ATTEMPTS: usize = 4;

pub struct Ledger {
    id: u64,
    /// This VM's row is in the entry.
    wrote: bool,
    warned: bool,
}

impl Ledger {
    pub fn new(id: u64) -> Ledger {
        Ledger {
            id,
            wrote: false,
            warned: false,
        }
    }

    /// Writes this VM's `open` copies (a row that is stale after `stale_ms`) and claims the
    /// stale rows of other VMs; returns the copies claimed, to be counted as lost.
    pub fn sync(
        &mut self,
        host: &dyn Host,
        now_ms: u64,
        open: &[Open],
        stale_ms: u64,
    ) -> Vec<Open> {
        for _ in 0..ATTEMPTS {
            let (data, cas) = host.shared_data(KEY);
            let text = data
                .as_deref()
                .and_then(|d| std::str::from_utf8(d).ok())
                .unwrap_or_default();
            let mut keep = String::new();
            let mut claimed: Vec<Open> = Vec::new();
            let mut changed = false;
            let mut mine = false;
            for line in text.lines() {
                match parse(line) {
                    Some((id, _, _)) if id == self.id => mine = true,
                    Some((_, expires, rows)) if expires < now_ms => claimed.extend(rows),
                    Some(_) => {
                        keep.push_str(line);
                        keep.push('\n');
                        continue;
                    }
                    None => {}
                }
                changed = true;
            }
            if self.wrote && !mine && !self.warned {
                self.warned = true;
                host.log(
                    LogLevel::Warn,
                    "aviary: another VM took this VM for dead (it missed its ledger heartbeat) and counted its open shadow copies as vm_lost; those that finish now are counted twice",
                );
            }
            if !open.is_empty() {
                keep.push_str(&format!("{} {}", self.id, now_ms + stale_ms));
                for (service, version, n) in open {
                    keep.push_str(&format!(" {service} {version} {n}"));
                }
                keep.push('\n');
                changed = true;
            }
            if !changed {
                self.wrote = false;
                return Vec::new();
            }
            if host.set_shared_data(KEY, keep.as_bytes(), cas) {
                self.wrote = !open.is_empty();
                return claimed;
            }
        }
        Vec::new()
    }
}

/// A row: the VM's id, when it goes stale, and its open copies. `None` for a malformed row.
fn parse(line: &str) -> Option<(u64, u64, Vec<Open>)> {
    let mut f = line.split(' ');
    let id = decimal(f.next()?)?;
    let expires = decimal(f.next()?)?;
    let mut open = Vec::new();
    while let Some(service) = f.next() {
        let version = f.next()?;
        let n = decimal(f.next()?)?;
        open.push((service.to_owned(), version.to_owned(), n));
    }
    Some((id, expires, open))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    fn open(n: u64) -> Vec<Open> {
        vec![
            ("svc".into(), "v2".into(), n),
            ("svc".into(), "v3".into(), 1),
        ]
    }

    #[test]
    fn a_stale_row_is_claimed_once_and_a_live_one_is_kept() {
        let host = FakeHost::default();
        let (mut a, mut b, mut c) = (Ledger::new(10), Ledger::new(11), Ledger::new(12));
        assert!(a.sync(&host, 1000, &open(3), 500).is_empty());
        assert!(b.sync(&host, 1000, &open(1), 5000).is_empty());
        // Before a's row goes stale nothing is claimed; after, exactly one VM claims it.
        assert!(c.sync(&host, 1500, &[], 500).is_empty());
        assert_eq!(c.sync(&host, 1501, &[], 500), open(3));
        assert!(b.sync(&host, 1502, &open(1), 5000).is_empty());
        let (text, _) = host.shared_data(KEY);
        let text = String::from_utf8(text.unwrap_or_default()).unwrap_or_default();
        assert_eq!(text, "11 6502 svc v2 1 svc v3 1\n");
        // A VM whose copies all ended leaves no row.
        assert!(b.sync(&host, 1503, &[], 5000).is_empty());
        assert_eq!(host.shared_data(KEY).0.as_deref(), Some(&b""[..]));
        // A row claimed while its VM lives is said once, not hidden.
        assert!(a.sync(&host, 1504, &open(1), 500).is_empty());
        assert!(host.logged(LogLevel::Warn, "counted twice"));
    }

    #[test]
    fn a_lost_race_is_retried_and_garbage_dropped() {
        let host = FakeHost::default();
        host.set_shared_data(KEY, b"zz\n1 10 svc v2 4\n", 0);
        let mut l = Ledger::new(2);
        assert_eq!(
            l.sync(&host, 11, &open(2), 100),
            [("svc".into(), "v2".into(), 4)]
        );
        assert_eq!(
            host.shared_data(KEY).0.as_deref(),
            Some(&b"2 111 svc v2 2 svc v3 1\n"[..])
        );
        assert_eq!(parse("1 x"), None);
        assert_eq!(parse("1 2 svc v2"), None);
    }
}
