//! The relay's ingest path against the local Redis and PostgreSQL with the extension: the sample files,
//! dead letters, reclaiming from a dead consumer, and the admin endpoints.

use std::time::Duration;

use trackway_tests::{
    connect, fresh_database, invalid_cases,
    relay::{
        http_get, metric, metric_opt, read_all, redis, redis_url, relay_flags, unique, wait_drained, xadd_fields,
        xadd_payloads, InProcess,
    },
    servers::RedisServer,
    shared_data,
};

/// Flags for an in-process relay on database `db` and stream `stream`.
fn flags(db: &str, stream: &str, extra: &[&str]) -> Vec<String> {
    relay_flags(db, stream, &[&["--block-ms", "200"], extra].concat())
}

async fn start(db: &str, stream: &str, extra: &[&str]) -> InProcess {
    let args = flags(db, stream, extra);
    InProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await
}

/// Creates group `trackway` on `stream` (and the stream), as the relay would.
async fn create_group(conn: &mut redis::aio::MultiplexedConnection, stream: &str) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("trackway")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await
        .expect("XGROUP CREATE");
}

/// Reads up to 100 entries of `stream` as `consumer` from `from` (`>` new, `0` its pending), never acking.
async fn read_as(conn: &mut redis::aio::MultiplexedConnection, stream: &str, consumer: &str, from: &str) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("trackway")
        .arg(consumer)
        .arg("COUNT")
        .arg(100)
        .arg("STREAMS")
        .arg(stream)
        .arg(from)
        .query_async(conn)
        .await
        .expect("XREADGROUP");
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

#[tokio::test]
async fn sample_files_are_stored_and_dead_lettered_and_metrics_match() {
    let db = fresh_database("relay_samples").await;
    let stream = unique("samples");
    let mut conn = redis(&redis_url()).await;

    let valid = shared_data("positions-valid.jsonl");
    let invalid = invalid_cases();
    assert_eq!((valid.len(), invalid.len()), (208, 15));
    // Some entries are there before the relay starts (the group must start at the beginning), the rest after.
    xadd_payloads(&mut conn, &stream, &valid[..100]).await;
    let relay = start(&db, &stream, &["--batch-size", "50"]).await;
    xadd_payloads(&mut conn, &stream, &valid[100..]).await;
    let invalid_payloads: Vec<String> = invalid.iter().map(|c| c.1.clone()).collect();
    let invalid_ids = xadd_payloads(&mut conn, &stream, &invalid_payloads).await;
    let no_payload = xadd_fields(&mut conn, &stream, &[("something", b"else")]).await;
    let not_utf8 = xadd_fields(&mut conn, &stream, &[("payload", b"{\"deviceId\":\"\xff\"}")]).await;
    let huge = format!(r#"{{"deviceId":"huge","note":"{}"}}"#, "x".repeat(2 << 20));
    let too_large = xadd_fields(&mut conn, &stream, &[("payload", huge.as_bytes())]).await;

    wait_drained(&mut conn, &stream, "trackway", Duration::from_secs(30)).await;
    let client = connect(&db).await;
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, 205);
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.latest_positions").await, 5);

    let dead = read_all(&mut conn, &format!("{stream}:dead")).await;
    assert_eq!(dead.len(), 18, "{:#?}", dead.iter().map(|(id, f)| (id, f.get("trackway.error"))).collect::<Vec<_>>());
    for ((field, payload), id) in invalid.iter().zip(&invalid_ids) {
        let (_, letter) = dead
            .iter()
            .find(|(_, f)| f.get("trackway.source_id") == Some(id))
            .unwrap_or_else(|| panic!("no dead letter for {id}"));
        assert_eq!(letter.get("trackway.reason").map(String::as_str), Some("invalid"));
        assert_eq!(letter.get("payload"), Some(payload), "original fields are kept");
        let error = &letter["trackway.error"];
        if !field.is_empty() {
            assert!(error.starts_with(&format!("{field}: ")), "expected field {field}: {error}");
        }
    }
    let reason_of = |id: &str| {
        dead.iter()
            .find(|(_, f)| f.get("trackway.source_id").map(String::as_str) == Some(id))
            .map(|(_, f)| f["trackway.reason"].clone())
    };
    assert_eq!(reason_of(&no_payload).as_deref(), Some("missing_payload"));
    assert_eq!(reason_of(&not_utf8).as_deref(), Some("invalid"));
    assert_eq!(reason_of(&too_large).as_deref(), Some("invalid"));
    let (_, letter) = dead.iter().find(|(_, f)| f["trackway.source_id"] == too_large).expect("huge one");
    assert!(letter["trackway.error"].contains("above the limit"), "{}", letter["trackway.error"]);
    assert_eq!(letter["payload"].len(), huge.len(), "the original payload is kept whole");

    // The admin endpoints agree with what happened.
    assert!(relay.is_running(), "bad input must not stop the relay");
    assert_eq!(http_get(relay.admin, "/healthz").await.0, 200);
    assert_eq!(http_get(relay.admin, "/readyz").await.0, 200);
    let (status, text) = http_get(relay.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "trackway_relay_rows_total{status=\"inserted\"}"), 205.0, "{text}");
    assert_eq!(metric(&text, "trackway_relay_rows_total{status=\"duplicate\"}"), 3.0, "{text}");
    // 15 said invalid by the extension; the 2 MiB payload is refused by the relay before any round trip.
    assert_eq!(metric(&text, "trackway_relay_rows_total{status=\"invalid\"}"), 15.0, "{text}");
    assert_eq!(metric(&text, "trackway_relay_dead_letters_total{reason=\"invalid\"}"), 17.0, "{text}");
    assert_eq!(metric(&text, "trackway_relay_dead_letters_total{reason=\"missing_payload\"}"), 1.0, "{text}");
    assert_eq!(metric(&text, "trackway_relay_acks_total"), 226.0, "{text}");
    let read = metric(&text, "trackway_relay_entries_read_total{source=\"new\"}");
    assert_eq!(read, 226.0, "{text}");
    assert!(metric(&text, "trackway_relay_batches_total{outcome=\"committed\"}") >= 5.0, "{text}");
    assert!(metric(&text, "trackway_relay_ingest_duration_seconds_count") >= 5.0, "{text}");
    relay.stop().await.expect("clean stop");
}

