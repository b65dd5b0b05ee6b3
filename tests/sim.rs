//! `trackway-sim` as a process against the local Redis: it writes to a fresh stream until SIGTERM, then
//! its summary must match what is in the stream — every valid entry decodes, every invalid one is refused,
//! retransmissions repeat an earlier payload, late positions are older than their device's latest.

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use trackway_tests::relay::{read_all, redis, redis_url, unique};

/// The number in `summary` just before `label` (`"... 12 late, ..."`).
fn count(summary: &str, label: &str) -> u64 {
    let at = summary.find(label).unwrap_or_else(|| panic!("{label:?} in {summary:?}"));
    let number = summary[..at].split_whitespace().last().and_then(|n| n.trim_start_matches('(').parse().ok());
    number.unwrap_or_else(|| panic!("no number before {label:?} in {summary:?}"))
}

/// Starts `trackway-sim` with `args` (no database), its stderr captured.
fn spawn_sim(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_sim-under-test"))
        .args(args)
        .env_remove("DATABASE_URL")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start trackway-sim")
}

/// Waits for the simulator to exit successfully; its summary line.
fn summary_of(child: std::process::Child) -> String {
    let output = child.wait_with_output().expect("trackway-sim output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {:?}: {stderr}", output.status);
    let summary = stderr.lines().find(|l| l.starts_with("sent ")).unwrap_or_else(|| panic!("no summary: {stderr}"));
    summary.to_owned()
}

/// Every entry of the shards `<stream>:{0..shards}` through `conn`: each must be its device's shard's, in
/// order per device; returns how many each shard holds and the devices seen.
async fn check_shards(
    conn: &mut (impl redis::aio::ConnectionLike + Send + Sync),
    stream: &str,
    shards: u32,
) -> (Vec<u64>, HashSet<String>) {
    let (mut counts, mut devices) = (Vec::new(), HashSet::new());
    for shard in 0..shards {
        let key = format!("{stream}:{{{shard}}}");
        let entries = read_all(conn, &key).await;
        counts.push(entries.len() as u64);
        let mut last: HashMap<String, i64> = HashMap::new();
        for (_, fields) in &entries {
            let position =
                trackway_wire::decode(fields["payload"].as_bytes(), trackway_wire::DEFAULT_MAX_PAYLOAD_BYTES)
                    .expect("valid position");
            assert_eq!(trackway_wire::shard::shard_of(&position.device_id, shards), shard, "{key}");
            let previous = last.insert(position.device_id.clone(), position.ts_micros);
            assert!(
                previous.is_none_or(|t| t < position.ts_micros),
                "{}'s positions out of order in {key}",
                position.device_id
            );
            devices.insert(position.device_id);
        }
    }
    (counts, devices)
}

