//! Limits a position is checked against besides the format's own rules: the payload size and how far in
//! the future its time may be. They depend on the server's settings and clock, so callers pass them in.

use crate::{format_timestamp, DecodeError, ErrorKind, DEFAULT_MAX_PAYLOAD_BYTES};

/// The limits in force for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Payloads longer than this are invalid without being parsed (`trackway.max_payload_bytes`).
    pub max_payload_bytes: usize,
    /// Times later than this are invalid; `None` accepts any time.
    pub future: Option<FutureLimit>,
}

impl Default for Limits {
    /// The default size limit and no future limit.
    fn default() -> Limits {
        Limits { max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES, future: None }
    }
}

/// A device with a bad clock must not become its own latest position for good: times more than
/// `tolerance_seconds` after `now` are refused (`trackway.future_tolerance`, like Traccar's future filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FutureLimit {
    /// The server's time, Unix microseconds.
    pub now_micros: i64,
    /// How far ahead of `now_micros` a time may be.
    pub tolerance_seconds: i64,
}

impl FutureLimit {
    /// `Ok` when `ts_micros` is not too far in the future; the error names the field, the limit and the
    /// setting.
    pub fn check(&self, ts_micros: i64) -> Result<(), DecodeError> {
        let latest = self.now_micros.saturating_add(self.tolerance_seconds.saturating_mul(1_000_000));
        if ts_micros <= latest {
            return Ok(());
        }
        Err(DecodeError {
            path: "timestamp".to_owned(),
            kind: ErrorKind::OutOfRange,
            message: format!(
                "must not be more than {} ahead of the server's clock ({}, setting trackway.future_tolerance), got {}",
                seconds_text(self.tolerance_seconds),
                format_timestamp(self.now_micros),
                format_timestamp(ts_micros)
            ),
        })
    }
}

/// `86400` → `1 day`, `7200` → `2 hours`, `90` → `90 seconds`.
fn seconds_text(seconds: i64) -> String {
    let plural = |n: i64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match seconds {
        s if s > 0 && s % 86_400 == 0 => plural(s / 86_400, "day"),
        s if s > 0 && s % 3_600 == 0 => plural(s / 3_600, "hour"),
        s if s > 0 && s % 60 == 0 => plural(s / 60, "minute"),
        s => plural(s, "second"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_766_400_000_000; // 2026-11-27T08:00:00Z

    #[test]
    fn times_up_to_the_tolerance_pass() {
        let limit = FutureLimit { now_micros: NOW, tolerance_seconds: 86_400 };
        assert_eq!(limit.check(NOW), Ok(()));
        assert_eq!(limit.check(NOW + 86_400_000_000), Ok(()));
        assert_eq!(limit.check(i64::MIN), Ok(()));
    }

    #[test]
    fn later_times_are_invalid_with_a_clear_message() {
        let limit = FutureLimit { now_micros: NOW, tolerance_seconds: 86_400 };
        let error = limit.check(NOW + 86_400_000_001).expect_err("too far ahead");
        assert_eq!(error.path, "timestamp");
        assert_eq!(error.kind, ErrorKind::OutOfRange);
        assert_eq!(
            error.to_string(),
            "timestamp: must not be more than 1 day ahead of the server's clock (2026-11-27T08:00:00.000Z, \
             setting trackway.future_tolerance), got 2026-11-28T08:00:00.000001Z"
        );
        let zero = FutureLimit { now_micros: NOW, tolerance_seconds: 0 };
        assert!(zero.check(NOW + 1).expect_err("ahead").message.contains("0 seconds"));
        let huge = FutureLimit { now_micros: NOW, tolerance_seconds: i64::MAX };
        assert_eq!(huge.check(i64::MAX), Ok(()), "no overflow");
    }

    #[test]
    fn tolerances_read_naturally() {
        assert_eq!(seconds_text(86_400), "1 day");
        assert_eq!(seconds_text(7_200), "2 hours");
        assert_eq!(seconds_text(60), "1 minute");
        assert_eq!(seconds_text(90), "90 seconds");
    }
}
