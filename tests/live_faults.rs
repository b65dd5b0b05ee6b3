//! The live side under faults: a client that never reads, a PostgreSQL restart under subscribed clients,
//! and a JavaScript client (Node) checking that 64-bit integers and byte strings survive exactly.

use std::{collections::HashSet, process::Command, time::Duration};

use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio_tungstenite::{client_async, tungstenite::Message};
use trackway_tests::{
    connect, connect_to, fresh_database, fresh_database_on, ingest_generated,
    live::{admin_token, key_set, live_flags, payload, Client, LiveRelay},
    relay::{metric, redis, redis_url, unique, xadd_payloads},
    servers::PgCluster,
};

async fn ingest_on(client: &tokio_postgres::Client, payloads: &[String]) {
    let rows =
        client.query("SELECT status FROM trackway.ingest_batch($1::text[])", &[&payloads]).await.expect("ingest_batch");
    assert!(rows.iter().all(|r| r.get::<_, String>(0) == "inserted"));
}

fn key_of(payload: &str) -> (String, String) {
    let doc: Value = serde_json::from_str(payload).expect("json");
    (doc["deviceId"].as_str().expect("id").to_owned(), doc["timestamp"].as_str().expect("ts").to_owned())
}

/// A client that never reads: a tiny receive buffer, sends `subscribe`, then is never polled again (keep
/// the returned socket alive for as long as it is to stay connected).
async fn stalled_subscriber(
    relay: &LiveRelay,
    subscribe: Value,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small buffer");
    let stream = socket.connect(relay.live).await.expect("connect");
    let (mut stalled, _) =
        client_async(relay.url(&format!("access_token={}", admin_token())), stream).await.expect("handshake");
    futures_util::SinkExt::send(&mut stalled, Message::text(subscribe.to_string())).await.expect("subscribe");
    stalled
}

