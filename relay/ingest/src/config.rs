//! What the ingest side needs to know, validated by the relay's configuration (`trackway-relay`'s
//! `config`, where every setting's variable, flag, default and range are stated).

use std::time::Duration;

use trackway_redis::{ConnectionInfo, StreamNames};

/// Validated settings of the ingest side.
#[derive(Clone)]
pub struct IngestConfig {
    /// Where the positions come from (holds a password when the URL has one: never printed by `Debug`).
    pub redis: ConnectionInfo,
    /// Names in Redis: stream, group, consumer, dead-letter stream, payload field.
    pub names: StreamNames,
    /// Entries per read and per database round trip.
    pub batch_size: usize,
    /// Byte budget of one read (a batch holds at most this plus one entry).
    pub batch_bytes: usize,
    /// Payloads above this are dead-lettered as `invalid` without a database round trip.
    pub max_payload_bytes: usize,
    /// Longest wait for one `ingest_batch` answer; then the statement is cancelled and the batch split.
    pub ingest_timeout: Duration,
    /// Blocking read timeout.
    pub block: Duration,
    /// Unanswered store attempts after which an entry is dead-lettered.
    pub max_deliveries: u64,
    /// Idle time after which another consumer's pending entries are claimed.
    pub claim_idle: Duration,
}

impl std::fmt::Debug for IngestConfig {
    /// Every field, with Redis as its address only (no password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let IngestConfig {
            redis,
            names,
            batch_size,
            batch_bytes,
            max_payload_bytes,
            ingest_timeout,
            block,
            max_deliveries,
            claim_idle,
        } = self;
        f.debug_struct("IngestConfig")
            .field("redis", &redis.addr().to_string())
            .field("names", names)
            .field("batch_size", batch_size)
            .field("batch_bytes", batch_bytes)
            .field("max_payload_bytes", max_payload_bytes)
            .field("ingest_timeout", ingest_timeout)
            .field("block", block)
            .field("max_deliveries", max_deliveries)
            .field("claim_idle", claim_idle)
            .finish()
    }
}
