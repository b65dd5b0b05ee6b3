//! The relay on a real Redis Cluster (three primaries, three replicas, `trackway_testkit::redis_nodes`), its
//! stream a key with a hash tag (`{…}`: its dead letters and attempts share its slot), as a cluster client
//! (`TRACKWAY_REDIS_CLUSTER=true`, seed nodes in `REDIS_URL`):
//! - every entry stored once, invalid ones dead-lettered, the group drained;
//! - the stream's primary killed (SIGKILL) while entries flow: its replica takes over and the same relay
//!   process carries on by itself; every entry the new primary holds is stored exactly once, and no good
//!   entry is dead-lettered. (Redis replicates asynchronously: an XADD acknowledged just before the crash
//!   may never reach the replica. Those entries are not the relay's to promise.)
//! - a stream of 16 shards (`TRACKWAY_STREAM_SHARDS`, written by `trackway-sim --shards 16`) read by two
//!   relays in one group: every entry stored once, every shard drained, the invalid ones dead-lettered;
//!   and the same with one relay killed (SIGKILL) mid-run, whose entries the other claims.

use std::{
    collections::HashSet,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use redis::AsyncCommands;
use trackway_testkit::RedisCluster;
use trackway_tests::{
    connect, fresh_database,
    proxy::Proxy,
    relay::{group_state, http_get, metric_opt, read_all, unique, wait_drained, InProcess, Process},
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
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.expect("cluster").expect("cluster start");
    let db = fresh_database("redis_cluster_once").await;
    let stream = tagged_stream("cluster_once");
    let mut conn = cluster.connection().await.expect("cluster connection");
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
    let mut cluster = tokio::task::spawn_blocking(RedisCluster::start).await.expect("cluster").expect("cluster start");
    let db = fresh_database("redis_cluster_failover").await;
    let stream = tagged_stream("cluster_failover");
    let flags = cluster_flags(&db, &cluster, &stream);
    let relay = InProcess::start(&flags.iter().map(String::as_str).collect::<Vec<_>>()).await;

    // A producer XADDs a new position every 5 ms, retrying each until Redis takes it.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (stop, stream, mut conn) =
            (stop.clone(), stream.clone(), cluster.connection().await.expect("cluster connection"));
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
    let primary = cluster.primary_of(&stream).expect("primary");
    cluster.kill(primary);
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = producer.await.expect("producer");
    cluster.wait_until_healthy().expect("healthy cluster");
    assert_ne!(cluster.primary_of(&stream).expect("primary"), primary, "a replica took over");

    let mut conn = cluster.connection().await.expect("cluster connection");
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

/// The number just before `label` in the simulator's summary (`"... 12 late, ..."`).
fn count(summary: &str, label: &str) -> u64 {
    let at = summary.find(label).unwrap_or_else(|| panic!("{label:?} in {summary:?}"));
    let number = summary[..at].split_whitespace().last().and_then(|n| n.trim_start_matches('(').parse().ok());
    number.unwrap_or_else(|| panic!("no number before {label:?} in {summary:?}"))
}

/// What the simulator sends: its rate (positions/s) and the share of duplicate, late and invalid entries.
#[derive(Clone, Copy)]
struct Load {
    rate: &'static str,
    faults: &'static str,
}

/// 1,000 positions/s, 2 % each of duplicates, late and invalid entries.
const FAULTY: Load = Load { rate: "1000", faults: "0.02" };
/// 400 positions/s, every entry a new valid position.
const CLEAN: Load = Load { rate: "400", faults: "0" };

/// Runs `trackway-sim` with `load` into the 16 shards of `stream` on the cluster of `urls` for `seconds`
/// (on a thread of its own, so the relays in this process keep running); its summary line.
async fn simulate(load: Load, urls: Vec<String>, stream: String, seconds: &'static str, seed: &'static str) -> String {
    tokio::task::spawn_blocking(move || {
        let output = Command::new(env!("CARGO_BIN_EXE_sim-under-test"))
            .args(["--redis-url", &urls.join(","), "--redis-cluster", "--stream", &stream, "--shards", "16"])
            .args(["--devices", "64", "--rate", load.rate, "--seed", seed, "--seconds", seconds])
            .args(["--duplicates", load.faults, "--late", load.faults, "--invalid", load.faults])
            .env_remove("DATABASE_URL")
            .stderr(Stdio::piped())
            .output()
            .expect("trackway-sim");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "exit {:?}: {stderr}", output.status);
        stderr.lines().find(|l| l.starts_with("sent ")).unwrap_or_else(|| panic!("no summary: {stderr}")).to_owned()
    })
    .await
    .expect("join")
}

/// Waits until every shard's group is drained; then checks the rows and the dead letters against what the
/// shards hold (not against what the simulator meant to send: a producer's write retried by the cluster
/// client during a slot migration may be added twice, and then it is two entries to the relay): every
/// valid position stored once, every invalid entry dead-lettered, nothing else. The summary bounds it.
async fn check_sharded_run(cluster: &RedisCluster, db: &str, stream: &str, summary: &str) {
    let mut conn = cluster.connection().await.expect("cluster connection");
    let (mut dead, mut invalid, mut entries) = (0u64, 0u64, 0u64);
    let mut positions = HashSet::new();
    for shard in 0..16 {
        let key = format!("{stream}:{{{shard}}}");
        wait_drained(&mut conn, &key, GROUP, Duration::from_secs(90)).await;
        assert_eq!(group_state(&mut conn, &key, GROUP).await, Some((0, Some(0))), "{key}");
        dead += conn.xlen::<_, u64>(format!("{key}:dead")).await.expect("XLEN dead");
        for (_, fields) in read_all(&mut conn, &key).await {
            entries += 1;
            let payload = fields["payload"].as_bytes();
            match trackway_wire::decode(payload, trackway_wire::DEFAULT_MAX_PAYLOAD_BYTES) {
                Ok(p) => {
                    positions.insert((p.device_id, p.ts_micros));
                }
                Err(_) => invalid += 1,
            }
        }
    }
    eprintln!("shards hold {entries} entries ({invalid} invalid, {dead} dead letters); simulator: {summary}");
    assert!(entries >= count(summary, "entries"), "the shards hold what was sent ({entries}): {summary}");
    let rows = stored_keys(db).await;
    assert_eq!(rows.len(), positions.len(), "every position once ({entries} entries): {summary}");
    assert_eq!(dead, invalid, "the invalid entries, and only they, dead-lettered ({entries} entries): {summary}");
    assert!(invalid >= count(summary, "invalid"), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_shards_read_by_two_relays_store_every_entry_once() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.expect("cluster").expect("cluster start");
    let db = fresh_database("redis_cluster_shards").await;
    let stream = unique("cluster_shards");
    let relays: Vec<InProcess> = futures_util::future::join_all(["relay-a", "relay-b"].map(|name| {
        let mut flags = cluster_flags(&db, &cluster, &stream);
        flags.extend(["--stream-shards", "16", "--consumer", name].map(str::to_owned));
        async move { InProcess::start(&flags.iter().map(String::as_str).collect::<Vec<_>>()).await }
    }))
    .await;
    let summary = simulate(FAULTY, cluster.urls(), stream.clone(), "3", "3").await;
    check_sharded_run(&cluster, &db, &stream, &summary).await;
    for relay in relays {
        // The group spread the entries: each relay read some.
        let (_, metrics) = http_get(relay.admin, "/metrics").await;
        let read = metric_opt(&metrics, "trackway_relay_entries_read_total{source=\"new\"}").unwrap_or(0.0);
        assert!(read > 0.0, "a relay that read nothing:\n{metrics}");
        relay.stop().await.expect("clean stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_run_leaves_its_shards_entries_to_the_other() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.expect("cluster").expect("cluster start");
    let db = fresh_database("redis_cluster_kill").await;
    let stream = unique("cluster_kill");
    let flags_of = |name: &str, database: &str| {
        let mut flags = cluster_flags(&db, &cluster, &stream);
        flags[1] = database.to_owned();
        flags.extend(["--stream-shards", "16", "--consumer", name, "--claim-idle-ms", "1000"].map(str::to_owned));
        flags
    };
    // Relay A reaches PostgreSQL through a proxy: frozen before the kill, its batches in flight stay
    // pending on it (so relay B must claim them; without the freeze A might have none at that moment).
    let proxy = Proxy::to_test_server().await;
    let a_flags = flags_of("relay-a", &proxy.database(&db));
    let a = Process::spawn(
        env!("CARGO_BIN_EXE_relay-under-test"),
        &a_flags.iter().map(String::as_str).collect::<Vec<_>>(),
        "redis_cluster_kill_a",
    );
    a.wait_healthy().await;
    let b_flags = flags_of("relay-b", &format!("{} dbname={db}", server()));
    let b = InProcess::start(&b_flags.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let simulation = tokio::spawn(simulate(FAULTY, cluster.urls(), stream.clone(), "4", "4"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.freeze();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    a.kill();
    let summary = simulation.await.expect("simulation");
    check_sharded_run(&cluster, &db, &stream, &summary).await;
    let (_, metrics) = http_get(b.admin, "/metrics").await;
    let reclaimed = metric_opt(&metrics, "trackway_relay_reclaimed_total").unwrap_or(0.0);
    assert!(reclaimed >= 1.0, "relay B claimed the killed relay's entries:\n{metrics}");
    b.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shards_slot_migrated_mid_run_loses_and_doubles_nothing() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.expect("cluster").expect("cluster start");
    let db = fresh_database("redis_cluster_migrate").await;
    let stream = unique("cluster_migrate");
    let relays: Vec<InProcess> = futures_util::future::join_all(["relay-a", "relay-b"].map(|name| {
        let mut flags = cluster_flags(&db, &cluster, &stream);
        flags.extend(["--stream-shards", "16", "--consumer", name].map(str::to_owned));
        async move { InProcess::start(&flags.iter().map(String::as_str).collect::<Vec<_>>()).await }
    }))
    .await;
    let simulation = tokio::spawn(simulate(FAULTY, cluster.urls(), stream.clone(), "5", "5"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Shard 3's slot (its stream, dead letters and attempts) moves to another primary while entries flow.
    let key = format!("{stream}:{{3}}");
    let from = cluster.primary_of(&key).expect("primary");
    let to = cluster.primaries().expect("primaries").into_iter().find(|&p| p != from).expect("another primary");
    tokio::task::block_in_place(|| cluster.migrate_slot_of(&key, to)).expect("slot migrated");
    let summary = simulation.await.expect("simulation");
    assert_eq!(cluster.primary_of(&key).expect("primary"), to, "the slot moved");
    check_sharded_run(&cluster, &db, &stream, &summary).await;
    for relay in relays {
        relay.stop().await.expect("clean stop");
    }
}

/// A live client of relay A, relay A killed (SIGKILL) while positions flow through a 16-shard stream on
/// the cluster: the client resumes on relay B with the last cursor it got, and has every position of its
/// group once, none missing (cursors are the database's, so any relay serves any `since`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_client_of_a_killed_relay_resumes_on_another_with_no_gap() {
    use serde_json::json;
    use trackway_tests::live::{admin_token, key_set, keys, Client, LiveRelay, SECRET};

    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.expect("cluster").expect("cluster start");
    let db = fresh_database("redis_cluster_live").await;
    let stream = unique("cluster_live");
    let members = (0..64).map(|i| format!("('fleet', '{}')", 356_307_042_441_000u64 + i)).collect::<Vec<_>>();
    let sql = format!("INSERT INTO trackway.device_groups (group_id, device_id) VALUES {}", members.join(", "));
    connect(&db).await.batch_execute(&sql).await.expect("group");
    let flags = |live: &str| {
        let mut flags = cluster_flags(&db, &cluster, &stream);
        flags.extend(["--stream-shards", "16", "--live-addr", live, "--live-poll-ms", "200"].map(str::to_owned));
        // Relay A's entries in flight when it dies are claimed by B after a second.
        flags.extend(["--claim-idle-ms", "1000"].map(str::to_owned));
        flags.extend(["--auth", "jwt", "--jwt-secret", SECRET].map(str::to_owned));
        flags
    };
    let a_live = trackway_tests::relay::free_port_addr().to_string();
    let a_flags = flags(&a_live);
    let mut a_flags: Vec<&str> = a_flags.iter().map(String::as_str).collect();
    a_flags.extend(["--consumer", "relay-a"]);
    let a = Process::spawn(env!("CARGO_BIN_EXE_relay-under-test"), &a_flags, "redis_cluster_live_a");
    a.wait_healthy().await;
    let mut b_flags = flags("127.0.0.1:0");
    b_flags.extend(["--consumer", "relay-b"].map(str::to_owned));
    let b = LiveRelay::start(&b_flags).await;

    let mut client = Client::authenticated(&format!("ws://{a_live}/live"), &admin_token()).await;
    let subscribed = client.subscribe(json!({"group": "fleet"})).await;
    assert_eq!(subscribed["snapshot"].as_array().map(Vec::len), Some(0), "{subscribed}");
    let simulation = tokio::spawn(simulate(CLEAN, cluster.urls(), stream.clone(), "5", "6"));
    // About a second of positions (400/s), then relay A goes, mid-run.
    let mut received = client.positions(400, Duration::from_secs(10)).await;
    assert!(received.len() >= 400, "positions before the kill: {}", received.len());
    a.kill();
    let cursor = received.last().expect("a position")["cursor"].as_str().expect("cursor").to_owned();
    let mut resumed = Client::authenticated(&b.url(""), &admin_token()).await;
    resumed.subscribe(json!({"group": "fleet", "since": cursor})).await;
    simulation.await.expect("simulation");
    let expected = stored_keys(&db).await.len();
    let mut mine = resumed.positions(expected.saturating_sub(received.len()), Duration::from_secs(10)).await;
    // Everything stored by now (relay B drains relay A's claimed entries too) has reached the client.
    let mut conn = cluster.connection().await.expect("cluster connection");
    for shard in 0..16 {
        wait_drained(&mut conn, &format!("{stream}:{{{shard}}}"), GROUP, Duration::from_secs(60)).await;
    }
    let all_rows = stored_keys(&db).await;
    mine.extend(
        resumed.positions(all_rows.len().saturating_sub(received.len() + mine.len()), Duration::from_secs(5)).await,
    );
    received.extend(mine);
    let got = keys(&received);
    let unique_got = key_set(&received);
    assert_eq!(got.len(), unique_got.len(), "a position twice");
    let stored: HashSet<(String, String)> = all_rows.into_iter().collect();
    assert_eq!(unique_got, stored, "every stored position reached the client once, across the two relays");
    b.stop().await.expect("clean stop");
}