/// A client kept behind costs the feed little per position, however long its queue may grow: its queue is
/// coalesced at most once per `TRACKWAY_LIVE_QUEUE` positions. It used to be coalesced for every position
/// routed to it once full, a pass over the whole queue each time (0.1 ms at 1,024 devices, 0.6 ms at
/// 4,096), on the feed: one client that never read, watching a 5,000-device group, held every other
/// client's positions back for seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_kept_behind_costs_the_feed_little_per_position() {
    let db = fresh_database("live_behind_cost").await;
    let admin = connect(&db).await;
    admin
        .batch_execute("INSERT INTO trackway.device_groups SELECT 'big', 'big-' || i FROM generate_series(0, 4999) i")
        .await
        .expect("group");
    let flags =
        live_flags(&db, &unique("live_behind_cost"), &["--live-queue", "5000", "--live-send-timeout-ms", "60000"]);
    let relay = LiveRelay::start(&flags).await;
    let _stalled = stalled_subscriber(&relay, json!({"type":"subscribe","group":"big"})).await;
    let mut watcher = Client::authenticated(&relay.url(""), &admin_token()).await;
    watcher.subscribe(json!({"device": "w"})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Twelve positions of each of the group's 5,000 devices (about 18 MB: far more than the stalled
    // client's socket buffers hold), then one of the watched device.
    let stored = ingest_generated(&admin, 0..60_000, 5_000, ("big-", 5_000), "1 second").await;
    assert_eq!(stored, 60_000);
    let sent = tokio::time::Instant::now();
    ingest_on(&admin, &[payload("w", 1)]).await;
    let got = watcher.positions(1, Duration::from_secs(30)).await;
    let waited = sent.elapsed();
    assert_eq!(got.len(), 1, "the watched position came");
    assert!(waited < Duration::from_secs(3), "the watched position took {waited:?} behind the stalled client");
    let text = relay.metrics().await;
    assert!(metric(&text, "trackway_live_positions_coalesced_total") > 0.0, "the stalled client was behind: {text}");
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_delays_no_one_and_is_closed() {
    let db = fresh_database("live_slow").await;
    let admin = connect(&db).await;
    for d in 0..40 {
        admin
            .execute("INSERT INTO trackway.device_groups VALUES ('all', $1)", &[&format!("s{d}")])
            .await
            .expect("group");
    }
    // The send timeout is what a reading client must never exceed, also on a loaded machine: at 1 s the
    // reading client below was sometimes closed as too slow itself when the test machine was busy.
    let flags = live_flags(&db, &unique("live_slow"), &["--live-queue", "1000000", "--live-send-timeout-ms", "5000"]);
    let relay = LiveRelay::start(&flags).await;
    let stalled = stalled_subscriber(&relay, json!({"type":"subscribe","group":"all"})).await;
    let mut reader = Client::authenticated(&relay.url(""), &admin_token()).await;
    reader.subscribe(json!({"group": "all"})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // About 10 MB of positions: far more than the stalled client's socket buffers hold.
    let mut want = HashSet::new();
    for round in 0..25u32 {
        let batch: Vec<String> = (0..40)
            .flat_map(|d| (0..25).map(move |i| (d, round * 25 + i)))
            .map(|(d, n)| payload(&format!("s{d}"), n))
            .collect();
        want.extend(batch.iter().map(|p| key_of(p)));
        ingest_on(&admin, &batch).await;
    }
    let got = reader.positions(want.len(), Duration::from_secs(20)).await;
    assert_eq!(got.len(), want.len(), "the reading client gets every position");
    assert_eq!(key_set(&got), want);
    // The stalled client is dropped once its socket stays full for the send timeout. (The close is
    // counted when the writer gives up, a moment before its session has ended and left the gauge: wait
    // for both.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = relay.metrics().await;
        let closed = trackway_tests::relay::metric_opt(&text, "trackway_live_closes_total{reason=\"too_slow\"}");
        if closed == Some(1.0) && metric(&text, "trackway_live_connections") == 1.0 {
            break;
        }
        assert!(closed.unwrap_or(0.0) <= 1.0, "the reading client was closed too:\n{text}");
        assert!(tokio::time::Instant::now() < deadline, "the stalled client was never closed and gone:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stalled);
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_restart_under_subscribed_clients_loses_no_position() {
    let cluster = PgCluster::start();
    let db = fresh_database_on(&cluster.server(), "live_restart").await;
    let stream = unique("live_restart");
    let mut flags = live_flags(&db, &stream, &[]);
    let database_url = flags.iter().position(|f| f == "--database-url").expect("flag") + 1;
    flags[database_url] = format!("{} dbname={db}", cluster.server());
    let relay = LiveRelay::start(&flags).await;
    let admin = connect_to(&cluster.server(), &db).await;
    admin.batch_execute("INSERT INTO trackway.device_groups VALUES ('g', 'p1'), ('g', 'p2')").await.expect("group");
    let mut device = Client::authenticated(&relay.url(""), &admin_token()).await;
    device.subscribe(json!({"device": "p1"})).await;
    let mut group = Client::authenticated(&relay.url(""), &admin_token()).await;
    group.subscribe(json!({"group": "g"})).await;

    let mut conn = redis(&redis_url()).await;
    let mut sent = Vec::new();
    for n in 0..600u32 {
        let batch = vec![payload("p1", n), payload("p2", n)];
        sent.extend(batch.clone());
        xadd_payloads(&mut conn, &stream, &batch).await;
        if n == 200 || n == 400 {
            // A crash (immediate stop) and a start, while clients are subscribed and positions flow.
            cluster.stop();
            tokio::time::sleep(Duration::from_millis(300)).await;
            cluster.restart();
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let want_p1: HashSet<_> = sent.iter().map(|p| key_of(p)).filter(|k| k.0 == "p1").collect();
    let want_all: HashSet<_> = sent.iter().map(|p| key_of(p)).collect();
    let got_p1 = device.positions(want_p1.len(), Duration::from_secs(30)).await;
    let got_all = group.positions(want_all.len(), Duration::from_secs(30)).await;
    assert_eq!(key_set(&got_p1), want_p1, "device subscriber");
    assert_eq!(got_p1.len(), want_p1.len(), "no position twice");
    assert_eq!(key_set(&got_all), want_all, "group subscriber");
    assert_eq!(got_all.len(), want_all.len(), "no position twice");
    let text = relay.metrics().await;
    assert!(metric(&text, "trackway_live_listen_reconnects_total") >= 2.0, "{text}");
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_client_revives_64_bit_integers_and_byte_strings_exactly() {
    let db = fresh_database("live_node").await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_node"), &[])).await;
    let doc = |n: u32, ts: &str| {
        json!({"deviceId": "js", "timestamp": ts, "latitude": 54.687157, "longitude": 25.279652, "speed": n,
            "attributes": {"11": {"__bigint": "18446744073709551615"}, "12": {"__bigint": "-9223372036854775808"},
                "13": 9007199254740991_u64, "281": {"__buffer_b64": "UDAzMDA="}, "282": {"__buffer_b64": ""},
                "nested": {"list": [{"__bigint": "123456789012345678901234567890"}, {"__buffer_b64": "AP8="}]}}})
    };
    let first = doc(1, "2026-11-27T10:00:00.000Z");
    let second = doc(2, "2026-11-27T10:00:01.000Z");
    let client = connect(&db).await;
    ingest_on(&client, &[first.to_string()]).await;
    let url = relay.url(&format!("access_token={}", admin_token()));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/revive.mjs");
    let node = tokio::task::spawn_blocking(move || {
        Command::new("node").args(["--experimental-websocket", "--no-warnings", script, &url, "js", "1"]).output()
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ingest_on(&client, &[second.to_string()]).await;
    let output = node.await.expect("joined").expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "node failed: {stdout} {}", String::from_utf8_lossy(&output.stderr));
    let result: Value = serde_json::from_str(stdout.trim()).expect("node prints JSON");
    assert_eq!(result["snapshot"], json!([first]), "snapshot, revived and re-encoded");
    assert_eq!(result["positions"], json!([second]), "live position, revived and re-encoded");
    let types = &result["types"];
    assert_eq!(types["live.attributes.11"], "bigint:18446744073709551615");
    assert_eq!(types["live.attributes.12"], "bigint:-9223372036854775808");
    assert_eq!(types["live.attributes.281"], "bytes:5030333030");
    assert_eq!(types["live.attributes.282"], "bytes:");
    assert_eq!(types["live.attributes.nested.list.0"], "bigint:123456789012345678901234567890");
    assert_eq!(types["snapshot.attributes.nested.list.1"], "bytes:00ff");
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_while_the_database_is_down_is_refused_at_once_and_works_after() {
    let cluster = PgCluster::start();
    let db = fresh_database_on(&cluster.server(), "live_down").await;
    let mut flags = live_flags(&db, &unique("live_down"), &["--auth", "none"]);
    let database_url = flags.iter().position(|f| f == "--database-url").expect("flag") + 1;
    flags[database_url] = format!("{} dbname={db}", cluster.server());
    let relay = LiveRelay::start(&flags).await;
    let mut client = Client::connect(&relay.url(""), None).await;
    assert_eq!(client.recv_type("authenticated").await["admin"], true, "auth none: everyone is admin");
    cluster.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = tokio::time::Instant::now();
    client.send(json!({"type": "subscribe", "device": "d", "id": 1})).await;
    let error = client.recv_type("error").await;
    assert_eq!((error["code"].as_str(), error["id"].as_i64()), (Some("unavailable"), Some(1)));
    assert!(asked.elapsed() < Duration::from_secs(3), "refused after {:?}", asked.elapsed());
    client.send(json!({"type": "ping"})).await;
    client.recv_type("pong").await;
    // Not ready (answers are cached for a second), and the warning about auth none is always there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (code, body) = trackway_tests::relay::http_get(relay.admin, "/readyz").await;
        assert!(body.contains("TRACKWAY_AUTH=none"), "readyz warns about auth none: {body}");
        if code == 503 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still ready with the database down: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        client.send(json!({"type": "subscribe", "device": "d"})).await;
        let frame = client.recv().await;
        if frame["type"] == "subscribed" {
            break;
        }
        assert_eq!(frame["code"], "unavailable", "{frame}");
        assert!(tokio::time::Instant::now() < deadline, "never subscribed after the restart");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let writer = connect_to(&cluster.server(), &db).await;
    ingest_on(&writer, &[payload("d", 1)]).await;
    assert_eq!(client.positions(1, Duration::from_secs(5)).await.len(), 1);
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_answers_no_ping_is_dropped_as_silent() {
    let db = fresh_database("live_silent").await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_silent"), &["--live-ping-ms", "200"])).await;
    // A client that authenticates, then is never polled again: it answers no ping.
    let stream = tokio::net::TcpStream::connect(relay.live).await.expect("connect");
    let (silent, _) =
        client_async(relay.url(&format!("access_token={}", admin_token())), stream).await.expect("handshake");
    // A client that reads (and so answers pings) stays.
    let mut alive = Client::authenticated(&relay.url(""), &admin_token()).await;
    alive.subscribe(json!({"device": "x"})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = relay.metrics().await;
        if trackway_tests::relay::metric_opt(&text, "trackway_live_closes_total{reason=\"silent\"}") == Some(1.0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the silent peer was never dropped:\n{text}");
        // Keep the reading client reading, so it answers pings.
        let _ = alive.recv_within(Duration::from_millis(100)).await;
    }
    // The silent peer's connection goes once its close handshake times out (1 s); the reading client, which
    // keeps answering pings all along, stays.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let _ = alive.recv_within(Duration::from_millis(100)).await;
        let text = relay.metrics().await;
        assert_eq!(metric(&text, "trackway_live_closes_total{reason=\"silent\"}"), 1.0, "only the silent one");
        if metric(&text, "trackway_live_connections") == 1.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the silent connection is still counted:\n{text}");
    }
    for _ in 0..6 {
        let _ = alive.recv_within(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&relay.metrics().await, "trackway_live_closes_total{reason=\"silent\"}"), 1.0);
    drop(silent);
    relay.stop().await.expect("clean stop");
}

/// Reads from `socket` until the server closes it; `true` when it did within `timeout`.
async fn closed_by_server(socket: &mut tokio::net::TcpStream, timeout: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {} // an error page, then the close
        }
    }
}

/// Slowloris: a client that starts its request and never finishes the head is disconnected after the
/// header timeout (it used to stay open as long as it liked, holding a descriptor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_never_ends_is_cut_off() {
    use tokio::io::AsyncWriteExt;
    let db = fresh_database("live_slowloris").await;
    let flags = live_flags(&db, &unique("live_slowloris"), &["--live-header-timeout-ms", "500"]);
    let relay = LiveRelay::start(&flags).await;
    let mut partial = tokio::net::TcpStream::connect(relay.live).await.expect("connect");
    partial.write_all(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n").await.expect("write");
    let started = tokio::time::Instant::now();
    assert!(closed_by_server(&mut partial, Duration::from_secs(5)).await, "still open after 5 s");
    assert!(started.elapsed() >= Duration::from_millis(400), "closed before the timeout: {:?}", started.elapsed());
    // Whole requests are served as before.
    let mut client = Client::authenticated(&relay.url(""), &admin_token()).await;
    client.subscribe(json!({"device": "d-slowloris"})).await;
    relay.stop().await.expect("clean stop");
}

/// Connections nobody has vouched for yet are capped apart from the rest: idle TCP connections and
/// unauthenticated WebSockets fill their places, authenticated clients carry on, and a place is free again
/// when one of them goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_not_yet_authenticated_are_capped_apart() {
    let db = fresh_database("live_unauth_cap").await;
    let flags = live_flags(&db, &unique("live_unauth_cap"), &["--live-max-unauthenticated", "3"]);
    let relay = LiveRelay::start(&flags).await;
    let mut watcher = Client::authenticated(&relay.url(""), &admin_token()).await;
    watcher.subscribe(json!({"device": "d-cap"})).await;
    // Two idle TCP connections and one WebSocket that never authenticates take the three places.
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(tokio::net::TcpStream::connect(relay.live).await.expect("connect"));
    }
    let _waiting = Client::connect(&relay.url(""), None).await;
    let mut refused = tokio::net::TcpStream::connect(relay.live).await.expect("connect");
    assert!(closed_by_server(&mut refused, Duration::from_secs(5)).await, "a fourth is closed at once");
    let text = relay.metrics().await;
    assert!(metric(&text, "trackway_live_closes_total{reason=\"unauthenticated\"}") >= 1.0, "counted");
    // The authenticated client is not affected.
    ingest_on(&connect(&db).await, &[payload("d-cap", 1)]).await;
    assert_eq!(watcher.positions(1, Duration::from_secs(5)).await.len(), 1);
    // One goes; a new client gets its place and, once authenticated, gives it up again.
    drop(idle.pop());
    // (It waits for `authenticated`, when its place is given up: a client dropped before that keeps the
    // place until the relay notices, and the next one could find none free.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while Client::try_authenticated(&relay.url(""), &admin_token()).await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no place came free");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..3 {
        let mut client = Client::authenticated(&relay.url(""), &admin_token()).await;
        client.subscribe(json!({"device": "d-cap"})).await;
    }
    relay.stop().await.expect("clean stop");
}

/// One user (one `id` claim) may hold at most TRACKWAY_LIVE_MAX_CONNECTIONS_PER_USER connections; the
/// next is closed with 4010, other users are not affected, and a closed connection gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_holds_at_most_its_connections() {
    use trackway_tests::live::user_token;
    let db = fresh_database("live_user_cap").await;
    let flags = live_flags(&db, &unique("live_user_cap"), &["--live-max-connections-per-user", "2"]);
    let relay = LiveRelay::start(&flags).await;
    let token = user_token("u-cap", "r");
    let first = Client::authenticated(&relay.url(""), &token).await;
    let _second = Client::authenticated(&relay.url(""), &token).await;
    let mut third = Client::connect(&relay.url(""), Some(&token)).await;
    let closed = third.closed(Duration::from_secs(5)).await;
    assert_eq!(closed.code, 4010, "{closed:?}");
    let _other_user = Client::authenticated(&relay.url(""), &user_token("u-other", "r")).await;
    first.close().await;
    // The closed connection's place comes back once the relay has seen it go: until then a new one is
    // closed with 4010 too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let request = trackway_tests::live::request(&relay.url(""), Some(&token));
    loop {
        let (mut socket, _) = tokio_tungstenite::connect_async(request.clone()).await.expect("handshake");
        let first = tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut socket)).await;
        match first {
            Ok(Some(Ok(Message::Text(text)))) if text.as_str().contains("\"authenticated\"") => break,
            other => assert!(tokio::time::Instant::now() < deadline, "the place never came back: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.stop().await.expect("clean stop");
}

/// The relay raises its soft limit on open files to the hard limit at start (every client is a
/// descriptor; when they run out, its own reconnects to PostgreSQL and Redis fail too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_files_limit_is_raised_to_the_hard_limit() {
    use trackway_tests::relay::{relay_flags, Process};
    let db = fresh_database("live_nofile").await;
    let flags = relay_flags(&db, &unique("live_nofile"), &[]);
    let mut args = vec!["--nofile=256:4096", env!("CARGO_BIN_EXE_relay-under-test")];
    args.extend(flags.iter().map(String::as_str));
    let relay = Process::spawn("prlimit", &args, "trackway-test-relay-nofile");
    relay.wait_healthy().await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", relay.id())).expect("limits");
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).expect("open files line");
    let numbers: Vec<&str> = open_files.split_whitespace().filter(|w| w.parse::<u64>().is_ok()).collect();
    assert_eq!(numbers, ["4096", "4096"], "{open_files}");
    relay.kill();
}

/// While the feed cannot answer a `subscribe` (its snapshot read waits behind a lock), the waiting client
/// is still heard (pongs count: no 4009), is answered `unavailable` after
/// TRACKWAY_LIVE_SUBSCRIBE_TIMEOUT_MS, and its next request is answered after that, in order. It used to
/// read nothing while waiting, and was closed as silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_the_feed_cannot_answer_times_out_and_the_client_stays_heard() {
    let db = fresh_database("live_stalled_subscribe").await;
    let flags = live_flags(
        &db,
        &unique("live_stalled_subscribe"),
        &["--live-ping-ms", "700", "--live-subscribe-timeout-ms", "3500"],
    );
    let relay = LiveRelay::start(&flags).await;
    let mut client = Client::authenticated(&relay.url(""), &admin_token()).await;
    let locker = connect(&db).await;
    locker.batch_execute("BEGIN; LOCK TABLE trackway.latest_positions IN ACCESS EXCLUSIVE MODE").await.expect("lock");
    let asked = tokio::time::Instant::now();
    client.send(json!({"type": "subscribe", "device": "d-stall", "id": "s1"})).await;
    client.send(json!({"type": "ping", "id": "p1"})).await;
    // Reading answers the relay's pings meanwhile (the client library pongs as it reads).
    let first = client.recv_within(Duration::from_secs(10)).await.expect("an answer");
    assert_eq!(
        (first["type"].as_str(), first["code"].as_str(), first["id"].as_str()),
        (Some("error"), Some("unavailable"), Some("s1")),
        "{first}"
    );
    assert!(asked.elapsed() >= Duration::from_millis(3_000), "answered after {:?}", asked.elapsed());
    let second = client.recv_within(Duration::from_secs(5)).await.expect("the pong");
    assert_eq!((second["type"].as_str(), second["id"].as_str()), (Some("pong"), Some("p1")), "{second}");
    locker.batch_execute("ROLLBACK").await.expect("unlock");
    client.subscribe(json!({"device": "d-stall"})).await;
    let text = relay.metrics().await;
    assert_eq!(
        trackway_tests::relay::metric_opt(&text, "trackway_live_closes_total{reason=\"silent\"}").unwrap_or(0.0),
        0.0
    );
    relay.stop().await.expect("clean stop");
}

/// Answers keep the order of requests, an `unsubscribe` included: with the feed held up (its read waits
/// behind a lock), a `ping` sent after an `unsubscribe` is answered after it. The `pong` used to come
/// first (the session answered pings itself at once, while the feed answered the unsubscribe later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribe_is_answered_before_the_requests_after_it() {
    let db = fresh_database("live_unsub_order").await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_unsub_order"), &[])).await;
    let mut client = Client::authenticated(&relay.url(""), &admin_token()).await;
    client.subscribe(json!({"device": "d-order"})).await;
    let locker = connect(&db).await;
    locker.batch_execute("BEGIN; LOCK TABLE trackway.positions IN ACCESS EXCLUSIVE MODE").await.expect("lock");
    tokio::time::sleep(Duration::from_millis(800)).await; // the feed's next read (every 200 ms) now waits
    client.send(json!({"type": "unsubscribe", "device": "d-order", "id": "u1"})).await;
    client.send(json!({"type": "ping", "id": "p1"})).await;
    assert_eq!(client.recv_within(Duration::from_secs(1)).await, None, "nothing before the unsubscribe's answer");
    locker.batch_execute("ROLLBACK").await.expect("unlock");
    let first = client.recv_within(Duration::from_secs(10)).await.expect("an answer");
    assert_eq!((first["type"].as_str(), first["id"].as_str()), (Some("unsubscribed"), Some("u1")), "{first}");
    let second = client.recv_within(Duration::from_secs(5)).await.expect("the pong");
    assert_eq!((second["type"].as_str(), second["id"].as_str()), (Some("pong"), Some("p1")), "{second}");
    relay.stop().await.expect("clean stop");
}

/// A fresh database with group `big` of 1,000 devices that each have a position (a 291 KiB snapshot), a
/// relay started with `flags`, and a client watching device `d-watched`.
async fn big_group_and_a_watcher(name: &str, flags: &[&str]) -> (tokio_postgres::Client, LiveRelay, Client) {
    let db = fresh_database(name).await;
    let admin = connect(&db).await;
    let devices: Vec<String> = (0..1000).map(|i| format!("d-{i}")).collect();
    admin
        .execute("INSERT INTO trackway.device_groups SELECT 'big', unnest($1::text[])", &[&devices])
        .await
        .expect("group");
    ingest_on(&admin, &devices.iter().map(|d| payload(d, 1)).collect::<Vec<_>>()).await;
    let relay = LiveRelay::start(&live_flags(&db, &unique(name), flags)).await;
    let mut watcher = Client::authenticated(&relay.url(""), &admin_token()).await;
    watcher.subscribe(json!({"device": "d-watched"})).await;
    (admin, relay, watcher)
}

/// A client that never reads, sending subscribe and unsubscribe of group `big` 200 times each (until the
/// relay drops it), then holding its connection open until the task is aborted.
async fn never_reading_flood(relay: &LiveRelay) -> tokio::task::JoinHandle<()> {
    use futures_util::SinkExt;
    let request = trackway_tests::live::request(&relay.url(""), Some(&admin_token()));
    let (socket, _) = tokio_tungstenite::connect_async(request).await.expect("handshake");
    let (mut sink, _never_read) = futures_util::StreamExt::split(socket);
    tokio::spawn(async move {
        let _never_read = _never_read; // held: the connection stays open
        for _ in 0..200 {
            for kind in ["subscribe", "unsubscribe"] {
                let text = json!({"type": kind, "group": "big"}).to_string();
                if sink.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
        }
        std::future::pending::<()>().await;
    })
}

/// Waits (20 s at most) until the relay has closed a client as too slow.
async fn closed_as_too_slow(relay: &LiveRelay) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = relay.metrics().await;
        let closed = trackway_tests::relay::metric_opt(&text, "trackway_live_closes_total{reason=\"too_slow\"}");
        if closed.unwrap_or(0.0) >= 1.0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the client that never reads is still open");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A client that never reads while it subscribes to and unsubscribes from a 1,000-device group again and
/// again is closed as too slow once its unread answers pass TRACKWAY_LIVE_MAX_QUEUED_BYTES (set here
/// below the 1 MiB at which the relay stops reading a client's requests); the others are served
/// meanwhile. Its snapshots used to pile up without a limit (three such clients took a relay from 114 to
/// 836 MiB in 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_snapshots_past_the_byte_budget_close_the_client() {
    let flags = ["--live-max-queued-bytes", "500000", "--live-send-timeout-ms", "60000"];
    let (admin, relay, mut watcher) = big_group_and_a_watcher("live_byte_budget", &flags).await;
    let flood = never_reading_flood(&relay).await;
    closed_as_too_slow(&relay).await;
    flood.abort();
    ingest_on(&admin, &[payload("d-watched", 1)]).await;
    assert_eq!(watcher.positions(1, Duration::from_secs(5)).await.len(), 1, "the others are served");
    relay.stop().await.expect("clean stop");
}

/// A client that never reads while it loops subscribe/unsubscribe of a 1,000-device group (a 291 KiB
/// snapshot each time) is no longer read once about 1 MiB of its answers wait unread: the relay holds that
/// much for it (`trackway_live_queued_bytes`), not its whole byte budget (16 MiB by default; thirty such
/// clients would hold 480 MB), and drops it once its socket has taken nothing for the send timeout, its
/// session with it. It used to be read on until the budget closed it, holding 16 MiB by then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_answers_is_not_read_either() {
    let flags = ["--live-send-timeout-ms", "4000"];
    let (admin, relay, mut watcher) = big_group_and_a_watcher("live_answer_watermark", &flags).await;
    let flood = never_reading_flood(&relay).await;
    // What the relay holds for it, sampled while it floods: at most 1 MiB and the answer that crossed it
    // (the kernel's socket buffers and the writer's frame in flight take a few snapshots more).
    let mut most: f64 = 0.0;
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        let text = relay.metrics().await;
        most = most.max(metric(&text, "trackway_live_queued_bytes"));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let read = metric(&relay.metrics().await, "trackway_live_frames_in_total{type=\"subscribe\"}") - 1.0;
    eprintln!("{read} subscribes read, at most {most} bytes queued");
    assert!(most > 0.0, "nothing was ever queued: the test proves nothing");
    assert!(most <= (1024 * 1024 + 400 * 1024) as f64, "{most} bytes queued for a client that never reads");
    assert!(read < 200.0, "every request was read ({read}): the client was never stopped");
    closed_as_too_slow(&relay).await;
    // Its session ends with it, though its reader was waiting for room.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while metric(&relay.metrics().await, "trackway_live_connections") > 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "the dropped client's session is still open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    flood.abort();
    ingest_on(&admin, &[payload("d-watched", 1)]).await;
    assert_eq!(watcher.positions(1, Duration::from_secs(5)).await.len(), 1, "the others are served");
    relay.stop().await.expect("clean stop");
}

