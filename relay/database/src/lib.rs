//! `trackway-database`, the relay's one room for PostgreSQL, shared by its ingest and live sides: how every connection is opened (the pools, the live feed, the
//! answer connections and the LISTEN connection all go through [`connect`]), how long the relay waits
//! for any answer, and, in [`sql`], every statement it sends.
//!
//! **No answer is waited for without a bound.** A path that stops answering without closing (a hung
//! proxy or middlebox, a stopped process: no FIN, no RST, and keepalive probes still answered by the
//! middlebox's kernel) is noticed only by the application. So a connection's whole handshake has a
//! bound ([`CONNECT_TIMEOUT`]); every statement has one ([`answered`]; [`ingest::ingest_batch`] asks
//! the server on another connection whether it still answers); a pooled connection idle for a while is
//! checked before it is handed out; and a connection whose call went unanswered is never used again.
//!
//! - [`ingest`]: the one call of the ingest path, `trackway.ingest_batch`, and how its failures are sorted.
//! - [`sql`]: the statements.

#![forbid(unsafe_code)]

use std::{future::Future, time::Duration};

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, PoolError, RecyclingMethod, Runtime};
use futures_util::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio_postgres::{tls::NoTlsStream, Client, NoTls, Socket};

pub mod ingest;
pub mod sql;

pub use deadpool_postgres::{Object, Pool};
pub use ingest::{ingest_batch, IngestError, Status};

/// Connections in the pool: the consumer needs one; readiness checks and later readers share the rest.
const POOL_SIZE: usize = 4;
/// How long a caller waits for a pooled connection, and for a new connection to open (TCP, startup and
/// authentication together).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait for the answer to a statement that takes milliseconds when the server works (a
/// readiness ping, the LISTEN connection's liveness query, BEGIN, COMMIT, a pooled connection's check).
pub const QUICK: Duration = Duration::from_secs(5);
/// A pooled connection idle longer than this is checked (an empty query, [`QUICK`]) before it is handed
/// out: one that sat in a pool while its path went silent must not take the next call down with it.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);
/// TCP keepalive idle time, so dead peers are noticed in well under the kernel's default two hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Time between unanswered keepalive probes, and how many make the connection dead: a peer host that
/// vanished (no RST) is given up about a minute after it went silent. (A silent path whose middlebox
/// still answers the probes is caught by the bounds above, not by keepalives.)
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// See [`KEEPALIVE_INTERVAL`].
const KEEPALIVE_RETRIES: u32 = 3;

/// A statement, or the connection it needed, that failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The server answered with an error, or the connection broke.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// The server closed the connection (or its driver ended) without an error.
    #[error("the server closed the connection")]
    Closed,
    /// No pooled connection could be had (the server refused it, or the pool's wait or connect timeout
    /// passed); with the server's own message when there is one.
    #[error("{}", pool_error(.0))]
    Pool(#[source] PoolError),
    /// No answer came within the bound: the path or the server stopped answering. The connection must not
    /// be used again (its answer may still come, out of turn).
    #[error("{what}: no answer within {} ms", after.as_millis())]
    NoAnswer {
        /// What was waited for.
        what: &'static str,
        /// The bound.
        after: Duration,
    },
}

impl DbError {
    /// Whether the server refused it as a statement (it answered), not a failure of the path.
    pub fn is_server_answer(&self) -> bool {
        matches!(self, DbError::Postgres(e) if e.as_db_error().is_some())
    }

    /// The SQLSTATE the server answered with, if it answered.
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            DbError::Postgres(e) => e.code(),
            _ => None,
        }
    }
}

/// Awaits `call` for at most `after`; `what` names it in the error.
pub async fn answered<T, E: Into<DbError>>(
    what: &'static str,
    after: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(after, call).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(DbError::NoAnswer { what, after }),
    }
}

/// The database settings every connection of the relay uses: its application name unless the URL gives
/// one, a connect timeout unless the URL gives one, and TCP keepalives that notice a vanished peer within
/// about a minute.
fn tuned(config: &tokio_postgres::Config) -> tokio_postgres::Config {
    let mut config = config.clone();
    if config.get_application_name().is_none() {
        config.application_name("trackway-relay");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_RETRIES);
    config
}

/// `config` with server settings (`-c name=value …`) added to any `options` the database URL gives.
pub fn with_settings(config: &tokio_postgres::Config, settings: &str) -> tokio_postgres::Config {
    let mut config = config.clone();
    let options = match config.get_options() {
        Some(given) if !given.trim().is_empty() => format!("{given} {settings}"),
        _ => settings.to_owned(),
    };
    config.options(&options);
    config
}

/// The connection half that must be polled for its [`Client`] to work (notifications come out of it).
pub type Connection = tokio_postgres::Connection<Socket, NoTlsStream>;

/// Opens a connection with [`tuned`] settings. The whole of it — TCP, startup, authentication — is
/// bounded by the connect timeout (tokio-postgres bounds only the TCP connect: through a silent proxy the
/// startup would wait for ever).
pub async fn connect(config: &tokio_postgres::Config) -> Result<(Client, Connection), DbError> {
    let config = tuned(config);
    answered("connecting", connect_bound(&config), config.connect(NoTls)).await
}

/// The bound on opening one connection: the URL's `connect_timeout`, else [`CONNECT_TIMEOUT`].
fn connect_bound(config: &tokio_postgres::Config) -> Duration {
    config.get_connect_timeout().copied().unwrap_or(CONNECT_TIMEOUT)
}

