//! A path that stops answering without closing (issue 17, point 2): a TCP proxy between the relay and
//! PostgreSQL, or Redis, forwards nothing for 60 s while keeping every socket open (no FIN, no RST; its
//! kernel still acknowledges and answers keepalives), then forwards again — on every connection, or, as a
//! middlebox that lost its state would, only on new ones.
//!
//! Within the bound README states (15 s) `/readyz` turns 503 and `trackway_relay_backend_up` says which
//! backend is out; after the thaw, ingestion and the live feed resume by themselves, nothing is lost,
//! stored twice or dead-lettered, and a live client subscribed throughout gets every position once.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use trackway_tests::{
    connect, fresh_database,
    live::{admin_token, key_set, live_flags, payload, Client, LiveRelay},
    proxy::Proxy,
    relay::{http_get, metric, metric_opt, redis, redis_url, unique, wait_drained, xadd_payloads},
};

/// How long the path stays silent (the figure).
const SILENT: Duration = Duration::from_secs(60);
/// The bound README states for noticing it.
const NOTICED_WITHIN: Duration = Duration::from_secs(15);
/// Devices of the test's group.
const DEVICES: u32 = 4;

/// Which path goes silent.
#[derive(Clone, Copy, Debug)]
enum Path {
    Postgres,
    Redis,
}

/// How it comes back.
#[derive(Clone, Copy, Debug)]
enum Thaw {
    /// Every connection forwards again (answers held during the silence arrive late).
    Everything,
    /// Only new connections pass: the old ones stay silent for good.
    NewConnectionsOnly,
}