/// Big frames (snapshots, replays, a backlog) are written a few at a time (8), so that a thousand clients
/// resuming at once do not stand, runnable, between everyone's live positions and the CPU; a client that
/// does not read keeps such a place 50 ms at most. Eight clients that never read, their writers stuck on
/// big frames until the 60 s send timeout, do not keep another client from its snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_do_not_keep_others_from_their_snapshots() {
    let flags = ["--live-send-timeout-ms", "60000"];
    let (_admin, relay, _watcher) = big_group_and_a_watcher("live_bulk_places", &flags).await;
    let mut floods = Vec::new();
    for _ in 0..8 {
        floods.push(never_reading_flood(&relay).await);
    }
    // Until every one is stuck: about 1 MiB of answers unread each, their sockets full.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while metric(&relay.metrics().await, "trackway_live_queued_bytes") < 8.0 * 900.0 * 1024.0 {
        assert!(tokio::time::Instant::now() < deadline, "the clients that never read never filled their queues");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = tokio::time::Instant::now();
    let mut reader = Client::authenticated(&relay.url(""), &admin_token()).await;
    let subscribed = tokio::time::timeout(Duration::from_secs(10), reader.subscribe(json!({"group": "big"})))
        .await
        .expect("a reading client's snapshot waited behind clients that never read");
    let took = started.elapsed();
    assert_eq!(subscribed["snapshot"].as_array().map(Vec::len), Some(1000));
    assert!(took < Duration::from_secs(5), "the snapshot took {took:?}");
    for flood in floods {
        flood.abort();
    }
    relay.stop().await.expect("clean stop");
}

