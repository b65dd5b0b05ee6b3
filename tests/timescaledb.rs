//! The extension inside TimescaleDB, on a private cluster that preloads `timescaledb`: a hypertable when
//! TimescaleDB is there at `CREATE EXTENSION` time, `make_hypertable()` when it comes later, and the same
//! ingest, latest-position and NOTIFY behaviour on the hypertable.
//!
//! They run on the binaries of the tested server: the PostgreSQL 17 of `scripts/pg17` with Debian 13's
//! TimescaleDB 2.19.3 (`TRACKWAY_TEST_PG_BIN`/`TRACKWAY_TEST_PG_ROOT`, see `common/servers.rs`), or a
//! PostgreSQL 15 where a TimescaleDB happens to be installed. Where TimescaleDB is not installed they fail:
//! a test that skipped itself would check nothing (`scripts/test` runs this suite only on servers that have
//! it). Compression needs TimescaleDB's Timescale-licensed part, which Apache-only builds such as Debian's
//! lack: `scripts/test` runs the compression test only where the build has it and otherwise says, in one
//! line, that compression was not checked on that server.

use std::time::Duration;

use trackway_tests::{
    connect_to, entries_of, fresh_database_with, is_hypertable,
    servers::{pg_bin, pg_extension_installed, PgCluster, TIMESCALEDB_PRELOAD},
    shared_data, Listener, Storage,
};

/// A private cluster of the tested server's binaries that preloads TimescaleDB; fails where it is missing.
fn cluster() -> PgCluster {
    assert!(
        pg_extension_installed("timescaledb"),
        "TimescaleDB is not installed for the PostgreSQL in {} (these tests need it; see the file's header)",
        pg_bin()
    );
    PgCluster::start_with(TIMESCALEDB_PRELOAD)
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

async fn ingest_samples(client: &tokio_postgres::Client) -> Vec<String> {
    let lines = shared_data("positions-valid.jsonl");
    let rows = client
        .query("SELECT status FROM trackway.ingest_batch($1)", &[&lines])
        .await
        .expect("ingest_batch on a hypertable");
    rows.iter().map(|r| r.get::<_, String>(0)).collect()
}

#[tokio::test]
async fn positions_is_a_hypertable_and_ingest_notify_and_latest_work_on_it() {
    let pg = cluster();
    let admin = connect_to(&pg.server(), "postgres").await;
    admin.batch_execute("CREATE DATABASE tsdb").await.expect("create database");
    let client = connect_to(&pg.server(), "tsdb").await;
    client.batch_execute("CREATE EXTENSION timescaledb; CREATE EXTENSION trackway").await.expect("extensions");
    assert!(is_hypertable(&client).await, "positions must be a hypertable when TimescaleDB is present");

    let mut listener = Listener::start_on(&pg.server(), "tsdb").await;
    let statuses = ingest_samples(&client).await;
    assert_eq!(statuses.iter().filter(|s| *s == "inserted").count(), 205);
    assert_eq!(statuses.iter().filter(|s| *s == "duplicate").count(), 3);
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, 205);
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.latest_positions").await, 5);
    assert!(
        count(&client, "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'positions'").await
            >= 1
    );
    let announced = listener.entries(Duration::from_millis(500)).await;
    assert_eq!(announced.len(), 205, "each new row announced once");

    // Again: the optimistic plain INSERT into the chunk meets unique_violation, the batch is stored again
    // with ON CONFLICT, and nothing is added or announced.
    let statuses = ingest_samples(&client).await;
    assert!(statuses.iter().all(|s| s == "duplicate"), "{statuses:?}");
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, 205);
    assert_eq!(listener.entries(Duration::from_millis(500)).await.len(), 0);

    // A plain INSERT into the hypertable fires the statement trigger too; a duplicate does not.
    client
        .batch_execute(
            "INSERT INTO trackway.positions (device_id, ts, latitude, longitude) \
                        VALUES ('tsdb-1', '2026-11-28T00:00:00Z', 54.7, 25.3)",
        )
        .await
        .expect("plain insert");
    client
        .batch_execute(
            "INSERT INTO trackway.positions (device_id, ts, latitude, longitude) \
                        VALUES ('tsdb-1', '2026-11-28T00:00:00Z', 54.7, 25.3) ON CONFLICT DO NOTHING",
        )
        .await
        .expect("duplicate insert");
    let announced: Vec<serde_json::Value> =
        listener.drain(Duration::from_millis(500)).await.iter().flat_map(|p| entries_of(p)).collect();
    assert_eq!(announced.len(), 1, "{announced:?}");
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.latest_positions WHERE device_id = 'tsdb-1'").await, 1);
}

