//! What one connection, or one user, may cost the relay beyond its own socket: a pace for
//! `trackway.authorize` calls (a token bucket per connection, and a bound on the answers it remembers),
//! and a count of open connections per user (`TRACKWAY_LIVE_MAX_CONNECTIONS_PER_USER`).

use std::{collections::HashMap, time::Duration};

/// `trackway.authorize` calls a connection may make at once before being paced...
pub const AUTHORIZE_BURST: u32 = 100;
/// ...and per second after that: an honest map subscribes to its targets at once (at most
/// `TRACKWAY_LIVE_MAX_SUBSCRIPTIONS`, 100 by default), a client trying target after target waits.
pub const AUTHORIZE_PER_SECOND: u32 = 20;
/// Most answers a connection remembers; more, and it starts again from none.
pub const MAX_ALLOWED: usize = 1024;

/// A token bucket: `burst` calls at once, then `per_second`. Times are passed in, so tests need no sleeping.
#[derive(Debug)]
pub struct Bucket {
    /// Calls that may go at once.
    burst: f64,
    /// Calls earned per second.
    per_second: f64,
    /// Calls available at `at` (negative: owed).
    tokens: f64,
    /// When `tokens` was counted.
    at: tokio::time::Instant,
}

impl Bucket {
    pub fn new(burst: u32, per_second: u32) -> Bucket {
        let burst = f64::from(burst);
        Bucket { burst, per_second: f64::from(per_second), tokens: burst, at: tokio::time::Instant::now() }
    }

    /// Takes one call made at `now`; the instant it may go (`now` when within the burst).
    pub fn take(&mut self, now: tokio::time::Instant) -> tokio::time::Instant {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + earned).min(self.burst) - 1.0;
        self.at = now;
        if self.tokens >= 0.0 {
            now
        } else {
            now + Duration::from_secs_f64(-self.tokens / self.per_second)
        }
    }
}

/// Open connections per user, so that one token (one user) cannot take every connection slot.
pub struct Users {
    /// The most connections one user may hold.
    pub limit: usize,
    /// Open connections by user id (users with none are not kept).
    open: std::sync::Mutex<HashMap<String, usize>>,
}

impl Users {
    /// Counts for users with at most `limit` connections each.
    pub fn new(limit: usize) -> Users {
        Users { limit, open: Default::default() }
    }

    /// One more connection for `user`, held until the returned guard drops; `None` when the user has
    /// `limit` already.
    pub fn enter(&self, user: &str) -> Option<UserConnection<'_>> {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(user.to_owned()).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(UserConnection { users: self, user: user.to_owned() })
    }
}

/// One of a user's connections; leaves the count when dropped.
pub struct UserConnection<'a> {
    /// Whose count.
    users: &'a Users,
    /// The user.
    user: String,
}

impl Drop for UserConnection<'_> {
    fn drop(&mut self) {
        let mut open = self.users.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_lets_a_burst_through_then_paces() {
        let start = tokio::time::Instant::now();
        let mut bucket = Bucket::new(3, 10);
        for _ in 0..3 {
            assert_eq!(bucket.take(start), start, "within the burst");
        }
        assert_eq!(bucket.take(start), start + Duration::from_millis(100));
        assert_eq!(bucket.take(start), start + Duration::from_millis(200), "owed calls queue up");
        // A second later, 10 calls earned, 2 owed: the next goes at once.
        let later = start + Duration::from_secs(1);
        assert_eq!(bucket.take(later), later);
        // Never more than the burst saved up.
        let much_later = start + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(bucket.take(much_later), much_later);
        }
        assert!(bucket.take(much_later) > much_later);
    }
}
