//! Redis side, infrastructure for the ingest path, the sampler and `/readyz`: [`link`] holds one task's connection,
//! [`group`] the consumer group's commands (with their Lua scripts in `scripts/*.lua`), [`reply`] the
//! parsing of what Redis answers. Nothing here knows what the entries carry or what is done with them.

pub mod group;
pub mod link;
pub mod reply;

pub use self::{
    group::{DeadLetter, DeadReason, Group},
    link::Link,
    reply::{Claimed, Entry, GroupInfo, Settled},
};
