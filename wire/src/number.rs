//! JavaScript numbers: formatting like `Number#toString`, and the storage form of doubles.
//!
//! A JSON number coming from JavaScript is a double. The storage form keeps integers within
//! ±[`MAX_SAFE_INTEGER`] as integers and writes every other double in positional notation with a fractional
//! part, because PostgreSQL's `numeric` drops the difference between `2` and `2e0` but keeps `2.0`.

use crate::json::push_display;

/// The largest integer a JavaScript number holds exactly: 2^53 − 1.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// `value` formatted like JavaScript's `Number#toString` (`112.0` → `112`, `1e21` → `1e+21`),
/// or `None` when it is NaN or infinite (JSON has no such numbers).
pub fn js_number(value: f64) -> Option<String> {
    value.is_finite().then(|| ryu_js::Buffer::new().format_finite(value).to_owned())
}

/// Appends `value` (finite) formatted like JavaScript's `Number#toString`.
pub(crate) fn push_js_number(out: &mut String, value: f64) {
    out.push_str(ryu_js::Buffer::new().format_finite(value));
}

/// Whether a JSON number's text is an integer literal (no fraction, no exponent).
pub(crate) fn is_integer_literal(text: &str) -> bool {
    !text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E'))
}

/// The value of an integer literal when it is a safe JavaScript integer.
pub(crate) fn safe_integer(text: &str) -> Option<i64> {
    text.parse::<i64>().ok().filter(|n| n.unsigned_abs() <= MAX_SAFE_INTEGER.unsigned_abs())
}

/// The double a JSON number's text denotes, when it is finite.
pub(crate) fn finite_f64(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// Appends the storage form of a finite double: its shortest round-trip decimal in positional notation, always
/// with a fractional part (`2.0`, `0.00000015`, `1000000000000000000000.0`); `-0` is written `0.0`.
pub(crate) fn push_storage_double(out: &mut String, value: f64) {
    if value == 0.0 {
        out.push_str("0.0");
        return;
    }
    let mut buffer = ryu_js::Buffer::new();
    let js = buffer.format_finite(value);
    let (sign, body) = match js.strip_prefix('-') {
        Some(body) => ("-", body),
        None => ("", js),
    };
    out.push_str(sign);
    match body.split_once('e') {
        None => {
            out.push_str(body);
            if !body.contains('.') {
                out.push_str(".0");
            }
        }
        Some((mantissa, exponent)) => push_positional(out, mantissa, exponent.parse().unwrap_or(0)),
    }
}

/// Appends `mantissa × 10^exponent` in positional notation, where `mantissa` is `d` or `d.ddd` with `d` ≠ 0
/// (the scientific form `Number#toString` prints), always with a fractional part.
fn push_positional(out: &mut String, mantissa: &str, exponent: i32) {
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = || whole.chars().chain(fraction.chars());
    let digit_count = whole.len() + fraction.len();
    // The decimal point sits after `point` digits (before the first digit when negative).
    let point = i64::try_from(whole.len()).unwrap_or(1) + i64::from(exponent);
    if point <= 0 {
        out.push_str("0.");
        push_zeros(out, point.unsigned_abs());
        out.extend(digits());
    } else if point.unsigned_abs() >= digit_count as u64 {
        out.extend(digits());
        push_zeros(out, point.unsigned_abs() - digit_count as u64);
        out.push_str(".0");
    } else {
        for (i, digit) in digits().enumerate() {
            if i as u64 == point.unsigned_abs() {
                out.push('.');
            }
            out.push(digit);
        }
    }
}

fn push_zeros(out: &mut String, count: u64) {
    out.extend(std::iter::repeat_n('0', usize::try_from(count).unwrap_or(0)));
}

/// Appends an integer.
pub(crate) fn push_integer(out: &mut String, value: i64) {
    push_display(out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(value: f64) -> String {
        let mut out = String::new();
        push_storage_double(&mut out, value);
        out
    }

    #[test]
    fn js_formatting() {
        assert_eq!(js_number(112.0).as_deref(), Some("112"));
        assert_eq!(js_number(54.687157).as_deref(), Some("54.687157"));
        assert_eq!(js_number(1e21).as_deref(), Some("1e+21"));
        assert_eq!(js_number(1.5e-7).as_deref(), Some("1.5e-7"));
        assert_eq!(js_number(-0.0).as_deref(), Some("0"));
        assert_eq!(js_number(18446744073709551616.0).as_deref(), Some("18446744073709552000"));
        assert_eq!(js_number(f64::NAN), None);
        assert_eq!(js_number(f64::INFINITY), None);
    }

    #[test]
    fn storage_form_is_positional_with_a_fraction() {
        assert_eq!(storage(2.0), "2.0");
        assert_eq!(storage(-2.5), "-2.5");
        assert_eq!(storage(-0.0), "0.0");
        assert_eq!(storage(0.1), "0.1");
        assert_eq!(storage(1e21), "1000000000000000000000.0");
        assert_eq!(storage(-1.5e22), "-15000000000000000000000.0");
        assert_eq!(storage(1.5e-7), "0.00000015");
        assert_eq!(storage(-1.25e-10), "-0.000000000125");
        assert_eq!(storage(1e-7), "0.0000001");
        assert_eq!(storage(123456789012.5), "123456789012.5");
        assert_eq!(storage(1.2345e25), "12345000000000000000000000.0");
        assert_eq!(storage(5e-324), format!("0.{}5", "0".repeat(323)));
        assert_eq!(storage(f64::MAX), format!("17976931348623157{}.0", "0".repeat(292)));
    }

    #[test]
    fn storage_form_round_trips_through_f64() {
        let samples = [1.0, 0.3, 1e300, 2.2250738585072014e-308, 123.456e-5, 9007199254740993.0, 6.02e23];
        for value in samples.iter().flat_map(|v| [*v, -*v]) {
            let text = storage(value);
            assert!(!text.contains('e'), "{text}");
            assert!(text.contains('.'), "{text}");
            assert_eq!(text.parse::<f64>().ok(), Some(value), "{text}");
        }
    }

    #[test]
    fn integer_literals() {
        assert!(is_integer_literal("-12"));
        assert!(!is_integer_literal("1.0"));
        assert!(!is_integer_literal("1e5"));
        assert!(!is_integer_literal("1E5"));
        assert_eq!(safe_integer("9007199254740991"), Some(MAX_SAFE_INTEGER));
        assert_eq!(safe_integer("-9007199254740991"), Some(-MAX_SAFE_INTEGER));
        assert_eq!(safe_integer("9007199254740992"), None);
        assert_eq!(safe_integer("-9223372036854775808"), None);
        assert_eq!(safe_integer("-0"), Some(0));
        assert_eq!(finite_f64("1e400"), None);
        assert_eq!(finite_f64("1e-400"), Some(0.0));
    }
}