#[tokio::test]
async fn make_hypertable_converts_an_existing_table_with_its_rows() {
    let pg = cluster();
    let db = fresh_database_with(&pg.server(), "later", Storage::Plain).await;
    let client = connect_to(&pg.server(), &db).await;
    ingest_samples(&client).await;
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, 205);

    client.batch_execute("CREATE EXTENSION timescaledb").await.expect("timescaledb");
    assert!(!is_hypertable(&client).await);
    client.batch_execute("SELECT trackway.make_hypertable(interval '1 hour')").await.expect("make_hypertable");
    client.batch_execute("SELECT trackway.make_hypertable()").await.expect("make_hypertable again is a no-op");
    assert!(is_hypertable(&client).await);
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, 205, "rows migrated");
    let statuses = ingest_samples(&client).await;
    assert!(statuses.iter().all(|s| s == "duplicate"), "uniqueness holds on the hypertable: {statuses:?}");
}

/// On the hypertable too, the database assigns the cursor columns of a plain INSERT and COPY (row trigger on
/// the chunks), refuses a time too far ahead, and a bulk statement sends one summary.
#[tokio::test]
async fn the_row_trigger_and_summaries_work_on_the_hypertable() {
    let pg = cluster();
    let admin = connect_to(&pg.server(), "postgres").await;
    admin.batch_execute("CREATE DATABASE tsdb_rows").await.expect("create database");
    let client = connect_to(&pg.server(), "tsdb_rows").await;
    client.batch_execute("CREATE EXTENSION timescaledb; CREATE EXTENSION trackway").await.expect("extensions");
    assert!(is_hypertable(&client).await);
    client
        .batch_execute(
            "INSERT INTO trackway.positions (device_id, ts, latitude, longitude, ingest_xid, ingest_seq)
             VALUES ('h', '2026-11-28T00:00:00Z', 54.7, 25.3, '3', 999)",
        )
        .await
        .expect("plain insert");
    assert_eq!(
        count(&client, "SELECT count(*) FROM trackway.positions WHERE ingest_xid = '3' OR ingest_seq = 999").await,
        0,
        "cursor columns set by hand on a chunk"
    );
    let error = client
        .batch_execute(
            "INSERT INTO trackway.positions (device_id, ts, latitude, longitude) VALUES ('h', now() + interval '3 days', 1, 2)",
        )
        .await
        .expect_err("a future time is refused on the hypertable");
    assert!(error.as_db_error().expect("server error").message().starts_with("timestamp: "), "{error:?}");

    let mut listener = Listener::start_on(&pg.server(), "tsdb_rows").await;
    client.batch_execute("SET trackway.announce_max_rows = 10").await.expect("set");
    client
        .batch_execute(
            "INSERT INTO trackway.positions (device_id, ts, latitude, longitude)
             SELECT 'b', timestamptz '2026-11-10 00:00:00+00' + g * interval '1 hour', 1, 2 FROM generate_series(1, 300) g",
        )
        .await
        .expect("bulk insert over several chunks");
    let raw = listener.drain(Duration::from_millis(500)).await;
    assert_eq!(raw.len(), 1, "one summary: {raw:?}");
    assert!(raw[0].contains(r#""omitted":{"rows":300,"reason":"bulk""#), "{}", raw[0]);
}

/// TimescaleDB usually lives in `public`; a function of the same name planted there (which a more specific
/// signature would make PostgreSQL prefer) must never run in its place.
#[tokio::test]
async fn make_hypertable_refuses_planted_overloads() {
    let pg = cluster();
    let db = fresh_database_with(&pg.server(), "planted", Storage::Plain).await;
    let client = connect_to(&pg.server(), &db).await;
    client
        .batch_execute(
            "CREATE EXTENSION timescaledb;
             CREATE TABLE planted_ran (at timestamptz);
             CREATE FUNCTION public.by_range(column_name name, partition_interval interval, partition_func regproc DEFAULT NULL)
                 RETURNS _timescaledb_internal.dimension_info LANGUAGE plpgsql
                 AS $$ BEGIN INSERT INTO planted_ran VALUES (now()); RETURN NULL; END $$;
             -- More specific than TimescaleDB's (chunk_time_interval anyelement): a call with named
             -- arguments would pick it.
             CREATE FUNCTION public.create_hypertable(relation regclass, time_column_name name,
                     chunk_time_interval interval, if_not_exists boolean, migrate_data boolean)
                 RETURNS void LANGUAGE plpgsql
                 AS $$ BEGIN INSERT INTO planted_ran VALUES (now()); END $$;",
        )
        .await
        .expect("plant");
    let error = client.batch_execute("SELECT trackway.make_hypertable()").await.expect_err("refused");
    let db_error = error.as_db_error().expect("server error");
    assert_eq!(db_error.code().code(), "42501", "{db_error:?}");
    assert!(db_error.message().contains("by_range"), "{}", db_error.message());
    assert!(db_error.message().contains("create_hypertable"), "{}", db_error.message());
    assert_eq!(count(&client, "SELECT count(*) FROM planted_ran").await, 0);
    assert!(!is_hypertable(&client).await);
    // The threat is real: the call make_hypertable used to make (named arguments, untyped interval) runs
    // the planted function.
    client
        .batch_execute(
            "SELECT public.create_hypertable('trackway.positions'::regclass, 'ts'::name,
                 chunk_time_interval => interval '1 day', if_not_exists => true, migrate_data => true)",
        )
        .await
        .expect("old-style call");
    assert_eq!(count(&client, "SELECT count(*) FROM planted_ran").await, 1, "the planted overload wins");
    client
        .batch_execute(
            "DROP FUNCTION public.by_range(name, interval, regproc);
             DROP FUNCTION public.create_hypertable(regclass, name, interval, boolean, boolean)",
        )
        .await
        .expect("drop");
    client.batch_execute("SELECT trackway.make_hypertable()").await.expect("make_hypertable");
    assert!(is_hypertable(&client).await);
}

/// Retention on the hypertable (`drop_chunks`, what a retention policy runs): old rows go, cursors taken
/// before keep paging through what is left to the end, ingest and its trigger keep working, and the latest
/// position of a device whose rows were all dropped stays known.
#[tokio::test]
async fn retention_by_drop_chunks_keeps_cursors_and_ingest_working() {
    let pg = cluster();
    let admin = connect_to(&pg.server(), "postgres").await;
    admin.batch_execute("CREATE DATABASE tsretention").await.expect("create database");
    let client = connect_to(&pg.server(), "tsretention").await;
    client.batch_execute("CREATE EXTENSION timescaledb; CREATE EXTENSION trackway").await.expect("extensions");
    assert!(is_hypertable(&client).await);
    let payload = |device: &str, day: u32, second: u32| {
        format!(
            r#"{{"deviceId":"{device}","timestamp":"2026-11-{day:02}T10:00:{second:02}Z","latitude":54.7,"longitude":25.3}}"#
        )
    };
    let ingest = |payloads: Vec<String>| {
        let client = &client;
        async move {
            let rows =
                client.query("SELECT status FROM trackway.ingest_batch($1)", &[&payloads]).await.expect("ingest");
            assert!(rows.iter().all(|r| r.get::<_, String>(0) == "inserted"));
        }
    };
    let before: String = client.query_one("SELECT trackway.current_cursor()", &[]).await.expect("cursor").get(0);
    ingest((0..30).map(|s| payload("old", 1, s)).collect()).await;
    ingest((0..30).map(|s| payload("kept", 25, s)).collect()).await;
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, 60);

    let dropped = count(
        &client,
        "SELECT count(*) FROM drop_chunks('trackway.positions', older_than => timestamptz '2026-11-20')",
    )
    .await;
    assert!(dropped >= 1, "a chunk of November 1 was dropped");
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, 30);
    // A cursor from before the dropped rows pages through what is left, to the end.
    let mut cursor = before;
    let mut seen = Vec::new();
    loop {
        let rows = client
            .query("SELECT cursor, device_id FROM trackway.positions_since($1, NULL, 7)", &[&cursor])
            .await
            .expect("positions_since after drop_chunks");
        if rows.is_empty() {
            break;
        }
        cursor = rows.last().expect("row").get(0);
        seen.extend(rows.iter().map(|r| r.get::<_, String>(1)));
    }
    assert_eq!(seen.len(), 30);
    assert!(seen.iter().all(|d| d == "kept"));
    // Ingest (and its trigger) go on; the cursor from the end of the paging sees the new rows.
    ingest(vec![payload("old", 26, 0), payload("kept", 26, 0)]).await;
    let after: i64 =
        client.query_one("SELECT count(*) FROM trackway.positions_since($1)", &[&cursor]).await.expect("after").get(0);
    assert_eq!(after, 2);
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.latest_positions").await, 2);
}

