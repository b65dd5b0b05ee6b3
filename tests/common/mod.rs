//! Helpers shared by the cross-process tests: a fresh database with the extension, a LISTEN client,
//! the sample data files.
//!
//! The tests talk to the real local PostgreSQL (`TRACKWAY_TEST_PG`, default `host=localhost user=postgres`)
//! in which `.ci/run` installed the `trackway` extension. Each test gets its own database, so tests can run
//! in parallel and NOTIFYs of one test never reach another.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// libpq-style connection string of the server, without a database name.
pub fn server() -> String {
    std::env::var("TRACKWAY_TEST_PG").unwrap_or_else(|_| "host=localhost user=postgres".to_owned())
}

pub mod directus;
pub mod live;
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

/// Creates (or re-creates) database `trackway_test_<name>` with the extension installed, returns its name.
pub async fn fresh_database(name: &str) -> String {
    fresh_database_on(&server(), name).await
}

/// [`fresh_database`] on another server (libpq key=value form without dbname).
pub async fn fresh_database_on(server: &str, name: &str) -> String {
    let dbname = format!("trackway_test_{name}");
    let admin = connect_to(server, "postgres").await;
    trackway_testkit::recreate_database(&admin, &dbname).await.unwrap_or_else(|e| panic!("re-create {dbname}: {e:?}"));
    let client = connect_to(server, &dbname).await;
    // Retries the race of two tests creating the extension's roles; fails at once when it is not installed.
    trackway_testkit::create_extension(&client, None)
        .await
        .unwrap_or_else(|e| panic!("CREATE EXTENSION trackway: {e:?}"));
    dbname
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

/// Lines of a sample file in `testdata/` (copied from `../shared/data`).
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
