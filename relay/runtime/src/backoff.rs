//! Capped exponential backoff, and the up/down state of a backend that is logged once per change.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

/// First delay after a failure.
const INITIAL: Duration = Duration::from_millis(100);
/// Longest delay between attempts.
const CAP: Duration = Duration::from_secs(10);

/// Delays for consecutive attempts: 100 ms, doubling up to 10 s, each with ±20 % jitter so that
/// several relays do not retry in step.
#[derive(Debug, Default)]
pub struct Backoff {
    /// Failures since the last success.
    attempts: u32,
}

impl Backoff {
    /// The delay before the next attempt; grows with every call.
    pub fn next_delay(&mut self) -> Duration {
        let exp = INITIAL.saturating_mul(1u32 << self.attempts.min(16));
        self.attempts = self.attempts.saturating_add(1);
        exp.min(CAP).mul_f64(0.8 + 0.4 * fastrand::f64())
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    /// Sleeps for the next delay. Returns `false` when shutdown came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = shutdown.cancelled() => false,
        }
    }
}

/// Whether a backend (PostgreSQL or Redis) currently works, so that an outage is logged when it starts and
/// when it ends, not on every failed attempt. Clones share the state: every connection to one backend
/// reports into the same outage.
#[derive(Clone, Debug)]
pub struct BackendState {
    /// `postgres` or `redis`, for logs and metric labels.
    name: &'static str,
    /// The shared part (held only for a few instructions, never across an await).
    inner: Arc<Mutex<Outage>>,
    /// `trackway_relay_backend_up` for this backend, when it is reported.
    up: Option<prometheus::IntGauge>,
}

/// The current outage, if any.
#[derive(Debug, Default)]
struct Outage {
    /// When the current outage began; `None` while the backend works.
    down_since: Option<Instant>,
    /// Failed attempts in the current outage.
    failures: u64,
    /// The latest error of the current outage (for `/readyz`).
    reason: Option<String>,
}

impl BackendState {
    /// A backend assumed to work.
    pub fn new(name: &'static str) -> BackendState {
        BackendState { name, inner: Arc::default(), up: None }
    }

    /// The same, with its state kept in `gauge` (1 up, 0 down).
    pub fn reported(mut self, gauge: prometheus::IntGauge) -> BackendState {
        gauge.set(i64::from(!self.is_down()));
        self.up = Some(gauge);
        self
    }

    fn outage(&self) -> std::sync::MutexGuard<'_, Outage> {
        // A panic elsewhere cannot leave an `Outage` inconsistent; keep using it.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a failed attempt; logs only the first of an outage. Returns `true` on that first one.
    pub fn failed(&self, error: &dyn std::fmt::Display) -> bool {
        let mut outage = self.outage();
        outage.failures += 1;
        outage.reason = Some(error.to_string());
        if outage.down_since.is_some() {
            tracing::debug!(backend = self.name, error = %error, attempt = outage.failures, "still unavailable");
            return false;
        }
        outage.down_since = Some(Instant::now());
        if let Some(up) = &self.up {
            up.set(0);
        }
        tracing::warn!(backend = self.name, error = %error, "backend unavailable; retrying with backoff");
        true
    }

    /// Records a success; logs the end of an outage. Returns `true` when it ended one.
    pub fn succeeded(&self) -> bool {
        let mut outage = self.outage();
        let Some(since) = outage.down_since.take() else { return false };
        if let Some(up) = &self.up {
            up.set(1);
        }
        tracing::info!(
            backend = self.name,
            down_for_ms = since.elapsed().as_millis() as u64,
            failed_attempts = outage.failures,
            "backend available again"
        );
        outage.failures = 0;
        outage.reason = None;
        true
    }

    /// Whether an outage is in progress.
    pub fn is_down(&self) -> bool {
        self.outage().down_since.is_some()
    }

    /// The latest error of the outage in progress, `None` while the backend works.
    pub fn down_reason(&self) -> Option<String> {
        let outage = self.outage();
        outage.down_since.and(outage.reason.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_cap_and_reset() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(80) && first <= Duration::from_millis(120), "{first:?}");
        let mut last = first;
        for _ in 0..20 {
            last = b.next_delay();
        }
        assert!(last <= CAP.mul_f64(1.2) && last >= CAP.mul_f64(0.8), "{last:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }

    #[test]
    fn outage_is_reported_once_per_change() {
        let s = BackendState::new("redis");
        let other_connection = s.clone();
        assert!(!s.succeeded());
        assert!(s.failed(&"refused"));
        assert!(!other_connection.failed(&"refused"), "one outage, however many connections see it");
        assert!(s.is_down());
        assert_eq!(s.down_reason().as_deref(), Some("refused"));
        assert!(s.succeeded());
        assert_eq!(s.down_reason(), None);
        assert!(!s.succeeded());
        assert!(s.failed(&"refused"));
    }
}
