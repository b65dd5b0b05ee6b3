//! Backup and restore with `pg_dump` / `pg_restore`: every row comes back, `latest_positions` is kept, rows get
//! a cursor order that is valid in the restored database (whatever transaction ids the dump carried), and
//! the restore does not flood the cluster-wide NOTIFY queue. On the hypertable route the restore follows
//! TimescaleDB's procedure (timescaledb_pre_restore / post_restore), then `trackway.after_restore()`.
//!
//! 50,000 rows by default; `TRACKWAY_RESTORE_ROWS=1000000` (what `bench/restore.sh` runs) is the large
//! version, with timings printed.

use std::time::{Duration, Instant};

use serde_json::Value;
use trackway_tests::{
    connect, fresh_database, is_hypertable, server,
    servers::{pg_client, pg_host_path, pg_temp_dir},
    storage, Listener, Storage,
};

fn payload(device: usize, second: usize) -> String {
    format!(
        r#"{{"deviceId":"r{device}","timestamp":"2026-11-{:02}T{:02}:{:02}:{:02}.000Z","latitude":54.5,"longitude":25.25,"attributes":{{"66":{second},"11":{{"__bigint":"18446744073709551615"}}}}}}"#,
        1 + second / 86_400,
        second / 3600 % 24,
        second / 60 % 60,
        second % 60
    )
}

/// `key=value` connection options of the test server as command-line flags for pg_dump / pg_restore.
fn conn_flags(dbname: &str) -> Vec<String> {
    vec!["--no-password".to_owned(), format!("--dbname={} dbname={dbname}", server())]
}

