//! The live side end to end: real Redis, real PostgreSQL with the extension, the relay in-process on
//! port-0 listeners, real WebSocket clients speaking JSON.

use std::{collections::HashSet, time::Duration};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use trackway_tests::{
    connect, fresh_database, ingest_generated,
    live::{admin_token, key_set, keys, live_flags, payload, token_with, user_token, Client, LiveRelay, SECRET},
    relay::{metric, redis, unique, xadd_payloads},
};

/// Stores payloads through `trackway.ingest_batch` (the same rules as the relay's path).
async fn ingest(db: &str, payloads: &[String]) {
    let client = connect(db).await;
    let rows =
        client.query("SELECT status FROM trackway.ingest_batch($1::text[])", &[&payloads]).await.expect("ingest_batch");
    assert!(rows.iter().all(|r| r.get::<_, String>(0) == "inserted"), "all rows inserted");
}

async fn setup_groups(db: &str, rows: &[(&str, &str)]) {
    let client = connect(db).await;
    for (group, device) in rows {
        client
            .execute("INSERT INTO trackway.device_groups VALUES ($1, $2)", &[group, device])
            .await
            .expect("group row");
    }
}

const QUIET: Duration = Duration::from_millis(700);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_and_group_subscribers_get_exactly_the_positions_xadded_for_them() {
    let db = fresh_database("live_routing").await;
    setup_groups(&db, &[("fleet", "d1"), ("fleet", "d2"), ("other", "d3")]).await;
    let stream = unique("live_routing");
    let relay = LiveRelay::start(&live_flags(&db, &stream, &[])).await;
    let token = admin_token();
    let mut by_device = Client::authenticated(&relay.url(""), &token).await;
    let mut by_group = Client::authenticated(&relay.url(""), &token).await;
    let mut nothing = Client::authenticated(&relay.url(""), &token).await;
    let subscribed = by_device.subscribe(json!({"device": "d1", "id": 1})).await;
    assert_eq!((subscribed["device"].as_str(), subscribed["id"].as_i64()), (Some("d1"), Some(1)));
    assert_eq!(subscribed["snapshot"], json!([]));
    by_group.subscribe(json!({"group": "fleet"})).await;
    nothing.subscribe(json!({"device": "nobody"})).await;

    let mut conn = redis(&trackway_tests::relay::redis_url()).await;
    let mut expected_d1 = Vec::new();
    let mut expected_fleet = HashSet::new();
    let mut payloads = Vec::new();
    for n in 0..60 {
        for device in ["d1", "d2", "d3", "d4"] {
            let p = payload(device, n);
            let doc: Value = serde_json::from_str(&p).expect("json");
            let key = (device.to_owned(), doc["timestamp"].as_str().expect("ts").to_owned());
            if device == "d1" {
                expected_d1.push(key.clone());
            }
            if device == "d1" || device == "d2" {
                expected_fleet.insert(key);
            }
            payloads.push(p);
        }
    }
    for chunk in payloads.chunks(40) {
        xadd_payloads(&mut conn, &stream, chunk).await;
    }
    let got_d1 = by_device.positions(expected_d1.len(), Duration::from_secs(10)).await;
    assert_eq!(keys(&got_d1), expected_d1, "d1: every position, in order, nothing else");
    let got_fleet = by_group.positions(expected_fleet.len(), Duration::from_secs(10)).await;
    assert_eq!(got_fleet.len(), expected_fleet.len(), "no duplicates");
    assert_eq!(key_set(&got_fleet), expected_fleet);
    // Nothing more arrives.
    assert!(by_device.positions(1, QUIET).await.is_empty());
    assert!(by_group.positions(1, QUIET).await.is_empty());
    assert!(nothing.positions(1, QUIET).await.is_empty());
    // The wire document comes back exactly, 64-bit and byte-string values included.
    let first = &got_d1[0]["position"];
    assert_eq!(first["attributes"]["11"], json!({"__bigint": "18446744073709551615"}));
    assert_eq!(first["attributes"]["281"], json!({"__buffer_b64": "UDAzMDA="}));
    assert!(got_d1.iter().all(|p| p["cursor"].is_string()));
    let text = relay.metrics().await;
    assert_eq!(metric(&text, "trackway_live_positions_delivered_total"), (60 + 120) as f64);
    // Every new row is read and routed once, watched or not.
    assert_eq!(metric(&text, "trackway_live_feed_rows_total"), 240.0);
    let reads = metric(&text, "trackway_live_feed_reads_total");
    assert!((1.0..=240.0).contains(&reads), "{reads} reads");
    assert_eq!(metric(&text, "trackway_live_connections"), 3.0);
    assert_eq!(metric(&text, "trackway_live_subscriptions"), 3.0);
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_hold_the_latest_position_and_live_follows_without_gap_or_older_rows() {
    let db = fresh_database("live_snapshot").await;
    setup_groups(&db, &[("fleet", "d1"), ("fleet", "d2")]).await;
    // d1: 5 positions then a late one (older time); d2: 3 positions.
    let mut early: Vec<String> = (0..5).map(|n| payload("d1", 10 + n)).collect();
    early.extend((0..3).map(|n| payload("d2", 20 + n)));
    early.push(payload("d1", 1));
    ingest(&db, &early).await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_snapshot"), &[])).await;
    let mut client = Client::authenticated(&relay.url(""), &admin_token()).await;
    let sub = client.subscribe(json!({"group": "fleet"})).await;
    let snapshot = sub["snapshot"].as_array().expect("snapshot");
    let latest: HashSet<(String, String)> = snapshot
        .iter()
        .map(|p| (p["deviceId"].as_str().unwrap_or("").to_owned(), p["timestamp"].as_str().unwrap_or("").to_owned()))
        .collect();
    let want = |device: &str, n| {
        let doc: Value = serde_json::from_str(&payload(device, n)).expect("json");
        (device.to_owned(), doc["timestamp"].as_str().expect("ts").to_owned())
    };
    assert_eq!(latest, HashSet::from([want("d1", 14), want("d2", 22)]));
    assert_eq!(snapshot[0]["attributes"]["11"]["__bigint"], "18446744073709551615");
    assert!(sub["cursor"].is_string());
    // Nothing from before the snapshot comes as new; what comes next is exactly what is inserted next.
    assert!(client.positions(1, QUIET).await.is_empty(), "rows the snapshot covers are not sent again");
    let later: Vec<String> = (0..4).map(|n| payload("d2", 30 + n)).collect();
    ingest(&db, &later).await;
    let got = client.positions(4, Duration::from_secs(10)).await;
    assert_eq!(keys(&got), (0..4).map(|n| want("d2", 30 + n)).collect::<Vec<_>>());
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_while_rows_pour_in_leaves_no_gap_between_snapshot_and_live() {
    let db = fresh_database("live_race").await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_race"), &[])).await;
    let writer_db = db.clone();
    // A writer inserting one row at a time for one device while clients subscribe.
    let writer = tokio::spawn(async move {
        let client = connect(&writer_db).await;
        for n in 0..400u32 {
            client.query("SELECT trackway.ingest($1)", &[&payload("race", n)]).await.expect("ingest");
        }
    });
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut c = Client::authenticated(&relay.url(""), &admin_token()).await;
        let sub = c.subscribe(json!({"device": "race"})).await;
        clients.push((c, sub));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    writer.await.expect("writer");
    let want: Vec<(String, String)> = (0..400u32)
        .map(|n| {
            let doc: Value = serde_json::from_str(&payload("race", n)).expect("json");
            ("race".to_owned(), doc["timestamp"].as_str().expect("ts").to_owned())
        })
        .collect();
    for (mut c, sub) in clients {
        // The snapshot stands at position k (or before the first); live must then be exactly k+1..400.
        let start = match sub["snapshot"].as_array().and_then(|s| s.first()) {
            Some(doc) => {
                want.iter().position(|(_, ts)| doc["timestamp"] == **ts).expect("snapshot row is one of ours") + 1
            }
            None => 0,
        };
        let got = c.positions(want.len() - start, Duration::from_secs(10)).await;
        assert_eq!(keys(&got), want[start..].to_vec(), "snapshot at {start}: live must continue exactly after it");
        assert!(c.positions(1, Duration::from_millis(300)).await.is_empty());
    }
    relay.stop().await.expect("clean stop");
}

/// A feed with nobody watching reads no rows (a poll only moves its cursor to the present); a client
/// that arrives at an idle feed while rows pour in still gets its snapshot and then every row after it,
/// none missing and none twice; once the last client has gone, the feed reads nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_with_nobody_watching_reads_nothing_and_first_subscribers_miss_nothing() {
    let db = fresh_database("live_idle").await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_idle"), &[])).await;
    let reads = |text: &str| metric(text, "trackway_live_feed_reads_total");
    let ts = |n: u32| {
        let doc: Value = serde_json::from_str(&payload("idle", n)).expect("json");
        ("idle".to_owned(), doc["timestamp"].as_str().expect("ts").to_owned())
    };
    // Nobody connected: 30 transactions, each announced; past a poll (1 s), the feed has read none.
    for n in 0..30u32 {
        ingest(&db, &[payload("idle", n)]).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(reads(&relay.metrics().await), 0.0, "nobody watches: no rows read");
    // Clients arrive one at a time at an idle feed while a writer inserts one row per transaction; each
    // takes 20 live positions after its snapshot, then leaves before the next one comes.
    const TOTAL: u32 = 1200;
    let writer_db = db.clone();
    let writer = tokio::spawn(async move {
        let client = connect(&writer_db).await;
        for n in 30..TOTAL {
            client.query("SELECT trackway.ingest($1)", &[&payload("idle", n)]).await.expect("ingest");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let mut arrivals = 0;
    while !writer.is_finished() {
        let mut c = Client::authenticated(&relay.url(""), &admin_token()).await;
        let sub = c.subscribe(json!({"device": "idle"})).await;
        let snapshot = sub["snapshot"].as_array().and_then(|s| s.first()).expect("the device has a latest position");
        let start = (0..TOTAL)
            .find(|&n| snapshot["timestamp"].as_str() == Some(ts(n).1.as_str()))
            .expect("the snapshot's row is one of ours");
        if start + 20 >= TOTAL {
            break;
        }
        let got = c.positions(20, Duration::from_secs(10)).await;
        assert!(got.len() >= 20, "{} positions after the snapshot at {start}", got.len());
        let want: Vec<(String, String)> = (start + 1..start + 21).map(ts).collect();
        assert_eq!(keys(&got[..20]), want, "after the snapshot at {start}");
        arrivals += 1;
        c.close().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.await.expect("writer");
    assert!(arrivals >= 3, "{arrivals} clients arrived while rows poured in");
    // Nobody watches again: more rows, no more reads.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = reads(&relay.metrics().await);
    assert!(before > 0.0, "the feed read while clients watched");
    for n in TOTAL..TOTAL + 20 {
        ingest(&db, &[payload("idle", n)]).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(reads(&relay.metrics().await), before, "nobody watches again: no rows read");
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_membership_changes_apply_while_subscribed() {
    let db = fresh_database("live_membership").await;
    setup_groups(&db, &[("fleet", "d1")]).await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_membership"), &[])).await;
    let mut client = Client::authenticated(&relay.url(""), &admin_token()).await;
    client.subscribe(json!({"group": "fleet"})).await;
    ingest(&db, &[payload("d1", 1), payload("d2", 1)]).await;
    assert_eq!(keys(&client.positions(1, Duration::from_secs(5)).await)[0].0, "d1");
    let admin = connect(&db).await;
    admin.batch_execute("INSERT INTO trackway.device_groups VALUES ('fleet', 'd2')").await.expect("add d2");
    admin.batch_execute("DELETE FROM trackway.device_groups WHERE device_id = 'd1'").await.expect("drop d1");
    ingest(&db, &[payload("d1", 2), payload("d2", 2)]).await;
    let got = client.positions(1, Duration::from_secs(5)).await;
    assert_eq!(keys(&got).into_iter().map(|k| k.0).collect::<Vec<_>>(), ["d2"]);
    assert!(client.positions(1, QUIET).await.is_empty(), "d1 left the group");
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_notify_from_a_role_with_only_connect_never_reaches_a_client() {
    let db = fresh_database("live_forged").await;
    let admin = connect(&db).await;
    let forger = format!("forger_{}", std::process::id());
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {forger}; CREATE ROLE {forger} LOGIN; GRANT CONNECT ON DATABASE {db} TO {forger}"
        ))
        .await
        .expect("role");
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_forged"), &[])).await;
    let mut client = Client::authenticated(&relay.url(""), &admin_token()).await;
    client.subscribe(json!({"device": "victim"})).await;
    let (intruder, connection) = tokio_postgres::connect(
        &format!("{} user={forger} dbname={db}", trackway_tests::server()),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect as the forger");
    tokio::spawn(connection);
    let forged = json!({"positions": [{"cursor": "1:1", "deviceId": "victim", "timestamp": "2026-11-27T10:00:00Z",
        "position": {"deviceId": "victim", "timestamp": "2026-11-27T10:00:00Z", "latitude": 1.0, "longitude": 2.0}}]});
    for _ in 0..5 {
        intruder
            .execute("SELECT pg_notify('trackway_positions', $1)", &[&forged.to_string()])
            .await
            .expect("anyone can NOTIFY");
    }
    assert!(client.positions(1, Duration::from_secs(1)).await.is_empty(), "a forged notification was delivered");
    ingest(&db, &[payload("victim", 7)]).await;
    let got = client.positions(1, Duration::from_secs(5)).await;
    assert_eq!(
        keys(&got),
        keys(&[json!({"position": serde_json::from_str::<Value>(&payload("victim", 7)).expect("json")})])
    );
    relay.stop().await.expect("clean stop");
    admin.batch_execute(&format!("DROP OWNED BY {forger}; DROP ROLE {forger}")).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_announce_mode_delivers() {
    for mode in ["full", "reference", "off"] {
        let db = fresh_database(&format!("live_announce_{mode}")).await;
        connect(&db)
            .await
            .batch_execute(&format!("ALTER DATABASE {db} SET trackway.announce = '{mode}'"))
            .await
            .expect("set announce");
        let relay = LiveRelay::start(&live_flags(&db, &unique("live_announce"), &["--live-poll-ms", "150"])).await;
        let mut client = Client::authenticated(&relay.url(""), &admin_token()).await;
        client.subscribe(json!({"device": "m"})).await;
        ingest(&db, &(0..5).map(|n| payload("m", n)).collect::<Vec<_>>()).await;
        let got = client.positions(5, Duration::from_secs(5)).await;
        assert_eq!(got.len(), 5, "announce = {mode}");
        relay.stop().await.expect("clean stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_authorized_by_trackway_authorize() {
    let db = fresh_database("live_authorize").await;
    setup_groups(&db, &[("fleet", "g1"), ("fleet", "g2")]).await;
    let admin = connect(&db).await;
    admin
        .batch_execute(
            "INSERT INTO trackway.live_grants VALUES ('user-7', 'device', 'mine'), ('role-drivers', 'group', 'fleet')",
        )
        .await
        .expect("grants");
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_authorize"), &[])).await;
    let mut user = Client::authenticated(&relay.url(""), &user_token("user-7", "role-drivers")).await;
    user.subscribe(json!({"device": "mine"})).await;
    user.subscribe(json!({"group": "fleet"})).await;
    user.subscribe(json!({"device": "g1"})).await; // covered by the group grant
    for target in [json!({"device": "theirs"}), json!({"group": "secret"})] {
        let mut message = target.clone();
        message["type"] = json!("subscribe");
        message["id"] = json!("x");
        user.send(message).await;
        let error = user.recv_type("error").await;
        assert_eq!((error["code"].as_str(), error["id"].as_str()), (Some("forbidden"), Some("x")), "{target}");
    }
    // Refused subscriptions deliver nothing; the connection stays open and the granted ones work.
    ingest(&db, &[payload("theirs", 1), payload("mine", 1)]).await;
    let got = user.positions(1, Duration::from_secs(5)).await;
    assert_eq!(keys(&got)[0].0, "mine");
    assert!(user.positions(1, QUIET).await.is_empty());
    // A second subscription check for the same target is answered from the connection's cache.
    user.send(json!({"type": "unsubscribe", "device": "mine"})).await;
    assert_eq!(user.recv_type("unsubscribed").await["reason"], "requested");
    user.subscribe(json!({"device": "mine"})).await;
    let text = relay.metrics().await;
    assert!(metric(&text, "trackway_live_authorize_total{result=\"hit\"}") >= 1.0);
    relay.stop().await.expect("clean stop");
}

/// Clients reconnecting at once (a relay restart, a deploy) ask `trackway.authorize` together: the
/// questions waiting at one moment go to the database as one statement, each distinct (claims, kind, id)
/// once, and one question the function fails on fails alone. Asked one by one, 200 clients of one token
/// made 200 calls, queued for the live pool's four connections (on a loaded machine past the pool's wait
/// timeout: `unavailable`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorizations_asked_at_once_are_asked_together() {
    let db = fresh_database("live_authorize_together").await;
    let admin = connect(&db).await;
    admin
        .batch_execute(
            "CREATE SEQUENCE public.authorize_calls;
             CREATE OR REPLACE FUNCTION trackway.authorize(claims jsonb, kind text, id text) RETURNS boolean
             LANGUAGE plpgsql AS $$
             BEGIN
               PERFORM nextval('public.authorize_calls');
               PERFORM pg_sleep(0.01);
               IF id = 'poison' THEN
                 RAISE EXCEPTION 'injected failure for one question';
               END IF;
               RETURN claims ->> 'id' = 'u-storm';
             END $$",
        )
        .await
        .expect("counting authorize");
    let flags = live_flags(&db, &unique("live_authorize_together"), &["--live-max-connections-per-user", "1000"]);
    let relay = LiveRelay::start(&flags).await;
    let url = relay.url("");
    let token = user_token("u-storm", "r");
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(Client::authenticated(&url, &token).await);
    }
    let mut other = Client::authenticated(&url, &user_token("u-other", "r")).await;
    // Everyone asks at once: five groups, one device the function fails on, and a token it refuses.
    for (n, client) in clients.iter_mut().enumerate() {
        let target = if n % 20 == 7 { json!({"device": "poison"}) } else { json!({"group": format!("g{}", n % 5)}) };
        let mut message = target;
        message["type"] = json!("subscribe");
        message["id"] = json!(n);
        client.send(message).await;
    }
    other.send(json!({"type": "subscribe", "group": "g0", "id": "other"})).await;
    for (n, client) in clients.iter_mut().enumerate() {
        let answer = client.recv().await;
        if n % 20 == 7 {
            assert_eq!(
                (answer["type"].as_str(), answer["code"].as_str()),
                (Some("error"), Some("unavailable")),
                "{answer}"
            );
        } else {
            assert_eq!(answer["type"], "subscribed", "client {n}: {answer}");
        }
        assert_eq!(answer["id"], json!(n), "{answer}");
    }
    let refused = other.recv_type("error").await;
    assert_eq!((refused["code"].as_str(), refused["id"].as_str()), (Some("forbidden"), Some("other")), "{refused}");
    let row = admin.query_one("SELECT last_value FROM public.authorize_calls", &[]).await.expect("calls");
    let calls: i64 = row.get(0);
    // Seven distinct questions; each batch asks each of its own once (and a failed batch each alone).
    assert!(calls < 100, "{calls} calls of trackway.authorize for 201 questions");
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_4001_and_counted() {
    let db = fresh_database("live_badtokens").await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_badtokens"), &["--live-auth-timeout-ms", "500"])).await;
    let claims = || json!({"id": "u", "role": "r", "app_access": true, "admin_access": true});
    let cases = [
        ("expired", token_with(SECRET, claims(), -5)),
        ("signature", token_with("another-secret", claims(), 600)),
        ("issuer", token_with(SECRET, json!({"id": "u", "iss": "someone-else"}), 600)),
        ("malformed", "not-a-token".to_owned()),
    ];
    for (reason, token) in &cases {
        // In the header…
        let mut c = Client::connect(&relay.url(""), Some(token)).await;
        let closed = c.closed(Duration::from_secs(5)).await;
        assert_eq!(closed.code, 4001, "{reason} in the header");
        assert!(closed.reason.starts_with(reason), "{reason}: {closed:?}");
        // …in the query…
        let mut c = Client::connect(&relay.url(&format!("access_token={token}")), None).await;
        assert_eq!(c.closed(Duration::from_secs(5)).await.code, 4001, "{reason} in the query");
        // …and as the first message.
        let mut c = Client::connect(&relay.url(""), None).await;
        c.send(json!({"type": "auth", "token": token})).await;
        assert_eq!(c.closed(Duration::from_secs(5)).await.code, 4001, "{reason} in a message");
    }
    // No token at all: closed at the deadline. A subscribe before auth breaks the protocol.
    let mut silent = Client::connect(&relay.url(""), None).await;
    assert_eq!(silent.closed(Duration::from_secs(5)).await.code, 4001);
    let mut eager = Client::connect(&relay.url(""), None).await;
    eager.send(json!({"type": "subscribe", "device": "d"})).await;
    assert_eq!(eager.closed(Duration::from_secs(5)).await.code, 4001);
    // A good token as the first message works.
    let mut good = Client::connect(&relay.url(""), None).await;
    good.send(json!({"type": "auth", "token": admin_token()})).await;
    assert_eq!(good.recv_type("authenticated").await["user"], "admin-1");
    let text = relay.metrics().await;
    for reason in ["expired", "signature", "issuer", "malformed"] {
        assert_eq!(
            metric(&text, &format!("trackway_live_auth_failures_total{{reason=\"{reason}\"}}")),
            3.0,
            "{reason}"
        );
    }
    assert_eq!(metric(&text, "trackway_live_auth_failures_total{reason=\"timeout\"}"), 1.0);
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_closes_the_connection_unless_renewed() {
    let db = fresh_database("live_expiry").await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_expiry"), &[])).await;
    let claims = json!({"id": "u1", "role": "r", "app_access": true, "admin_access": true});
    let mut lapsing = Client::authenticated(&relay.url(""), &token_with(SECRET, claims.clone(), 2)).await;
    let mut renewed = Client::authenticated(&relay.url(""), &token_with(SECRET, claims.clone(), 2)).await;
    renewed.subscribe(json!({"device": "e"})).await;
    renewed.send(json!({"type": "auth", "token": token_with(SECRET, claims, 600)})).await;
    assert!(renewed.recv_type("authenticated").await["expiresAt"].is_string());
    // Someone else's token is not a renewal.
    let other = token_with(SECRET, json!({"id": "intruder", "admin_access": true}), 600);
    renewed.send(json!({"type": "auth", "token": other, "id": 5})).await;
    assert_eq!(renewed.recv_type("error").await["code"], "auth_mismatch");
    let closed = lapsing.closed(Duration::from_secs(6)).await;
    assert_eq!(closed.code, 4003, "{closed:?}");
    // The renewed connection outlives the first token and still receives positions.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ingest(&db, &[payload("e", 1)]).await;
    assert_eq!(renewed.positions(1, Duration::from_secs(5)).await.len(), 1);
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_errors_and_protocol_violations_get_close_codes() {
    let db = fresh_database("live_malformed").await;
    let relay =
        LiveRelay::start(&live_flags(&db, &unique("live_malformed"), &["--live-max-message-bytes", "1024"])).await;
    let mut c = Client::authenticated(&relay.url(""), &admin_token()).await;
    for (text, code) in [
        ("{oops", "bad_json"),
        ("[]", "bad_message"),
        (r#"{"type":"teleport"}"#, "unknown_type"),
        (r#"{"type":"subscribe"}"#, "bad_target"),
        (r#"{"type":"subscribe","device":""}"#, "bad_target"),
        (r#"{"type":"subscribe","device":"a","group":"b"}"#, "bad_target"),
        (r#"{"type":"subscribe","device":"a","since":"garbage"}"#, "bad_cursor"),
        (r#"{"type":"unsubscribe","device":"never"}"#, "not_subscribed"),
    ] {
        c.send_text(text).await;
        let error = c.recv_type("error").await;
        assert_eq!(error["code"], code, "{text}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    c.subscribe(json!({"device": "a"})).await;
    c.send(json!({"type": "subscribe", "device": "a"})).await;
    assert_eq!(c.recv_type("error").await["code"], "already_subscribed");
    c.send(json!({"type": "ping", "id": 9})).await;
    assert_eq!(c.recv_type("pong").await["id"], 9);
    // Still open and working after all that.
    ingest(&db, &[payload("a", 1)]).await;
    assert_eq!(c.positions(1, Duration::from_secs(5)).await.len(), 1);
    c.send_message(Message::binary(vec![1, 2, 3])).await;
    assert_eq!(c.closed(Duration::from_secs(5)).await.code, 1003);
    let mut big = Client::authenticated(&relay.url(""), &admin_token()).await;
    big.send_text(&format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(4096))).await;
    assert_eq!(big.closed(Duration::from_secs(5)).await.code, 1009);
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscription_cap_is_enforced_per_connection() {
    let db = fresh_database("live_cap").await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_cap"), &["--live-max-subscriptions", "2"])).await;
    let mut c = Client::authenticated(&relay.url(""), &admin_token()).await;
    c.subscribe(json!({"device": "a"})).await;
    c.subscribe(json!({"device": "b"})).await;
    c.send(json!({"type": "subscribe", "device": "c"})).await;
    assert_eq!(c.recv_type("error").await["code"], "too_many_subscriptions");
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_since_receives_exactly_what_was_inserted_meanwhile() {
    let db = fresh_database("live_resume").await;
    setup_groups(&db, &[("fleet", "r1"), ("fleet", "r2")]).await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_resume"), &["--live-max-replay", "50"])).await;
    let mut c = Client::authenticated(&relay.url(""), &admin_token()).await;
    c.subscribe(json!({"group": "fleet"})).await;
    ingest(&db, &(0..10).flat_map(|n| [payload("r1", n), payload("r2", n)]).collect::<Vec<_>>()).await;
    let first = c.positions(20, Duration::from_secs(5)).await;
    assert_eq!(first.len(), 20);
    let last_cursor = first.last().expect("a position")["cursor"].as_str().expect("cursor").to_owned();
    c.close().await;
    // Meanwhile: 15 more for the group, some for another device.
    let meanwhile: Vec<String> = (10..25).map(|n| payload(if n % 2 == 0 { "r1" } else { "r2" }, n)).collect();
    ingest(&db, &meanwhile).await;
    ingest(&db, &[payload("elsewhere", 1)]).await;
    let mut back = Client::authenticated(&relay.url(""), &admin_token()).await;
    let sub = back.subscribe(json!({"group": "fleet", "since": last_cursor})).await;
    assert_eq!(sub["replay"], 15, "{sub}");
    assert_eq!(sub["since"], last_cursor.as_str());
    let replayed = back.positions(15, Duration::from_secs(5)).await;
    // Exactly the rows inserted meanwhile, in insertion (cursor) order: ingest_batch stores a batch by device.
    let want: HashSet<(String, String)> = meanwhile
        .iter()
        .map(|p| {
            let d: Value = serde_json::from_str(p).expect("json");
            (d["deviceId"].as_str().unwrap_or("").to_owned(), d["timestamp"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    assert_eq!(replayed.len(), 15);
    assert_eq!(key_set(&replayed), want);
    // Then live, no gap.
    ingest(&db, &[payload("r1", 40)]).await;
    assert_eq!(back.positions(1, Duration::from_secs(5)).await.len(), 1);
    assert!(back.positions(1, QUIET).await.is_empty());
    // Too far back: an error telling the client to start from a snapshot; the connection stays usable.
    ingest(&db, &(100..160).map(|n| payload("r1", n)).collect::<Vec<_>>()).await;
    let mut far = Client::authenticated(&relay.url(""), &admin_token()).await;
    far.send(json!({"type": "subscribe", "group": "fleet", "since": last_cursor})).await;
    assert_eq!(far.recv_type("error").await["code"], "resume_too_far");
    far.subscribe(json!({"group": "fleet"})).await;
    let text = relay.metrics().await;
    assert_eq!(metric(&text, "trackway_live_replayed_positions_total{why=\"resume\"}"), 15.0);
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_socket_with_1001() {
    let db = fresh_database("live_shutdown").await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_shutdown"), &[])).await;
    let mut a = Client::authenticated(&relay.url(""), &admin_token()).await;
    let mut b = Client::authenticated(&relay.url(""), &admin_token()).await;
    b.subscribe(json!({"device": "x"})).await;
    let stopping = tokio::spawn(relay.stop());
    assert_eq!(a.closed(Duration::from_secs(10)).await.code, 1001);
    assert_eq!(b.closed(Duration::from_secs(10)).await.code, 1001);
    stopping.await.expect("joined").expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_authorize_reading_a_directus_collection_decides_subscriptions() {
    let db = fresh_database("live_authorize_directus").await;
    setup_groups(&db, &[("vans", "van-1")]).await;
    let admin = connect(&db).await;
    // The table Directus creates for the collection `vehicle_access` (README, "Authorization").
    admin
        .batch_execute(
            "CREATE TABLE public.vehicle_access (id serial PRIMARY KEY, \"user\" uuid, role uuid, \
             device_id varchar(255), group_id varchar(255))",
        )
        .await
        .expect("collection table");
    admin.batch_execute(include_str!("../docs/examples/authorize_directus.sql")).await.expect("README authorize");
    let (driver, dispatchers) = ("0b6c5d5e-1111-4a4a-9c9c-000000000001", "0b6c5d5e-2222-4a4a-9c9c-000000000002");
    admin
        .execute(
            "INSERT INTO public.vehicle_access (\"user\", device_id) VALUES ($1::text::uuid, 'truck-9')",
            &[&driver],
        )
        .await
        .expect("user grant");
    admin
        .execute("INSERT INTO public.vehicle_access (role, group_id) VALUES ($1::text::uuid, 'vans')", &[&dispatchers])
        .await
        .expect("role grant");
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_authorize_directus"), &[])).await;
    let mut by_user = Client::authenticated(&relay.url(""), &user_token(driver, "some-role")).await;
    by_user.subscribe(json!({"device": "truck-9"})).await;
    by_user.send(json!({"type": "subscribe", "group": "vans"})).await;
    assert_eq!(by_user.recv_type("error").await["code"], "forbidden");
    let mut by_role = Client::authenticated(&relay.url(""), &user_token("someone", dispatchers)).await;
    by_role.subscribe(json!({"group": "vans"})).await;
    by_role.subscribe(json!({"device": "van-1"})).await;
    by_role.send(json!({"type": "subscribe", "device": "truck-9"})).await;
    assert_eq!(by_role.recv_type("error").await["code"], "forbidden");
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_with_503_and_plain_http_gets_426() {
    let db = fresh_database("live_conncap").await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_conncap"), &["--live-max-connections", "2"])).await;
    let first = Client::authenticated(&relay.url(""), &admin_token()).await;
    let _second = Client::authenticated(&relay.url(""), &admin_token()).await;
    match tokio_tungstenite::connect_async(relay.url("")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("a third connection must be refused, got {:?}", other.map(|_| ())),
    }
    // A slot frees when a connection closes.
    first.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio_tungstenite::connect_async(relay.url("")).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the closed connection's slot never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = trackway_tests::relay::http_get(relay.live, "/live").await;
    assert_eq!(status, 426, "{body}");
    assert_eq!(trackway_tests::relay::http_get(relay.live, "/elsewhere").await.0, 404);
    let text = relay.metrics().await;
    assert!(metric(&text, "trackway_live_closes_total{reason=\"capacity\"}") >= 1.0);
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_token_rechecks_every_subscription() {
    let db = fresh_database("live_reauthorize").await;
    let admin = connect(&db).await;
    admin
        .batch_execute(
            "INSERT INTO trackway.live_grants VALUES ('u-9', 'device', 'kept'), ('u-9', 'device', 'revoked')",
        )
        .await
        .expect("grants");
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_reauthorize"), &[])).await;
    let mut user = Client::authenticated(&relay.url(""), &user_token("u-9", "r")).await;
    user.subscribe(json!({"device": "kept"})).await;
    user.subscribe(json!({"device": "revoked"})).await;
    admin.batch_execute("DELETE FROM trackway.live_grants WHERE target = 'revoked'").await.expect("revoke");
    // Until the token is renewed the connection keeps its answers (cached per connection)…
    ingest(&db, &[payload("revoked", 1)]).await;
    assert_eq!(user.positions(1, Duration::from_secs(5)).await.len(), 1);
    // …then every subscription is asked again.
    user.send(json!({"type": "auth", "token": user_token("u-9", "r")})).await;
    user.recv_type("authenticated").await;
    let gone = user.recv_type("unsubscribed").await;
    assert_eq!((gone["device"].as_str(), gone["reason"].as_str()), (Some("revoked"), Some("forbidden")));
    ingest(&db, &[payload("revoked", 2), payload("kept", 2)]).await;
    let got = user.positions(1, Duration::from_secs(5)).await;
    assert_eq!(keys(&got).into_iter().map(|k| k.0).collect::<Vec<_>>(), ["kept"]);
    assert!(user.positions(1, QUIET).await.is_empty());
    relay.stop().await.expect("clean stop");
}

/// Makes every read of the live feed take `seconds` longer (`live_rows_since` renamed and wrapped; call it
/// before the relay starts: the feed prepares its statement against the function it finds then).
async fn slow_feed_reads(admin: &tokio_postgres::Client, seconds: f64) {
    let sql = format!(
        r#"ALTER FUNCTION trackway.live_rows_since(text, integer) RENAME TO live_rows_since_real;
           CREATE FUNCTION trackway.live_rows_since(after text, max_rows integer DEFAULT 1000)
           RETURNS TABLE (cursor text, device_id text, "position" text, group_ids text[], ts_us bigint)
           LANGUAGE plpgsql AS $$
           BEGIN
               PERFORM pg_sleep({seconds});
               RETURN QUERY SELECT * FROM trackway.live_rows_since_real(after, max_rows);
           END $$;"#
    );
    admin.batch_execute(&sql).await.expect("slow the feed's reads");
}

/// Makes every snapshot that includes device `device` take `seconds` longer (`live_latest` renamed and
/// wrapped; before the relay starts).
async fn slow_snapshot_of(admin: &tokio_postgres::Client, device: &str, seconds: f64) {
    // Written into the function's text: a plain name only.
    assert!(device.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'), "{device:?}");
    let sql = format!(
        r#"ALTER FUNCTION trackway.live_latest(text[]) RENAME TO live_latest_real;
           CREATE FUNCTION trackway.live_latest(device_ids text[])
           RETURNS TABLE (device_id text, "position" text) LANGUAGE plpgsql AS $$
           BEGIN
               IF '{device}' = ANY(device_ids) THEN PERFORM pg_sleep({seconds}); END IF;
               RETURN QUERY SELECT * FROM trackway.live_latest_real(device_ids);
           END $$;"#
    );
    admin.batch_execute(&sql).await.expect("slow a snapshot");
}

/// A renewal's `unsubscribed` frames come before the answers to the requests after it: the session waits
/// until the feed has queued them. It used to send them to the feed and go on, so an `unsubscribe` of the
/// removed target sent right after the renewal was answered `not_subscribed` before the `unsubscribed`
/// that explains why (while the feed was busy reading).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewals_unsubscribed_frames_come_before_later_answers() {
    let db = fresh_database("live_reauthorize_order").await;
    let admin = connect(&db).await;
    admin.batch_execute("INSERT INTO trackway.live_grants VALUES ('u-7', 'device', 'revoked')").await.expect("grant");
    // Each read of the feed takes 0.5 s, and rows of an unwatched device keep it reading.
    slow_feed_reads(&admin, 0.5).await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_reauthorize_order"), &[])).await;
    let mut user = Client::authenticated(&relay.url(""), &user_token("u-7", "r")).await;
    user.subscribe(json!({"device": "revoked"})).await;
    admin.batch_execute("DELETE FROM trackway.live_grants").await.expect("revoke");
    let writer = tokio::spawn(async move {
        for n in 1..=40u32 {
            let payloads = vec![payload("other", n)];
            admin.query("SELECT trackway.ingest_batch($1::text[])", &[&payloads]).await.expect("ingest_batch");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    user.send(json!({"type": "auth", "token": user_token("u-7", "r")})).await;
    user.send(json!({"type": "unsubscribe", "device": "revoked", "id": "after"})).await;
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let frame = user.recv().await;
        kinds.push(format!(
            "{} {}",
            frame["type"].as_str().unwrap_or(""),
            frame["reason"].as_str().or(frame["code"].as_str()).unwrap_or("")
        ));
    }
    writer.await.expect("the writer");
    assert_eq!(kinds, ["authenticated ", "unsubscribed forbidden", "error not_subscribed"]);
    relay.stop().await.expect("clean stop");
}

/// The status of a handshake sent with these extra headers (`origin`, `host`), 101 when it opened.
async fn handshake_status(relay: &LiveRelay, headers: &[(&'static str, &str)]) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = relay.url("").into_client_request().expect("request");
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().expect("header value"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((mut socket, response)) => {
            let _ = socket.close(None).await;
            response.status().as_u16()
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("handshake with {headers:?}: {e}"),
    }
}

/// Cross-site WebSocket hijacking: a page of another site must not open `/live` with a visitor's browser.
/// The relay's own page (same host) and listed origins may; clients that send no Origin are not browsers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_origins_other_than_the_relays_own_and_the_listed_ones_are_refused() {
    let db = fresh_database("live_origins").await;
    let relay =
        LiveRelay::start(&live_flags(&db, &unique("live_origins"), &["--live-origins", "https://maps.example.com"]))
            .await;
    let own = format!("http://{}", relay.live);
    assert_eq!(handshake_status(&relay, &[("origin", &own)]).await, 101, "the relay's own page");
    assert_eq!(handshake_status(&relay, &[("origin", "https://maps.example.com")]).await, 101, "a listed origin");
    assert_eq!(handshake_status(&relay, &[]).await, 101, "no Origin: not a browser");
    assert_eq!(handshake_status(&relay, &[("origin", "https://evil.example")]).await, 403);
    assert_eq!(handshake_status(&relay, &[("origin", "null")]).await, 403, "sandboxed pages and file:// send null");
    let text = relay.metrics().await;
    assert_eq!(metric(&text, "trackway_live_closes_total{reason=\"origin\"}"), 2.0);
    // Refused before a slot is taken: the relay still serves everyone else.
    let mut client = Client::authenticated(&relay.url(""), &admin_token()).await;
    client.subscribe(json!({"device": "d-origin"})).await;
    relay.stop().await.expect("clean stop");
}

/// A renewal's re-check that the database cannot answer removes the subscription (fail closed), with the
/// reason `unavailable` so that the client knows to subscribe again later; it used to keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_whose_recheck_fails_in_the_database_removes_the_subscription() {
    let db = fresh_database("live_recheck_fails").await;
    let admin = connect(&db).await;
    admin.batch_execute("INSERT INTO trackway.live_grants VALUES ('u-8', 'device', 'held')").await.expect("grant");
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_recheck_fails"), &[])).await;
    let mut user = Client::authenticated(&relay.url(""), &user_token("u-8", "r")).await;
    user.subscribe(json!({"device": "held"})).await;
    // The database now fails every authorization (an error injected into the function the relay calls).
    admin
        .batch_execute(
            "CREATE OR REPLACE FUNCTION trackway.authorize(claims jsonb, kind text, id text) RETURNS boolean
             LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected authorization failure'; END $$",
        )
        .await
        .expect("failing authorize");
    user.send(json!({"type": "auth", "token": user_token("u-8", "r")})).await;
    user.recv_type("authenticated").await;
    let gone = user.recv_type("unsubscribed").await;
    assert_eq!((gone["device"].as_str(), gone["reason"].as_str()), (Some("held"), Some("unavailable")), "{gone}");
    ingest(&db, &[payload("held", 1)]).await;
    assert!(user.positions(1, QUIET).await.is_empty(), "nothing after the subscription was removed");
    relay.stop().await.expect("clean stop");
}

/// Tokens whose `exp` no clock can hold are refused with a reason; the session used to panic, leaving
/// the connection counted in the gauge forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exp_past_any_clock_is_refused_and_leaks_nothing() {
    let db = fresh_database("live_huge_exp").await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_huge_exp"), &[])).await;
    let claims = |exp: u64| json!({"id": "u-exp", "role": "r", "admin_access": true, "exp": exp});
    let mut huge = Client::connect(&relay.url(""), Some(&token_with(SECRET, claims(1 << 63), 0))).await;
    let closed = huge.closed(Duration::from_secs(5)).await;
    assert_eq!(closed.code, 4001, "{closed:?}");
    assert!(closed.reason.contains("exp"), "the reason names the claim: {closed:?}");
    // Far, but a time: accepted, and the connection works.
    let mut far = Client::authenticated(&relay.url(""), &token_with(SECRET, claims(1 << 40), 0)).await;
    far.subscribe(json!({"device": "d-exp"})).await;
    far.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let open = metric(&relay.metrics().await, "trackway_live_connections");
        if open == 0.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{open} connections still counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.stop().await.expect("clean stop");
}

/// A target with U+0000 (which PostgreSQL text cannot hold) is refused by the relay itself; it used to
/// reach the feed's SQL and break the feed's connection for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_with_a_nul_character_is_refused_and_the_feed_carries_on() {
    let db = fresh_database("live_nul_target").await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_nul_target"), &["--auth", "none"])).await;
    let mut watcher = Client::connect(&relay.url(""), None).await;
    watcher.recv_type("authenticated").await;
    watcher.subscribe(json!({"device": "d-nul"})).await;
    let mut hostile = Client::connect(&relay.url(""), None).await;
    hostile.recv_type("authenticated").await;
    for target in [json!({"group": "a\u{0}b"}), json!({"device": "\u{0}"})] {
        let mut request = target.clone();
        request["type"] = json!("subscribe");
        hostile.send(request).await;
        let error = hostile.recv_type("error").await;
        assert_eq!(error["code"], "bad_target", "{target}: {error}");
    }
    ingest(&db, &[payload("d-nul", 1)]).await;
    assert_eq!(watcher.positions(1, Duration::from_secs(5)).await.len(), 1);
    relay.stop().await.expect("clean stop");
}

/// The status of a handshake from a page of `host`: its origin and the `Host` header both name it.
async fn page_handshake(relay: &LiveRelay, host: &str) -> u16 {
    let origin = format!("http://{host}");
    handshake_status(relay, &[("origin", &origin), ("host", host)]).await
}

/// DNS rebinding: a page of `rebind.attacker.example`, whose name the attacker points at 127.0.0.1,
/// sends the relay's own port in `Host` and an origin of the same host. It must not get in, least of all
/// in `none` mode; the relay's own page by address still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_host_name_is_not_the_relays_own_origin() {
    let db = fresh_database("live_rebind").await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_rebind"), &["--auth", "none"])).await;
    let port = relay.live.port();
    let rebound = format!("rebind.attacker.example:{port}");
    assert_eq!(page_handshake(&relay, &rebound).await, 403);
    let own = format!("127.0.0.1:{port}");
    assert_eq!(page_handshake(&relay, &own).await, 101, "the map page by address");
    let local = format!("localhost:{port}");
    assert_eq!(page_handshake(&relay, &local).await, 101, "and as localhost");
    relay.stop().await.expect("clean stop");
}

/// `none` mode on an address other hosts can reach is refused at start, naming the setting, unless
/// explicitly allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_none_refuses_to_serve_other_hosts_unless_told() {
    let db = fresh_database("live_none_remote").await;
    let mut flags = live_flags(&db, &unique("live_none_remote"), &["--auth", "none"]);
    let addr = flags.iter().position(|f| f == "--live-addr").expect("flag") + 1;
    flags[addr] = "0.0.0.0:0".into();
    let run = |extra: &[&str]| {
        let mut args = flags.clone();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["--admin-addr".into(), "127.0.0.1:0".into()]);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_relay-under-test"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("relay");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while child.try_wait().expect("wait").is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let exited = child.try_wait().expect("wait");
        if exited.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut stderr).expect("stderr");
        (exited, stderr)
    };
    let (exited, stderr) = run(&[]);
    assert!(exited.is_some_and(|s| !s.success()), "refused at start: {exited:?} {stderr}");
    assert!(stderr.contains("TRACKWAY_LIVE_ADDR") && stderr.contains("TRACKWAY_AUTH=none"), "{stderr}");
    let (exited, stderr) = run(&["--live-unauthenticated-remote", "true"]);
    assert!(exited.is_none(), "explicitly allowed, it serves: {exited:?} {stderr}");
}

/// One connection asking about target after target is paced (a burst, then a steady rate) and cannot
/// flood the database for everyone; an authorization that hangs fails as `unavailable` within the live
/// pool's statement timeout instead of holding a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_calls_are_paced_per_connection_and_bounded_in_time() {
    let db = fresh_database("live_authorize_paced").await;
    let admin = connect(&db).await;
    admin.batch_execute("INSERT INTO trackway.live_grants VALUES ('u-honest', 'device', 'h')").await.expect("grant");
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_authorize_paced"), &[])).await;
    let mut hostile = Client::authenticated(&relay.url(""), &user_token("u-hostile", "r")).await;
    let started = tokio::time::Instant::now();
    for n in 0..300 {
        hostile.send(json!({"type": "subscribe", "device": format!("x-{n}")})).await;
    }
    let mut honest = Client::authenticated(&relay.url(""), &user_token("u-honest", "r")).await;
    honest.subscribe(json!({"device": "h"})).await;
    tokio::time::sleep_until(started + Duration::from_secs(2)).await;
    let asked = metric(&relay.metrics().await, "trackway_live_authorize_total{result=\"miss\"}");
    let elapsed = started.elapsed().as_secs_f64();
    // 100 at once, then 20 a second (and the honest client's one).
    assert!(asked >= 100.0, "the burst went through: {asked}");
    assert!(asked <= 101.0 + 20.0 * elapsed + 10.0, "{asked} calls in {elapsed:.1} s");

    admin
        .batch_execute(
            "CREATE OR REPLACE FUNCTION trackway.authorize(claims jsonb, kind text, id text) RETURNS boolean
             LANGUAGE sql AS $$ SELECT pg_sleep(60) IS NULL $$",
        )
        .await
        .expect("hanging authorize");
    let asked_at = tokio::time::Instant::now();
    honest.send(json!({"type": "subscribe", "device": "h2", "id": "slow"})).await;
    let error = honest.recv_type("error").await;
    assert_eq!((error["code"].as_str(), error["id"].as_str()), (Some("unavailable"), Some("slow")), "{error}");
    assert!(asked_at.elapsed() < Duration::from_secs(9), "answered after {:?}", asked_at.elapsed());
    relay.stop().await.expect("clean stop");
}

/// A `since` that lists thousands of transactions (forged: an honest one lists a few) is widened to a
/// range before the replay: every replayed position's cursor stays as short as with an honest `since`.
/// The list used to be copied into the cursor of every replayed row of a listed transaction (a 48 KB
/// cursor made 1,000 rows into 48 MB of frames).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_since_costs_no_more_bytes_per_position_than_an_honest_one() {
    let db = fresh_database("live_forged_since").await;
    let admin = connect(&db).await;
    let honest: String = admin.query_one("SELECT trackway.current_cursor()", &[]).await.expect("cursor").get(0);
    ingest(&db, &(1..=200).map(|n| payload("d-forged", n)).collect::<Vec<_>>()).await;
    let row = admin.query_one("SELECT min(ingest_xid)::text FROM trackway.positions", &[]).await.expect("xid");
    let xid: u64 = row.get::<_, String>(0).parse().expect("xid number");
    // 8,000 transaction ids handed out (subtransactions that write), so that a cursor may name them.
    admin
        .batch_execute(
            "CREATE TEMP TABLE burn (n int);
             DO $$ BEGIN FOR i IN 1..8000 LOOP
                 BEGIN INSERT INTO burn VALUES (i); EXCEPTION WHEN OTHERS THEN NULL; END;
             END LOOP; END $$",
        )
        .await
        .expect("transaction ids");
    let row = admin.query_one("SELECT pg_snapshot_xmax(pg_current_snapshot())::text", &[]).await.expect("xmax");
    let xmax: u64 = row.get::<_, String>(0).parse().expect("xmax number");
    assert!(xmax > xid + 8_000, "ids handed out: {xid} .. {xmax}");
    // A cursor past the rows that lists their transaction and 7,999 more: each replayed row's cursor
    // would keep the transactions listed after its own.
    let listed: Vec<String> = (xid..xid + 8_000).map(|x| x.to_string()).collect();
    let forged = format!("{}:0:{}", xid + 8_000, listed.join(","));
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_forged_since"), &[])).await;
    let mut cursor_bytes = Vec::new();
    for since in [&honest, &forged] {
        let mut client = Client::authenticated(&relay.url(""), &admin_token()).await;
        client.subscribe(json!({"device": "d-forged", "since": since})).await;
        let replayed = client.positions(200, Duration::from_secs(10)).await;
        assert_eq!(key_set(&replayed).len(), 200, "every position replayed once or more");
        let bytes: usize = replayed.iter().map(|p| p["cursor"].as_str().expect("cursor").len()).sum();
        cursor_bytes.push(bytes / replayed.len());
    }
    let (honest_bytes, forged_bytes) = (cursor_bytes[0], cursor_bytes[1]);
    assert!(
        forged_bytes <= 2 * honest_bytes + 32,
        "cursor bytes per position: honest {honest_bytes}, forged {forged_bytes}"
    );
    relay.stop().await.expect("clean stop");
}

/// Sequential-scan reads of the positions table (and its chunks): what the feed must not do per wake-up.
async fn rows_read_by_scans(admin: &tokio_postgres::Client) -> i64 {
    let sql = "SELECT coalesce(sum(seq_tup_read), 0)::bigint FROM pg_stat_user_tables
               WHERE relid = 'trackway.positions'::regclass
                  OR relid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'trackway.positions'::regclass)";
    admin.query_one(sql, &[]).await.expect("scan counters").get(0)
}

/// The live path's reads stay index-driven on a table the planner knows nothing about (never analyzed:
/// a fresh restore, a bulk load, a new chunk): with 300,000 rows and the feed waking five times a second,
/// no wake-up reads the table through. It used to be a parallel sequential scan of the whole table on
/// every wake-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_reads_by_index_on_a_table_never_analyzed() {
    let db = fresh_database("live_unanalyzed").await;
    let admin = connect(&db).await;
    admin
        .batch_execute("ALTER TABLE trackway.positions SET (autovacuum_enabled = false)")
        .await
        .expect("no autovacuum on the table");
    for chunk in 0..30u32 {
        let payloads: Vec<String> =
            (0..10_000u32).map(|i| payload(&format!("d-{}", i % 1000), chunk * 10 + i / 1000 + 1)).collect();
        admin.query("SELECT trackway.ingest_batch($1::text[])", &[&payloads]).await.expect("ingest_batch");
    }
    let never_analyzed = "SELECT bool_and(c.reltuples < 0) FROM pg_class c
                          WHERE c.oid = 'trackway.positions'::regclass
                             OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'trackway.positions'::regclass)";
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_unanalyzed"), &[])).await;
    let mut client = Client::authenticated(&relay.url(""), &admin_token()).await;
    client.subscribe(json!({"device": "d-7"})).await;
    // A busy backend's statistics reach the counters within about a second of its reads.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = rows_read_by_scans(&admin).await;
    for n in 0..20u32 {
        ingest(&db, &[payload("d-7", 400 + n)]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(client.positions(20, Duration::from_secs(5)).await.len(), 20, "the live positions came");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let read = rows_read_by_scans(&admin).await - before;
    let untouched: bool = admin.query_one(never_analyzed, &[]).await.expect("reltuples").get(0);
    assert!(untouched, "the table was analyzed meanwhile: the test proves nothing");
    // About 25 wake-ups: one whole read of the table would be 300,000 rows.
    assert!(read < 30_000, "{read} rows read by sequential scans over about 25 wake-ups");
    relay.stop().await.expect("clean stop");
}

/// A `since` naming a transaction id the database has not handed out yet (a cursor from before a
/// failover or a restore, or made up) is refused with `resume_too_far`: resuming from it would skip every
/// row of the transactions below it still to come. It used to be answered with an empty replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_since_ahead_of_the_database_is_refused() {
    let db = fresh_database("live_since_ahead").await;
    let admin = connect(&db).await;
    let row = admin.query_one("SELECT pg_snapshot_xmax(pg_current_snapshot())::text", &[]).await.expect("xmax");
    let xmax: u64 = row.get::<_, String>(0).parse().expect("xmax number");
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_since_ahead"), &[])).await;
    let mut client = Client::authenticated(&relay.url(""), &admin_token()).await;
    let ahead = format!("{}:1", xmax + 1_000_000);
    client.send(json!({"type": "subscribe", "device": "d-ahead", "since": ahead, "id": "a"})).await;
    let error = client.recv_type("error").await;
    assert_eq!((error["code"].as_str(), error["id"].as_str()), (Some("resume_too_far"), Some("a")), "{error}");
    let text = relay.metrics().await;
    assert_eq!(metric(&text, "trackway_live_replays_refused_total{why=\"ahead\"}"), 1.0);
    // An honest cursor still resumes.
    let honest: String = admin.query_one("SELECT trackway.current_cursor()", &[]).await.expect("cursor").get(0);
    ingest(&db, &[payload("d-ahead", 1)]).await;
    client.subscribe(json!({"device": "d-ahead", "since": honest})).await;
    assert_eq!(client.positions(1, Duration::from_secs(5)).await.len(), 1);
    relay.stop().await.expect("clean stop");
}

/// A device's `since` far behind the rows stored since (an hour of a big fleet) is refused with
/// `resume_too_far` before the replay walks them: finding one device's positions reads every row after
/// the cursor, and from about 18 million rows back that ran into the answer statement's timeout, was
/// answered `unavailable` and cost the same again on every retry. It used to be read and replayed however
/// far back. A `since` within the budget still resumes, and another target's resume in the same batch is
/// answered as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_since_behind_more_rows_than_a_replay_walks_is_refused_at_once() {
    let db = fresh_database("live_since_behind").await;
    let admin = connect(&db).await;
    let flags = ["--live-max-replay-behind", "1000"];
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_since_behind"), &flags)).await;
    let mut watcher = Client::authenticated(&relay.url(""), &admin_token()).await;
    watcher.subscribe(json!({"device": "d-far"})).await;
    ingest(&db, &[payload("d-far", 1)]).await;
    let seen = watcher.positions(1, Duration::from_secs(5)).await;
    let since = seen[0]["cursor"].as_str().expect("cursor").to_owned();
    watcher.close().await;
    // 1,500 positions of other devices, one of d-far, two of d-near: the replay would be one position,
    // found by walking 1,503 rows.
    ingest(&db, &(0..1_500).map(|n| payload(&format!("other-{}", n % 50), n)).collect::<Vec<_>>()).await;
    ingest(&db, &[payload("d-far", 2)]).await;
    let near: String = admin.query_one("SELECT trackway.current_cursor()", &[]).await.expect("cursor").get(0);
    ingest(&db, &[payload("d-near", 1), payload("d-near", 2)]).await;
    let mut client = Client::authenticated(&relay.url(""), &admin_token()).await;
    client.send(json!({"type": "subscribe", "device": "d-far", "since": since, "id": "far"})).await;
    let error = client.recv_type("error").await;
    assert_eq!((error["code"].as_str(), error["id"].as_str()), (Some("resume_too_far"), Some("far")), "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("about 1503 positions"), "says how far behind, and why: {message}");
    // Two rows behind: replayed.
    let sub = client.subscribe(json!({"device": "d-near", "since": near})).await;
    assert_eq!(sub["replay"], 2, "{sub}");
    assert_eq!(client.positions(2, Duration::from_secs(5)).await.len(), 2);
    // The client starts again from a snapshot, as the error says.
    let snapshot = client.subscribe(json!({"device": "d-far"})).await;
    assert_eq!(snapshot["snapshot"].as_array().map(Vec::len), Some(1), "{snapshot}");
    let text = relay.metrics().await;
    assert_eq!(metric(&text, "trackway_live_replays_refused_total{why=\"rows_behind\"}"), 1.0);
    assert_eq!(metric(&text, "trackway_live_replayed_positions_total{why=\"resume\"}"), 2.0);
    relay.stop().await.expect("clean stop");
}

/// One answer's failure is its own: when the database refuses the statement of one subscription's answer
/// (a statement timeout, here an error injected into the extension's functions), that subscription is
/// answered `unavailable` and the others answered on the same connection, before and after it, get their
/// snapshots and replays. A refused statement used to fail its whole batch: every answer not given yet
/// `unavailable`, and the connection dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_answer_fails_only_its_own_subscription() {
    let db = fresh_database("live_answer_isolated").await;
    let admin = connect(&db).await;
    let since: String = admin.query_one("SELECT trackway.current_cursor()", &[]).await.expect("cursor").get(0);
    ingest(&db, &(1..=3).map(|n| payload("good", n)).collect::<Vec<_>>()).await;
    // The replay of device `slow` takes 1.5 s (it keeps the one answer connection busy while the next
    // subscriptions gather into one batch); the replay of device `poison` and the snapshot of group
    // `poison` are refused by the server.
    admin
        .batch_execute(
            r#"ALTER FUNCTION trackway.live_replay(text, text, text, integer) RENAME TO live_replay_real;
               CREATE FUNCTION trackway.live_replay(after text, kind text, id text, max_rows integer DEFAULT 1000)
               RETURNS TABLE (cursor text, device_id text, "position" text, ts_us bigint) LANGUAGE plpgsql AS $$
               BEGIN
                   IF live_replay.id = 'slow' THEN PERFORM pg_sleep(1.5); END IF;
                   IF live_replay.id = 'poison' THEN RAISE EXCEPTION 'injected: the replay of poison fails'; END IF;
                   RETURN QUERY SELECT * FROM trackway.live_replay_real(after, kind, id, max_rows);
               END $$;
               ALTER FUNCTION trackway.live_latest_of_groups(text[]) RENAME TO live_latest_of_groups_real;
               CREATE FUNCTION trackway.live_latest_of_groups(group_ids text[])
               RETURNS TABLE (group_id text, "position" text) LANGUAGE plpgsql AS $$
               BEGIN
                   IF 'poison' = ANY(group_ids) THEN RAISE EXCEPTION 'injected: the snapshot of poison fails'; END IF;
                   RETURN QUERY SELECT * FROM trackway.live_latest_of_groups_real(group_ids);
               END $$;"#,
        )
        .await
        .expect("inject the failures");
    let flags = live_flags(&db, &unique("live_answer_isolated"), &["--live-answer-connections", "1"]);
    let relay = LiveRelay::start(&flags).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(Client::authenticated(&relay.url(""), &admin_token()).await);
    }
    let requests = [
        json!({"type": "subscribe", "device": "slow", "since": since}),
        json!({"type": "subscribe", "group": "poison"}),
        json!({"type": "subscribe", "device": "good"}),
        json!({"type": "subscribe", "device": "poison", "since": since}),
        json!({"type": "subscribe", "device": "good", "since": since}),
    ];
    for (client, request) in clients.iter_mut().zip(requests) {
        client.send(request).await;
        // In this order at the feed; the first holds the connection while the other four wait for it.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut answers = Vec::new();
    for client in &mut clients {
        answers.push(client.recv_within(Duration::from_secs(10)).await.expect("an answer"));
    }
    assert_eq!((answers[0]["type"].as_str(), answers[0]["replay"].as_u64()), (Some("subscribed"), Some(0)));
    for refused in [&answers[1], &answers[3]] {
        assert_eq!(
            (refused["type"].as_str(), refused["code"].as_str()),
            (Some("error"), Some("unavailable")),
            "{refused}"
        );
    }
    assert_eq!(answers[2]["type"], "subscribed", "the device snapshot beside the refused group's: {}", answers[2]);
    let snapshot = clients[2].rest_of_snapshot(answers[2].clone()).await;
    assert_eq!(snapshot["snapshot"].as_array().map(Vec::len), Some(1), "{snapshot}");
    assert_eq!(answers[4]["type"], "subscribed", "the replay after the refused one: {}", answers[4]);
    assert_eq!(answers[4]["replay"], 3, "{}", answers[4]);
    assert_eq!(clients[4].positions(3, Duration::from_secs(5)).await.len(), 3);
    let text = relay.metrics().await;
    assert_eq!(metric(&text, "trackway_live_answers_failed_total{scope=\"one\"}"), 2.0);
    assert!(!text.contains("trackway_live_answers_failed_total{scope=\"batch\"}"), "no batch failed");
    relay.stop().await.expect("clean stop");
}

/// An answer connection is free again as soon as its batch ends, however busy the feed's command queue is.
/// The feed counted an ended batch as running until it joined it, and it joined only when no command was
/// waiting: with connections opening and closing all the time (each close is a command) and a
/// subscription waiting, it never did, and the subscription was answered `unavailable` at its timeout
/// with the one connection idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_answer_batch_frees_its_connection_while_commands_pour_in() {
    let db = fresh_database("live_answers_reaped").await;
    let admin = connect(&db).await;
    // Each read of the feed takes 50 ms (commands pile up meanwhile); the snapshot of device `slow` 0.5 s
    // (a second subscription arrives while it is read).
    slow_feed_reads(&admin, 0.05).await;
    slow_snapshot_of(&admin, "slow", 0.5).await;
    let flags = live_flags(
        &db,
        &unique("live_answers_reaped"),
        &["--live-answer-connections", "1", "--live-subscribe-timeout-ms", "4000"],
    );
    let relay = LiveRelay::start(&flags).await;
    let url = relay.url("");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churners: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut closed = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    drop(Client::authenticated(&url, &admin_token()).await);
                    closed += 1;
                }
                closed
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut first = Client::authenticated(&url, &admin_token()).await;
    let mut second = Client::authenticated(&url, &admin_token()).await;
    first.send(json!({"type": "subscribe", "device": "slow"})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = tokio::time::Instant::now();
    second.send(json!({"type": "subscribe", "device": "next"})).await;
    let answer = second.recv_within(Duration::from_secs(10)).await.expect("an answer");
    let waited = asked.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut closed = 0;
    for churner in churners {
        closed += churner.await.expect("a churner");
    }
    assert_eq!(first.recv_type("subscribed").await["device"], "slow");
    assert_eq!(answer["type"], "subscribed", "after {waited:?}, {closed} connections closed meanwhile: {answer}");
    assert!(waited < Duration::from_secs(3), "answered after {waited:?}");
    relay.stop().await.expect("clean stop");
}

/// The rows held for a new subscription come right after its `subscribed` frame, before anything the relay
/// read later for the client's other subscriptions. A client keeps one resume cursor per subscription and
/// takes every live position after `subscribed` as the new one's (docs/live-protocol.md §7.2), so a position
/// of another device arriving between the answer and the held rows would move that cursor past rows still
/// to come: had the connection ended there, resuming from it would skip them. The answer used to be queued
/// by the answer connection and the held rows by the feed when it next heard of it, with the feed's
/// routing in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_rows_follow_the_answer_before_anything_read_later() {
    let db = fresh_database("live_held_order").await;
    let admin = connect(&db).await;
    // Each read of the feed takes 100 ms (the answer is almost always queued while one runs); the snapshot
    // of device `b` 0.5 s (rows of `b` are held meanwhile).
    slow_feed_reads(&admin, 0.1).await;
    slow_snapshot_of(&admin, "b", 0.5).await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_held_order"), &[])).await;
    let mut client = Client::authenticated(&relay.url(""), &admin_token()).await;
    client.subscribe(json!({"device": "a"})).await;
    // b(n) then a(n), each in a transaction of its own: in the order the relay reads them, every b(n) comes
    // before a(n).
    let writer = tokio::spawn(async move {
        for n in 1..=150u32 {
            for device in ["b", "a"] {
                let payloads = vec![payload(device, n)];
                admin.query("SELECT trackway.ingest_batch($1::text[])", &[&payloads]).await.expect("ingest_batch");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.send(json!({"type": "subscribe", "device": "b"})).await;
    let mut after_subscribed = false;
    // The newest `a` position received after `b`'s `subscribed`, and every `b` position received after it.
    let mut newest_a: Option<String> = None;
    let mut late = Vec::new();
    let mut b_positions = 0;
    while let Some(frame) = client.recv_within(Duration::from_secs(3)).await {
        if frame["type"] == "subscribed" {
            assert_eq!(frame["device"], "b", "{frame}");
            after_subscribed = true;
            continue;
        }
        if frame["type"] != "positions" || !after_subscribed {
            continue;
        }
        for item in frame["positions"].as_array().expect("positions") {
            let (device, ts) = (&item["position"]["deviceId"], item["position"]["timestamp"].as_str().expect("ts"));
            if device == "a" {
                newest_a = Some(ts.to_owned());
            } else if device == "b" {
                b_positions += 1;
                if newest_a.as_deref().is_some_and(|a| ts <= a) {
                    late.push(format!("b {ts} after a {}", newest_a.as_deref().unwrap_or_default()));
                }
            }
        }
    }
    writer.await.expect("the writer");
    assert!(after_subscribed, "b was answered");
    assert!(b_positions > 10, "{b_positions} positions of b after its answer: too few to show anything");
    assert!(
        late.is_empty(),
        "{} positions of b came after a later one of a: {:?}",
        late.len(),
        &late[..late.len().min(5)]
    );
    relay.stop().await.expect("clean stop");
}

/// A big group's resume is read in time: the replay's device filter is a hashed set, not an array
/// searched for every row walked. A group of 3,000 devices resumed from 300,000 rows back needed
/// 900 million comparisons, ran into the answer statement's 5 s timeout and was answered `unavailable`
/// (on every retry); as a set it takes tens of milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_groups_resume_is_read_within_the_statement_timeout() {
    let db = fresh_database("live_big_group").await;
    let admin = connect(&db).await;
    admin
        .execute(
            "INSERT INTO trackway.device_groups (group_id, device_id)
             SELECT 'fleet', 'member-' || i FROM generate_series(1, 3000) AS i",
            &[],
        )
        .await
        .expect("3,000 members");
    let since: String = admin.query_one("SELECT trackway.current_cursor()", &[]).await.expect("cursor").get(0);
    // 300,000 rows of 1,000 devices outside the group, then one row each of two members.
    assert_eq!(ingest_generated(&admin, 0..300_000, 10_000, ("other-", 1_000), "10 minutes").await, 300_000);
    ingest(&db, &[payload("member-7", 1), payload("member-2999", 1)]).await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_big_group"), &[])).await;
    let mut client = Client::authenticated(&relay.url(""), &admin_token()).await;
    client.send(json!({"type": "subscribe", "group": "fleet", "since": since})).await;
    let answer = loop {
        let frame = client.recv_within(Duration::from_secs(20)).await.expect("an answer within 20 s");
        if frame["type"] == "subscribed" || frame["type"] == "error" {
            break frame;
        }
    };
    assert_eq!((answer["type"].as_str(), answer["replay"].as_u64()), (Some("subscribed"), Some(2)), "{answer}");
    assert_eq!(key_set(&client.positions(2, Duration::from_secs(5)).await).len(), 2);
    relay.stop().await.expect("clean stop");
}

/// One client's backlog of replays does not hold back another's resume: a connection's requests are
/// handled one at a time (its next waits for the answer to the last), so a client that sends 40 costly
/// replays at once has one of them at the answer connections at any moment, and a resume asked for by
/// another client meanwhile goes with the next free connection. Were a connection's requests all handed
/// to the answer connections together, the resume would wait for a batch of ten of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_backlog_of_replays_does_not_hold_back_anothers_resume() {
    const HOSTILE: usize = 40;
    let db = fresh_database("live_fair_replays").await;
    let admin = connect(&db).await;
    let since: String = admin.query_one("SELECT trackway.current_cursor()", &[]).await.expect("cursor").get(0);
    // 160,000 rows of other devices: each of the 40 replays walks them all to find its device's (none).
    for chunk in 0..16u32 {
        let payloads: Vec<String> =
            (0..10_000u32).map(|i| payload(&format!("bulk-{}", i % 8), chunk * 1250 + i / 8 + 1)).collect();
        admin.query("SELECT trackway.ingest_batch($1::text[])", &[&payloads]).await.expect("ingest_batch");
    }
    let near: String = admin.query_one("SELECT trackway.current_cursor()", &[]).await.expect("cursor").get(0);
    ingest(&db, &[payload("honest", 1)]).await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_fair_replays"), &[])).await;
    let mut hostile = Client::authenticated(&relay.url(""), &admin_token()).await;
    let mut honest = Client::authenticated(&relay.url(""), &admin_token()).await;
    for i in 0..HOSTILE {
        hostile.send(json!({"type": "subscribe", "device": format!("h-{i}"), "since": since})).await;
    }
    let (first, first_answered) = tokio::sync::oneshot::channel();
    let answers = tokio::spawn(async move {
        let mut at = Vec::with_capacity(HOSTILE);
        let mut first = Some(first);
        for _ in 0..HOSTILE {
            let frame = hostile.recv_type("subscribed").await;
            assert_eq!(frame["replay"], 0, "{frame}");
            at.push(tokio::time::Instant::now());
            if let Some(first) = first.take() {
                let _ = first.send(());
            }
        }
        at
    });
    first_answered.await.expect("the first of the backlog answered");
    let sub = honest.subscribe(json!({"device": "honest", "since": near})).await;
    let honest_at = tokio::time::Instant::now();
    assert_eq!(sub["replay"], 1, "{sub}");
    let hostile_at = answers.await.expect("the backlog answered");
    let before = hostile_at.iter().filter(|at| **at < honest_at).count();
    let span = hostile_at[HOSTILE - 1] - hostile_at[0];
    eprintln!("{before} of the backlog's {HOSTILE} replays answered before the resume; the backlog took {span:?}");
    assert!(span >= Duration::from_millis(200), "the backlog took {span:?}: too little to show anything");
    assert!(before < 12, "{before} of the other client's {HOSTILE} replays were answered before this resume");
    relay.stop().await.expect("clean stop");
}

/// Replays run beside the feed, never in its way: while eight clients resume a device each from a cursor
/// 20,000 of its positions back, a watcher of another device gets its new position before the first
/// replay is even answered. The feed used to run every replay itself, one after the other, between two
/// reads: the watcher's position waited for all eight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_never_hold_back_the_live_positions_of_others() {
    let db = fresh_database("live_replays_aside").await;
    let admin = connect(&db).await;
    let since: String = admin.query_one("SELECT trackway.current_cursor()", &[]).await.expect("cursor").get(0);
    for chunk in 0..16u32 {
        let payloads: Vec<String> =
            (0..10_000u32).map(|i| payload(&format!("busy-{}", i % 8), chunk * 1250 + i / 8 + 1)).collect();
        admin.query("SELECT trackway.ingest_batch($1::text[])", &[&payloads]).await.expect("ingest_batch");
    }
    let flags = live_flags(&db, &unique("live_replays_aside"), &["--live-max-replay", "30000"]);
    let relay = LiveRelay::start(&flags).await;
    let mut watcher = Client::authenticated(&relay.url(""), &admin_token()).await;
    watcher.subscribe(json!({"device": "watched"})).await;
    let mut resumers = Vec::new();
    for _ in 0..8 {
        resumers.push(Client::authenticated(&relay.url(""), &admin_token()).await);
    }
    let asked = tokio::time::Instant::now();
    for (i, resumer) in resumers.iter_mut().enumerate() {
        resumer.send(json!({"type": "subscribe", "device": format!("busy-{i}"), "since": since})).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    ingest(&db, &[payload("watched", 1)]).await;
    let answered: Vec<_> = resumers
        .into_iter()
        .map(|mut resumer| {
            tokio::spawn(async move {
                let frame = resumer.recv_type("subscribed").await;
                assert_eq!(frame["replay"], 20_000, "{frame}");
                tokio::time::Instant::now()
            })
        })
        .collect();
    let live = watcher.positions(1, Duration::from_secs(30)).await;
    let seen = tokio::time::Instant::now();
    assert_eq!(live.len(), 1, "the watched device's position came");
    let mut first_answer = None;
    for answer in answered {
        let at = answer.await.expect("a resumer");
        first_answer = Some(first_answer.map_or(at, |first: tokio::time::Instant| first.min(at)));
    }
    let first_answer = first_answer.expect("eight answers") - asked;
    eprintln!("live position {:?} after the subscribes, first replay answered after {first_answer:?}", seen - asked);
    assert!(
        seen - asked < first_answer,
        "the live position came {:?} after the subscribes, after the first replay's answer ({first_answer:?})",
        seen - asked
    );
    assert!(
        first_answer >= Duration::from_millis(150),
        "the first replay took {first_answer:?}: too little to show anything (more rows are needed)"
    );
    relay.stop().await.expect("clean stop");
}

/// A snapshot of 1,300 devices comes in bounded frames: the `subscribed` frame with the first 512 documents
/// and `remaining`, then `snapshot` frames with the rest, before anything else; live positions follow.
/// It used to be one frame of any size (a 10,000-device group made one of several megabytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_snapshot_comes_in_bounded_frames() {
    let db = fresh_database("live_snapshot_frames").await;
    let admin = connect(&db).await;
    let devices: Vec<String> = (0..1300).map(|i| format!("d-{i:04}")).collect();
    admin
        .execute("INSERT INTO trackway.device_groups SELECT 'big', unnest($1::text[])", &[&devices])
        .await
        .expect("group");
    ingest(&db, &devices.iter().map(|d| payload(d, 1)).collect::<Vec<_>>()).await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("live_snapshot_frames"), &[])).await;
    let mut client = Client::authenticated(&relay.url(""), &admin_token()).await;
    client.send(json!({"type": "subscribe", "group": "big", "id": 1})).await;
    let mut sizes = Vec::new();
    let first = client.recv().await;
    sizes.push(first.to_string().len());
    assert_eq!((first["type"].as_str(), first["remaining"].as_u64()), (Some("subscribed"), Some(788)), "{first}");
    let whole = client.rest_of_snapshot(first).await;
    assert_eq!(whole["frames"], 3);
    let ids: Vec<&str> =
        whole["snapshot"].as_array().expect("snapshot").iter().map(|d| d["deviceId"].as_str().expect("id")).collect();
    assert_eq!(ids, devices.iter().map(String::as_str).collect::<Vec<_>>(), "every device once, in order");
    ingest(&db, &[payload("d-0007", 2)]).await;
    let live = client.positions(1, Duration::from_secs(5)).await;
    assert_eq!(live[0]["position"]["deviceId"], "d-0007");
    assert!(sizes.iter().all(|&s| s < 300 * 1024), "frame sizes {sizes:?}");
    relay.stop().await.expect("clean stop");
}