#[tokio::test]
async fn entries_left_pending_by_a_dead_consumer_are_reclaimed() {
    let db = fresh_database("relay_reclaim").await;
    let stream = unique("reclaim");
    let mut conn = redis(&redis_url()).await;
    let payloads: Vec<String> = shared_data("positions-valid.jsonl").into_iter().take(40).collect();
    create_group(&mut conn, &stream).await;
    xadd_payloads(&mut conn, &stream, &payloads).await;
    // A consumer takes all 40 and dies without acknowledging.
    read_as(&mut conn, &stream, "dead-one", ">").await;

    let relay = start(&db, &stream, &["--claim-idle-ms", "1000", "--consumer", "rescuer"]).await;
    wait_drained(&mut conn, &stream, "trackway", Duration::from_secs(30)).await;
    let client = connect(&db).await;
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, 40);
    let text = http_get(relay.admin, "/metrics").await.1;
    assert_eq!(metric(&text, "trackway_relay_reclaimed_total"), 40.0, "{text}");
    assert_eq!(metric(&text, "trackway_relay_entries_read_total{source=\"claimed\"}"), 40.0, "{text}");
    relay.stop().await.expect("clean stop");
}

/// An entry whose store attempts got no answer `max_deliveries` times (as if the relay had died with it in
/// flight each time; the relay keeps those counts in `<stream>:attempts`) is dead-lettered as
/// `max_deliveries` without being sent again. Being read again — here six deliveries each — counts nothing:
/// the other entries are stored.
#[tokio::test]
async fn an_entry_whose_attempts_never_got_an_answer_is_dead_lettered_with_that_reason() {
    let db = fresh_database("relay_deliveries").await;
    let stream = unique("deliveries");
    let mut conn = redis(&redis_url()).await;
    let payloads: Vec<String> = shared_data("positions-valid.jsonl").into_iter().take(3).collect();
    create_group(&mut conn, &stream).await;
    let ids = xadd_payloads(&mut conn, &stream, &payloads).await;
    assert_eq!(ids.len(), 3);
    for from in [">", "0", "0", "0", "0"] {
        read_as(&mut conn, &stream, "crashy", from).await;
    }
    let attempts = format!("{stream}:attempts");
    let _: () = redis::cmd("HSET").arg(&attempts).arg(&ids[0]).arg(3).query_async(&mut conn).await.expect("HSET");
    let relay = start(&db, &stream, &["--consumer", "crashy", "--max-deliveries", "3"]).await;
    wait_drained(&mut conn, &stream, "trackway", Duration::from_secs(30)).await;
    let dead = read_all(&mut conn, &format!("{stream}:dead")).await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    let letter = &dead[0].1;
    assert_eq!(
        (letter["trackway.source_id"].as_str(), letter["trackway.reason"].as_str()),
        (ids[0].as_str(), "max_deliveries")
    );
    assert!(letter["trackway.error"].contains("limit 3"), "{letter:?}");
    let client = connect(&db).await;
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, 2);
    // The hash also keeps the consumer's last counting call (`call:crashy`), never an entry id.
    let fields: Vec<String> = redis::cmd("HKEYS").arg(&attempts).query_async(&mut conn).await.expect("HKEYS");
    let left: Vec<&String> = fields.iter().filter(|f| !f.starts_with("call:")).collect();
    assert!(left.is_empty(), "settled entries lose their attempt counts: {left:?}");
    relay.stop().await.expect("clean stop");
}

