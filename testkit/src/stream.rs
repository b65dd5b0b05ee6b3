//! The Redis Stream: pipelined XADD of payloads (the simulator's own, `trackway_sim::stream`), and a
//! consumer group's counters (XINFO GROUPS) to tell when a relay has read and acknowledged everything.

use std::collections::HashMap;

use redis::{aio::ConnectionLike, RedisResult, Value};
pub use trackway_sim::stream::{xadd_payloads, xadd_payloads_as};

/// One consumer group's counters, as XINFO GROUPS reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupCounters {
    /// The group's name (empty when Redis did not send it as text).
    pub name: String,
    /// Entries delivered and not acknowledged; `None` when missing.
    pub pending: Option<i64>,
    /// Entries not yet delivered; `None` when Redis cannot tell (after deletions) or did not say.
    pub lag: Option<i64>,
}

/// The counters of every consumer group of `stream` (an error when the stream does not exist).
pub async fn group_counters(conn: &mut impl ConnectionLike, stream: &str) -> RedisResult<Vec<GroupCounters>> {
    let groups: Vec<HashMap<String, Value>> = redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(conn).await?;
    let int = |v: Option<&Value>| match v {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    };
    Ok(groups
        .iter()
        .map(|g| GroupCounters {
            name: match g.get("name") {
                Some(Value::BulkString(n)) => String::from_utf8_lossy(n).into_owned(),
                Some(Value::SimpleString(n)) => n.clone(),
                _ => String::new(),
            },
            pending: int(g.get("pending")),
            lag: int(g.get("lag")),
        })
        .collect())
}