#[tokio::test]
async fn simulator_writes_what_its_summary_says() {
    let stream = unique("sim");
    let child = spawn_sim(
        &[
            &["--redis-url", &redis_url(), "--stream", &stream, "--payload-field", "pos"][..],
            &["--devices", "20", "--rate", "400", "--seed", "11", "--seconds", "0"],
            &["--duplicates", "0.05", "--late", "0.05", "--invalid", "0.05"],
        ]
        .concat(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let summary = summary_of(child);
    let summary = summary.as_str();
    let (total, positions, late, duplicates, invalid) = (
        count(summary, "entries"),
        count(summary, "positions on time"),
        count(summary, "late"),
        count(summary, "duplicates"),
        count(summary, "invalid"),
    );
    assert_eq!(total, positions + late + duplicates + invalid, "{summary}");
    assert!((500..=1_000).contains(&total), "about 400/s for 2 s: {summary}");

    let mut conn = redis(&redis_url()).await;
    let entries = read_all(&mut conn, &stream).await;
    let _: () = redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.expect("DEL");
    assert_eq!(entries.len() as u64, total, "{summary}");
    let (mut valid, mut refused, mut repeated, mut older) = (0u64, 0u64, 0u64, 0u64);
    let mut seen = HashSet::new();
    let mut latest: HashMap<String, i64> = HashMap::new();
    for (_, fields) in &entries {
        let payload = &fields["pos"];
        match trackway_wire::decode(payload.as_bytes(), trackway_wire::DEFAULT_MAX_PAYLOAD_BYTES) {
            Ok(p) => {
                valid += 1;
                if !seen.insert(payload.clone()) {
                    repeated += 1;
                    continue;
                }
                let newest = latest.entry(p.device_id).or_insert(i64::MIN);
                if p.ts_micros < *newest {
                    older += 1;
                }
                *newest = (*newest).max(p.ts_micros);
            }
            Err(_) => refused += 1,
        }
    }
    assert_eq!((valid, refused, repeated), (positions + late + duplicates, invalid, duplicates), "{summary}");
    assert!(invalid > 0 && duplicates > 0 && late > 0, "{summary}");
    // Late positions held back when it stopped were flushed at once, maybe before a newer one was sent.
    assert!(older <= late && older > 0, "{older} older than their device's latest; {summary}");
}

/// `--shards 4`: each device's entries go to `<stream>:{i}`, i its shard (`trackway_wire::shard`), all of
/// them and in order; together the shards hold every entry the summary counts, none in the base stream.
#[tokio::test]
async fn sharded_simulator_keeps_each_device_in_its_shard() {
    let stream = unique("sim_sharded");
    let summary = summary_of(spawn_sim(
        &[
            &["--redis-url", &redis_url(), "--stream", &stream, "--shards", "4"][..],
            &["--devices", "40", "--rate", "400", "--seed", "5", "--seconds", "2"],
            &["--duplicates", "0", "--late", "0", "--invalid", "0"],
        ]
        .concat(),
    ));
    let mut conn = redis(&redis_url()).await;
    let base = read_all(&mut conn, &stream).await;
    assert!(base.is_empty(), "{} entries in the unsharded stream", base.len());
    let (counts, devices) = check_shards(&mut conn, &stream, 4).await;
    for shard in 0..4 {
        let _: () = redis::cmd("DEL").arg(format!("{stream}:{{{shard}}}")).query_async(&mut conn).await.expect("DEL");
    }
    assert_eq!(counts.iter().sum::<u64>(), count(&summary, "entries"), "{summary}");
    assert_eq!(devices.len(), 40, "every device sent");
    assert!(counts.iter().all(|&n| n > 0), "40 devices spread over all 4 shards: {counts:?}");
}

/// `--redis-cluster --shards 16` against a real Redis Cluster (three primaries, three replicas): every
/// shard key is written on the node that serves its slot, each device's entries in its own shard, in
/// order, and together they hold every entry the summary counts.
#[tokio::test]
async fn sharded_simulator_writes_into_a_redis_cluster() {
    let cluster = tokio::task::spawn_blocking(trackway_testkit::RedisCluster::start)
        .await
        .expect("cluster")
        .expect("cluster start");
    let stream = unique("sim_cluster");
    let seeds = cluster.urls().join(",");
    let child = spawn_sim(
        &[
            &["--redis-url", &seeds, "--redis-cluster", "--stream", &stream, "--shards", "16"][..],
            &["--devices", "64", "--rate", "400", "--seed", "9", "--seconds", "2"],
            &["--duplicates", "0", "--late", "0", "--invalid", "0"],
        ]
        .concat(),
    );
    let summary = tokio::task::spawn_blocking(move || summary_of(child)).await.expect("join");

    let client = redis::cluster::ClusterClient::new(cluster.urls()).expect("cluster client");
    let mut conn = client.get_async_connection().await.expect("cluster connection");
    let (counts, devices) = check_shards(&mut conn, &stream, 16).await;
    assert_eq!(counts.iter().sum::<u64>(), count(&summary, "entries"), "{summary}");
    assert_eq!(devices.len(), 64, "every device sent");
    // Each shard on the primary that serves its key's slot (and they spread over all three).
    let mut primaries = HashSet::new();
    for shard in 0..16u32 {
        let key = format!("{stream}:{{{shard}}}");
        let primary = cluster.primary_of(&key).expect("primary");
        let mut node = redis(&format!("redis://127.0.0.1:{primary}")).await;
        let len: u64 = redis::cmd("XLEN").arg(&key).query_async(&mut node).await.expect("XLEN on its primary");
        assert_eq!(len, counts[shard as usize], "{key} is on its slot's primary");
        primaries.insert(primary);
    }
    assert_eq!(primaries.len(), 3, "the 16 shards spread over all three primaries");
}