#[tokio::test]
async fn readiness_fails_when_the_database_is_missing_and_nothing_is_acked() {
    let stream = unique("nodb");
    let mut conn = redis(&redis_url()).await;
    let payloads: Vec<String> = shared_data("positions-valid.jsonl").into_iter().take(5).collect();
    xadd_payloads(&mut conn, &stream, &payloads).await;
    let relay = start("trackway_test_no_such_database", &stream, &[]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = http_get(relay.admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("postgres"), "{body}");
    assert_eq!(http_get(relay.admin, "/healthz").await.0, 200);
    let state = trackway_tests::relay::group_state(&mut conn, &stream, "trackway").await;
    assert_eq!(state, Some((5, Some(0))), "read but not acknowledged while the database is unreachable");
    // The sampled gauges show the same (sampled every 5 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    loop {
        let text = http_get(relay.admin, "/metrics").await.1;
        if metric(&text, "trackway_relay_group_pending") == 5.0 {
            assert_eq!(metric(&text, "trackway_relay_group_lag"), 0.0, "{text}");
            assert!(metric(&text, "trackway_relay_batches_total{outcome=\"retried\"}") >= 1.0, "{text}");
            assert_eq!(metric(&text, "trackway_relay_acks_total"), 0.0, "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "group_pending never sampled as 5: {text}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    relay.stop().await.expect("clean stop even while the database is unreachable");
}

#[tokio::test]
async fn two_relays_share_a_stream_and_each_entry_is_handled_once() {
    let db = fresh_database("relay_shared").await;
    let stream = unique("shared");
    let mut conn = redis(&redis_url()).await;
    let payloads: Vec<String> = (0..4000)
        .map(|i| format!(r#"{{"deviceId":"shared-{}","timestamp":"2026-11-28T00:{:02}:{:02}.{:03}Z","latitude":54.7,"longitude":25.3}}"#,
                         i % 50, i / 60000 % 60, i / 1000 % 60, i % 1000))
        .collect();
    let a = start(&db, &stream, &["--consumer", "a", "--batch-size", "100"]).await;
    let b = start(&db, &stream, &["--consumer", "b", "--batch-size", "100"]).await;
    for chunk in payloads.chunks(500) {
        xadd_payloads(&mut conn, &stream, chunk).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_drained(&mut conn, &stream, "trackway", Duration::from_secs(60)).await;
    let client = connect(&db).await;
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, 4000);
    let mut read = 0.0;
    let mut duplicates = 0.0;
    for relay in [&a, &b] {
        let text = http_get(relay.admin, "/metrics").await.1;
        let mine = metric(&text, "trackway_relay_entries_read_total{source=\"new\"}");
        assert!(mine > 0.0, "both relays take part: {text}");
        read += mine;
        duplicates += metric(&text, "trackway_relay_rows_total{status=\"duplicate\"}");
    }
    assert_eq!(read, 4000.0, "each entry delivered to exactly one of the two relays");
    assert_eq!(duplicates, 0.0);
    a.stop().await.expect("clean stop");
    b.stop().await.expect("clean stop");
}

/// The harness reads long streams in pages: on a private Redis whose clients may not be sent more than 1 MB
/// at once, a 3 MB stream is read whole (one XRANGE of everything would make the server close the
/// connection; the crash test's 50,000 entries once timed out that way).
#[tokio::test]
async fn read_all_pages_through_a_stream_larger_than_one_reply_may_be() {
    let server = RedisServer::start_with(&["--client-output-buffer-limit", "normal 1mb 1mb 0"]);
    let mut conn = redis(&server.url()).await;
    let payloads: Vec<String> = (0..12_000).map(|i| format!("{i:0>240}")).collect();
    let ids = xadd_payloads(&mut conn, "long", &payloads).await;
    let all = read_all(&mut conn, "long").await;
    assert_eq!(all.len(), payloads.len());
    for ((id, fields), (want_id, payload)) in all.iter().zip(ids.iter().zip(&payloads)) {
        assert_eq!((id, fields.get("payload")), (want_id, Some(payload)));
    }
}

/// Sizing new entries against the byte budget never makes Redis hold much more than the budget: the read
/// script used to fetch `TRACKWAY_BATCH_SIZE` entries (1,000) in one XRANGE and count their bytes after;
/// with 200 KB entries that put about 60 MB (here) into the script at each read, and blocked Redis meanwhile.
/// On a private Redis, with a 1 MiB budget, the server's peak memory must stay near what the stream holds.
#[tokio::test]
async fn sizing_a_read_holds_about_the_byte_budget_in_redis() {
    let db = fresh_database("relay_read_steps").await;
    let client = connect(&db).await;
    let server = RedisServer::start();
    let mut conn = redis(&server.url()).await;
    let stream = "big-entries";
    let pad = vec![b'x'; 200 * 1024];
    for i in 0..300 {
        let payload = position("big", i);
        xadd_fields(&mut conn, stream, &[("payload", payload.as_bytes()), ("pad", &pad)]).await;
    }
    let peak = |info: String| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory_peak:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("used_memory_peak")
    };
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await.expect("INFO");
    let before = peak(info);
    let mut args = flags(&db, stream, &["--batch-bytes", "1048576"]);
    let at = args.iter().position(|a| a == "--redis-url").expect("--redis-url") + 1;
    args[at] = server.url();
    let relay = InProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    wait_drained(&mut conn, stream, "trackway", Duration::from_secs(60)).await;
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, 300);
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await.expect("INFO");
    let grown = (peak(info) - before) / 1e6;
    assert!(grown < 20.0, "Redis's peak memory grew {grown:.1} MB reading with a 1 MiB budget");
    relay.stop().await.expect("clean stop");
}

/// Waits up to 30 s until `/metrics` of `relay` shows `sample` at least `at_least`; returns the text.
async fn wait_metric(relay: &InProcess, sample: &str, at_least: f64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = http_get(relay.admin, "/metrics").await.1;
        if metric_opt(&text, sample).is_some_and(|v| v >= at_least) {
            return text;
        }
        assert!(std::time::Instant::now() < deadline, "{sample} never reached {at_least}: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A dead letter is written before its entry is acknowledged: while the dead-letter key cannot take it
/// (it holds a string: XADD fails with WRONGTYPE) the entry stays pending and the settle call is retried;
/// once the key is removed the entry is dead-lettered exactly once.
#[tokio::test]
async fn an_entry_whose_dead_letter_cannot_be_written_stays_pending_until_it_can() {
    let db = fresh_database("relay_dead_write").await;
    let stream = unique("deadwrite");
    let dead_key = format!("{stream}:dead");
    let mut conn = redis(&redis_url()).await;
    let _: () = redis::cmd("SET").arg(&dead_key).arg("not a stream").query_async(&mut conn).await.expect("SET");
    let bad = r#"{"deviceId":"dw","timestamp":"2026-11-28T00:00:00Z","latitude":91.5,"longitude":25}"#.to_owned();
    let id = xadd_payloads(&mut conn, &stream, &[bad]).await.remove(0);
    let relay = start(&db, &stream, &[]).await;

    for failures in [1.0, 2.0] {
        wait_metric(&relay, "trackway_relay_settle_failures_total", failures).await;
        let state = trackway_tests::relay::group_state(&mut conn, &stream, "trackway").await;
        assert_eq!(state, Some((1, Some(0))), "the entry must stay pending while its dead letter cannot be written");
    }

    let _: () = redis::cmd("DEL").arg(&dead_key).query_async(&mut conn).await.expect("DEL");
    wait_drained(&mut conn, &stream, "trackway", Duration::from_secs(30)).await;
    let dead = read_all(&mut conn, &dead_key).await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0].1["trackway.source_id"], id);
    assert_eq!(dead[0].1["trackway.reason"], "invalid");
    // Counted once Redis has answered the settle call (see claim_sweeps_are_bounded_by_bytes), and once.
    let text = wait_metric(&relay, "trackway_relay_dead_letters_total{reason=\"invalid\"}", 1.0).await;
    assert_eq!(metric(&text, "trackway_relay_dead_letters_total{reason=\"invalid\"}"), 1.0, "{text}");
    relay.stop().await.expect("clean stop");
}

/// When Redis loses the consumer group while a settlement with a dead letter waits to be written (a restart
/// without persistence, a failover to a replica that never got the group), the settlement ends — nothing
/// is pending any more — and the reader recreates the group and goes on. The settle script's XPENDING
/// failed with NOGROUP on every retry, and the reader waited behind it: the stream stopped for good.
#[tokio::test]
async fn a_settlement_whose_group_was_lost_does_not_stop_the_stream() {
    let db = fresh_database("relay_group_lost").await;
    let client = connect(&db).await;
    let stream = unique("grouplost");
    let dead_key = format!("{stream}:dead");
    let mut conn = redis(&redis_url()).await;
    // The dead letter cannot be written yet (the key holds a string): its settlement is retried.
    let _: () = redis::cmd("SET").arg(&dead_key).arg("not a stream").query_async(&mut conn).await.expect("SET");
    let bad = r#"{"deviceId":"gl","timestamp":"2026-11-28T00:00:00Z","latitude":91.5,"longitude":25}"#.to_owned();
    let id = xadd_payloads(&mut conn, &stream, &[bad]).await.remove(0);
    let relay = start(&db, &stream, &[]).await;
    wait_metric(&relay, "trackway_relay_settle_failures_total", 1.0).await;
    // Redis loses the group (and the dead-letter key gets fixed).
    let _: () =
        redis::cmd("XGROUP").arg("DESTROY").arg(&stream).arg("trackway").query_async(&mut conn).await.expect("DESTROY");
    let _: () = redis::cmd("DEL").arg(&dead_key).query_async(&mut conn).await.expect("DEL");
    xadd_payloads(&mut conn, &stream, &[position("gl-good", 1)]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while count(&client, "SELECT count(*) FROM trackway.positions WHERE device_id = 'gl-good'").await == 0 {
        assert!(std::time::Instant::now() < deadline, "the entry added after the group was lost was never stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The group was recreated from the start: the bad entry was read again and dead-lettered once.
    wait_drained(&mut conn, &stream, "trackway", Duration::from_secs(30)).await;
    let dead = read_all(&mut conn, &dead_key).await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0].1["trackway.source_id"], id);
    relay.stop().await.expect("clean stop");
}

/// 2026-11-29T00:00:00Z in Unix milliseconds.
const NOV_29_MS: i64 = 1_795_910_400_000;

/// Valid position `i` of device `device`, one second apart.
fn position(device: &str, i: usize) -> String {
    trackway_testkit::position(device, NOV_29_MS + i as i64 * 1000)
}

/// Waits up to 30 s for `/readyz` of `relay` to answer `want`; returns the body.
async fn wait_ready(relay: &InProcess, want: u16) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(relay.admin, "/readyz").await;
        if status == want {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "/readyz stayed {status} ({body}), wanted {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A database that refuses every write with `sqlstate` for about 8 s while 1,000 good entries arrive (a
/// statement trigger raising it while a flag says so, as a full NOTIFY queue raises 54000 at every commit):
/// an outage, not bad data. Nothing is dead-lettered or acknowledged early; `/readyz` says why; once the
/// flag is cleared every entry is stored.
/// Installs a statement trigger on `trackway.positions` that refuses every INSERT with `sqlstate` while
/// `public.refuse_flag.refusing` is true (it starts true).
async fn refuse_inserts(client: &tokio_postgres::Client, sqlstate: &str) {
    client
        .batch_execute(&format!(
            "CREATE TABLE public.refuse_flag (refusing boolean NOT NULL);
             INSERT INTO public.refuse_flag VALUES (true);
             CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF (SELECT refusing FROM public.refuse_flag) THEN
                 RAISE EXCEPTION 'refused by the test' USING ERRCODE = '{sqlstate}';
               END IF;
               RETURN NULL;
             END $$;
             CREATE TRIGGER refuse AFTER INSERT ON trackway.positions
               FOR EACH STATEMENT EXECUTE FUNCTION public.refuse();"
        ))
        .await
        .expect("refusing trigger");
}

async fn refusing_database_dead_letters_nothing(sqlstate: &str) {
    let db = fresh_database(&format!("relay_refusing_{}", sqlstate.to_ascii_lowercase())).await;
    let client = connect(&db).await;
    refuse_inserts(&client, sqlstate).await;
    let stream = unique(&format!("refusing-{sqlstate}"));
    let mut conn = redis(&redis_url()).await;
    let relay = start(&db, &stream, &["--batch-size", "100"]).await;
    let payloads: Vec<String> = (0..1000).map(|i| position(&format!("refused-{}", i % 10), i)).collect();
    for chunk in payloads.chunks(125) {
        xadd_payloads(&mut conn, &stream, chunk).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let body = wait_ready(&relay, 503).await;
    assert!(body.contains(sqlstate), "{body}");
    let text = http_get(relay.admin, "/metrics").await.1;
    assert!(metric(&text, &format!("trackway_relay_refusals_total{{sqlstate=\"{sqlstate}\"}}")) >= 1.0, "{text}");
    assert!(metric(&text, "trackway_relay_batches_total{outcome=\"retried\"}") >= 1.0, "{text}");
    assert_eq!(metric(&text, "trackway_relay_acks_total"), 0.0, "{text}");
    assert_eq!(read_all(&mut conn, &format!("{stream}:dead")).await.len(), 0, "dead letters during the outage");

    client.batch_execute("UPDATE public.refuse_flag SET refusing = false").await.expect("clear the flag");
    wait_drained(&mut conn, &stream, "trackway", Duration::from_secs(60)).await;
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, 1000);
    let dead = read_all(&mut conn, &format!("{stream}:dead")).await;
    assert!(dead.is_empty(), "good entries dead-lettered: {dead:#?}");
    wait_ready(&relay, 200).await;
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_notify_queue_54000_is_an_outage_not_bad_data() {
    refusing_database_dead_letters_nothing("54000").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_error_xx000_is_an_outage_not_bad_data() {
    refusing_database_dead_letters_nothing("XX000").await;
}

/// Invalid payloads arrive during an outage that refuses every INSERT (XX000). A batch of only invalid
/// payloads inserts nothing, so it commits even then; such a commit must not count as proof that the
/// database accepts writes. Here good entries are held (refused alone, nothing committed since), then
/// invalid ones arrive: the next batch is the held ones and the invalid ones, refused, and split; its
/// all-invalid half commits, and the held entries are refused alone again. Counting that commit made them
/// `rejected` dead letters (seen: one good entry of 1,000 in an 8 s outage). Only the invalid payloads may
/// become dead letters, and every good entry is stored once the outage ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_of_invalid_payloads_during_an_outage_prove_nothing() {
    let db = fresh_database("relay_refusing_with_invalid").await;
    let client = connect(&db).await;
    refuse_inserts(&client, "XX000").await;
    let stream = unique("refusing-invalid");
    let mut conn = redis(&redis_url()).await;
    let relay = start(&db, &stream, &["--batch-size", "100"]).await;
    let invalid = invalid_cases();
    let dead_stream = format!("{stream}:dead");
    let mut good = 0;
    let mut invalid_ids = Vec::new();
    // Few held entries a round: each is made to stand alone by one outage round (a backoff wait).
    for (round, held) in [1, 2, 4].into_iter().enumerate() {
        let payloads: Vec<String> = (0..held).map(|i| position(&format!("refused-{i}"), round * 100 + i)).collect();
        xadd_payloads(&mut conn, &stream, &payloads).await;
        good += held;
        let body = wait_ready(&relay, 503).await;
        assert!(body.contains("XX000"), "{body}");
        // Held: refused alone, with nothing committed since.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let payloads: Vec<String> = (0..6).map(|i| invalid[(round * 6 + i) % invalid.len()].1.clone()).collect();
        invalid_ids.extend(xadd_payloads(&mut conn, &stream, &payloads).await);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let dead = read_all(&mut conn, &dead_stream).await;
            let judged: Vec<_> = dead.iter().filter(|(_, f)| f["trackway.reason"] != "invalid").collect();
            assert!(judged.is_empty(), "good entries dead-lettered during the outage: {judged:#?}");
            if dead.len() == invalid_ids.len() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: {} of {} invalid entries dead-lettered: {dead:#?}",
                dead.len(),
                invalid_ids.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    client.batch_execute("UPDATE public.refuse_flag SET refusing = false").await.expect("clear the flag");
    wait_drained(&mut conn, &stream, "trackway", Duration::from_secs(60)).await;
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, good as i64);
    let dead = read_all(&mut conn, &dead_stream).await;
    let mut lettered: Vec<&str> = dead.iter().map(|(_, f)| f["trackway.source_id"].as_str()).collect();
    lettered.sort_unstable();
    invalid_ids.sort_unstable();
    assert_eq!(lettered, invalid_ids.iter().map(String::as_str).collect::<Vec<_>>(), "{dead:#?}");
    assert!(dead.iter().all(|(_, f)| f["trackway.reason"] == "invalid"), "{dead:#?}");
    wait_ready(&relay, 200).await;
    relay.stop().await.expect("clean stop");
}

/// Payloads the server refuses whatever the moment (a guard trigger refusing two devices, with P0001 and
/// 23514) while the rest of their batch stores are dead-lettered as `rejected` with the server's error; all
/// the others are stored.
#[tokio::test]
async fn payloads_refused_alone_while_the_rest_stores_are_rejected() {
    let db = fresh_database("relay_poison").await;
    let client = connect(&db).await;
    client
        .batch_execute(
            "CREATE FUNCTION public.guard() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.device_id = 'poison-p0' THEN
                 RAISE EXCEPTION 'device poison-p0 is banned';
               ELSIF NEW.device_id = 'poison-23' THEN
                 RAISE EXCEPTION 'device poison-23 is banned' USING ERRCODE = '23514';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER guard BEFORE INSERT ON trackway.positions
               FOR EACH ROW EXECUTE FUNCTION public.guard();",
        )
        .await
        .expect("guard trigger");
    let stream = unique("poison");
    let mut conn = redis(&redis_url()).await;
    let mut payloads: Vec<String> = (0..400).map(|i| position(&format!("good-{}", i % 7), i)).collect();
    payloads[100] = position("poison-p0", 100);
    payloads[300] = position("poison-23", 300);
    let ids = xadd_payloads(&mut conn, &stream, &payloads).await;
    let relay = start(&db, &stream, &["--batch-size", "400"]).await;
    wait_drained(&mut conn, &stream, "trackway", Duration::from_secs(60)).await;
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, 398);
    let dead = read_all(&mut conn, &format!("{stream}:dead")).await;
    assert_eq!(dead.len(), 2, "{dead:#?}");
    for (index, sqlstate) in [(100, "P0001"), (300, "23514")] {
        let (_, letter) = dead
            .iter()
            .find(|(_, f)| f["trackway.source_id"] == ids[index])
            .unwrap_or_else(|| panic!("no dead letter for entry {index}: {dead:#?}"));
        assert_eq!(letter["trackway.reason"], "rejected");
        assert!(letter["trackway.error"].contains(sqlstate), "{letter:?}");
    }
    let text = http_get(relay.admin, "/metrics").await.1;
    assert_eq!(metric(&text, "trackway_relay_dead_letters_total{reason=\"rejected\"}"), 2.0, "{text}");
    assert_eq!(metric(&text, "trackway_relay_acks_total"), 400.0, "{text}");
    relay.stop().await.expect("clean stop");
}

/// An entry held (refused alone, with no commit since to judge it by) stays pending on this relay, so its
/// own claim sweep reads it again: it is sent once, not once more per sweep. Each sweep used to add a copy
/// (one held entry became dozens, each refused alone again, and an unanswered statement counted an attempt
/// per copy); once another write commits it is dead-lettered once.
#[tokio::test]
async fn a_held_entry_read_again_by_the_claim_sweep_is_sent_once() {
    let db = fresh_database("relay_held_once").await;
    let client = connect(&db).await;
    client
        .batch_execute(
            "CREATE FUNCTION public.guard() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.device_id = 'held-x' THEN RAISE EXCEPTION 'device held-x is banned'; END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER guard BEFORE INSERT ON trackway.positions
               FOR EACH ROW EXECUTE FUNCTION public.guard();",
        )
        .await
        .expect("guard trigger");
    let stream = unique("heldonce");
    let mut conn = redis(&redis_url()).await;
    let id = xadd_payloads(&mut conn, &stream, &[position("held-x", 1)]).await.remove(0);
    let relay = start(&db, &stream, &["--claim-idle-ms", "1000"]).await;
    wait_metric(&relay, "trackway_relay_held_entries", 1.0).await;
    // Several claim sweeps' worth of time with nothing else to store.
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let text = http_get(relay.admin, "/metrics").await.1;
        let held = metric(&text, "trackway_relay_held_entries");
        assert!(held <= 1.0, "one entry held {held} times");
    }
    let text = http_get(relay.admin, "/metrics").await.1;
    assert!(metric(&text, "trackway_relay_entries_read_total{source=\"claimed\"}") >= 1.0, "swept: {text}");
    xadd_payloads(&mut conn, &stream, &[position("held-good", 2)]).await;
    wait_drained(&mut conn, &stream, "trackway", Duration::from_secs(30)).await;
    let dead = read_all(&mut conn, &format!("{stream}:dead")).await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(
        (dead[0].1["trackway.source_id"].as_str(), dead[0].1["trackway.reason"].as_str()),
        (id.as_str(), "rejected")
    );
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, 1);
    relay.stop().await.expect("clean stop");
}

/// Backends of database `db` (other than the asking one) running an `ingest_batch` statement.
async fn ingest_backends(client: &tokio_postgres::Client, db: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = $1 AND state = 'active' AND query LIKE '%ingest_batch%' AND pid <> pg_backend_pid()",
            &[&db],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// A trigger that makes every statement storing more than 8 rows sleep for a minute: big batches never
/// finish in time, small ones do.
async fn slow_big_statements(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "CREATE FUNCTION public.slow_when_big() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF (SELECT count(*) FROM new_rows) > 8 THEN
                 PERFORM pg_sleep(60);
               END IF;
               RETURN NULL;
             END $$;
             CREATE TRIGGER slow_when_big AFTER INSERT ON trackway.positions
               REFERENCING NEW TABLE AS new_rows
               FOR EACH STATEMENT EXECUTE FUNCTION public.slow_when_big();",
        )
        .await
        .expect("slow trigger");
}

/// Stores 100 entries in batches of 50 while statements of more than 8 rows never finish in time (limited by
/// `extra` flags or the database's settings); then checks that everything was stored, nothing dead-lettered,
/// `sqlstate` refusals counted, and no backend is left running an abandoned statement.
async fn big_batches_time_out_and_are_split(db: &str, sqlstate: &str, extra: &[&str]) {
    let client = connect(db).await;
    let stream = unique(&format!("timeout-{sqlstate}"));
    let mut conn = redis(&redis_url()).await;
    let payloads: Vec<String> = (0..100).map(|i| position(&format!("slow-{}", i % 3), i)).collect();
    xadd_payloads(&mut conn, &stream, &payloads).await;
    let mut flags = vec!["--batch-size", "50"];
    flags.extend_from_slice(extra);
    let relay = start(db, &stream, &flags).await;
    wait_drained(&mut conn, &stream, "trackway", Duration::from_secs(90)).await;
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, 100);
    assert!(read_all(&mut conn, &format!("{stream}:dead")).await.is_empty(), "dead letters");
    let text = http_get(relay.admin, "/metrics").await.1;
    assert!(metric(&text, &format!("trackway_relay_refusals_total{{sqlstate=\"{sqlstate}\"}}")) >= 1.0, "{text}");
    assert!(metric(&text, "trackway_relay_batches_total{outcome=\"split\"}") >= 1.0, "{text}");
    // Every timed-out statement was cancelled on the server: no backend keeps sleeping in one.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let running = ingest_backends(&client, db).await;
        if running == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{running} backends still run abandoned ingest_batch calls");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    relay.stop().await.expect("clean stop");
}

/// Batches that hit the server's `statement_timeout` (57014) are split until they fit, not retried whole
/// forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_hitting_statement_timeout_are_split_until_they_fit() {
    let db = fresh_database("relay_statement_timeout").await;
    let client = connect(&db).await;
    slow_big_statements(&client).await;
    client.batch_execute(&format!("ALTER DATABASE {db} SET statement_timeout = '300ms'")).await.expect("timeout");
    big_batches_time_out_and_are_split(&db, "57014", &[]).await;
}

