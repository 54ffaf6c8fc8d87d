//! The host's CPU and memory use, read from `/proc` for the worker's heartbeat.

use std::sync::Mutex;

/// Samples CPU use as the busy share of CPU time since the previous sample.
#[derive(Debug, Default)]
pub struct SystemSampler {
    last: Mutex<Option<(u64, u64)>>,
}

impl SystemSampler {
    /// CPU use since the last call (0 on the first), in percent.
    pub fn cpu_percent(&self) -> f64 {
        let Some((busy, total)) = cpu_times() else { return 0.0 };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let pct = match *last {
            Some((b0, t0)) if total > t0 => (busy.saturating_sub(b0)) as f64 * 100.0 / (total - t0) as f64,
            _ => 0.0,
        };
        *last = Some((busy, total));
        pct.clamp(0.0, 100.0)
    }
}

/// (busy, total) jiffies from the first line of /proc/stat.
fn cpu_times() -> Option<(u64, u64)> {
    cpu_times_in(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn cpu_times_in(stat: &str) -> Option<(u64, u64)> {
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let total: u64 = fields.iter().sum();
    // idle + iowait
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Memory in use (total less available), in percent.
pub fn memory_percent() -> f64 {
    std::fs::read_to_string("/proc/meminfo").map_or(0.0, |info| memory_percent_in(&info))
}

fn memory_percent_in(info: &str) -> f64 {
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    match (field("MemTotal:"), field("MemAvailable:")) {
        (Some(total), Some(avail)) if total > 0.0 => ((total - avail) * 100.0 / total).clamp(0.0, 100.0),
        _ => 0.0,
    }
}

/// The one-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|l| l.parse().ok()))
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_right() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n";
        assert_eq!(cpu_times_in(stat), Some((150, 1000)), "busy is all but idle and iowait");
        let info = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n";
        assert_eq!(memory_percent_in(info), 75.0);
        assert_eq!(memory_percent_in("MemTotal: 0 kB\n"), 0.0, "unreadable numbers are 0, not a panic");
    }

    #[test]
    fn a_busy_machine_reads_busy() {
        let s = SystemSampler::default();
        assert_eq!(s.cpu_percent(), 0.0, "the first sample has nothing to compare with");
        // spin for 200 ms of wall time: at least that much CPU time is busy, on any core count
        let until = std::time::Instant::now() + std::time::Duration::from_millis(200);
        let mut x = 0u64;
        while std::time::Instant::now() < until {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let cpu = s.cpu_percent();
        assert!(cpu > 0.0 && cpu <= 100.0, "{cpu}");
        let mem = memory_percent();
        assert!(mem > 0.0 && mem <= 100.0, "a running machine uses some memory: {mem}");
    }
}
