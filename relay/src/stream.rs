//! Redis side: the consumer group's commands, with replies parsed by hand so that every shape Redis can
//! send (deleted entries, missing lag, RESP2 or RESP3 maps) is handled instead of failing a whole read.

use std::time::Duration;

use redis::{aio::MultiplexedConnection, AsyncConnectionConfig, Client, RedisError, Script, Value};

use crate::config::StreamNames;

/// Longest time to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a reply on top of a blocking read's own timeout.
const REPLY_MARGIN: Duration = Duration::from_secs(5);
/// Original fields copied into a dead letter at most (Lua's `unpack` has a limit); more are summarised.
const MAX_DEAD_LETTER_FIELDS: usize = 1000;

/// Acknowledges a batch in one atomic step: XACK for the stored entries, and for each dead letter an
/// XADD to the dead-letter stream followed by its XACK. A dead letter is written only if its entry is
/// still pending (XPENDING for that one id), so two relays that both handled an entry (one of them after
/// claiming it) write one dead letter, not two. The dead letter is written *before* the entry is
/// acknowledged: if the XADD fails (say WRONGTYPE, the dead-letter key holds a string) the script stops
/// there with an error and the entry stays pending, to be settled again; an entry is never acknowledged
/// without its dead letter. (Redis does not roll back a script that stops with an error, so what it did
/// before — acknowledgements and earlier dead letters — stays done; doing it again is harmless because
/// nothing is acknowledged or written twice.)
/// Settled entries also lose their count of unanswered store attempts.
/// KEYS: stream, dead-letter stream, attempts hash. ARGV: group, n, n ids to ack, then per dead letter: id,
/// pair count, field/value pairs. Returns {entries acked, {1|0 per dead letter: written}}.
const SETTLE_LUA: &str = r"
local group = ARGV[1]
local n = tonumber(ARGV[2])
local acked = 0
for first = 3, 2 + n, 500 do
  local last = math.min(first + 499, 2 + n)
  acked = acked + redis.call('XACK', KEYS[1], group, unpack(ARGV, first, last))
  redis.call('HDEL', KEYS[3], unpack(ARGV, first, last))