/// When the relay's own bound (`--ingest-timeout-ms`) expires, it cancels the statement on the server
/// (otherwise the backend would sleep on for a minute) and splits the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_own_timeout_cancels_the_statement_and_splits_the_batch() {
    let db = fresh_database("relay_own_timeout").await;
    slow_big_statements(&connect(&db).await).await;
    big_batches_time_out_and_are_split(&db, "timeout", &["--ingest-timeout-ms", "500"]).await;
}

/// Memory is bounded by bytes: with a read budget of 4 MiB, 20 entries of 900 KiB are read at most five at
/// a time (the budget plus the entry that crosses it) and all stored; a 2 MiB payload is dead-lettered as
/// `invalid` by the relay itself, without a database round trip (the extension's `invalid` count stays 0).
#[tokio::test]
async fn reads_are_bounded_by_bytes_and_oversized_payloads_never_reach_the_database() {
    let db = fresh_database("relay_bytes").await;
    let stream = unique("bytes");
    let mut conn = redis(&redis_url()).await;
    let blob = "x".repeat(900 << 10);
    let payloads: Vec<String> = (0..20)
        .map(|i| {
            format!(
                r#"{{"deviceId":"big-{}","timestamp":"2026-11-29T00:00:{i:02}.000Z","latitude":54.7,"longitude":25.3,"attributes":{{"blob":"{blob}"}}}}"#,
                i % 3
            )
        })
        .collect();
    xadd_payloads(&mut conn, &stream, &payloads).await;
    let huge = format!(r#"{{"deviceId":"huge","note":"{}"}}"#, "x".repeat(2 << 20));
    let huge_id = xadd_fields(&mut conn, &stream, &[("payload", huge.as_bytes())]).await;
    let budget = 4 << 20;
    let relay = start(&db, &stream, &["--batch-bytes", &budget.to_string()]).await;
    wait_drained(&mut conn, &stream, "trackway", Duration::from_secs(60)).await;

    // Counted once Redis has answered the settle call (see claim_sweeps_are_bounded_by_bytes).
    let text = wait_metric(&relay, "trackway_relay_dead_letters_total{reason=\"invalid\"}", 1.0).await;
    let batches = metric(&text, "trackway_relay_batch_size_count");
    assert!(batches >= 5.0, "{text}");
    assert_eq!(metric(&text, "trackway_relay_batch_size_bucket{le=\"8\"}"), batches, "a batch above 8 entries: {text}");
    let largest_entry = (huge.len() + "payload".len()) as f64;
    assert!(metric(&text, "trackway_relay_batch_bytes_peak") <= budget as f64 + largest_entry, "{text}");
    assert_eq!(metric(&text, "trackway_relay_rows_total{status=\"invalid\"}"), 0.0, "sent to the database: {text}");
    assert_eq!(metric(&text, "trackway_relay_dead_letters_total{reason=\"invalid\"}"), 1.0, "{text}");
    let client = connect(&db).await;
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, 20);
    let dead = read_all(&mut conn, &format!("{stream}:dead")).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1["trackway.source_id"], huge_id);
    assert!(dead[0].1["trackway.error"].contains("above the limit"), "{:?}", dead[0].1);
    relay.stop().await.expect("clean stop");
    let _: () = redis::cmd("DEL").arg(&stream).arg(format!("{stream}:dead")).query_async(&mut conn).await.expect("DEL");
}

