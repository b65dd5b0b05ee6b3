//! Wire-format payloads (docs/architecture.md §1) and the timestamp text they carry: [`position`], a minimal valid
//! position for tests that only need many distinct rows. (Realistic fleets come from `trackway-sim`.)

/// 2026-11-27T08:00:00Z in Unix milliseconds.
#[cfg(test)]
const START_UNIX_MS: i64 = 1_795_766_400_000;

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (JavaScript's `toISOString`), the wire format's own
/// formatting.
pub fn timestamp(unix_ms: i64) -> String {
    trackway_wire::format_timestamp(unix_ms * 1000)
}

/// A minimal valid position of `device` at `unix_ms` (no attributes; a fixed point in Vilnius).
pub fn position(device: &str, unix_ms: i64) -> String {
    let ts = timestamp(unix_ms);
    format!(r#"{{"deviceId":"{device}","timestamp":"{ts}","latitude":54.7,"longitude":25.3}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_iso_8601() {
        assert_eq!(timestamp(START_UNIX_MS), "2026-11-27T08:00:00.000Z");
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(951_782_400_123), "2000-02-29T00:00:00.123Z");
    }

    #[test]
    fn positions_are_minimal_and_valid() {
        let text = position("d-1", START_UNIX_MS + 3_723_004);
        assert_eq!(
            text,
            r#"{"deviceId":"d-1","timestamp":"2026-11-27T09:02:03.004Z","latitude":54.7,"longitude":25.3}"#
        );
        trackway_wire::decode(text.as_bytes(), trackway_wire::DEFAULT_MAX_PAYLOAD_BYTES).expect("valid");
    }
}
