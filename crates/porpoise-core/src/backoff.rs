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
}