/// A metrics check of a sample that is not there (a metric removed or renamed) fails instead of reading 0.
#[test]
#[should_panic(expected = "is not in /metrics")]
fn a_check_of_a_missing_metric_fails() {
    let text = "# TYPE trackway_relay_acks_total counter\ntrackway_relay_acks_total 3\n";
    assert_eq!(metric(text, "trackway_relay_acks_total"), 3.0);
    metric(text, "trackway_relay_acked_total");
}

/// A batch of one entry has no sibling to prove the database works, so a lone refused entry is never judged
/// on its own evidence: it is held (pending, retried with backoff) while the database refuses everything,
/// and stored when it stops; a lone entry that the server refuses for what it is (a banned device) is held
/// too, until later entries commit, and only then dead-lettered as `rejected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_entry_is_never_judged_on_its_own_evidence() {
    let db = fresh_database("relay_lone").await;
    let client = connect(&db).await;
    client
        .batch_execute(
            "CREATE TABLE public.refuse_flag (refusing boolean NOT NULL);
             INSERT INTO public.refuse_flag VALUES (true);
             CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF (SELECT refusing FROM public.refuse_flag) THEN
                 RAISE EXCEPTION 'notify queue full (simulated)' USING ERRCODE = '54000';
               ELSIF NEW.device_id = 'lone-poison' THEN
                 RAISE EXCEPTION 'device lone-poison is banned';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON trackway.positions
               FOR EACH ROW EXECUTE FUNCTION public.refuse();",
        )
        .await
        .expect("refusing trigger");
    let stream = unique("lone");
    let mut conn = redis(&redis_url()).await;
    let relay = start(&db, &stream, &[]).await;

    // One good entry while every write is refused: tried again and again, never dead-lettered.
    xadd_payloads(&mut conn, &stream, &[position("lone-good", 0)]).await;
    wait_metric(&relay, "trackway_relay_refusals_total{sqlstate=\"54000\"}", 3.0).await;
    let state = trackway_tests::relay::group_state(&mut conn, &stream, "trackway").await;
    assert_eq!(state, Some((1, Some(0))), "the lone entry stays pending");
    assert!(read_all(&mut conn, &format!("{stream}:dead")).await.is_empty());
    client.batch_execute("UPDATE public.refuse_flag SET refusing = false").await.expect("clear the flag");
    wait_drained(&mut conn, &stream, "trackway", Duration::from_secs(30)).await;
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, 1);

    // One poison entry alone: held, not judged, until other entries commit after its refusal.
    let poison = xadd_payloads(&mut conn, &stream, &[position("lone-poison", 1)]).await.remove(0);
    wait_metric(&relay, "trackway_relay_refusals_total{sqlstate=\"P0001\"}", 2.0).await;
    let state = trackway_tests::relay::group_state(&mut conn, &stream, "trackway").await;
    assert_eq!(state, Some((1, Some(0))), "the lone poison entry is held, not judged");
    assert!(read_all(&mut conn, &format!("{stream}:dead")).await.is_empty());
    let good: Vec<String> = (2..7).map(|i| position("lone-good", i)).collect();
    xadd_payloads(&mut conn, &stream, &good).await;
    wait_drained(&mut conn, &stream, "trackway", Duration::from_secs(30)).await;
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, 6);
    let dead = read_all(&mut conn, &format!("{stream}:dead")).await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(
        (dead[0].1["trackway.source_id"].as_str(), dead[0].1["trackway.reason"].as_str()),
        (poison.as_str(), "rejected")
    );
    relay.stop().await.expect("clean stop");
}