/// Fails, naming the build, where this TimescaleDB has no compression (the Timescale-licensed part):
/// `scripts/test` runs the compression test only where it has.
async fn require_compression(client: &tokio_postgres::Client) {
    let license: String =
        client.query_one("SELECT current_setting('timescaledb.license')", &[]).await.expect("license").get(0);
    assert_eq!(
        license, "timescale",
        "TimescaleDB here is an Apache-only build, without compression: skip this test on it \
         (--skip compression; scripts/test does)"
    );
}

/// `n` wire-format payloads of `device`, one per second from `start` (an SQL timestamptz expression), made
/// in SQL so the times can follow the clock (compression policies work relative to now()).
const PAYLOADS_FROM: &str = "SELECT array_agg(json_build_object('deviceId', $1::text, \
    'timestamp', to_char((start + s * interval '1 second') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
    'latitude', 54.7, 'longitude', 25.3 + s / 1000.0)::text ORDER BY s) \
    FROM generate_series(0, $3::int - 1) s, (SELECT $2::text::timestamptz AS start) t";

/// Compression on the hypertable, by the policy an operator would add (segment by device, newest first):
/// old chunks are compressed, and cursors taken before page through them to the end; ingest into a
/// compressed chunk still tells retransmissions (`duplicate`) from late rows (`inserted`, announced once,
/// cursor columns assigned by the row trigger), and the latest position is kept.
#[tokio::test]
async fn compression_keeps_cursors_ingest_and_the_triggers_working() {
    let pg = cluster();
    let admin = connect_to(&pg.server(), "postgres").await;
    admin.batch_execute("CREATE DATABASE tscompress").await.expect("create database");
    let client = connect_to(&pg.server(), "tscompress").await;
    client.batch_execute("CREATE EXTENSION timescaledb; CREATE EXTENSION trackway").await.expect("extensions");
    require_compression(&client).await;
    let old_start: String =
        client.query_one("SELECT (now() - interval '30 days')::text", &[]).await.expect("time").get(0);
    let new_start: String =
        client.query_one("SELECT (now() - interval '1 hour')::text", &[]).await.expect("time").get(0);
    let ingest = |device: &'static str, start: String, n: i32| {
        let client = &client;
        async move {
            let rows = client
                .query(&format!("SELECT status FROM trackway.ingest_batch(({PAYLOADS_FROM}))"), &[&device, &start, &n])
                .await
                .expect("ingest_batch");
            rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>()
        }
    };
    let before: String = client.query_one("SELECT trackway.current_cursor()", &[]).await.expect("cursor").get(0);
    assert!(ingest("old", old_start.clone(), 40).await.iter().all(|s| s == "inserted"));
    assert!(ingest("new", new_start.clone(), 20).await.iter().all(|s| s == "inserted"));

    client
        .batch_execute(
            "ALTER TABLE trackway.positions SET (timescaledb.compress, \
               timescaledb.compress_segmentby = 'device_id', timescaledb.compress_orderby = 'ts DESC')",
        )
        .await
        .expect("enable compression");
    let job: i32 = client
        .query_one("SELECT add_compression_policy('trackway.positions', compress_after => interval '7 days')", &[])
        .await
        .expect("add_compression_policy")
        .get(0);
    client.batch_execute(&format!("CALL run_job({job})")).await.expect("run the compression job");
    let compressed = |flag: bool| {
        format!(
            "SELECT count(*) FROM timescaledb_information.chunks \
             WHERE hypertable_schema = 'trackway' AND hypertable_name = 'positions' AND is_compressed = {flag}"
        )
    };
    assert_eq!(count(&client, &compressed(true)).await, 1, "the old chunk is compressed");
    assert!(count(&client, &compressed(false)).await >= 1, "the recent chunk is not");
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.positions").await, 60);

    // A cursor from before pages through the compressed and the plain chunk alike, each row once.
    let page_all = |mut cursor: String| {
        let client = &client;
        async move {
            let mut seen = Vec::new();
            loop {
                let rows = client
                    .query("SELECT cursor, device_id, ts::text FROM trackway.positions_since($1, NULL, 7)", &[&cursor])
                    .await
                    .expect("positions_since over a compressed chunk");
                let Some(last) = rows.last() else { return (cursor, seen) };
                cursor = last.get(0);
                seen.extend(rows.iter().map(|r| (r.get::<_, String>(1), r.get::<_, String>(2))));
            }
        }
    };
    let (end, seen) = page_all(before).await;
    assert_eq!(seen.len(), 60);
    let distinct: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), 60, "no row twice");

    // Into the compressed chunk: retransmissions are duplicates, a late row is inserted and announced once.
    let mut listener = Listener::start_on(&pg.server(), "tscompress").await;
    assert!(ingest("old", old_start.clone(), 40).await.iter().all(|s| s == "duplicate"), "retransmissions");
    assert_eq!(listener.entries(Duration::from_millis(500)).await.len(), 0, "a duplicate is not announced");
    let late: String = client
        .query_one("SELECT ($1::text::timestamptz + interval '100 seconds')::text", &[&old_start])
        .await
        .expect("time")
        .get(0);
    assert_eq!(ingest("old", late, 1).await, ["inserted"], "a late row into the compressed chunk");
    let announced = listener.entries(Duration::from_millis(500)).await;
    assert_eq!(announced.len(), 1, "{announced:?}");
    // A plain INSERT into the compressed range: the row trigger assigns the cursor columns.
    client
        .batch_execute(
            "INSERT INTO trackway.positions (device_id, ts, latitude, longitude, ingest_xid, ingest_seq) \
             VALUES ('other', now() - interval '29 days', 54.7, 25.3, '1', 1)",
        )
        .await
        .expect("plain insert into the compressed range");
    assert_eq!(listener.entries(Duration::from_millis(500)).await.len(), 1);
    let (_, after) = page_all(end).await;
    let devices: Vec<&str> = after.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(devices, ["old", "other"], "the cursor from the end sees exactly the two new rows: {after:?}");
    assert_eq!(
        count(&client, "SELECT count(*) FROM trackway.positions WHERE device_id = 'other' AND ingest_seq = 1").await,
        0,
        "the cursor columns a client wrote were replaced"
    );
    // The late row did not move the latest position of `old`; `other` got one.
    let latest: String = client
        .query_one("SELECT ts::text FROM trackway.latest_positions WHERE device_id = 'old'", &[])
        .await
        .expect("latest")
        .get(0);
    let newest: String = client
        .query_one("SELECT max(ts)::text FROM trackway.positions WHERE device_id = 'old'", &[])
        .await
        .expect("max")
        .get(0);
    assert_eq!(latest, newest);
    assert_eq!(count(&client, "SELECT count(*) FROM trackway.latest_positions").await, 3);
    assert_eq!(count(&client, &compressed(true)).await, 1, "the chunk is still (partly) compressed");
}

