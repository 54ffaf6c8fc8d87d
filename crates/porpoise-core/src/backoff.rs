//! Capped exponential backoff: how long to wait before the n-th retry of a piece of work.

use std::time::Duration;

/// Delays that double (by `multiplier`) from `initial` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(100), max: Duration::from_secs(30), multiplier: 2.0 }
    }
}

impl Backoff {
    /// The delay before retry number `attempt`, a quarter shorter to a quarter longer by `unit`
    /// (0 to 1, chosen at random by the caller), so that nodes that failed together do not
    /// retry in step.
    pub fn jittered(&self, attempt: u32, unit: f64) -> Duration {
        self.delay(attempt).mul_f64(0.75 + 0.5 * unit.clamp(0.0, 1.0))
    }

    /// The delay before retry number `attempt` (0 is the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.max(1.0).powi(attempt.min(64) as i32);
        let millis = self.initial.as_millis() as f64 * factor;
        let capped = millis.min(self.max.as_millis() as f64);
        Duration::from_millis(capped as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let b = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(1), multiplier: 2.0 };
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(1), Duration::from_millis(200));
        assert_eq!(b.delay(3), Duration::from_millis(800));
        assert_eq!(b.delay(4), Duration::from_secs(1));
        assert_eq!(b.delay(1000), Duration::from_secs(1));
    }

    #[test]
    fn jitter_spreads_a_delay_by_a_quarter_each_way() {
        let b = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(1), multiplier: 2.0 };
        assert_eq!(b.jittered(1, 0.0), Duration::from_millis(150));
        assert_eq!(b.jittered(1, 0.5), Duration::from_millis(200));
        assert_eq!(b.jittered(1, 1.0), Duration::from_millis(250));
        assert_eq!(b.jittered(1, 7.0), Duration::from_millis(250), "out of range is clamped");
    }
}
