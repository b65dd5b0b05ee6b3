//! The shapes Redis replies come in, parsed by hand so that every one Redis can send (deleted entries,
//! missing lag, RESP2 or RESP3 maps) is handled instead of failing a whole read; and what they are parsed
//! into.

use redis::{RedisError, Value};

/// One stream entry as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Stream id, `ms-seq`.
    pub id: String,
    /// Field/value pairs; `None` when the entry was deleted from the stream while pending.
    pub fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl Entry {
    /// Bytes of its field names and values (what the read budget counts).
    pub fn bytes(&self) -> usize {
        self.fields.as_deref().unwrap_or_default().iter().map(|(f, v)| f.len() + v.len()).sum()
    }

    /// The value of `field`, if the entry has it.
    pub fn field(&self, field: &str) -> Option<&[u8]> {
        self.fields.as_ref()?.iter().find(|(f, _)| f == field.as_bytes()).map(|(_, v)| v.as_slice())
    }
}

/// What settling a batch did.
#[derive(Debug, Default)]
pub struct Settled {
    /// Entries acknowledged (stored ones and dead letters).
    pub acked: u64,
    /// For each dead letter, in order: whether it was written (false: another consumer had settled it).
    pub written: Vec<bool>,
}

/// What a claim sweep returned.
#[derive(Debug, Default)]
pub struct Claimed {
    /// Where the next sweep continues (`0-0` when the sweep is complete).
    pub next: String,
    /// Entries now owned by this consumer.
    pub entries: Vec<Entry>,
    /// Ids that were pending but are gone from the stream (Redis removed them from the pending list).
    pub deleted: usize,
}

/// The group's counters from XINFO GROUPS.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GroupInfo {
    /// Entries delivered and not acknowledged.
    pub pending: i64,
    /// Entries not yet delivered to the group; `None` when Redis cannot tell (after deletions).
    pub lag: Option<i64>,
}

/// An error for a reply that has an unexpected shape.
fn malformed(what: &str) -> RedisError {
    RedisError::from((redis::ErrorKind::Parse, "unexpected reply shape", what.to_owned()))
}

