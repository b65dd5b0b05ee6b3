//! Helpers shared by the cross-process tests: a fresh database with the extension, a LISTEN client,
//! the sample data files.
//!
//! The tests talk to a real PostgreSQL in which the `trackway` extension is installed (`TRACKWAY_TEST_PG`,
//! default `host=localhost user=postgres`; `scripts/test` points it at each tested server in turn, see
//! `scripts/pg17 env`). Each test gets its own database, so tests can run in parallel and NOTIFYs of one test
//! never reach another. How `trackway.positions` is stored in those databases is this run's [`Storage`]
//! (`TRACKWAY_TEST_STORAGE`): a TimescaleDB hypertable or a plain table, so every suite runs on the route
//! production uses and on the plain one.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// libpq-style connection string of the server, without a database name.
pub fn server() -> String {
    std::env::var("TRACKWAY_TEST_PG").unwrap_or_else(|_| "host=localhost user=postgres".to_owned())
}

/// Host (or socket directory) and port of [`server`], for programs configured with them apart (Directus, psql).
pub fn server_address() -> (String, u16) {
    let config: tokio_postgres::Config =
        server().parse().unwrap_or_else(|e| panic!("TRACKWAY_TEST_PG {:?}: {e}", server()));
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(dir)) => dir.display().to_string(),
        None => "localhost".to_owned(),
    };
    (host, config.get_ports().first().copied().unwrap_or(5432))
}

pub mod directus;
pub mod live;
pub mod proxy;
pub mod relay;
pub mod servers;

/// Connects to `dbname`; the connection task runs in the background.
pub async fn connect(dbname: &str) -> Client {
    connect_to(&server(), dbname).await
}