/// A connection's driver task; aborted (closing the socket) when dropped, so that a connection given up on
/// goes away even while its path is silent.
pub struct Driver(JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls `connection` in a task of its own until it ends or the returned [`Driver`] is dropped; `name`
/// says which connection ended in the debug log.
pub fn drive(connection: Connection, name: &'static str) -> Driver {
    Driver(spawn_driver(connection, name))
}

/// The task that polls `connection` until it ends.
fn spawn_driver(connection: Connection, name: &'static str) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(connection = name, error = %e, "database connection ended");
        }
    })
}

/// [`connect`] with its connection driven: for connections that need no notifications.
pub async fn open(config: &tokio_postgres::Config, name: &'static str) -> Result<(Client, Driver), DbError> {
    let (client, connection) = connect(config).await?;
    Ok((client, drive(connection, name)))
}

/// How the pools open connections: the same handshake as [`connect`] (the pool's `create_timeout` is its
/// bound) and the same driver as [`drive`] (deadpool aborts it when it drops the connection).
struct Connector;

impl deadpool_postgres::Connect for Connector {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> BoxFuture<'_, Result<(Client, JoinHandle<()>), tokio_postgres::Error>> {
        let config = config.clone();
        Box::pin(async move {
            let (client, connection) = config.connect(NoTls).await?;
            Ok((client, spawn_driver(connection, "pooled")))
        })
    }
}

/// The pool could not be built (bad pool settings; an unreachable server is not this error: connections
/// open lazily).
#[derive(Debug, thiserror::Error)]
#[error("database pool: {0}")]
pub struct PoolBuildError(#[from] deadpool_postgres::BuildError);

/// Builds the pool; connections open lazily, so an unreachable server is not an error here.
pub fn pool(config: &tokio_postgres::Config) -> Result<Pool, PoolBuildError> {
    let config = tuned(config);
    let bound = connect_bound(&config);
    let manager = Manager::from_connect(config, Connector, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(bound))
        .pre_recycle(Hook::async_fn(|client, metrics| {
            let idle = metrics.last_used();
            Box::pin(async move {
                if idle < CHECK_IDLE_AFTER {
                    return Ok(());
                }
                match answered("checking a pooled connection", QUICK, client.simple_query("")).await {
                    Ok(_) => Ok(()),
                    // The pool drops it and takes (or opens) another.
                    Err(e) => Err(HookError::message(e.to_string())),
                }
            })
        }))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(PoolBuildError)
}

/// The longest one statement of the live side's pool may run (`trackway.authorize`): a slow or locked
/// authorization fails as `unavailable` instead of holding a connection every other session waits for.
pub const LIVE_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the relay waits for an answer beyond a statement timeout the server enforces itself: the
/// server's own cancel comes first when it works, this bound when the path is silent.
const BEYOND_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The bound on waiting for a statement that runs under the server's `statement_timeout`.
pub const fn beyond(statement_timeout: Duration) -> Duration {
    statement_timeout.saturating_add(BEYOND_STATEMENT_TIMEOUT)
}

/// The live side's pool: [`pool`] with a `statement_timeout` on every connection (added to any `options`
/// the database URL gives).
pub fn live_pool(config: &tokio_postgres::Config) -> Result<Pool, PoolBuildError> {
    let timeout = format!("-c statement_timeout={}", LIVE_STATEMENT_TIMEOUT.as_millis());
    pool(&with_settings(config, &timeout))
}

/// A pooled connection, or why none could be had.
pub async fn pooled(pool: &Pool) -> Result<Object, DbError> {
    pool.get().await.map_err(DbError::Pool)
}

/// A pool error with the server's message when there is one ("role \"relay\" is not permitted to log in"
/// instead of deadpool's "db error").
fn pool_error(error: &PoolError) -> String {
    match error {
        PoolError::Backend(e) => match e.as_db_error() {
            Some(db) => format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code()),
            None => e.to_string(),
        },
        _ => error.to_string(),
    }
}

/// Whether the database answers `SELECT 1` on a pooled connection within `within` (all told). A
/// connection that did not answer in time is dropped, never given back to the pool.
pub async fn ping(pool: &Pool, within: Duration) -> Result<(), DbError> {
    let started = tokio::time::Instant::now();
    let client = answered("a pooled connection", within, pooled(pool)).await?;
    let left = within.saturating_sub(started.elapsed());
    match answered("SELECT 1", left, client.simple_query(sql::PING)).await {
        Ok(_) => Ok(()),
        Err(e) => {
            if !e.is_server_answer() {
                drop(Object::take(client));
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_connection_gets_a_connect_timeout_and_keepalives_unless_the_url_says_otherwise() {
        let plain: tokio_postgres::Config = "host=db user=relay".parse().expect("config");
        let ours = tuned(&plain);
        assert_eq!(ours.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert!(ours.get_keepalives());
        assert_eq!(ours.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(ours.get_keepalives_interval(), Some(KEEPALIVE_INTERVAL));
        assert_eq!(ours.get_keepalives_retries(), Some(KEEPALIVE_RETRIES));
        assert_eq!(ours.get_application_name(), Some("trackway-relay"));
        let given: tokio_postgres::Config =
            "host=db user=relay connect_timeout=2 application_name=mine".parse().expect("config");
        let theirs = tuned(&given);
        assert_eq!(theirs.get_connect_timeout(), Some(&Duration::from_secs(2)));
        assert_eq!(theirs.get_application_name(), Some("mine"));
    }

    #[tokio::test]
    async fn an_answer_that_does_not_come_in_time_is_an_error_naming_the_call() {
        let silent = answered("feed read", Duration::from_millis(20), std::future::pending::<Result<(), DbError>>());
        let error = silent.await.expect_err("no answer");
        assert_eq!(error.to_string(), "feed read: no answer within 20 ms");
        assert!(!error.is_server_answer());
        let quick = answered("ping", Duration::from_secs(1), async { Ok::<_, DbError>(7) });
        assert_eq!(quick.await.expect("answered"), 7);
    }
}