end
local written = {}
local i = 3 + n
while i <= #ARGV do
  local id = ARGV[i]
  local pairs_count = tonumber(ARGV[i + 1])
  if #redis.call('XPENDING', KEYS[1], group, id, id, 1) > 0 then
    redis.call('XADD', KEYS[2], '*', unpack(ARGV, i + 2, i + 1 + 2 * pairs_count))
    acked = acked + redis.call('XACK', KEYS[1], group, id)
    redis.call('HDEL', KEYS[3], id)
    written[#written + 1] = 1
  else
    written[#written + 1] = 0
  end
  i = i + 2 + 2 * pairs_count
end
return {acked, written}
";

/// Adds ARGV[1] (1 or -1) to the unanswered store attempts of each id in ARGV[2..] (a field of the hash
/// KEYS[1]; a count that drops to 0 is removed). Returns the new counts.
const ATTEMPTS_LUA: &str = r"
local counts = {}
for i = 2, #ARGV do
  local n = redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[1])
  if n <= 0 then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = 0
  end
  counts[#counts + 1] = n
end
return counts
";

/// Reads up to ARGV[3] new entries for the group, but only as many as fit in ARGV[4] bytes (field names
/// and values; the entry that crosses the budget is included, so a batch holds at most the budget plus one
/// entry, and an entry larger than the budget comes alone). The sizes are measured with XRANGE after the
/// group's last delivered id before XREADGROUP delivers exactly that many; both run in one atomic step.
/// KEYS: stream. ARGV: group, consumer, count, budget. Returns the entries (`[[id, [f, v, …]], …]`).
const READ_NEW_LUA: &str = r"
local group, consumer = ARGV[1], ARGV[2]
local count, budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local last
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, delivered
  for k = 1, #g, 2 do
    if g[k] == 'name' then name = g[k + 1] elseif g[k] == 'last-delivered-id' then delivered = g[k + 1] end
  end
  if name == group then last = delivered end
end
if not last then
  return redis.error_reply('NOGROUP No such consumer group ' .. group .. ' for key name ' .. KEYS[1])
end
local n, bytes = 0, 0
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', count)) do
  n = n + 1
  for _, v in ipairs(e[2]) do bytes = bytes + #v end
  if bytes >= budget then break end
end
if n == 0 then return {} end
local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', n, 'STREAMS', KEYS[1], '>')
if not reply then return {} end
return reply[1][2]
";

/// Like `READ_NEW_LUA` for this consumer's own pending entries after id ARGV[5] (a history read): sizes
/// from XPENDING and XRANGE of each id, then XREADGROUP of exactly that many.
const READ_PENDING_LUA: &str = r"
local group, consumer = ARGV[1], ARGV[2]
local count, budget, after = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local n, bytes = 0, 0
for _, p in ipairs(redis.call('XPENDING', KEYS[1], group, '(' .. after, '+', count, consumer)) do
  n = n + 1
  local e = redis.call('XRANGE', KEYS[1], p[1], p[1])[1]
  if e then
    for _, v in ipairs(e[2]) do bytes = bytes + #v end
  end
  if bytes >= budget then break end
end
if n == 0 then return {} end
local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', n, 'STREAMS', KEYS[1], after)
if not reply then return {} end
return reply[1][2]
";

/// Takes over entries idle for at least ARGV[3] ms on any consumer of the group (what XAUTOCLAIM does),
/// scanning the pending list from ARGV[4], at most ARGV[5] entries and only as many as fit in ARGV[6] bytes
/// (plus the entry that crosses the budget): each is measured with XRANGE before XCLAIM takes it. Pending
/// ids whose entry is gone from the stream are removed from the pending list (XACK), as XAUTOCLAIM does.
/// KEYS: stream. ARGV: group, consumer, min idle ms, start, count, budget. Returns {next start ('0-0' when
/// the sweep is complete), entries, count of ids gone from the stream}.
const CLAIM_LUA: &str = r"
local group, consumer, min_idle, start = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local count, budget = tonumber(ARGV[5]), tonumber(ARGV[6])
local pending = redis.call('XPENDING', KEYS[1], group, 'IDLE', min_idle, start, '+', count)
local ids, gone, bytes, last = {}, 0, 0, nil
for _, p in ipairs(pending) do
  last = p[1]
  local e = redis.call('XRANGE', KEYS[1], p[1], p[1])[1]
  if e then
    ids[#ids + 1] = p[1]
    for _, v in ipairs(e[2]) do bytes = bytes + #v end
  else
    redis.call('XACK', KEYS[1], group, p[1])
    gone = gone + 1
  end
  if bytes >= budget then break end
end
local next_start = '0-0'
if last and (#pending == count or bytes >= budget) then next_start = '(' .. last end
local entries = {}
for first = 1, #ids, 500 do
  local claimed = redis.call('XCLAIM', KEYS[1], group, consumer, min_idle,
                             unpack(ids, first, math.min(first + 499, #ids)))
  for _, e in ipairs(claimed) do entries[#entries + 1] = e end
end
return {next_start, entries, gone}
";

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

/// A dead letter to write: the entry, why, and the error.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// The entry that could not be stored.
    pub entry: Entry,
    /// Machine-readable reason (also the metric label): `invalid`, `missing_payload`, `rejected`,
    /// `max_deliveries`.
    pub reason: &'static str,
    /// Human-readable error; for `invalid` it starts with the field path.
    pub error: String,
}

impl DeadLetter {
    /// Bytes it carries to Redis (original fields and the error).
    pub fn bytes(&self) -> usize {
        self.entry.bytes() + self.error.len()
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

/// A Redis connection for one task that reconnects on demand after a failure.
pub struct Link {
    /// Where to connect.
    client: Client,
    /// Connection settings (reply timeout covers the longest blocking read).
    config: AsyncConnectionConfig,
    /// The live connection; dropped after a connection-level error so the next call reconnects.
    connection: Option<MultiplexedConnection>,
}

impl Link {
    /// A link whose replies may take up to `longest_block` plus a margin.
    pub fn new(info: redis::ConnectionInfo, longest_block: Duration) -> Result<Link, RedisError> {
        Ok(Link {
            client: Client::open(info)?,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(longest_block + REPLY_MARGIN)),
            connection: None,
        })
    }

    /// Runs `cmd`; forgets the connection after an error that is not a reply from the server.
    pub async fn query(&mut self, cmd: &redis::Cmd) -> Result<Value, RedisError> {
        let connection = self.connection().await?;
        let result = cmd.query_async(connection).await;
        self.forget_if_broken(result)
    }

    /// Runs a script invocation; same reconnect rule as [`Link::query`].
    async fn invoke(&mut self, invocation: &redis::ScriptInvocation<'_>) -> Result<Value, RedisError> {
        let connection = self.connection().await?;
        let result = invocation.invoke_async(connection).await;
        self.forget_if_broken(result)
    }

    async fn connection(&mut self) -> Result<&mut MultiplexedConnection, RedisError> {
        if self.connection.is_none() {
            let c = self.client.get_multiplexed_async_connection_with_config(&self.config).await?;
            self.connection = Some(c);
        }
        // Set just above when it was empty.
        self.connection.as_mut().ok_or_else(|| RedisError::from(std::io::Error::other("no connection")))
    }

    fn forget_if_broken<T>(&mut self, result: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(e) = &result {
            // A reply from the server leaves the connection usable; anything else may not.
            if !matches!(e.kind(), redis::ErrorKind::Server(_)) {
                self.connection = None;
            }
        }
        result
    }

    /// Whether a connection is currently open.
    pub fn is_connected(&self) -> bool {
        self.connection.is_some()
    }

    /// PING.
    pub async fn ping(&mut self) -> Result<(), RedisError> {
        self.query(&redis::cmd("PING")).await.map(drop)
    }
}

/// The consumer group's operations, for one consumer.
#[derive(Clone)]
pub struct Group {
    /// Names of stream, group, consumer, dead-letter stream and payload field.
    pub names: StreamNames,
    /// The settle script (loaded on first use, reloaded after a Redis restart).
    settle: Script,
    /// The attempt-counting script.
    attempts: Script,
    /// The byte-bounded read of new entries.
    read_new: Script,
    /// The byte-bounded read of own pending entries.
    read_pending: Script,
    /// The byte-bounded claim sweep.
    claim: Script,
}

impl Group {
    /// Operations for `names`.
    pub fn new(names: StreamNames) -> Group {
        Group {
            names,
            settle: Script::new(SETTLE_LUA),
            attempts: Script::new(ATTEMPTS_LUA),
            read_new: Script::new(READ_NEW_LUA),
            read_pending: Script::new(READ_PENDING_LUA),
            claim: Script::new(CLAIM_LUA),
        }
    }

    /// Creates the group (and the stream) unless it exists. A new group starts at the beginning of the
    /// stream, so entries written before the first relay started are ingested too.
    pub async fn ensure(&self, link: &mut Link) -> Result<(), RedisError> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE").arg(&self.names.stream).arg(&self.names.group).arg("0").arg("MKSTREAM");
        match link.query(&cmd).await {
            Ok(_) => {
                tracing::info!(stream = %self.names.stream, group = %self.names.group, "created consumer group");
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Up to `count` new entries within `budget` bytes (plus one entry; see `READ_NEW_LUA`); with `block`,
    /// waits up to that long for the first when there is none yet.
    pub async fn read_new(
        &self,
        link: &mut Link,
        count: usize,
        budget: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Entry>, RedisError> {
        let entries = self.read_new_within(link, count, budget).await?;
        let Some(block) = block.filter(|_| entries.is_empty()) else { return Ok(entries) };
        // Nothing yet: wait for one entry, then take what else fits.
        let mut cmd = self.read_cmd(1);
        cmd.arg("BLOCK").arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1));
        cmd.arg("STREAMS").arg(&self.names.stream).arg(">");
        let mut entries = parse_read(link.query(&cmd).await?)?;
        let used = entries.first().map_or(budget, Entry::bytes);
        if !entries.is_empty() && count > 1 && used < budget {
            entries.extend(self.read_new_within(link, count - 1, budget - used).await?);
        }
        Ok(entries)
    }

    async fn read_new_within(&self, link: &mut Link, count: usize, budget: usize) -> Result<Vec<Entry>, RedisError> {
        let mut invocation = self.read_new.key(&self.names.stream);
        invocation.arg(&self.names.group).arg(&self.names.consumer).arg(count).arg(budget);
        parse_entries(link.invoke(&invocation).await?)
    }

    /// Up to `count` of this consumer's own pending entries after id `after`, within `budget` bytes (plus one
    /// entry). A history read: Redis counts it as a delivery (the relay counts attempts instead, see
    /// `max_deliveries`).
    pub async fn read_pending(
        &self,
        link: &mut Link,
        count: usize,
        budget: usize,
        after: &str,
    ) -> Result<Vec<Entry>, RedisError> {
        let mut invocation = self.read_pending.key(&self.names.stream);
        invocation.arg(&self.names.group).arg(&self.names.consumer).arg(count).arg(budget).arg(after);
        parse_entries(link.invoke(&invocation).await?)
    }

    fn read_cmd(&self, count: usize) -> redis::Cmd {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(&self.names.group).arg(&self.names.consumer).arg("COUNT").arg(count);
        cmd
    }

    /// Takes over up to `count` entries idle for at least `min_idle`, from `start`, within `budget` bytes
    /// (plus one entry; see `CLAIM_LUA`).
    pub async fn autoclaim(
        &self,
        link: &mut Link,
        min_idle: Duration,
        start: &str,
        count: usize,
        budget: usize,
    ) -> Result<Claimed, RedisError> {
        let mut invocation = self.claim.key(&self.names.stream);
        invocation
            .arg(&self.names.group)
            .arg(&self.names.consumer)
            .arg(u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX))
            .arg(start)
            .arg(count)
            .arg(budget);
        parse_autoclaim(link.invoke(&invocation).await?)
    }

    /// Delivery counts of this consumer's pending entries with ids in `[first, last]`.
    pub async fn deliveries(
        &self,
        link: &mut Link,
        first: &str,
        last: &str,
        count: usize,
    ) -> Result<Vec<(String, u64)>, RedisError> {
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&self.names.stream).arg(&self.names.group).arg(first).arg(last).arg(count).arg(&self.names.consumer);
        parse_pending(link.query(&cmd).await?)
    }

    /// Acknowledges `stored` and writes-and-acknowledges `dead`, atomically (see `SETTLE_LUA`).
    pub async fn settle(&self, link: &mut Link, stored: &[&str], dead: &[DeadLetter]) -> Result<Settled, RedisError> {
        if stored.is_empty() && dead.is_empty() {
            return Ok(Settled::default());
        }
        let mut invocation = self.settle.key(&self.names.stream);
        invocation
            .key(&self.names.dead_letter)
            .key(&self.names.attempts)
            .arg(&self.names.group)
            .arg(stored.len())
            .arg(stored);
        for letter in dead {
            let meta = self.dead_letter_fields(letter);
            let original = letter.entry.fields.as_deref().unwrap_or_default();
            let copied = &original[..original.len().min(MAX_DEAD_LETTER_FIELDS)];
            let note = (original.len() > copied.len())
                .then(|| format!("{} original fields; the first {} are kept", original.len(), copied.len()));
            let pairs = meta.len() + copied.len() + usize::from(note.is_some());
            invocation.arg(&letter.entry.id).arg(pairs);
            for (f, v) in &meta {
                invocation.arg(*f).arg(v.as_bytes());
            }
            for (f, v) in copied {
                invocation.arg(f.as_slice()).arg(v.as_slice());
            }
            if let Some(note) = &note {
                invocation.arg("trackway.note").arg(note.as_bytes());
            }
        }
        parse_settled(link.invoke(&invocation).await?)
    }

    /// Adds `delta` (1 before an attempt, -1 once it was answered) to the unanswered store attempts of
    /// `ids`; returns the new counts, in order.
    pub async fn count_attempts(&self, link: &mut Link, ids: &[&str], delta: i64) -> Result<Vec<u64>, RedisError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.attempts.key(&self.names.attempts);
        invocation.arg(delta).arg(ids);
        let counts = items(link.invoke(&invocation).await?)?;
        Ok(counts.iter().map(|v| int(v).and_then(|n| u64::try_from(n).ok()).unwrap_or(0)).collect())
    }

    fn dead_letter_fields(&self, letter: &DeadLetter) -> [(&'static str, String); 4] {
        [
            ("trackway.source_id", letter.entry.id.clone()),
            ("trackway.reason", letter.reason.to_owned()),
            ("trackway.error", letter.error.clone()),
            ("trackway.consumer", self.names.consumer.clone()),
        ]
    }

    /// The group's pending count and lag.
    pub async fn info(&self, link: &mut Link) -> Result<Option<GroupInfo>, RedisError> {
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("GROUPS").arg(&self.names.stream);
        Ok(parse_group_info(link.query(&cmd).await?, &self.names.group))
    }

    /// Removes this consumer from the group if it holds no pending entries (tidy exit).
    pub async fn leave_if_idle(&self, link: &mut Link) -> Result<bool, RedisError> {
        if !self.deliveries(link, "-", "+", 1).await?.is_empty() {
            return Ok(false);
        }
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("DELCONSUMER").arg(&self.names.stream).arg(&self.names.group).arg(&self.names.consumer);
        link.query(&cmd).await.map(|_| true)
    }
}

/// An error for a reply that has an unexpected shape.
fn malformed(what: &str) -> RedisError {
    RedisError::from((redis::ErrorKind::Parse, "unexpected reply shape", what.to_owned()))
}

/// The elements of an array or set reply (`Nil` is empty).
fn items(value: Value) -> Result<Vec<Value>, RedisError> {
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

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

/// `[[id, [f, v, …] | nil], …]`
fn parse_entries(value: Value) -> Result<Vec<Entry>, RedisError> {
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
fn parse_read(value: Value) -> Result<Vec<Entry>, RedisError> {
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
fn parse_autoclaim(value: Value) -> Result<Claimed, RedisError> {
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
fn parse_pending(value: Value) -> Result<Vec<(String, u64)>, RedisError> {
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
fn parse_settled(value: Value) -> Result<Settled, RedisError> {
    let mut parts = items(value)?.into_iter();
    let acked = parts.next().as_ref().and_then(int).ok_or_else(|| malformed("settle count"))?;
    let written = items(parts.next().unwrap_or(Value::Nil))?.iter().map(|v| int(v) == Some(1)).collect();
    Ok(Settled { acked: u64::try_from(acked).unwrap_or(0), written })
}

/// XINFO GROUPS: one `[k, v, k, v…]` (or map) per group.
fn parse_group_info(value: Value, group: &str) -> Option<GroupInfo> {
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
