//! `trackway-testkit`: what the cross-process tests (`tests/`) and the benchmarks (`bench/`) both need, so
//! each lives once.
//!
//! - [`database`]: a fresh database with the `trackway` extension (drop, create, `CREATE EXTENSION`).
//! - [`stream`]: pipelined XADD of payloads (the simulator's, re-exported), and a consumer group's
//!   counters from XINFO GROUPS.
//! - [`payloads`]: wire-format payloads: a minimal valid position and the timestamp text it carries.
//! - [`prometheus`]: samples and sums read from the relay's `/metrics` text.
//! - [`redis_nodes`]: private Redis servers: a Redis Cluster of three primaries and three replicas, or one
//!   node started the same way.
//! - [`token`]: HS256 access tokens signed as Directus signs them.
//!
//! testkit may use the simulator (`trackway-sim`), never the reverse: the simulator ships in the relay's
//! image and owns its generator and its XADD; Cargo refuses the cycle, so the arrow stays one way.
//!
//! Errors are returned, not panicked on: tests unwrap them with their own message, the benchmarks add
//! context.

#![forbid(unsafe_code)]

pub mod database;
pub mod payloads;
pub mod prometheus;
pub mod redis_nodes;
pub mod stream;
pub mod token;

pub use database::{create_extension, drop_database, recreate_database, InstallWait};
pub use payloads::{position, timestamp};
pub use redis_nodes::{RedisCluster, RedisNode};
pub use stream::{group_counters, xadd_payloads, xadd_payloads_as, GroupCounters};
pub use token::directus_token;
