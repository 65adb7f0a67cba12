//! CPU time and memory of a process, read from /proc.

use std::fs;

/// Nanoseconds the process has run on a CPU, summed over its threads (`schedstat` is exact,
/// where `stat`'s utime/stime come in 10 ms ticks).
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// CPU time of several processes over an interval.
pub struct CpuMeter {
    pids: Vec<u32>,
    start: Vec<u64>,
}

impl CpuMeter {
    pub fn start(pids: &[u32]) -> CpuMeter {
        CpuMeter {
            pids: pids.to_vec(),
            start: pids.iter().map(|&p| cpu_ns(p)).collect(),
        }
    }

    /// CPU nanoseconds used by each process since `start`, in the order given.
    pub fn stop(&self) -> Vec<u64> {
        self.pids
            .iter()
            .zip(&self.start)
            .map(|(&p, &s)| cpu_ns(p).saturating_sub(s))
            .collect()
    }
}

/// CPU time all processes have used, ns (`/proc/stat`, 10 ms ticks).
pub fn machine_busy_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return 0;
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    let busy: u64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    busy * 10_000_000
}