/// The elements of an array or set reply (`Nil` is empty).
pub(super) fn items(value: Value) -> Result<Vec<Value>, RedisError> {
    match value {
        Value::Array(v) | Value::Set(v) => Ok(v),
        Value::Nil => Ok(Vec::new()),
        Value::Map(pairs) => Ok(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        _ => Err(malformed("expected an array")),
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

pub(super) fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

/// `[[id, [f, v, …] | nil], …]`
pub(super) fn parse_entries(value: Value) -> Result<Vec<Entry>, RedisError> {
    items(value)?
        .into_iter()
        .map(|entry| {
            let mut parts = items(entry)?.into_iter();
            let id = parts.next().as_ref().and_then(text).ok_or_else(|| malformed("entry id"))?;
            let fields = match parts.next() {
                None | Some(Value::Nil) => None,
                Some(list) => {
                    let mut flat = items(list)?.into_iter();
                    let mut pairs = Vec::new();
                    while let (Some(f), Some(v)) = (flat.next(), flat.next()) {
                        pairs.push((bytes(f).ok_or_else(|| malformed("field"))?, bytes(v).unwrap_or_default()));
                    }
                    Some(pairs)
                }
            };
            Ok(Entry { id, fields })
        })
        .collect()
}

/// XREADGROUP: `nil` (timeout) or `[[stream, entries]]` (a map in RESP3).
pub(super) fn parse_read(value: Value) -> Result<Vec<Entry>, RedisError> {
    let mut streams = items(value)?.into_iter();
    let first = match streams.next() {
        None => return Ok(Vec::new()),
        Some(v) => v,
    };
    // RESP2: first = [name, entries]; RESP3 map flattened by `items`: first = name, second = entries.
    match first {
        Value::Array(pair) => parse_entries(pair.into_iter().nth(1).unwrap_or(Value::Nil)),
        _ => parse_entries(streams.next().unwrap_or(Value::Nil)),
    }
}

/// XAUTOCLAIM's `[next, entries, deleted ids]`, or the claim script's `[next, entries, deleted count]`.
pub(super) fn parse_autoclaim(value: Value) -> Result<Claimed, RedisError> {
    let mut parts = items(value)?.into_iter();
    let next = parts.next().as_ref().and_then(text).ok_or_else(|| malformed("XAUTOCLAIM cursor"))?;
    let all = parse_entries(parts.next().unwrap_or(Value::Nil))?;
    let deleted_ids = match parts.next() {
        Some(Value::Int(n)) => usize::try_from(n).unwrap_or(0),
        other => other.map(items).transpose()?.map_or(0, |d| d.len()),
    };
    // Redis 6.2 reports deleted entries as nil bodies instead of a third element.
    let (entries, gone): (Vec<Entry>, Vec<Entry>) = all.into_iter().partition(|e| e.fields.is_some());
    Ok(Claimed { next, entries, deleted: deleted_ids + gone.len() })
}

/// XPENDING extended form: `[[id, consumer, idle ms, deliveries], …]`.
pub(super) fn parse_pending(value: Value) -> Result<Vec<(String, u64)>, RedisError> {
    items(value)?
        .into_iter()
        .map(|row| {
            let row = items(row)?;
            let id = row.first().and_then(text).ok_or_else(|| malformed("XPENDING id"))?;
            let count = row.get(3).and_then(int).ok_or_else(|| malformed("XPENDING count"))?;
            Ok((id, u64::try_from(count).unwrap_or(0)))
        })
        .collect()
}

/// The settle script's `{acked, {written…}}`.
pub(super) fn parse_settled(value: Value) -> Result<Settled, RedisError> {
    let mut parts = items(value)?.into_iter();
    let acked = parts.next().as_ref().and_then(int).ok_or_else(|| malformed("settle count"))?;
    let written = items(parts.next().unwrap_or(Value::Nil))?.iter().map(|v| int(v) == Some(1)).collect();
    Ok(Settled { acked: u64::try_from(acked).unwrap_or(0), written })
}

/// XINFO GROUPS: one `[k, v, k, v…]` (or map) per group.
pub(super) fn parse_group_info(value: Value, group: &str) -> Option<GroupInfo> {
    items(value).ok()?.into_iter().find_map(|g| {
        let flat = items(g).ok()?;
        let get = |key: &str| flat.chunks(2).find(|kv| text(&kv[0]).as_deref() == Some(key)).and_then(|kv| kv.get(1));
        if get("name").and_then(text).as_deref() != Some(group) {
            return None;
        }
        Some(GroupInfo { pending: get("pending").and_then(int).unwrap_or(0), lag: get("lag").and_then(int) })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_reads_with_deleted_entries() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![
                Value::Array(vec![bulk("1-1"), Value::Array(vec![bulk("payload"), bulk("{}")])]),
                Value::Array(vec![bulk("1-2"), Value::Nil]),
            ]),
        ])]);
        let entries = parse_read(reply).expect("parses");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].field("payload"), Some(&b"{}"[..]));
        assert_eq!(entries[1].fields, None);
        assert!(parse_read(Value::Nil).expect("nil").is_empty());
    }

    #[test]
    fn parses_autoclaim_and_pending_and_info() {
        let reply = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![Value::Array(vec![bulk("2-1"), Value::Array(vec![bulk("a"), bulk("b")])])]),
            Value::Array(vec![bulk("2-0")]),
        ]);
        let claimed = parse_autoclaim(reply).expect("parses");
        assert_eq!((claimed.next.as_str(), claimed.entries.len(), claimed.deleted), ("0-0", 1, 1));
        let pending = Value::Array(vec![Value::Array(vec![bulk("2-1"), bulk("c"), Value::Int(5), Value::Int(3)])]);
        assert_eq!(parse_pending(pending).expect("parses"), vec![("2-1".to_owned(), 3)]);
        let info = Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk("g"),
            bulk("pending"),
            Value::Int(4),
            bulk("lag"),
            Value::Nil,
        ])]);
        assert_eq!(parse_group_info(info.clone(), "g"), Some(GroupInfo { pending: 4, lag: None }));
        assert_eq!(parse_group_info(info, "other"), None);
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        assert!(parse_read(Value::Int(3)).is_err());
        assert!(parse_autoclaim(Value::Array(vec![])).is_err());
        assert!(parse_pending(Value::Array(vec![Value::Array(vec![bulk("1-1")])])).is_err());
        assert!(parse_settled(Value::Okay).is_err());
    }
}
