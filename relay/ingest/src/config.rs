//! What the ingest side needs to know, validated by the relay's configuration (`trackway-relay`'s
//! `config`, where every setting's variable, flag, default and range are stated).

use std::time::Duration;

use trackway_redis::{Endpoint, StreamNames};

/// Validated settings of the ingest side. `Debug` is derived: redis's own `Debug` redacts the password
/// (checked by the relay's `debug_never_shows_the_password`).
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Where the positions come from: one Redis or a cluster (with the password when the URL has one).
    pub redis: Endpoint,
    /// Names in Redis of each shard of the stream (one element when the stream is not sharded): stream,
    /// group, consumer, dead-letter stream, attempts, payload field. A consumer runs per shard.
    pub shards: Vec<StreamNames>,
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
