//! Outages: PostgreSQL and Redis (private servers of this test, so other tests are not disturbed) are
//! crashed and restarted while entries arrive. The relay recovers by itself, `/readyz` reports the
//! outage, and nothing is lost or stored twice.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use trackway_tests::{
    connect_to, fresh_database_on,
    relay::{http_get, metric, redis, wait_drained, InProcess},
    servers::{PgCluster, RedisServer},
};

/// 2026-11-27T00:00:00Z in Unix milliseconds.
const NOV_27_MS: i64 = 1_795_737_600_000;

/// Position `i` of a small fleet, one second apart.
fn payload(i: usize) -> String {
    trackway_testkit::position(&format!("outage-{:02}", i % 20), NOV_27_MS + i as i64 * 1000)
}

/// Waits up to 20 s for `/readyz` to answer `want`.
async fn wait_ready(relay: &InProcess, want: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http_get(relay.admin, "/readyz").await;
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {status} ({body}), wanted {want}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_recovers_from_postgres_and_redis_restarts() {
    const TOTAL: usize = 6000;
    let pg = PgCluster::start();
    let mut redis_server = RedisServer::start();
    let db = fresh_database_on(&pg.server(), "outage").await;
    let stream = "positions";
    let relay = InProcess::start(&[
        "--database-url",
        &format!("{} dbname={db}", pg.server()),
        "--redis-url",
        &redis_server.url(),
        "--batch-size",
        "100",
        "--block-ms",
        "100",
    ])
    .await;
    wait_ready(&relay, 200).await;

    // The producer keeps adding entries through both outages, retrying while Redis is down. A retried
    // XADD may have succeeded already: the repeat is a duplicate entry, which must not become a second row.
    let url = redis_server.url();
    let done = Arc::new(AtomicBool::new(false));
    let producer = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while i < TOTAL {
                let added = async {
                    let mut conn =
                        redis::Client::open(url.as_str()).ok()?.get_multiplexed_async_connection().await.ok()?;
                    let batch: Vec<String> = (i..(i + 50).min(TOTAL)).map(payload).collect();
                    trackway_testkit::xadd_payloads(&mut conn, stream, &batch).await.ok()
                }
                .await;
                if added.is_some() {
                    i += 50;
                }
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    tokio::time::sleep(Duration::from_millis(800)).await;
    pg.stop();
    let body = wait_ready(&relay, 503).await;
    assert!(body.contains("postgres"), "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.restart();
    wait_ready(&relay, 200).await;

    tokio::time::sleep(Duration::from_millis(800)).await;
    redis_server.kill();
    let body = wait_ready(&relay, 503).await;
    assert!(body.contains("redis"), "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis_server.restart();
    wait_ready(&relay, 200).await;

    producer.await.expect("producer");
    assert!(done.load(Ordering::SeqCst));
    let mut conn = redis(&redis_server.url()).await;
    wait_drained(&mut conn, stream, "trackway", Duration::from_secs(120)).await;

    let client = connect_to(&pg.server(), &db).await;
    let rows: i64 = client.query_one("SELECT count(*) FROM trackway.positions", &[]).await.expect("count").get(0);
    assert_eq!(rows, TOTAL as i64, "every position stored exactly once");
    let text = http_get(relay.admin, "/metrics").await.1;
    assert!(metric(&text, "trackway_relay_reconnects_total{backend=\"postgres\"}") >= 1.0, "{text}");
    assert!(metric(&text, "trackway_relay_reconnects_total{backend=\"redis\"}") >= 1.0, "{text}");
    assert!(metric(&text, "trackway_relay_batches_total{outcome=\"retried\"}") >= 1.0, "{text}");
    assert!(relay.is_running());
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_died_with_entries_pending_is_taken_over_by_another() {
    let pg = PgCluster::start();
    let db = fresh_database_on(&pg.server(), "takeover").await;
    let stream = trackway_tests::relay::unique("takeover");
    let redis_url = trackway_tests::relay::redis_url();
    let mut conn = redis(&redis_url).await;
    let payloads: Vec<String> = (0..300).map(payload).collect();
    trackway_tests::relay::xadd_payloads(&mut conn, &stream, &payloads).await;
    let flags = |consumer: &str| -> Vec<String> {
        [
            "--database-url",
            &format!("{} dbname={db}", pg.server()),
            "--redis-url",
            &redis_url,
            "--stream",
            &stream,
            "--consumer",
            consumer,
            "--claim-idle-ms",
            "1000",
            "--batch-size",
            "100",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let binary = env!("CARGO_BIN_EXE_relay-under-test");

    // Relay A reads entries while PostgreSQL is down, so it cannot store them, and is killed.
    pg.stop();
    let a_flags = flags("relay-a");
    let a = trackway_tests::relay::Process::spawn(
        binary,
        &a_flags.iter().map(String::as_str).collect::<Vec<_>>(),
        "trackway-test-takeover",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while trackway_tests::relay::group_state(&mut conn, &stream, "trackway").await.map_or(0, |(pending, _)| pending)
        == 0
    {
        assert!(Instant::now() < deadline, "relay A never read anything");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.kill();
    let pending_on_a: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("trackway")
        .arg("-")
        .arg("+")
        .arg(1000)
        .arg("relay-a")
        .query_async(&mut conn)
        .await
        .expect("XPENDING");
    assert!(!pending_on_a.is_empty(), "relay A died holding entries");
    pg.restart();

    // Relay B, another consumer, claims them once they are idle and stores everything.
    let b = InProcess::start(&flags("relay-b").iter().map(String::as_str).collect::<Vec<_>>()).await;
    wait_drained(&mut conn, &stream, "trackway", Duration::from_secs(60)).await;
    let client = connect_to(&pg.server(), &db).await;
    let rows: i64 = client.query_one("SELECT count(*) FROM trackway.positions", &[]).await.expect("count").get(0);
    assert_eq!(rows, 300);
    let text = http_get(b.admin, "/metrics").await.1;
    assert_eq!(metric(&text, "trackway_relay_reclaimed_total"), pending_on_a.len() as f64, "{text}");
    b.stop().await.expect("clean stop");
}

/// Restarts while the database refuses the relay's login do not dead-letter good entries: the relay (max
/// deliveries 3) is started five times while its role may not log in, each time re-reading its pending
/// entries (their delivery count grows to 5) and failing to connect, and killed. Nothing reached the
/// database, so nothing counts: once the role may log in, all 500 entries are stored and none is a dead
/// letter.
///
/// The relay is built with the `store-counted` failpoint holding every counted attempt for 1 s between
/// counting it and sending it, and each run is killed as soon as the attempts hash shows a count (or 1.5 s
/// into its outage): a relay that counted before it had a connection is killed inside that window every
/// time, and its counts pile up (the failure CI saw once, when a kill fell between count and take-back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_while_the_database_refuses_the_login_dead_letter_nothing() {
    restarts_during_an_outage_dead_letter_nothing("nologin", "CREATE ROLE relay NOLOGIN", "ALTER ROLE relay LOGIN")
        .await;
}

/// The same while the relay may log in but not call `ingest_batch` (its privilege revoked, as an operator's
/// mistake or a half-done migration would): every statement is answered with an error that is the
/// environment's, never the data's. A relay that counted before knowing the call would run is killed inside
/// the window each time, as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_while_the_ingest_call_is_refused_dead_letter_nothing() {
    restarts_during_an_outage_dead_letter_nothing(
        "noexecute",
        "CREATE ROLE relay LOGIN; \
         REVOKE EXECUTE ON FUNCTION trackway.ingest_batch(text[]) FROM trackway_ingest",
        "GRANT EXECUTE ON FUNCTION trackway.ingest_batch(text[]) TO trackway_ingest",
    )
    .await;
}

/// Five starts and kills of the relay during an outage made by `outage` (SQL run in the test's database,
/// which must create the login role `relay`), then `restore` and a sixth start: every entry stored, none
/// dead-lettered, no attempt counted meanwhile.
async fn restarts_during_an_outage_dead_letter_nothing(name: &str, outage: &str, restore: &str) {
    let pg = PgCluster::start();
    let db = fresh_database_on(&pg.server(), name).await;
    let admin = connect_to(&pg.server(), &db).await;
    admin
        .batch_execute(&format!("{outage}; GRANT trackway_ingest TO relay; GRANT CONNECT ON DATABASE {db} TO relay"))
        .await
        .expect("role relay");
    let stream = trackway_tests::relay::unique(name);
    let attempts = format!("{stream}:attempts");
    let redis_url = trackway_tests::relay::redis_url();
    let mut conn = redis(&redis_url).await;
    let payloads: Vec<String> = (0..500).map(payload).collect();
    let ids = trackway_tests::relay::xadd_payloads(&mut conn, &stream, &payloads).await;
    let database_url = format!("host=127.0.0.1 port={} user=relay dbname={db}", pg.port);
    let args = [
        "--database-url",
        &database_url,
        "--redis-url",
        &redis_url,
        "--stream",
        &stream,
        "--consumer",
        "restarted",
        "--max-deliveries",
        "3",
        "--batch-size",
        "100",
    ];
    let binary = env!("CARGO_BIN_EXE_relay-under-test");
    let log = format!("trackway-test-{name}");
    let hold = [("FAILPOINTS", "store-counted=return(1000)")];
    for run in 1..=5 {
        let relay = trackway_tests::relay::Process::spawn_with_env(binary, &args, &hold, &log);
        // Wait until this run has read the first entry (again) and has tried the database.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                .arg(&stream)
                .arg("trackway")
                .arg(&ids[0])
                .arg(&ids[0])
                .arg(1)
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            let delivered = pending.first().map_or(0, |p| p.3);
            assert!(run == 1 || delivered > 0, "run {run}: entry {} is no longer pending (dead-lettered?)", ids[0]);
            let ready = trackway_tests::relay::http_get_opt(relay.admin, "/readyz").await;
            if delivered >= run
                && ready.as_ref().is_some_and(|(status, body)| *status == 503 && body.contains("postgres"))
            {
                break;
            }
            assert!(Instant::now() < deadline, "run {run}: first entry delivered {delivered} times, /readyz {ready:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Kill inside a counted attempt if there is one, else after a few more tries.
        let outage = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < outage && counted(&mut conn, &attempts, &ids[0]).await == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        relay.kill();
        let left = counted(&mut conn, &attempts, &ids[0]).await;
        assert_eq!(left, 0, "run {run}: a relay whose calls could not run counted {left} store attempts of {}", ids[0]);
    }
    admin.batch_execute(restore).await.expect("end the outage");
    let relay = trackway_tests::relay::Process::spawn(binary, &args, &log);
    wait_drained(&mut conn, &stream, "trackway", Duration::from_secs(60)).await;
    relay.kill();
    let dead = trackway_tests::relay::read_all(&mut conn, &format!("{stream}:dead")).await;
    assert!(dead.is_empty(), "{} good entries dead-lettered: {:?}", dead.len(), dead.first());
    let rows: i64 = admin.query_one("SELECT count(*) FROM trackway.positions", &[]).await.expect("count").get(0);
    assert_eq!(rows, 500);
    let counts: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg(&attempts).query_async(&mut conn).await.expect("HGETALL");
    assert!(counts.keys().all(|k| k.starts_with("call:")), "settled entries kept their counts: {counts:?}");
}

/// The unanswered store attempts counted for entry `id` in the attempts hash `key`.
async fn counted(conn: &mut redis::aio::MultiplexedConnection, key: &str, id: &str) -> u64 {
    let n: Option<u64> = redis::cmd("HGET").arg(key).arg(id).query_async(conn).await.expect("HGET");
    n.unwrap_or(0)
}
