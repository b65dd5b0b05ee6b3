//! The fast path of [`decode`](crate::decode): one pass over the payload's bytes, no `serde_json::Value` tree.
//!
//! It only ever answers for payloads it is sure about: valid JSON (as `serde_json` reads it) that passes
//! every rule. On anything else (a syntax error, a rule broken, a duplicate key, a `\u` surrogate escape,
//! a key starting with `$serde_json::private::`, nesting deeper than [`MAX_DEPTH`]) it returns `None` and
//! `decode` runs the reference path, so error paths, kinds and messages are those of the reference path by
//! construction. Where it answers, the [`Position`] is the one the reference path gives, byte for byte:
//! - the same rule functions check the fields (`finite_f64`, `parse_timestamp`, `push_number`,
//!   `push_bigint`, `push_buffer`, `push_str_literal`);
//! - objects of `attributes` are written with their keys sorted by bytes, as `serde_json::Map` (a
//!   `BTreeMap`) orders them; objects with a repeated key are left to the reference path (last wins there);
//! - a number's text is the source text; `serde_json` writes exponents as `e+`/`e-`, which only matters for
//!   the value of a double (the same) or for integer literals (which have no exponent).
//!
//! `tests/differential.rs` checks both paths agree on generated inputs and on every input of the other tests.

use std::borrow::Cow;
use std::ops::Range;

use crate::attributes::{push_bigint, push_buffer, push_number, BIGINT_KEY, BUFFER_KEY};
use crate::json::push_str_literal;
use crate::number::finite_f64;
use crate::timestamp::parse_timestamp;
use crate::{Position, MAX_DEVICE_ID_BYTES};

/// The deepest nesting the fast path follows (the top-level object counts as 1). `serde_json` accepts
/// up to 127 levels, so everything within this bound is valid nesting for the reference path as well.
const MAX_DEPTH: u32 = 100;

/// Keys `serde_json` treats specially when it builds a `Value` (numbers and raw values in disguise).
pub(crate) const SERDE_PRIVATE_PREFIX: &str = "$serde_json::private::";

/// The top-level fields that become columns, in `Position` order.
const FIELDS: [&str; 10] = [
    "deviceId",
    "timestamp",
    "latitude",
    "longitude",
    "altitude",
    "angle",
    "speed",
    "satellites",
    "priority",
    "attributes",
];

/// A top-level field's value, as far as the fast path needs to know it.
enum Field<'a> {
    Null,
    Str(Cow<'a, str>),
    Num(&'a str),
    /// `attributes`, already in storage form.
    Attributes(String),
}

/// One member of an `attributes` object being written: its key and where its value's text is.
struct Entry<'a> {
    key: Cow<'a, str>,
    value: Range<usize>,
}

/// Decodes `payload` when it is a valid position the fast path is sure about; `None` means "ask the
/// reference path" (which may accept or refuse it).
pub(crate) fn decode(payload: &[u8]) -> Option<Position> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut scanner = Scanner { text, bytes: payload, at: 0, depth: 0, entries: Vec::new(), scratch: String::new() };
    let fields = scanner.top_level()?;
    position(fields)
}

/// Checks the top-level fields exactly as the reference path does; `None` when any rule is broken.
fn position(fields: [Option<Field<'_>>; 10]) -> Option<Position> {
    let [device_id, ts, latitude, longitude, altitude, angle, speed, satellites, priority, attributes] = fields;
    Some(Position {
        device_id: device(device_id?)?,
        ts_micros: match ts? {
            Field::Str(text) => parse_timestamp(&text).ok()?,
            _ => return None,
        },
        latitude: within(required(latitude)?, -90.0, 90.0)?,
        longitude: within(required(longitude)?, -180.0, 180.0)?,
        altitude: optional(altitude, finite_f64)?,
        angle: optional(angle, |t| within(t, 0.0, 360.0))?,
        speed: optional(speed, |t| within(t, 0.0, f64::MAX))?,
        satellites: optional(satellites, small_count)?,
        priority: optional(priority, small_count)?,
        attributes: match attributes {
            None | Some(Field::Null) => None,
            Some(Field::Attributes(text)) => Some(text),
            Some(_) => return None,
        },
    })
}

fn device(field: Field<'_>) -> Option<String> {
    let Field::Str(id) = field else {
        return None;
    };
    let ok = !id.is_empty() && id.len() <= MAX_DEVICE_ID_BYTES && !id.contains('\0');
    ok.then(|| id.into_owned())
}

/// A required number's text (`null` counts as missing).
fn required<'a>(field: Option<Field<'a>>) -> Option<&'a str> {
    match field? {
        Field::Num(text) => Some(text),
        _ => None,
    }
}

