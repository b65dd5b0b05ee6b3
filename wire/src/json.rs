//! Small helpers that append compact JSON text to a `String`.

use std::fmt::{Display, Write};

/// Appends `value` as a JSON string literal: quotes, backslashes and control characters escaped.
pub(crate) fn push_str_literal(out: &mut String, value: &str) {
    out.reserve(value.len() + 2);
    out.push('"');
    let mut plain_from = 0;
    for (at, c) in value.char_indices() {
        let escape = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            c if c < ' ' => "",
            _ => continue,
        };
        out.push_str(value.get(plain_from..at).unwrap_or_default());
        if escape.is_empty() {
            push_display(out, format_args!("\\u{:04x}", u32::from(c)));
        } else {
            out.push_str(escape);
        }
        plain_from = at + c.len_utf8();
    }
    out.push_str(value.get(plain_from..).unwrap_or_default());
    out.push('"');
}

/// Appends anything printable (writing to a `String` cannot fail).
pub(crate) fn push_display(out: &mut String, value: impl Display) {
    let _ = write!(out, "{value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literal(s: &str) -> String {
        let mut out = String::new();
        push_str_literal(&mut out, s);
        out
    }

    #[test]
    fn escapes_like_serde_json() {
        for s in ["", "plain", "q\"b\\", "\n\r\t\u{8}\u{c}", "\u{1}\u{1f}\0", "ünïcødé 🚀", "\u{7f}\u{2028}"] {
            assert_eq!(literal(s), serde_json::to_string(s).unwrap_or_default(), "{s:?}");
        }
    }
}