/// The reads after a cursor keep their plan for the session (0.5.0: `plan_cache_mode =
/// force_generic_plan`), so a chunk made or dropped by another session must reach a reader's kept plan:
/// the relay's feed reads on one connection for days while ingest makes a chunk a day and retention drops
/// them. A reader that missed a new chunk would never send its rows to live clients.
#[tokio::test]
async fn a_reader_with_a_kept_plan_sees_chunks_made_and_dropped_by_others() {
    let pg = cluster();
    let admin = connect_to(&pg.server(), "postgres").await;
    admin.batch_execute("CREATE DATABASE tskeptplan").await.expect("create database");
    let writer = connect_to(&pg.server(), "tskeptplan").await;
    writer.batch_execute("CREATE EXTENSION timescaledb; CREATE EXTENSION trackway").await.expect("extensions");
    assert!(is_hypertable(&writer).await);
    let reader = connect_to(&pg.server(), "tskeptplan").await;
    let ingest = |device: &str, day: u32| {
        let payload = format!(
            r#"{{"deviceId":"{device}","timestamp":"2026-11-{day:02}T10:00:00Z","latitude":54.7,"longitude":25.3}}"#
        );
        let writer = &writer;
        async move {
            let status: String =
                writer.query_one("SELECT trackway.ingest($1)", &[&payload]).await.expect("ingest").get(0);
            assert_eq!(status, "inserted");
        }
    };
    ingest("first", 1).await;
    let start: String = reader.query_one("SELECT trackway.current_cursor()", &[]).await.expect("cursor").get(0);
    // The relay's way: one prepared statement, called again and again (past the plan cache's five custom
    // plans, so that a kept plan is what answers).
    let feed = reader
        .prepare("SELECT device_id FROM trackway.live_rows_since($1, 1000)")
        .await
        .expect("prepare the feed's read");
    let read = |after: String| {
        let (reader, feed) = (&reader, &feed);
        async move {
            let rows = reader.query(feed, &[&after]).await.expect("live_rows_since");
            rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>()
        }
    };
    for _ in 0..8 {
        assert!(read(start.clone()).await.is_empty());
    }
    let chunk_count = "SELECT count(*) FROM show_chunks('trackway.positions')";
    let before = count(&writer, chunk_count).await;
    ingest("new-chunk", 20).await;
    assert_eq!(count(&writer, chunk_count).await, before + 1, "day 20 made a chunk");
    assert_eq!(read(start.clone()).await, ["new-chunk"], "a row in a chunk made after the plan was kept");
    let dropped = count(
        &writer,
        "SELECT count(*) FROM drop_chunks('trackway.positions', older_than => timestamptz '2026-11-10')",
    )
    .await;
    assert_eq!(dropped, 1, "the chunk of November 1 was dropped");
    ingest("another-chunk", 25).await;
    assert_eq!(read(start.clone()).await, ["new-chunk", "another-chunk"], "after a chunk was dropped");
    let since: Vec<String> = reader
        .query("SELECT device_id FROM trackway.positions_since($1)", &[&start])
        .await
        .expect("positions_since")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(since, ["new-chunk", "another-chunk"]);
}