// Each test runs both paths at once (different proxies, databases and streams): the minute of silence
// is waited for once.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_path_is_noticed_and_everything_resumes_after_it() {
    tokio::join!(
        silent_path("silent_pg", Path::Postgres, Thaw::Everything),
        silent_path("silent_redis", Path::Redis, Thaw::Everything),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_lost_in_a_silent_path_are_replaced() {
    tokio::join!(
        silent_path("silent_pg_lost", Path::Postgres, Thaw::NewConnectionsOnly),
        silent_path("silent_redis_lost", Path::Redis, Thaw::NewConnectionsOnly),
    );
}

async fn silent_path(name: &str, path: Path, thaw: Thaw) {
    let db = fresh_database(name).await;
    let stream = unique(name);
    let (proxy, flag, value) = match path {
        Path::Postgres => {
            let proxy = Proxy::to_test_server().await;
            let through = proxy.database(&db);
            (proxy, "--database-url", through)
        }
        Path::Redis => {
            let url = redis_url();
            let target = url.trim_start_matches("redis://").trim_end_matches('/');
            let proxy = Proxy::start(target).await;
            let through = format!("redis://{}/", proxy.addr);
            (proxy, "--redis-url", through)
        }
    };
    let mut flags = live_flags(&db, &stream, &[]);
    let at = flags.iter().position(|f| f == flag).expect("flag") + 1;
    flags[at] = value;
    let relay = LiveRelay::start(&flags).await;
    let admin = connect(&db).await;
    for d in 0..DEVICES {
        admin.execute("INSERT INTO trackway.device_groups VALUES ('g', $1)", &[&format!("s{d}")]).await.expect("group");
    }
    let mut watcher = Client::authenticated(&relay.url(""), &admin_token()).await;
    watcher.subscribe(json!({"group": "g"})).await;

    // Positions keep coming, straight into Redis, before, during and after the silence.
    let producing = Arc::new(AtomicBool::new(true));
    let producer = {
        let (stream, producing) = (stream.clone(), producing.clone());
        tokio::spawn(async move {
            let mut conn = redis(&redis_url()).await;
            let mut sent = Vec::new();
            let mut n = 0u32;
            while producing.load(Ordering::Relaxed) {
                let batch: Vec<String> = (0..DEVICES).map(|d| payload(&format!("s{d}"), n)).collect();
                xadd_payloads(&mut conn, &stream, &batch).await;
                sent.extend(batch);
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sent
        })
    };
    // The watcher reads all along (answering the relay's pings, so it is never closed as silent).
    let received = Arc::new(Mutex::new(Vec::new()));
    let collector = {
        let received = received.clone();
        tokio::spawn(async move {
            loop {
                let got = watcher.positions(1, Duration::from_secs(120)).await;
                if got.is_empty() {
                    return;
                }
                received.lock().expect("lock").extend(got);
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;

    proxy.freeze();
    let frozen_at = Instant::now();
    let out = match path {
        Path::Postgres => vec!["postgres", "postgres_live"],
        Path::Redis => vec!["redis"],
    };
    let noticed = loop {
        let (status, body) = http_get(relay.admin, "/readyz").await;
        let metrics = relay.metrics().await;
        let down = out
            .iter()
            .all(|b| metric_opt(&metrics, &format!("trackway_relay_backend_up{{backend=\"{b}\"}}")) == Some(0.0));
        if status == 503 && down {
            break (frozen_at.elapsed(), body);
        }
        assert!(
            frozen_at.elapsed() < NOTICED_WITHIN,
            "{path:?} silent for {:?}: /readyz {status} {body:?}, and {out:?} not all down in\n{metrics}",
            frozen_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!("{path:?} silent: noticed after {:.1} s: {}", noticed.0.as_secs_f64(), noticed.1.trim());
    // It stays noticed while the path is silent.
    while frozen_at.elapsed() < SILENT {
        let (status, body) = http_get(relay.admin, "/readyz").await;
        assert_eq!(status, 503, "{path:?} still silent after {:?}, yet: {body}", frozen_at.elapsed());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    match thaw {
        Thaw::Everything => proxy.thaw(),
        Thaw::NewConnectionsOnly => proxy.thaw_new_only(),
    }
    let thawed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    producing.store(false, Ordering::Relaxed);
    let sent = producer.await.expect("producer");

    // Everything resumes by itself.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http_get(relay.admin, "/readyz").await;
        if status == 200 {
            println!("ready again {:.1} s after the thaw", thawed_at.elapsed().as_secs_f64());
            break;
        }
        assert!(Instant::now() < deadline, "{path:?} answers again, yet after 60 s: /readyz {status} {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut conn = redis(&redis_url()).await;
    wait_drained(&mut conn, &stream, "trackway", Duration::from_secs(60)).await;
    let want: HashSet<(String, String)> = sent.iter().map(|p| key_of(p)).collect();
    let stored: i64 = admin.query_one("SELECT count(*) FROM trackway.positions", &[]).await.expect("count").get(0);
    assert_eq!(stored, want.len() as i64, "every position stored once");
    let metrics = relay.metrics().await;
    for reason in ["invalid", "missing_payload", "rejected", "max_deliveries"] {
        let dead = metric(&metrics, &format!("trackway_relay_dead_letters_total{{reason=\"{reason}\"}}"));
        assert_eq!(dead, 0.0, "no dead letters ({reason}):\n{metrics}");
    }
    for backend in out {
        assert_eq!(metric(&metrics, &format!("trackway_relay_backend_up{{backend=\"{backend}\"}}")), 1.0, "{metrics}");
    }
    // The watcher gets every position, once.
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().expect("lock").len() < want.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Anything sent twice would come right behind.
    tokio::time::sleep(Duration::from_millis(500)).await;
    collector.abort();
    let got = received.lock().expect("lock").clone();
    assert_eq!(key_set(&got), want, "the live client misses positions");
    assert_eq!(got.len(), want.len(), "the live client got a position twice");
    relay.stop().await.expect("clean stop");
}

fn key_of(payload: &str) -> (String, String) {
    let doc: Value = serde_json::from_str(payload).expect("json");
    (doc["deviceId"].as_str().expect("id").to_owned(), doc["timestamp"].as_str().expect("ts").to_owned())
}
