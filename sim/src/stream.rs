//! The producer's side of the Redis Stream: pipelined XADD of payloads, one entry each.

use redis::{aio::ConnectionLike, RedisResult};

/// XADDs per pipeline: one round trip each, and replies of a modest size.
const PIPELINE: usize = 500;

/// Adds one entry per payload (field `payload`), pipelined; returns the ids in order.
pub async fn xadd_payloads<P: AsRef<str>>(
    conn: &mut impl ConnectionLike,
    stream: &str,
    payloads: &[P],
) -> RedisResult<Vec<String>> {
    xadd_payloads_as(conn, stream, "payload", payloads).await
}

/// Adds one entry per payload, each in the entry's field `field`, pipelined; returns the ids in order. On a
/// cluster connection the pipeline goes to the node of `stream`'s slot (every command of it names `stream`).
pub async fn xadd_payloads_as<P: AsRef<str>>(
    conn: &mut impl ConnectionLike,
    stream: &str,
    field: &str,
    payloads: &[P],
) -> RedisResult<Vec<String>> {
    let mut ids = Vec::with_capacity(payloads.len());
    for chunk in payloads.chunks(PIPELINE) {
        let mut pipe = redis::pipe();
        for p in chunk {
            pipe.cmd("XADD").arg(stream).arg("*").arg(field).arg(p.as_ref());
        }
        let chunk_ids: Vec<String> = pipe.query_async(conn).await?;
        ids.extend(chunk_ids);
    }
    Ok(ids)
}