fn run(program: &str, args: &[String]) {
    let status = pg_client(program).args(args).status().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?}: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_keeps_rows_and_latest_positions_renumbers_cursors_and_does_not_flood() {
    let rows: usize =
        std::env::var("TRACKWAY_RESTORE_ROWS").map_or(50_000, |v| v.parse().expect("TRACKWAY_RESTORE_ROWS"));
    let devices = 1000.min(rows);
    let source = fresh_database("restore_source").await;
    let client = connect(&source).await;
    let started = Instant::now();
    for chunk in (0..rows).collect::<Vec<_>>().chunks(1000) {
        let payloads: Vec<String> = chunk.iter().map(|&i| payload(i % devices, i / devices)).collect();
        client.query("SELECT 1 FROM trackway.ingest_batch($1)", &[&payloads]).await.expect("ingest_batch");
    }
    eprintln!("restore: {rows} rows ingested in {:.1} s", started.elapsed().as_secs_f64());
    // As if the dump came from a cluster whose transaction ids are far ahead of the one it is restored into.
    client
        .batch_execute("UPDATE trackway.positions SET ingest_xid = '900000000000' WHERE ingest_seq % 3 = 0")
        .await
        .expect("update");

    // Where pg_dump writes it (in the root of TRACKWAY_TEST_PG_ROOT when that is set; see common/servers.rs).
    let dump = pg_temp_dir().join(format!("trackway-restore-{}.dump", std::process::id()));
    let dump_arg = dump.to_str().expect("path").to_owned();
    let started = Instant::now();
    let mut args = conn_flags(&source);
    args.extend(["--format=custom".to_owned(), format!("--file={dump_arg}")]);
    run("pg_dump", &args);
    eprintln!("restore: pg_dump took {:.1} s", started.elapsed().as_secs_f64());

    // The target database is empty: the dump brings CREATE EXTENSION trackway. On TimescaleDB, as its
    // documentation says: the extension first, timescaledb_pre_restore() before and
    // timescaledb_post_restore() after (the dump holds the chunks as tables of their own).
    let target = "trackway_test_restore_target";
    let admin = connect("postgres").await;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {target} WITH (FORCE)")).await.expect("drop");
    admin.batch_execute(&format!("CREATE DATABASE {target}")).await.expect("create");
    let hypertable = storage() == Storage::Hypertable;
    if hypertable {
        connect(target)
            .await
            .batch_execute("CREATE EXTENSION timescaledb; SELECT timescaledb_pre_restore()")
            .await
            .expect("timescaledb_pre_restore");
    }
    let mut listener = Listener::start(target).await;
    let started = Instant::now();
    let mut args = conn_flags(target);
    args.extend(["--exit-on-error".to_owned(), dump_arg.clone()]);
    run("pg_restore", &args);
    if hypertable {
        // The chunks were filled before their triggers existed: the rows still carry the dumped cluster's
        // cursor columns until trackway.after_restore() gives them this database's.
        let target_client = connect(target).await;
        target_client.batch_execute("SELECT timescaledb_post_restore()").await.expect("post_restore");
        let renumbered: i64 =
            target_client.query_one("SELECT trackway.after_restore()", &[]).await.expect("after_restore").get(0);
        assert_eq!(renumbered, rows as i64, "after_restore renumbers every restored row");
    }
    eprintln!("restore: pg_restore took {:.1} s", started.elapsed().as_secs_f64());
    let _ = std::fs::remove_file(pg_host_path(&dump));

    let restored = connect(target).await;
    assert_eq!(is_hypertable(&restored).await, hypertable, "the restored table is stored as the dumped one");
    let count: i64 = restored.query_one("SELECT count(*) FROM trackway.positions", &[]).await.expect("count").get(0);
    assert_eq!(count, rows as i64);
    let latest_query =
        "SELECT string_agg(device_id || '@' || ts::text || '@' || latitude::text, ',' ORDER BY device_id)
                        FROM trackway.latest_positions";
    let before: String = client.query_one(latest_query, &[]).await.expect("latest").get(0);
    let after: String = restored.query_one(latest_query, &[]).await.expect("latest").get(0);
    assert_eq!(before, after, "latest_positions restored");
    let wire_query =
        "SELECT md5(string_agg(trackway.to_wire(p)::text, ',' ORDER BY device_id, ts)) FROM trackway.positions p";
    let wire_before: String = client.query_one(wire_query, &[]).await.expect("wire").get(0);
    let wire_after: String = restored.query_one(wire_query, &[]).await.expect("wire").get(0);
    assert_eq!(wire_before, wire_after, "every row's wire document is the same after the restore");

    // Cursor columns belong to this database now: no transaction id from the future, one per row.
    let sane: bool = restored
        .query_one(
            "SELECT max(ingest_xid::text::int8) < pg_current_xact_id()::text::int8
                    AND count(DISTINCT (ingest_xid, ingest_seq)) = count(*)
                    AND (SELECT bool_and(l.ingest_xid = p.ingest_xid AND l.ingest_seq = p.ingest_seq)
                         FROM trackway.latest_positions l JOIN trackway.positions p USING (device_id, ts))
             FROM trackway.positions",
            &[],
        )
        .await
        .expect("cursor columns")
        .get(0);
    assert!(sane, "restored rows keep transaction ids of the old cluster");

    // A reader that resumes from the newest restored row of a device sees a row stored afterwards.
    let since = "SELECT cursor FROM trackway.positions_since($1, ARRAY['r0'], 100000000)";
    let replayed = restored.query(since, &[&"0:0"]).await.expect("since");
    assert_eq!(replayed.len(), rows.div_ceil(devices));
    let last: String = replayed.last().expect("rows of r0").get(0);
    restored.query("SELECT 1 FROM trackway.ingest_batch($1)", &[&vec![payload(0, 999_999)]]).await.expect("ingest");
    let new_rows = restored.query(since, &[&last]).await.expect("since").len();
    assert_eq!(new_rows, 1, "a row stored after the restore is after a cursor taken after it");

    // Announcements: a summary for the bulk of the restore, not an entry per row.
    let payloads = listener.drain(Duration::from_millis(700)).await;
    let entries: usize = payloads
        .iter()
        .map(|p| {
            let v: Value = serde_json::from_str(p).expect("JSON");
            v["positions"].as_array().map_or(0, Vec::len)
        })
        .sum();
    let summarised: u64 = payloads
        .iter()
        .filter_map(|p| serde_json::from_str::<Value>(p).ok()?.get("omitted")?.get("rows")?.as_u64())
        .sum();
    eprintln!("restore: {} NOTIFY payloads, {entries} entries, {summarised} rows summarised", payloads.len());
    assert!(payloads.len() <= 3, "{} NOTIFY payloads for a restore", payloads.len());
    assert_eq!(summarised, rows as u64, "the restored rows are summarised");
    assert_eq!(entries, 1, "only the row stored after the restore is announced by itself");
}
