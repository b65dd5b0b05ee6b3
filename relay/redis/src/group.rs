//! The consumer group's commands for one consumer: create the group, read new and own pending entries,
//! claim idle entries, count store attempts, settle (acknowledge and dead-letter), inspect and leave. The
//! byte-bounded reads, the claim sweep and the settle step are Lua scripts (`scripts/*.lua`), each run
//! atomically.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redis::{RedisError, Script};

use super::{
    link::Link,
    reply::{
        int, items, parse_autoclaim, parse_entries, parse_group_info, parse_pending, parse_read, parse_settled,
        Claimed, Entry, GroupInfo, Settled,
    },
};
use crate::StreamNames;

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
/// nothing is acknowledged or written twice.) When Redis has lost the group since the entries were read
/// (a restart without persistence, a failover to a replica that never got it, `XGROUP DESTROY`), nothing is
/// pending: the XACKs count 0 and no dead letter is written, instead of an error retried forever with the
/// reader waiting behind it — the reader then recreates the group from the start and reads again what the
/// stream still holds. Settled entries also lose their count of unanswered store attempts.
/// KEYS: stream, dead-letter stream, attempts hash. ARGV: group, n, n ids to ack, then per dead letter: id,
/// pair count, field/value pairs. Returns {entries acked, {1|0 per dead letter: written}}.
const SETTLE_LUA: &str = include_str!("scripts/settle.lua");

/// Adds ARGV[1] (1 or -1) to the unanswered store attempts of each id in ARGV[4..] (a field of the hash
/// KEYS[1]; a count that drops to 0 is removed). Returns the new counts. ARGV[3] is the call's token, kept
/// in field ARGV[2] of the same hash (`call:<consumer>`, never an entry id): a call that comes again with
/// the token of this consumer's last call (a cluster client re-sends a command whose reply was lost) only
/// answers the counts, so a retry never counts an attempt twice.
const ATTEMPTS_LUA: &str = include_str!("scripts/attempts.lua");

/// Reads up to ARGV[3] new entries for the group, but only as many as fit in ARGV[4] bytes (field names
/// and values; the entry that crosses the budget is included, so a batch holds at most the budget plus one
/// entry, and an entry larger than the budget comes alone). The sizes are measured with XRANGE after the
/// group's last delivered id — in steps sized by the entries seen so far, so the script never holds much
/// more than the budget (one XRANGE of `count` 200 KB entries held 200 MB in Redis and blocked it for a
/// second) — before XREADGROUP delivers exactly that many; all in one atomic step.
/// KEYS: stream. ARGV: group, consumer, count, budget. Returns the entries (`[[id, [f, v, …]], …]`).
const READ_NEW_LUA: &str = include_str!("scripts/read_new.lua");

/// Like `READ_NEW_LUA` for this consumer's own pending entries after id ARGV[5] (a history read): sizes
/// from XPENDING and XRANGE of each id, then XREADGROUP of exactly that many.
const READ_PENDING_LUA: &str = include_str!("scripts/read_pending.lua");

/// Takes over entries idle for at least ARGV[3] ms on any consumer of the group (what XAUTOCLAIM does),
/// scanning the pending list from ARGV[4], at most ARGV[5] entries and only as many as fit in ARGV[6] bytes
/// (plus the entry that crosses the budget): each is measured with XRANGE before XCLAIM takes it. Pending
/// ids whose entry is gone from the stream are removed from the pending list (XACK), as XAUTOCLAIM does.
/// KEYS: stream. ARGV: group, consumer, min idle ms, start, count, budget. Returns {next start ('0-0' when
/// the sweep is complete), entries, count of ids gone from the stream}.
const CLAIM_LUA: &str = include_str!("scripts/claim.lua");

/// Why an entry became a dead letter: its `trackway.reason` field and the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadReason {
    /// The payload is not a valid position (the extension's `invalid`, not UTF-8, a NUL, too large).
    Invalid,
    /// The entry has no payload field.
    MissingPayload,
    /// Refused alone by the server, again after another write stored rows.
    Rejected,
    /// Sent more than `TRACKWAY_MAX_DELIVERIES` times without an answer.
    MaxDeliveries,
}

impl DeadReason {
    /// Every reason (the metric's label values exist from the start).
    pub const ALL: [DeadReason; 4] =
        [DeadReason::Invalid, DeadReason::MissingPayload, DeadReason::Rejected, DeadReason::MaxDeliveries];

    /// The word written in `trackway.reason` and used as the metric label.
    pub fn label(self) -> &'static str {
        match self {
            DeadReason::Invalid => "invalid",
            DeadReason::MissingPayload => "missing_payload",
            DeadReason::Rejected => "rejected",
            DeadReason::MaxDeliveries => "max_deliveries",
        }
    }
}

/// A dead letter to write: the entry, why, and the error.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// The entry that could not be stored.
    pub entry: Entry,
    /// Why.
    pub reason: DeadReason,
    /// Human-readable error; for `invalid` it starts with the field path.
    pub error: String,
}

impl DeadLetter {
    /// Bytes it carries to Redis (original fields and the error).
    pub fn bytes(&self) -> usize {
        self.entry.bytes() + self.error.len()
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
    /// What makes this process's attempt-counting calls' tokens unique: its start, in ns since 1970 (a
    /// restarted consumer's first calls must not look like repeats of its previous life's).
    epoch: u128,
    /// Attempt-counting calls made so far (shared by the clones of this consumer's `Group`).
    calls: Arc<AtomicU64>,
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
            epoch: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
            calls: Arc::new(AtomicU64::new(0)),
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
        let call = self.new_call();
        self.count_attempts_in(link, &call, ids, delta).await
    }

    /// A token for one attempt-counting call, unique to this consumer's process.
    pub fn new_call(&self) -> String {
        format!("{:x}-{}", self.epoch, self.calls.fetch_add(1, Ordering::Relaxed))
    }

    /// [`Group::count_attempts`] as the call `call` (from [`Group::new_call`]): the same call sent again
    /// changes nothing (see `ATTEMPTS_LUA`).
    pub async fn count_attempts_in(
        &self,
        link: &mut Link,
        call: &str,
        ids: &[&str],
        delta: i64,
    ) -> Result<Vec<u64>, RedisError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.attempts.key(&self.names.attempts);
        invocation.arg(delta).arg(format!("call:{}", self.names.consumer)).arg(call).arg(ids);
        let counts = items(link.invoke(&invocation).await?)?;
        Ok(counts.iter().map(|v| int(v).and_then(|n| u64::try_from(n).ok()).unwrap_or(0)).collect())
    }

    fn dead_letter_fields(&self, letter: &DeadLetter) -> [(&'static str, String); 4] {
        [
            ("trackway.source_id", letter.entry.id.clone()),
            ("trackway.reason", letter.reason.label().to_owned()),
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