/// Claim sweeps are bounded by bytes too: eight 3 MiB entries left pending by a dead consumer are taken
/// over at most two at a time with a 4 MiB budget (the budget plus the entry that crosses it), and
/// dead-lettered as too large.
#[tokio::test]
async fn claim_sweeps_are_bounded_by_bytes() {
    let db = fresh_database("relay_claim_bytes").await;
    let stream = unique("claimbytes");
    let mut conn = redis(&redis_url()).await;
    create_group(&mut conn, &stream).await;
    let huge = format!(r#"{{"deviceId":"huge","note":"{}"}}"#, "x".repeat(3 << 20));
    for _ in 0..8 {
        xadd_fields(&mut conn, &stream, &[("payload", huge.as_bytes())]).await;
    }
    read_as(&mut conn, &stream, "dead-one", ">").await;
    let budget = 4 << 20;
    let relay = start(
        &db,
        &stream,
        &["--claim-idle-ms", "1000", "--consumer", "rescuer", "--batch-bytes", &budget.to_string()],
    )
    .await;
    wait_drained(&mut conn, &stream, "trackway", Duration::from_secs(60)).await;
    // The relay counts a dead letter once Redis has answered the settle call that also acknowledged it:
    // a drained stream may be seen a moment before the counter moves.
    let text = wait_metric(&relay, "trackway_relay_dead_letters_total{reason=\"invalid\"}", 8.0).await;
    assert_eq!(metric(&text, "trackway_relay_entries_read_total{source=\"claimed\"}"), 8.0, "{text}");
    let entry = (huge.len() + "payload".len()) as f64;
    assert!(metric(&text, "trackway_relay_batch_bytes_peak") <= budget as f64 + entry, "{text}");
    assert_eq!(metric(&text, "trackway_relay_dead_letters_total{reason=\"invalid\"}"), 8.0, "{text}");
    relay.stop().await.expect("clean stop");
    let _: () = redis::cmd("DEL").arg(&stream).arg(format!("{stream}:dead")).query_async(&mut conn).await.expect("DEL");
}

/// Fills the 16 shards of `stream` (`<stream>:{i}`), each device's positions in its shard; returns the
/// shard keys and, per payload, its shard key and entry id.
async fn fill_shards(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    payloads: &[(String, String)],
) -> (Vec<String>, Vec<(String, String)>) {
    let keys: Vec<String> = (0..16).map(|i| format!("{stream}:{{{i}}}")).collect();
    let mut placed = Vec::new();
    for (device, payload) in payloads {
        let key = &keys[trackway_wire::shard::shard_of(device, 16) as usize];
        let id = xadd_payloads(conn, key, std::slice::from_ref(payload)).await.remove(0);
        placed.push((key.clone(), id));
    }
    (keys, placed)
}

/// Asserts that of the shards `keys` only the shard of entry `(key, id)` has a dead letter: one, for that
/// entry, with `reason`.
async fn assert_only_dead_letter(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
    (key, id): (&str, &str),
    reason: &str,
) {
    for shard in keys {
        let dead = read_all(conn, &format!("{shard}:dead")).await;
        if shard == key {
            assert_eq!(dead.len(), 1, "{dead:#?}");
            assert_eq!(dead[0].1["trackway.source_id"], id);
            assert_eq!(dead[0].1["trackway.reason"], reason);
        } else {
            assert!(dead.is_empty(), "{shard}: {dead:#?}");
        }
    }
}

/// Slows every statement into `trackway.positions` by 100 ms (a statement-level trigger), so that batches
/// asked to be stored meanwhile queue up.
async fn slow_statements(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "CREATE FUNCTION public.slow() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_sleep(0.1); RETURN NULL; END $$;
             CREATE TRIGGER slow AFTER INSERT ON trackway.positions
               FOR EACH STATEMENT EXECUTE FUNCTION public.slow();",
        )
        .await
        .expect("slow trigger");
}