/// An optional number: absent or `null` is `Some(None)`; a number that fails `check`, or another type, `None`.
fn optional<T>(field: Option<Field<'_>>, check: impl FnOnce(&str) -> Option<T>) -> Option<Option<T>> {
    match field {
        None | Some(Field::Null) => Some(None),
        Some(Field::Num(text)) => check(text).map(Some),
        Some(_) => None,
    }
}

fn within(text: &str, min: f64, max: f64) -> Option<f64> {
    finite_f64(text).filter(|n| (min..=max).contains(n))
}

fn small_count(text: &str) -> Option<i16> {
    let n = finite_f64(text)?;
    let ok = n.fract() == 0.0 && (0.0..=f64::from(i16::MAX)).contains(&n);
    // In range and integral: the conversion is exact.
    ok.then_some(n as i16)
}

/// A cursor over the payload. Every method returns `None` as soon as something is not certain.
struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
    depth: u32,
    /// The members of the `attributes` objects being written, innermost last.
    entries: Vec<Entry<'a>>,
    /// Room to reorder one object's members.
    scratch: String,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// Skips JSON whitespace and returns the next byte.
    fn next_token(&mut self) -> Option<u8> {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.at += 1;
        }
        self.peek()
    }

    /// Consumes `byte` after whitespace.
    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next_token()? == byte).then(|| self.at += 1)
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    /// The top-level object: the known fields' values, the others checked and skipped.
    fn top_level(&mut self) -> Option<[Option<Field<'a>>; 10]> {
        let mut fields: [Option<Field<'a>>; 10] = Default::default();
        self.expect(b'{')?;
        self.enter()?;
        if self.next_token()? == b'}' {
            self.at += 1;
        } else {
            loop {
                let key = self.key()?;
                self.expect(b':')?;
                match FIELDS.iter().position(|name| *name == key) {
                    Some(index) => {
                        let slot = fields.get_mut(index)?;
                        if slot.is_some() {
                            return None;
                        }
                        *slot = Some(self.field(index == FIELDS.len() - 1)?);
                    }
                    None => self.skip_value()?,
                }
                match self.next_token()? {
                    b',' => self.at += 1,
                    b'}' => {
                        self.at += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.leave();
        // Only whitespace may follow.
        match self.next_token() {
            None => Some(fields),
            Some(_) => None,
        }
    }

    /// The value of a known top-level field.
    fn field(&mut self, is_attributes: bool) -> Option<Field<'a>> {
        match self.next_token()? {
            b'n' => {
                self.literal("null")?;
                Some(Field::Null)
            }
            b'{' if is_attributes => {
                let mut out = String::with_capacity(128);
                self.object(&mut out, false)?;
                Some(Field::Attributes(out))
            }
            _ if is_attributes => None,
            b'"' => self.string().map(Field::Str),
            b'-' | b'0'..=b'9' => self.number().map(Field::Num),
            _ => None,
        }
    }

    /// An object key (after whitespace): decoded, without NUL, not one of `serde_json`'s private keys.
    fn key(&mut self) -> Option<Cow<'a, str>> {
        if self.next_token()? != b'"' {
            return None;
        }
        let key = self.string()?;
        let ok = !key.contains('\0') && !key.starts_with(SERDE_PRIVATE_PREFIX);
        ok.then_some(key)
    }

    /// `true`, `false` or `null`.
    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word.as_bytes()).then(|| self.at = end)
    }

    /// A string literal (at its opening quote), decoded; borrowed when it has no escapes.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let start = self.at + 1;
        let mut i = start;
        loop {
            match *self.bytes.get(i)? {
                b'"' => {
                    self.at = i + 1;
                    return self.text.get(start..i).map(Cow::Borrowed);
                }
                b'\\' => break,
                0..=0x1f => return None,
                _ => i += 1,
            }
        }
        let mut owned = String::from(self.text.get(start..i)?);
        loop {
            match *self.bytes.get(i)? {
                b'"' => {
                    self.at = i + 1;
                    return Some(Cow::Owned(owned));
                }
                b'\\' => {
                    let escaped = match *self.bytes.get(i + 1)? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hex = self.bytes.get(i + 2..i + 6)?;
                            let code =
                                hex.iter().try_fold(0u32, |code, &b| Some(code * 16 + char::from(b).to_digit(16)?))?;
                            i += 4;
                            // Surrogates (paired or not) are left to the reference path.
                            char::from_u32(code)?
                        }
                        _ => return None,
                    };
                    owned.push(escaped);
                    i += 2;
                }
                0..=0x1f => return None,
                _ => {
                    let run = i;
                    while let Some(b) = self.bytes.get(i) {
                        if matches!(b, b'"' | b'\\' | 0..=0x1f) {
                            break;
                        }
                        i += 1;
                    }
                    owned.push_str(self.text.get(run..i)?);
                }
            }
        }
    }

    /// A number literal (at its first byte), by JSON's grammar: its source text.
    fn number(&mut self) -> Option<&'a str> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.some_digits()?;
        }
        self.text.get(start..self.at)
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }

    /// At least one digit.
    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }

    /// Checks and skips any value (after whitespace).
    fn skip_value(&mut self) -> Option<()> {
        match self.next_token()? {
            b'{' => {
                self.at += 1;
                self.enter()?;
                if self.next_token()? == b'}' {
                    self.at += 1;
                } else {
                    loop {
                        self.key()?;
                        self.expect(b':')?;
                        self.skip_value()?;
                        if self.end_of_members(b'}')? {
                            break;
                        }
                    }
                }
                self.leave();
            }
            b'[' => {
                self.at += 1;
                self.enter()?;
                if self.next_token()? == b']' {
                    self.at += 1;
                } else {
                    loop {
                        self.skip_value()?;
                        if self.end_of_members(b']')? {
                            break;
                        }
                    }
                }
                self.leave();
            }
            b'"' => {
                self.string()?;
            }
            b'-' | b'0'..=b'9' => {
                self.number()?;
            }
            b't' => self.literal("true")?,
            b'f' => self.literal("false")?,
            b'n' => self.literal("null")?,
            _ => return None,
        }
        Some(())
    }

    /// After a member: `,` (more follow, `false`) or the closing `close` (`true`).
    fn end_of_members(&mut self, close: u8) -> Option<bool> {
        let next = self.next_token()?;
        self.at += 1;
        match next {
            b',' => Some(false),
            b if b == close => Some(true),
            _ => None,
        }
    }

    /// Writes the storage form of an attribute value (after whitespace).
    fn value(&mut self, out: &mut String) -> Option<()> {
        match self.next_token()? {
            b'{' => self.object(out, true)?,
            b'[' => {
                self.at += 1;
                self.enter()?;
                out.push('[');
                if self.next_token()? == b']' {
                    self.at += 1;
                } else {
                    loop {
                        self.value(out)?;
                        if self.end_of_members(b']')? {
                            break;
                        }
                        out.push(',');
                    }
                }
                out.push(']');
                self.leave();
            }
            b'"' => {
                let text = self.string()?;
                if text.contains('\0') {
                    return None;
                }
                push_str_literal(out, &text);
            }
            b'-' | b'0'..=b'9' => push_number(out, self.number()?).ok()?,
            b't' => {
                self.literal("true")?;
                out.push_str("true");
            }
            b'f' => {
                self.literal("false")?;
                out.push_str("false");
            }
            b'n' => {
                self.literal("null")?;
                out.push_str("null");
            }
            _ => return None,
        }
        Some(())
    }

    /// Writes the storage form of an object (at its `{`): a sentinel when `sentinels` allows it and the object
    /// is exactly `{"__bigint": "…"}` or `{"__buffer_b64": "…"}`, else the members sorted by key.
    fn object(&mut self, out: &mut String, sentinels: bool) -> Option<()> {
        self.at += 1;
        self.enter()?;
        if self.next_token()? == b'}' {
            self.at += 1;
            out.push_str("{}");
            self.leave();
            return Some(());
        }
        let base = self.entries.len();
        let start = out.len();
        loop {
            let key = self.key()?;
            self.expect(b':')?;
            if sentinels && (key == BIGINT_KEY || key == BUFFER_KEY) {
                // Only the one-member form with a string is certain; the rest is the reference path's.
                if self.entries.len() != base || self.next_token()? != b'"' {
                    return None;
                }
                let text = self.string()?;
                self.expect(b'}')?;
                if key == BIGINT_KEY {
                    push_bigint(out, &text).ok()?;
                } else {
                    push_buffer(out, &text).ok()?;
                }
                self.leave();
                return Some(());
            }
            let value_start = out.len();
            self.value(out)?;
            self.entries.push(Entry { key, value: value_start - start..out.len() - start });
            if self.end_of_members(b'}')? {
                break;
            }
        }
        self.write_members(out, base, start)?;
        self.leave();
        Some(())
    }

    /// Rewrites the values written since `start` (members `base..` of `entries`) as an object sorted by key.
    fn write_members(&mut self, out: &mut String, base: usize, start: usize) -> Option<()> {
        let members = self.entries.get_mut(base..)?;
        if !members.windows(2).all(|pair| pair[0].key < pair[1].key) {
            members.sort_unstable_by(|a, b| a.key.cmp(&b.key));
            if members.windows(2).any(|pair| pair[0].key == pair[1].key) {
                return None;
            }
        }
        self.scratch.clear();
        self.scratch.push_str(out.get(start..)?);
        out.truncate(start);
        out.push('{');
        for (index, member) in members.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            push_str_literal(out, &member.key);
            out.push(':');
            out.push_str(self.scratch.get(member.value.clone())?);
        }
        out.push('}');
        self.entries.truncate(base);
        Some(())
    }
}
