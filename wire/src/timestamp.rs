//! Timestamps: strict ISO-8601 / RFC 3339 parsing to UTC microseconds, and JavaScript `toISOString` formatting.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::{quoted, DecodeError, ErrorKind};
use crate::json::push_display;

/// What `timestamp` must look like, for error messages.
const EXPECTED: &str = "an ISO-8601 date-time with seconds and an offset, \
                        like \"2026-11-27T10:15:30.123Z\" or \"2026-11-27T12:15:30+02:00\"";

/// The fixed head of a timestamp: `d` stands for an ASCII digit, any other byte for itself.
const HEAD: &[u8; 19] = b"dddd-dd-ddTdd:dd:dd";

/// The most fraction digits accepted (nanoseconds); only the first six may be non-zero.
const MAX_FRACTION_DIGITS: usize = 9;

const MICROS_PER_SECOND: i64 = 1_000_000;

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±hh:mm)` to microseconds since the Unix epoch (UTC).
pub(crate) fn parse_timestamp(text: &str) -> Result<i64, DecodeError> {
    let syntax = || DecodeError::new(ErrorKind::Syntax, format!("expected {EXPECTED}, got {}", quoted(text)));
    let fraction = fraction_if_well_formed(text.as_bytes()).ok_or_else(syntax)?;
    if text.get(17..19) == Some("60") {
        return Err(DecodeError::new(ErrorKind::Unsupported, "leap seconds are not supported"));
    }
    if fraction.iter().skip(6).any(|&digit| digit != b'0') {
        return Err(DecodeError::new(ErrorKind::Unsupported, "sub-microsecond precision is not supported"));
    }
    let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        DecodeError::new(ErrorKind::OutOfRange, format!("{} is not a valid date-time: {e}", quoted(text)))
    })?;
    let micros = parsed.unix_timestamp_nanos() / 1000;
    i64::try_from(micros).map_err(|_| DecodeError::new(ErrorKind::OutOfRange, "timestamp is out of range"))
}

/// Checks the shape of a timestamp (not its calendar values) and returns its fraction digits.
fn fraction_if_well_formed(bytes: &[u8]) -> Option<&[u8]> {
    let (head, rest) = bytes.split_at_checked(HEAD.len())?;
    let head_ok =
        head.iter().zip(HEAD).all(|(&b, &pattern)| if pattern == b'd' { b.is_ascii_digit() } else { b == pattern });
    if !head_ok {
        return None;
    }
    let (fraction, offset) = match rest.strip_prefix(b".") {
        Some(after_dot) => {
            let digits = after_dot.iter().take_while(|b| b.is_ascii_digit()).count();
            let (fraction, offset) = after_dot.split_at_checked(digits)?;
            ((1..=MAX_FRACTION_DIGITS).contains(&digits)).then_some((fraction, offset))?
        }
        None => (&[][..], rest),
    };
    let offset_ok = offset == b"Z"
        || matches!(offset, [b'+' | b'-', h1, h2, b':', m1, m2]
            if [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()));
    offset_ok.then_some(fraction)
}

/// Formats microseconds since the Unix epoch like JavaScript's `Date#toISOString`:
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, with six fraction digits when the microseconds are not whole milliseconds.
/// Years outside 0..=9999 are written with a sign and six digits (`+010000`, `-000001`), as JavaScript does.
pub fn format_timestamp(ts_micros: i64) -> String {
    let seconds = ts_micros.div_euclid(MICROS_PER_SECOND);
    let micros = ts_micros.rem_euclid(MICROS_PER_SECOND);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);

    let mut out = String::with_capacity(32);
    if (0..=9999).contains(&year) {
        push_display(&mut out, format_args!("{year:04}"));
    } else {
        let sign = if year < 0 { '-' } else { '+' };
        push_display(&mut out, format_args!("{sign}{:06}", year.unsigned_abs()));
    }
    push_display(
        &mut out,
        format_args!(
            "-{month:02}-{day:02}T{:02}:{:02}:{:02}",
            second_of_day / 3600,
            second_of_day / 60 % 60,
            second_of_day % 60
        ),
    );
    if micros % 1000 == 0 {
        push_display(&mut out, format_args!(".{:03}Z", micros / 1000));
    } else {
        push_display(&mut out, format_args!(".{micros:06}Z"));
    }
    out
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, u32::try_from(month).unwrap_or(0), u32::try_from(day).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> DecodeError {
        parse_timestamp(text).err().unwrap_or_else(|| panic!("{text:?} was accepted"))
    }

    #[test]
    fn parses_utc_and_offsets() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_timestamp("2026-11-27T10:15:30.123Z"), Ok(1_795_774_530_123_000));
        assert_eq!(parse_timestamp("2026-11-27T12:15:30.123+02:00"), Ok(1_795_774_530_123_000));
        assert_eq!(parse_timestamp("2026-11-27T08:45:30.123-01:30"), Ok(1_795_774_530_123_000));
        assert_eq!(parse_timestamp("2026-11-27T10:15:30.123456Z"), Ok(1_795_774_530_123_456));
        assert_eq!(parse_timestamp("2026-11-27T10:15:30.123456000Z"), Ok(1_795_774_530_123_456));
        assert_eq!(parse_timestamp("2026-11-27T10:15:30.1Z"), Ok(1_795_774_530_100_000));
        assert_eq!(parse_timestamp("1969-12-31T23:59:59.999999Z"), Ok(-1));
        assert_eq!(parse_timestamp("0000-01-01T00:00:00Z"), Ok(-62_167_219_200_000_000));
        assert_eq!(parse_timestamp("9999-12-31T23:59:59.999Z"), Ok(253_402_300_799_999_000));
        assert_eq!(parse_timestamp("9999-12-31T23:30:00-01:00"), Ok(253_402_302_600_000_000));
    }

    #[test]
    fn rejects_other_shapes_with_syntax_errors() {
        for text in [
            "yesterday",
            "",
            "2026-11-27",
            "2026-11-27T10:15Z",
            "2026-11-27T10:15:30",
            "2026-11-27 10:15:30Z",
            "2026-11-27t10:15:30Z",
            "2026-11-27T10:15:30z",
            "2026-11-27T10:15:30.Z",
            "2026-11-27T10:15:30.1234567890Z",
            "2026-11-27T10:15:30+0200",
            "2026-11-27T10:15:30+02",
            "2026-11-27T10:15:30Z ",
            "+02026-11-27T10:15:30Z",
            "2026-11-27T10:15:30.123Zjunk",
            "2026-11-27T10:15:30.12é3Z",
            "1795774530123",
        ] {
            let e = err(text);
            assert_eq!(e.kind, ErrorKind::Syntax, "{text:?}");
            assert!(e.message.starts_with("expected an ISO-8601 date-time"), "{}", e.message);
        }
        assert_eq!(
            err("yesterday").message,
            "expected an ISO-8601 date-time with seconds and an offset, like \"2026-11-27T10:15:30.123Z\" \
             or \"2026-11-27T12:15:30+02:00\", got \"yesterday\""
        );
    }

    #[test]
    fn rejects_impossible_dates_as_out_of_range() {
        for text in [
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-11-27T24:00:00Z",
            "2026-11-27T10:60:00Z",
            "2026-11-27T10:15:30+24:00",
            "2026-11-27T10:15:30+02:60",
        ] {
            assert_eq!(err(text).kind, ErrorKind::OutOfRange, "{text:?}");
        }
    }

    #[test]
    fn rejects_sub_microseconds_and_leap_seconds() {
        let e = err("2026-11-27T10:15:30.1234567Z");
        assert_eq!(e.kind, ErrorKind::Unsupported);
        assert_eq!(e.message, "sub-microsecond precision is not supported");
        assert_eq!(err("2026-11-27T10:15:30.000000001Z").kind, ErrorKind::Unsupported);
        assert_eq!(err("2016-12-31T23:59:60Z").kind, ErrorKind::Unsupported);
    }

    #[test]
    fn formats_like_to_iso_string() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_timestamp(1_795_774_530_123_000), "2026-11-27T10:15:30.123Z");
        assert_eq!(format_timestamp(1_795_774_530_123_456), "2026-11-27T10:15:30.123456Z");
        assert_eq!(format_timestamp(1_795_774_530_000_001), "2026-11-27T10:15:30.000001Z");
        assert_eq!(format_timestamp(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(format_timestamp(-1000), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_timestamp(951_782_400_000_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_timestamp(-62_167_219_200_000_000), "0000-01-01T00:00:00.000Z");
        assert_eq!(format_timestamp(-62_167_219_200_000_001), "-000001-12-31T23:59:59.999999Z");
        assert_eq!(format_timestamp(253_402_300_800_000_000), "+010000-01-01T00:00:00.000Z");
        assert_eq!(format_timestamp(i64::MAX), "+294247-01-10T04:00:54.775807Z");
        assert_eq!(format_timestamp(i64::MIN), "-290308-12-21T19:59:05.224192Z");
    }

    #[test]
    fn format_agrees_with_the_time_crate() {
        let mut micros: i64 = -62_167_219_200_000_000;
        while micros < 253_402_300_799_999_999 {
            let nanos = i128::from(micros) * 1000;
            let expected = OffsetDateTime::from_unix_timestamp_nanos(nanos)
                .ok()
                .and_then(|t| t.format(&Rfc3339).ok())
                .unwrap_or_default();
            let ours = format_timestamp(micros);
            assert_eq!(parse_timestamp(&ours), Ok(micros), "{ours}");
            assert_eq!(ours.get(..19), expected.get(..19), "{micros}");
            micros += 7_777_777_777_777;
        }
    }
}