/// Connects to `dbname` on `server` (libpq key=value form without dbname).
pub async fn connect_to(server: &str, dbname: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(&format!("{server} dbname={dbname}"), NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {dbname}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// How `trackway.positions` is stored in the fresh databases of a test run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// A plain PostgreSQL table (`CREATE EXTENSION trackway` in a database without TimescaleDB).
    Plain,
    /// A TimescaleDB hypertable (`CREATE EXTENSION timescaledb` first, as in production); the server must
    /// preload `timescaledb`, and every private cluster of the run does ([`servers::PgCluster`]).
    Hypertable,
}

/// This run's storage: `TRACKWAY_TEST_STORAGE` = `hypertable` or `plain` (the default).
pub fn storage() -> Storage {
    match std::env::var("TRACKWAY_TEST_STORAGE").as_deref() {
        Ok("hypertable") => Storage::Hypertable,
        Ok("plain") | Err(std::env::VarError::NotPresent) => Storage::Plain,
        Ok(other) => panic!("TRACKWAY_TEST_STORAGE must be hypertable or plain, not {other:?}"),
        Err(e) => panic!("TRACKWAY_TEST_STORAGE: {e}"),
    }
}

/// Creates (or re-creates) database `trackway_test_<name>` with the extension installed on this run's
/// [`storage`], returns its name.
pub async fn fresh_database(name: &str) -> String {
    fresh_database_on(&server(), name).await
}

/// [`fresh_database`] on another server (libpq key=value form without dbname).
pub async fn fresh_database_on(server: &str, name: &str) -> String {
    fresh_database_with(server, name, storage()).await
}

/// [`fresh_database_on`] with the given storage, whatever this run's is.
pub async fn fresh_database_with(server: &str, name: &str, storage: Storage) -> String {
    let dbname = format!("trackway_test_{name}");
    let admin = connect_to(server, "postgres").await;
    trackway_testkit::recreate_database(&admin, &dbname).await.unwrap_or_else(|e| panic!("re-create {dbname}: {e:?}"));
    let client = connect_to(server, &dbname).await;
    if storage == Storage::Hypertable {
        client.batch_execute("CREATE EXTENSION timescaledb").await.unwrap_or_else(|e| {
            panic!("CREATE EXTENSION timescaledb on {server} (the hypertable route needs it preloaded): {e:?}")
        });
    }
    // Retries the race of two tests creating the extension's roles; fails at once when it is not installed.
    trackway_testkit::create_extension(&client, None)
        .await
        .unwrap_or_else(|e| panic!("CREATE EXTENSION trackway: {e:?}"));
    let hypertable = is_hypertable(&client).await;
    assert_eq!(
        hypertable,
        storage == Storage::Hypertable,
        "{dbname}: trackway.positions must be {}",
        if storage == Storage::Hypertable { "a hypertable" } else { "a plain table" }
    );
    dbname
}

/// On the hypertable route, makes the chunk that holds time `ts` in database `db` now, in a transaction of
/// its own that leaves no row and announces nothing; on a plain table, nothing.
///
/// TimescaleDB's transaction that creates a chunk holds a lock on the hypertable until it ends, and every
/// other writer that needs that chunk waits for it (the chunk is not visible to them before the commit).
/// Tests that keep one writer's transaction open while another writes into the same time range make their
/// chunk first, so that they test what they mean to (a wait for a key, a cursor across open transactions)
/// and not a wait for the chunk.
pub async fn make_chunk(db: &str, ts: &str) {
    if storage() != Storage::Hypertable {
        return;
    }
    let mut client = connect(db).await;
    let transaction = client.transaction().await.expect("begin");
    transaction.batch_execute("SET LOCAL trackway.announce = 'off'").await.expect("announce off");
    transaction
        .execute(
            "INSERT INTO trackway.positions (device_id, ts, latitude, longitude) \
             VALUES ('trackway-test-chunk', $1::text::timestamptz, 0, 0)",
            &[&ts],
        )
        .await
        .unwrap_or_else(|e| panic!("making the chunk for {ts}: {e:?}"));
    transaction
        .batch_execute(
            "DELETE FROM trackway.positions WHERE device_id = 'trackway-test-chunk'; \
             DELETE FROM trackway.latest_positions WHERE device_id = 'trackway-test-chunk'",
        )
        .await
        .expect("removing the chunk's row");
    transaction.commit().await.expect("commit");
}

/// Stores the generated rows `rows` through `trackway.ingest_batch`, `per_batch` to a call (each call a
/// transaction of its own, as a relay's batches come): row r is device `{prefix}{r mod devices}` at
/// 2026-11-17T00:00:00Z plus (r div devices) × `step` (an interval: `"36 minutes"`). Made inside the server,
/// so hundreds of thousands of rows take seconds. Returns the rows stored.
pub async fn ingest_generated(
    client: &impl tokio_postgres::GenericClient,
    rows: std::ops::Range<i64>,
    per_batch: i64,
    (prefix, devices): (&str, i64),
    step: &str,
) -> i64 {
    let sql = "SELECT count(*) FILTER (WHERE status = 'inserted') FROM trackway.ingest_batch(ARRAY(
        SELECT format('{\"deviceId\":\"%s%s\",\"timestamp\":\"%s\",\"latitude\":54.5,\"longitude\":25.25}',
                      $3::text, r % $4::bigint,
                      to_char(timestamptz '2026-11-17 00:00:00+00' + (r / $4::bigint) * $5::text::interval,
                              'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))
        FROM generate_series($1::bigint, $2::bigint) AS r))";
    let mut stored = 0;
    let mut first = rows.start;
    while first < rows.end {
        let last = (first + per_batch).min(rows.end) - 1;
        let row = client
            .query_one(sql, &[&first, &last, &prefix, &devices, &step])
            .await
            .unwrap_or_else(|e| panic!("ingest_batch of rows {first}..={last}: {e:?}"));
        stored += row.get::<_, i64>(0);
        first = last + 1;
    }
    stored
}

/// Whether `trackway.positions` is a TimescaleDB hypertable in the database of `client`.
pub async fn is_hypertable(client: &Client) -> bool {
    let timescaledb: bool = client
        .query_one("SELECT to_regclass('timescaledb_information.hypertables') IS NOT NULL", &[])
        .await
        .unwrap_or_else(|e| panic!("looking for TimescaleDB: {e:?}"))
        .get(0);
    timescaledb
        && client
            .query_one(
                "SELECT count(*) = 1 FROM timescaledb_information.hypertables \
                 WHERE hypertable_schema = 'trackway' AND hypertable_name = 'positions'",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("reading timescaledb_information.hypertables: {e:?}"))
            .get(0)
}

/// A client that LISTENs on `trackway_positions`; payloads arrive on the returned channel.
pub struct Listener {
    /// Kept so the connection stays open.
    pub client: Client,
    /// Every notification payload, in delivery order (unbounded: tests read them all).
    pub payloads: mpsc::UnboundedReceiver<String>,
}

impl Listener {
    /// Connects to `dbname` and starts listening.
    pub async fn start(dbname: &str) -> Listener {
        Listener::start_on(&server(), dbname).await
    }

    /// [`Listener::start`] on another server (libpq key=value form without dbname).
    pub async fn start_on(server: &str, dbname: &str) -> Listener {
        let (client, mut connection) =
            tokio_postgres::connect(&format!("{server} dbname={dbname}"), NoTls).await.expect("connect");
        let (tx, payloads) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(n) = message {
                    if n.channel() == "trackway_positions" && tx.send(n.payload().to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        client.batch_execute("LISTEN trackway_positions").await.expect("LISTEN");
        Listener { client, payloads }
    }

    /// Every payload that arrives until none has come for `quiet`.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Some(p)) = tokio::time::timeout(quiet, self.payloads.recv()).await {
            out.push(p);
        }
        out
    }

    /// The announced entries (`{"cursor":…, "position":…}`) of every payload until quiet.
    pub async fn entries(&mut self, quiet: Duration) -> Vec<serde_json::Value> {
        self.drain(quiet).await.iter().flat_map(|p| entries_of(p)).collect()
    }
}

/// The entries of one NOTIFY payload.
pub fn entries_of(payload: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(payload).unwrap_or_else(|e| panic!("payload {payload}: {e}"));
    v["positions"].as_array().unwrap_or_else(|| panic!("no positions array in {payload}")).clone()
}

/// Lines of a sample file of the project's own in `testdata/`.
pub fn shared_data(file: &str) -> Vec<String> {
    let path = format!("{}/../testdata/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// `positions-invalid.jsonl` as `(field the error must name, payload)`; the field is empty when the payload
/// is not a JSON object at all.
pub fn invalid_cases() -> Vec<(String, String)> {
    shared_data("positions-invalid.jsonl")
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            let text = |key: &str| v[key].as_str().unwrap_or_else(|| panic!("no {key} in {l}")).to_owned();
            (text("field"), text("payload"))
        })
        .collect()
}
