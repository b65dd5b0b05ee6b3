//! `trackway-redis`, the relay's room for Redis: infrastructure for the ingest path, the sampler and
//! `/readyz`. [`Endpoint`] says where Redis is (one server or a cluster), [`link`] holds one task's connection, [`group`] the consumer group's commands (with their Lua
//! scripts in `scripts/*.lua`) and [`StreamNames`] the keys they touch, [`reply`] the parsing of what Redis
//! answers. Nothing here knows what the entries carry or what is done with them.

#![forbid(unsafe_code)]

mod endpoint;
pub mod group;
pub mod link;
pub mod reply;

pub use redis::{ConnectionInfo, IntoConnectionInfo, RedisError};

pub use self::{
    endpoint::{Connection, Endpoint},
    group::{DeadLetter, DeadReason, Group},
    link::Link,
    reply::{Claimed, Entry, GroupInfo, Settled},
};

/// The part of `key` Redis Cluster hashes into a slot: the text between the first `{` and the next `}` when
/// that is not empty, else the whole key. Keys with the same hash tag share a slot (and a node).
pub fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(len) = key[open + 1..].find('}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

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

#[cfg(test)]
mod tests {
    use super::hash_tag;

    #[test]
    fn hash_tags_are_what_redis_cluster_hashes() {
        assert_eq!(hash_tag("positions:{3}"), "3");
        assert_eq!(hash_tag("positions:{3}:dead"), "3");
        assert_eq!(hash_tag("{user1000}.following"), "user1000");
        assert_eq!(hash_tag("foo{}{bar}"), "foo{}{bar}", "an empty first tag: the whole key");
        assert_eq!(hash_tag("foo{{bar}}"), "{bar");
        assert_eq!(hash_tag("positions"), "positions");
        assert_eq!(hash_tag("positions:{3"), "positions:{3");
    }
}
