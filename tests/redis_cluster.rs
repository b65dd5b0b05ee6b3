//! The relay on a real Redis Cluster (three primaries, three replicas, `tests/common/cluster.rs`), its
//! stream a key with a hash tag (`{…}`: its dead letters and attempts share its slot), as a cluster client
//! (`TRACKWAY_REDIS_CLUSTER=true`, seed nodes in `REDIS_URL`):
//! - every entry stored once, invalid ones dead-lettered, the group drained;
//! - the stream's primary killed (SIGKILL) while entries flow: its replica takes over and the same relay
//!   process carries on by itself; every entry the new primary holds is stored exactly once, and no good
//!   entry is dead-lettered. (Redis replicates asynchronously: an XADD acknowledged just before the crash
//!   may never reach the replica. Those entries are not the relay's to promise.)

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use redis::AsyncCommands;
use trackway_tests::{
    cluster::RedisCluster,
    connect, fresh_database,
    relay::{group_state, http_get, metric_opt, read_all, unique, wait_drained, InProcess},
    server,
};

/// The relay's consumer group (its default).
const GROUP: &str = "trackway";

/// A hash-tagged stream name no other run uses.
fn tagged_stream(name: &str) -> String {
    format!("{{{}}}", unique(name))
}

/// Flags of a relay on database `db` and the cluster's `stream`.
fn cluster_flags(db: &str, cluster: &RedisCluster, stream: &str) -> Vec<String> {
    let mut flags: Vec<String> =
        ["--database-url", &format!("{} dbname={db}", server()), "--redis-url", &cluster.urls().join(",")]
            .map(str::to_owned)
            .to_vec();
    flags.extend(["--redis-cluster", "true", "--stream", stream, "--block-ms", "500"].map(str::to_owned));
    flags
}

/// `(device_id, ts)` of every stored row, as the wire's timestamp text.
async fn stored_keys(db: &str) -> Vec<(String, String)> {
    let client = connect(db).await;
    let rows = client
        .query(
            "SELECT device_id, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') FROM trackway.positions",
            &[],
        )
        .await
        .expect("rows");
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// `(deviceId, timestamp)` of a payload the test wrote.
fn key_of(payload: &str) -> (String, String) {
    let p: serde_json::Value = serde_json::from_str(payload).expect("json");
    (p["deviceId"].as_str().unwrap_or_default().to_owned(), p["timestamp"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_is_stored_once_and_invalid_ones_are_dead_lettered() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.expect("cluster");
    let db = fresh_database("redis_cluster_once").await;
    let stream = tagged_stream("cluster_once");
    let mut conn = cluster.connection().await;
    let mut good = 0;
    for i in 0..600u32 {
        let payload = if i % 50 == 7 {
            format!(r#"{{"deviceId":"d-{i}","timestamp":"2026-11-27T08:00:00.000Z","latitude":123,"longitude":1}}"#)
        } else {
            good += 1;
            trackway_testkit::position(&format!("d-{}", i % 40), 1_795_766_400_000 + i64::from(i) * 1000)
        };
        let _: String = conn.xadd(&stream, "*", &[("payload", payload)]).await.expect("XADD");
    }
    let flags = cluster_flags(&db, &cluster, &stream);
    let relay = InProcess::start(&flags.iter().map(String::as_str).collect::<Vec<_>>()).await;
    wait_drained(&mut conn, &stream, GROUP, Duration::from_secs(60)).await;
    let rows = stored_keys(&db).await;
    assert_eq!(rows.len(), good, "every valid entry stored once");
    let dead: u64 = conn.xlen(format!("{stream}:dead")).await.expect("XLEN dead");
    assert_eq!(dead, 12, "the invalid entries, dead-lettered");
    assert_eq!(group_state(&mut conn, &stream, GROUP).await, Some((0, Some(0))));
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_primary_killed_mid_run_loses_no_entry_the_new_primary_holds() {
    let mut cluster = tokio::task::spawn_blocking(RedisCluster::start).await.expect("cluster");
    let db = fresh_database("redis_cluster_failover").await;
    let stream = tagged_stream("cluster_failover");
    let flags = cluster_flags(&db, &cluster, &stream);
    let relay = InProcess::start(&flags.iter().map(String::as_str).collect::<Vec<_>>()).await;

    // A producer XADDs a new position every 5 ms, retrying each until Redis takes it.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (stop, stream, mut conn) = (stop.clone(), stream.clone(), cluster.connection().await);
        tokio::spawn(async move {
            let mut sent = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let payload =
                    trackway_testkit::position(&format!("d-{}", sent % 25), 1_795_766_400_000 + i64::from(sent) * 10);
                loop {
                    let added: redis::RedisResult<String> = conn.xadd(&stream, "*", &[("payload", &payload)]).await;
                    if added.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let primary = cluster.primary_of(&stream);
    cluster.kill(primary);
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = producer.await.expect("producer");
    cluster.wait_until_healthy();
    assert_ne!(cluster.primary_of(&stream), primary, "a replica took over");

    let mut conn = cluster.connection().await;
    wait_drained(&mut conn, &stream, GROUP, Duration::from_secs(90)).await;
    assert!(relay.is_running(), "the relay carried on by itself");
    // It did meet the failover: its Redis calls failed, then worked again.
    let (_, metrics) = http_get(relay.admin, "/metrics").await;
    let reconnects = metric_opt(&metrics, "trackway_relay_reconnects_total{backend=\"redis\"}").unwrap_or(0.0);
    assert!(reconnects >= 1.0, "no Redis outage seen by the relay:\n{metrics}");
    let held: HashSet<(String, String)> =
        read_all(&mut conn, &stream).await.iter().map(|(_, fields)| key_of(&fields["payload"])).collect();
    let rows = stored_keys(&db).await;
    let stored: HashSet<(String, String)> = rows.iter().cloned().collect();
    assert_eq!(stored.len(), rows.len(), "no row twice");
    let missing: Vec<_> = held.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "{} of {} entries the new primary holds were not stored: {missing:?}",
        missing.len(),
        held.len()
    );
    assert!(held.len() as u32 >= sent / 2, "the stream holds most of the {sent} entries sent ({})", held.len());
    let dead: u64 = conn.xlen(format!("{stream}:dead")).await.expect("XLEN dead");
    assert_eq!(dead, 0, "no good entry dead-lettered");
    relay.stop().await.expect("clean stop");
}