/// A sharded stream's consumers share their statements (group commit): while statements are slow, the
/// batches of 16 shards queue and go to the database together, in fewer statements than batches; each
/// consumer gets its own statuses back (every position stored once, every entry acknowledged once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_streams_batches_share_statements() {
    let db = fresh_database("relay_combine").await;
    let client = connect(&db).await;
    slow_statements(&client).await;
    let stream = unique("combine");
    let mut conn = redis(&redis_url()).await;
    let payloads: Vec<(String, String)> =
        (0..64).map(|d| format!("c-{d}")).map(|d| (d.clone(), position(&d, 1))).collect();
    let (keys, _) = fill_shards(&mut conn, &stream, &payloads).await;
    let relay = start(&db, &stream, &["--stream-shards", "16"]).await;
    for key in &keys {
        wait_drained(&mut conn, key, "trackway", Duration::from_secs(60)).await;
    }
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, 64);
    let text = wait_metric(&relay, "trackway_relay_acks_total", 64.0).await;
    assert_eq!(metric(&text, "trackway_relay_acks_total"), 64.0, "{text}");
    assert_eq!(metric(&text, "trackway_relay_rows_total{status=\"inserted\"}"), 64.0, "{text}");
    let batches = metric(&text, "trackway_relay_batches_total{outcome=\"committed\"}");
    let statements = metric(&text, "trackway_relay_statements_total");
    assert!(batches >= 16.0, "one batch per shard at least: {text}");
    assert!(statements < batches, "{statements} statements for {batches} batches: nothing was combined");
    relay.stop().await.expect("clean stop");
}

