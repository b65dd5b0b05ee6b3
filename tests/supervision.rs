//! Supervision: every task of the relay runs until shutdown, and one that stops before it (made to, here,
//! with a fail point: a panic, or the admin server returning) stops the relay with an error naming it, so
//! that the process exits non-zero and its supervisor restarts it. Before, only the consumer was watched:
//! a live feed, LISTEN connection, sampler or admin server that stopped left a relay running without it
//! (and `/readyz` said ready).
//!
//! Fail points are one registry per process: the tests here take turns.

use std::time::Duration;

use tokio::sync::Mutex;
use trackway_relay::Error;
use trackway_tests::{
    fresh_database,
    live::{live_flags, LiveRelay},
    relay::{relay_flags, unique, InProcess},
};

/// One test at a time: a fail point configured by one would fire in another's relay.
static TURN: Mutex<()> = Mutex::const_new(());

/// How long a stopped task may take to stop the relay (the sampler and LISTEN fail points fire on
/// their 5 s ticks).
const WITHIN: Duration = Duration::from_secs(20);

/// Checks that the relay's run ended with [`Error::Stopped`] for `task`.
fn assert_stopped(ended: Option<Result<(), Error>>, task: &str) {
    match ended {
        Some(Err(Error::Stopped { task: stopped, why })) => {
            assert_eq!(stopped, task, "{why}");
        }
        Some(other) => panic!("the relay ended with {other:?}, not a stopped {task}"),
        None => panic!("the relay kept running {WITHIN:?} after its {task} stopped"),
    }
}

/// An ingest-only relay with the fail point `point` set to `action` (before it starts, or once it runs).
async fn ingest_relay_stops(point: &str, action: &str, task: &str, before_start: bool) {
    let _turn = TURN.lock().await;
    let scenario = fail::FailScenario::setup();
    let db = fresh_database(&format!("supervision_{}", point.replace('-', "_"))).await;
    let flags = relay_flags(&db, &unique("supervision"), &["--block-ms", "200"]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    if before_start {
        fail::cfg(point, action).expect("fail point");
    }
    let relay = InProcess::start(&flags).await;
    if !before_start {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(relay.is_running(), "the relay runs before the fail point is set");
        fail::cfg(point, action).expect("fail point");
    }
    assert_stopped(relay.finished(WITHIN).await, task);
    scenario.teardown();
}

/// A relay with its live side, ready, then the fail point `point` made to panic.
async fn live_relay_stops(point: &str, task: &str) {
    let _turn = TURN.lock().await;
    let scenario = fail::FailScenario::setup();
    let db = fresh_database(&format!("supervision_{}", point.replace('-', "_"))).await;
    let relay = LiveRelay::start(&live_flags(&db, &unique("supervision_live"), &[])).await;
    fail::cfg(point, "panic").expect("fail point");
    assert_stopped(relay.finished(WITHIN).await, task);
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_panics_stops_the_relay() {
    ingest_relay_stops("consumer", "panic", "consumer", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampler_that_panics_stops_the_relay() {
    ingest_relay_stops("sampler", "panic", "sampler", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_server_that_ends_stops_the_relay() {
    ingest_relay_stops("admin-server", "return", "admin server", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_feed_that_panics_stops_the_relay() {
    live_relay_stops("live-feed", "live feed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_connection_that_panics_stops_the_relay() {
    live_relay_stops("live-listen", "LISTEN connection").await;
}
