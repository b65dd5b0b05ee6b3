//! `trackway-redis`, the relay's room for Redis: infrastructure for the ingest path, the sampler and
//! `/readyz`. [`link`] holds one task's connection, [`group`] the consumer group's commands (with their Lua
//! scripts in `scripts/*.lua`) and [`StreamNames`] the keys they touch, [`reply`] the parsing of what Redis
//! answers. Nothing here knows what the entries carry or what is done with them.

#![forbid(unsafe_code)]

pub mod group;
pub mod link;
pub mod reply;

pub use redis::{ConnectionInfo, IntoConnectionInfo, RedisError};

pub use self::{
    group::{DeadLetter, DeadReason, Group},
    link::Link,
    reply::{Claimed, Entry, GroupInfo, Settled},
};

/// The Redis names the relay works with.
#[derive(Clone, Debug)]
pub struct StreamNames {
    /// Stream read by the consumer group.
    pub stream: String,
    /// Consumer group name.
    pub group: String,
    /// This relay's consumer name.
    pub consumer: String,
    /// Stream that receives dead letters.
    pub dead_letter: String,
    /// Hash of unanswered store attempts per entry id (`<stream>:attempts`).
    pub attempts: String,
    /// Entry field holding the payload.
    pub payload_field: String,
}
