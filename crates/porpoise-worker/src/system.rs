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
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let total: u64 = fields.iter().sum();
    // idle + iowait
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Memory in use (total less available), in percent.
pub fn memory_percent() -> f64 {
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else { return 0.0 };
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
    fn readings_are_percentages() {
        let s = SystemSampler::default();
        let _ = s.cpu_percent();
        let busy: u64 = (0..2_000_000u64).fold(0, |a, b| a.wrapping_add(b * b));
        assert!(busy > 0);
        let cpu = s.cpu_percent();
        assert!((0.0..=100.0).contains(&cpu), "{cpu}");
        let mem = memory_percent();
        assert!(mem > 0.0 && mem <= 100.0, "a running machine uses some memory: {mem}");
    }
}