/// A payload the server refuses in a statement shared by several shards' batches is dead-lettered alone
/// (`rejected`); the other shards' entries of that statement are stored, none of them dead-lettered: a
/// combined refusal sends each batch alone before anything is judged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_in_a_shared_statement_blames_only_its_own_entry() {
    let db = fresh_database("relay_combine_poison").await;
    let client = connect(&db).await;
    slow_statements(&client).await;
    client
        .batch_execute(
            "CREATE FUNCTION public.guard() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.device_id = 'poison-shared' THEN
                 RAISE EXCEPTION 'device poison-shared is banned';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER guard BEFORE INSERT ON trackway.positions
               FOR EACH ROW EXECUTE FUNCTION public.guard();",
        )
        .await
        .expect("guard trigger");
    let stream = unique("combinepoison");
    let mut conn = redis(&redis_url()).await;
    let mut payloads: Vec<(String, String)> =
        (0..64).map(|d| format!("c-{d}")).map(|d| (d.clone(), position(&d, 1))).collect();
    payloads.push(("poison-shared".to_owned(), position("poison-shared", 1)));
    let (keys, placed) = fill_shards(&mut conn, &stream, &payloads).await;
    let relay = start(&db, &stream, &["--stream-shards", "16"]).await;
    let (poison_key, poison_id) = placed.last().expect("the poison entry").clone();
    // The poison is judged once it was refused alone, some write committed rows after that, and it was
    // refused alone again: positions keep coming to the other shards until then (a quiet shard's entry is
    // judged by the other shards' commits).
    let mut sent = 64;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while trackway_tests::relay::group_state(&mut conn, &poison_key, "trackway").await != Some((0, Some(0))) {
        assert!(std::time::Instant::now() < deadline, "the poison entry was never judged");
        let device = format!("c-{}", sent % 64);
        let more = vec![(device.clone(), position(&device, sent))];
        fill_shards(&mut conn, &stream, &more).await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for key in &keys {
        wait_drained(&mut conn, key, "trackway", Duration::from_secs(60)).await;
    }
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, sent as i64);
    assert_only_dead_letter(&mut conn, &keys, (&poison_key, &poison_id), "rejected").await;
    let text = wait_metric(&relay, "trackway_relay_acks_total", sent as f64 + 1.0).await;
    assert_eq!(metric(&text, "trackway_relay_dead_letters_total{reason=\"rejected\"}"), 1.0, "{text}");
    relay.stop().await.expect("clean stop");
}

/// A payload whose statement never gets an answer (the connection dies with it, as if its server process
/// had died of it: a proxy closes every connection carrying it) travels in statements shared with other
/// shards' batches. Those are retried alone, stored and settled, none dead-lettered; only the killer is,
/// as `max_deliveries`, after that many unanswered attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_kills_its_statement_takes_no_other_shards_batch_with_it() {
    let db = fresh_database("relay_combine_killer").await;
    let client = connect(&db).await;
    slow_statements(&client).await;
    let proxy = trackway_tests::proxy::Proxy::to_test_server().await;
    proxy.cut_carrying(b"killer-k");
    let stream = unique("combinekiller");
    let mut conn = redis(&redis_url()).await;
    // The killer alone in its shard, so that only statements carry it that other shards' batches join.
    let killer_shard = trackway_wire::shard::shard_of("killer-k", 16);
    let mut payloads: Vec<(String, String)> = (0..80)
        .map(|d| format!("c-{d}"))
        .filter(|d| trackway_wire::shard::shard_of(d, 16) != killer_shard)
        .map(|d| (d.clone(), position(&d, 1)))
        .collect();
    let good = payloads.len();
    payloads.push(("killer-k".to_owned(), position("killer-k", 1)));
    let (keys, placed) = fill_shards(&mut conn, &stream, &payloads).await;
    let mut args = flags(&db, &stream, &["--stream-shards", "16", "--max-deliveries", "3"]);
    args[1] = proxy.database(&db);
    let relay = InProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    for key in &keys {
        wait_drained(&mut conn, key, "trackway", Duration::from_secs(90)).await;
    }
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, good as i64);
    let (killer_key, killer_id) = placed.last().expect("the killer entry").clone();
    assert_only_dead_letter(&mut conn, &keys, (&killer_key, &killer_id), "max_deliveries").await;
    let text = wait_metric(&relay, "trackway_relay_acks_total", good as f64 + 1.0).await;
    assert_eq!(metric(&text, "trackway_relay_dead_letters_total{reason=\"max_deliveries\"}"), 1.0, "{text}");
    relay.stop().await.expect("clean stop");
}

/// A store attempt is counted once however often its call reaches Redis. A cluster client re-sends a
/// command whose reply it lost (the relay's cluster links retry), and `attempts.lua` used to add its count
/// again: an entry whose statements got no answer would reach `--max-deliveries` and be dead-lettered an
/// attempt early. The same call sent twice (what a retry sends) now counts once; a new call, or a consumer
/// started again under the same name, counts as it should.
#[tokio::test]
async fn a_store_attempt_counts_once_however_often_its_call_reaches_redis() {
    use trackway_redis::{Endpoint, Group, Link, StreamNames};
    let stream = unique("attempt_calls");
    let names = StreamNames {
        stream: stream.clone(),
        group: "trackway".into(),
        consumer: "relay-a".into(),
        dead_letter: format!("{stream}:dead"),
        attempts: format!("{stream}:attempts"),
        payload_field: "payload".into(),
    };
    let endpoint = Endpoint::parse(&redis_url(), false).expect("redis url");
    let mut link = Link::new(endpoint, Duration::from_secs(1)).expect("link");
    let group = Group::new(names.clone());
    let ids = ["1-1", "1-2"];
    let call = group.new_call();
    let counts = group.count_attempts_in(&mut link, &call, &ids, 1).await.expect("count");
    assert_eq!(counts, [1, 1], "first attempt");
    let again = group.count_attempts_in(&mut link, &call, &ids, 1).await.expect("count again");
    assert_eq!(again, [1, 1], "the same call re-sent (a retry) counted again");
    let next = group.count_attempts(&mut link, &ids[..1], 1).await.expect("next attempt");
    assert_eq!(next, [2], "a new call counts");
    // A consumer started again under the same name: its first call is no repeat of the last one's.
    let restarted = Group::new(names);
    let counted = restarted.count_attempts(&mut link, &ids[1..], 1).await.expect("after a restart");
    assert_eq!(counted, [2], "a restarted consumer's call");
    // Taking an answered attempt back works the same way.
    let back = restarted.new_call();
    for _ in 0..2 {
        let taken = restarted.count_attempts_in(&mut link, &back, &ids, -1).await.expect("take back");
        assert_eq!(taken, [1, 1], "one attempt each taken back, once");
    }
}
