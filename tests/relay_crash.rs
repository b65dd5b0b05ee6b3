//! Crash safety: the relay process is SIGKILLed at random moments while 50,000 entries (new positions,
//! repeats and invalid ones) arrive, and restarted each time. Afterwards every valid position is a row
//! exactly once, every invalid entry is a dead letter exactly once, and nothing is pending.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use trackway_tests::{
    connect, fresh_database,
    relay::{read_all, redis, redis_url, relay_flags, unique, wait_drained, xadd_payloads, Process},
};

const ENTRIES: usize = 50_000;
const DEVICES: usize = 200;
const KILLS: usize = 6;

/// One generated entry: its payload, and the stored key `(device_id, unix ms)` when it is valid.
struct Generated {
    payload: String,
    key: Option<(String, i64)>,
}

/// Entry `i`: every 10th is invalid (latitude out of range), every 10th (offset 3) repeats an earlier
/// valid payload, the rest are new positions.
fn generate(rng: &mut fastrand::Rng) -> Vec<Generated> {
    let base_ms: i64 = 1_795_000_000_000;
    let mut out: Vec<Generated> = Vec::with_capacity(ENTRIES);
    let mut valid: Vec<usize> = Vec::new();
    for i in 0..ENTRIES {
        let device = format!("crash-{:04}", i % DEVICES);
        let ms = base_ms + (i as i64) * 1000;
        let ts = trackway_wire::format_timestamp(ms * 1000);
        let g = match i % 10 {
            7 => Generated {
                payload: format!(r#"{{"deviceId":"{device}","timestamp":"{ts}","latitude":123.5,"longitude":25.0}}"#),
                key: None,
            },
            3 if !valid.is_empty() => {
                let earlier = &out[valid[rng.usize(..valid.len())]];
                Generated { payload: earlier.payload.clone(), key: None }
            }
            _ => {
                valid.push(i);
                Generated {
                    payload: format!(
                        r#"{{"deviceId":"{device}","timestamp":"{ts}","latitude":{},"longitude":{},"speed":{},"attributes":{{"16":{{"__bigint":"{}"}}}}}}"#,
                        54.0 + rng.f64(),
                        25.0 + rng.f64(),
                        rng.u32(0..200),
                        u64::MAX - rng.u64(0..1000)
                    ),
                    key: Some((device, ms)),
                }
            }
        };
        out.push(g);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_and_doubles_nothing() {
    let seed =
        std::env::var("TRACKWAY_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    eprintln!("crash test seed {seed} (set TRACKWAY_TEST_SEED to repeat)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let entries = generate(&mut rng);
    let expected_keys: HashSet<(String, i64)> = entries.iter().filter_map(|g| g.key.clone()).collect();
    let invalid_count = entries.iter().filter(|g| g.payload.contains("123.5")).count();

    let db = fresh_database("relay_crash").await;
    let stream = unique("crash");
    let args = relay_flags(
        &db,
        &stream,
        &["--consumer", "crash-test", "--batch-size", "200", "--block-ms", "100", "--claim-idle-ms", "1000"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let binary = env!("CARGO_BIN_EXE_relay-under-test");

    // The producer adds entries in chunks while the relay is killed and restarted.
    let mut conn = redis(&redis_url()).await;
    let payloads: Vec<String> = entries.iter().map(|g| g.payload.clone()).collect();
    let producer = {
        let mut conn = conn.clone();
        let stream = stream.clone();
        tokio::spawn(async move {
            let mut ids = Vec::with_capacity(payloads.len());
            for chunk in payloads.chunks(500) {
                ids.extend(xadd_payloads(&mut conn, &stream, chunk).await);
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            ids
        })
    };
    for _ in 0..KILLS {
        let relay = Process::spawn(binary, &args, "trackway-test-relay-crash");
        tokio::time::sleep(Duration::from_millis(rng.u64(300..1500))).await;
        relay.kill();
    }
    let ids = producer.await.expect("producer");
    let relay = Process::spawn(binary, &args, "trackway-test-relay-crash");
    relay.wait_healthy().await;
    wait_drained(&mut conn, &stream, "trackway", Duration::from_secs(180)).await;
    let status = tokio::task::spawn_blocking(move || relay.terminate()).await.expect("terminate");
    assert!(status.success(), "SIGTERM must end the relay with exit code 0, got {status}");

    // Every valid position exactly once.
    let client = connect(&db).await;
    let rows = client
        .query("SELECT device_id, (extract(epoch FROM ts) * 1000)::bigint FROM trackway.positions", &[])
        .await
        .expect("rows");
    let stored: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(stored.len(), expected_keys.len(), "row count");
    let stored_set: HashSet<(String, i64)> = stored.into_iter().collect();
    assert_eq!(stored_set, expected_keys, "stored keys differ from the valid entries");

    // Every invalid entry exactly once in the dead-letter stream.
    let invalid_ids: HashSet<&String> =
        ids.iter().zip(&entries).filter(|(_, g)| g.payload.contains("123.5")).map(|(id, _)| id).collect();
    assert_eq!(invalid_ids.len(), invalid_count);
    let dead = read_all(&mut conn, &format!("{stream}:dead")).await;
    let mut per_source: HashMap<String, usize> = HashMap::new();
    for (_, letter) in &dead {
        assert_eq!(letter["trackway.reason"], "invalid", "{letter:?}");
        assert!(letter["trackway.error"].starts_with("latitude: "), "{letter:?}");
        *per_source.entry(letter["trackway.source_id"].clone()).or_default() += 1;
    }
    let doubled: Vec<_> = per_source.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "dead-lettered more than once: {doubled:?}");
    let dead_ids: HashSet<&String> = per_source.keys().collect();
    assert_eq!(dead_ids, invalid_ids, "dead letters differ from the invalid entries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_and_acknowledges_the_batch_in_flight_then_exits_zero() {
    let db = fresh_database("relay_sigterm").await;
    let stream = unique("sigterm");
    let mut conn = redis(&redis_url()).await;
    let mut rng = fastrand::Rng::with_seed(7);
    let payloads: Vec<String> = generate(&mut rng).into_iter().filter(|g| g.key.is_some()).map(|g| g.payload).collect();
    xadd_payloads(&mut conn, &stream, &payloads).await;
    let args = relay_flags(&db, &stream, &["--batch-size", "500"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = Process::spawn(env!("CARGO_BIN_EXE_relay-under-test"), &args, "trackway-test-relay-sigterm");
    let client = connect(&db).await;
    // Wait until it is busy storing, then ask it to stop.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = client.query_one("SELECT count(*) FROM trackway.positions", &[]).await.expect("count").get(0);
        if n > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "relay stored nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = tokio::task::spawn_blocking(move || relay.terminate()).await.expect("terminate");
    assert!(status.success(), "exit status after SIGTERM: {status}");

    // Everything it read was stored and acknowledged; what it did not read is still in the stream.
    let (pending, lag) = trackway_tests::relay::group_state(&mut conn, &stream, "trackway").await.expect("group");
    assert_eq!(pending, 0, "entries left unacknowledged after SIGTERM");
    let rows: i64 = client.query_one("SELECT count(*) FROM trackway.positions", &[]).await.expect("count").get(0);
    let lag = lag.expect("lag known");
    assert!(lag > 0, "the test should stop the relay before it drains the stream");
    assert_eq!(rows + lag, payloads.len() as i64, "stored rows + unread entries = all entries");
}

/// An entry whose store never answers and takes the relay down with it each time (here a trigger makes its
/// statement hang and the test SIGKILLs the relay while it waits) is dead-lettered as `max_deliveries` once
/// `--max-deliveries` attempts got no answer; the entries around it are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_keeps_killing_the_relay_is_dead_lettered_after_max_deliveries() {
    let db = fresh_database("relay_killer").await;
    let client = connect(&db).await;
    client
        .batch_execute(
            "CREATE FUNCTION public.hang() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.device_id = 'killer' THEN
                 PERFORM pg_sleep(600);
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER hang BEFORE INSERT ON trackway.positions FOR EACH ROW EXECUTE FUNCTION public.hang();",
        )
        .await
        .expect("hanging trigger");
    let stream = unique("killer");
    let mut conn = redis(&redis_url()).await;
    let position = |device: &str, s: usize| {
        format!(
            r#"{{"deviceId":"{device}","timestamp":"2026-11-29T00:00:{s:02}.000Z","latitude":54.7,"longitude":25.3}}"#
        )
    };
    let mut payloads: Vec<String> = (0..21).map(|s| position("calm", s)).collect();
    payloads[10] = position("killer", 10);
    let ids = xadd_payloads(&mut conn, &stream, &payloads).await;
    let args = relay_flags(&db, &stream, &["--consumer", "killed", "--batch-size", "1", "--max-deliveries", "2"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let binary = env!("CARGO_BIN_EXE_relay-under-test");
    let hanging = "SELECT pid FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event = 'PgSleep' AND pid <> pg_backend_pid()";
    let mut kills = 0;
    loop {
        let relay = Process::spawn(binary, &args, "trackway-test-relay-killer");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let killed = loop {
            if !client.query(hanging, &[]).await.expect("pg_stat_activity").is_empty() {
                break true;
            }
            if trackway_tests::relay::group_state(&mut conn, &stream, "trackway").await == Some((0, Some(0))) {
                break false;
            }
            assert!(std::time::Instant::now() < deadline, "the relay neither hung nor drained the stream");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if !killed {
            let status = tokio::task::spawn_blocking(move || relay.terminate()).await.expect("terminate");
            assert!(status.success(), "{status}");
            break;
        }
        relay.kill();
        kills += 1;
        for row in client.query(hanging, &[]).await.expect("pg_stat_activity") {
            let pid: i32 = row.get(0);
            client.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.expect("terminate backend");
        }
        // Termination is asynchronous: wait until the old backend is gone before the next run looks.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !client.query(hanging, &[]).await.expect("pg_stat_activity").is_empty() {
            assert!(std::time::Instant::now() < deadline, "a terminated backend is still sleeping");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(kills <= 5, "the entry was still sent after {kills} unanswered attempts");
    }
    // The first attempt (a new entry) is not counted; then two counted unanswered attempts, then the limit.
    assert_eq!(kills, 3);
    let dead = read_all(&mut conn, &format!("{stream}:dead")).await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0].1["trackway.source_id"], ids[10]);
    assert_eq!(dead[0].1["trackway.reason"], "max_deliveries");
    let rows: i64 = client.query_one("SELECT count(*) FROM trackway.positions", &[]).await.expect("count").get(0);
    assert_eq!(rows, 20);
}