/// Shutdown does not wait for a client that never reads while the relay waits for it to read (its
/// requests are no longer read, its socket takes nothing): the relay stops within its 5 s grace and the
/// second it gives a close frame. It used to wait for the whole grace and leave the session behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_client_that_never_reads() {
    let (_admin, relay, _watcher) =
        big_group_and_a_watcher("live_unread_shutdown", &["--live-send-timeout-ms", "60000"]).await;
    let flood = never_reading_flood(&relay).await;
    // Until the relay has stopped reading it: its answers fill 1 MiB.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(&relay.metrics().await, "trackway_live_queued_bytes") < 1024.0 * 1024.0 {
        assert!(tokio::time::Instant::now() < deadline, "the client's answers never reached 1 MiB");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopping = tokio::time::Instant::now();
    relay.stop().await.expect("clean stop");
    let took = stopping.elapsed();
    flood.abort();
    assert!(took < Duration::from_millis(3_500), "shutdown took {took:?} (grace 5 s)");
}

/// A failover to a replica that had not received the last transactions: the new primary hands out
/// transaction ids below the feed's cursor again. The feed notices on reconnecting that the last rows it
/// read are gone, moves its cursor back to the newest row the new primary holds, and the live client gets
/// the new primary's rows. They used to sort before the cursor and never reach anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_to_a_replica_behind_the_feed_new_rows_still_arrive() {
    let primary = PgCluster::start();
    let db = fresh_database_on(&primary.server(), "live_failover").await;
    let writer = connect_to(&primary.server(), &db).await;
    ingest_on(&writer, &[payload("d-fo", 1)]).await;
    let standby = PgCluster::standby_of(&primary);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let replica = connect_to(&standby.server(), &db).await;
        let rows: i64 = replica.query_one("SELECT count(*) FROM trackway.positions", &[]).await.expect("count").get(0);
        if rows == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "replication did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The relay follows whichever of the two accepts writes.
    let both = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname={db} target_session_attrs=read-write",
        primary.port, standby.port
    );
    let mut flags = live_flags(&db, &unique("live_failover"), &["--auth", "none"]);
    let url = flags.iter().position(|f| f == "--database-url").expect("flag") + 1;
    flags[url] = both;
    let relay = LiveRelay::start(&flags).await;
    let mut client = Client::connect(&relay.url(""), None).await;
    client.recv_type("authenticated").await;
    client.subscribe(json!({"device": "d-fo"})).await;

    // The standby stops receiving; the primary moves a few hundred transactions on and the client gets a
    // row the standby will never have.
    standby.stop();
    for _ in 0..300 {
        writer.query("SELECT pg_current_xact_id()", &[]).await.expect("a transaction id");
    }
    ingest_on(&writer, &[payload("d-fo", 2)]).await;
    assert_eq!(
        key_set(&client.positions(1, Duration::from_secs(10)).await),
        HashSet::from([key_of(&payload("d-fo", 2))])
    );

    // Failover: the primary is gone, the standby (without row 2) becomes the primary.
    primary.stop();
    standby.restart();
    standby.promote();
    let new_primary = connect_to(&standby.server(), &db).await;
    let after = [payload("d-fo", 3), payload("d-fo", 4)];
    ingest_on(&new_primary, &after).await;
    let got = key_set(&client.positions(2, Duration::from_secs(30)).await);
    assert_eq!(got, after.iter().map(|p| key_of(p)).collect::<HashSet<_>>(), "the new primary's rows");
    let text = relay.metrics().await;
    assert_eq!(metric(&text, "trackway_live_history_rewinds_total"), 1.0);
    relay.stop().await.expect("clean stop");
}
