//! PostgreSQL side: a small connection pool and the one call the ingest path makes,
//! `trackway.ingest_batch(text[])`.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{error::SqlState, NoTls};

use crate::error::Error;

/// The ingest call; each batch is one statement, so it commits on its own (autocommit) when it returns.
const INGEST_BATCH: &str = "SELECT ord, status, error FROM trackway.ingest_batch($1::text[])";

/// Connections in the pool: the consumer needs one; readiness checks and later readers share the rest.
const POOL_SIZE: usize = 4;
/// How long a caller waits for a pooled connection, and for a new connection to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keepalive idle time, so dead peers are noticed in well under the kernel's default two hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Time between unanswered keepalive probes, and how many make the connection dead: a path that stops
/// answering without closing (no RST) is given up about a minute after it went silent.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// See [`KEEPALIVE_INTERVAL`].
const KEEPALIVE_RETRIES: u32 = 3;

/// What `trackway.ingest_batch` said about one payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Stored now.
    Inserted,
    /// Already stored (same device and time).
    Duplicate,
    /// Refused by the decoder; the message starts with the field path.
    Invalid(String),
}

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The database could not be reached or could not run the call now (connection lost, server
    /// shutting down, login refused, missing extension or privilege, deadlock...). Nothing about the data;
    /// the same batch is retried later.
    #[error("{0}")]
    Unavailable(String),
    /// The statement was sent and no answer came (the connection broke): the server may have run it, or
    /// may have died of it. Retried like `Unavailable`, and counted as an unanswered attempt.
    #[error("{0}")]
    Lost(String),
    /// The server answered the statement with an error that the data *may* have caused (a data exception,
    /// a constraint, a program limit, a trigger's RAISE, an internal error, a statement timeout, out of
    /// memory...). The same errors also come from the moment (a full NOTIFY queue, an operator's guard
    /// trigger, corruption), so a refusal alone never blames an entry: the consumer decides by splitting
    /// the batch and seeing what stores (see `ingest::triage`).
    #[error("{message}")]
    Refused {
        /// The SQLSTATE (the `sqlstate` label of `trackway_relay_refusals_total`).
        sqlstate: String,
        /// The server's message with severity and SQLSTATE.
        message: String,
    },
}
/// The database settings every connection of the relay uses (the pools', the live feed's and the LISTEN
/// connection's): its application name unless the URL gives one, a connect timeout unless the URL gives
/// one, and TCP keepalives that notice a silent peer within about a minute.
pub fn tuned(config: &tokio_postgres::Config) -> tokio_postgres::Config {
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

/// Builds the pool; connections open lazily, so an unreachable server is not an error here.
pub fn pool(config: &tokio_postgres::Config) -> Result<Pool, Error> {
    let config = tuned(config);
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|source| Error::Pool { source })
}

/// The longest one statement of the live side's pool may run (`trackway.authorize`): a slow or locked
/// authorization fails as `unavailable` instead of holding a connection every other session waits for.
const LIVE_STATEMENT_TIMEOUT_MS: u32 = 5_000;

/// The live side's pool: [`pool`] with a `statement_timeout` on every connection (added to any `options`
/// the database URL gives).
pub fn live_pool(config: &tokio_postgres::Config) -> Result<Pool, Error> {
    pool(&with_settings(config, &format!("-c statement_timeout={LIVE_STATEMENT_TIMEOUT_MS}")))
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

/// A pooled connection for [`ingest_batch`]. An error here means nothing was sent (server down, login
/// refused, pool exhausted).
pub async fn connection(pool: &Pool) -> Result<Object, IngestError> {
    pool.get().await.map_err(|e| IngestError::Unavailable(pool_error(e)))
}

/// A pool error with the server's message when there is one ("role \"relay\" is not permitted to log in"
/// instead of deadpool's "db error").
fn pool_error(error: deadpool_postgres::PoolError) -> String {
    match &error {
        deadpool_postgres::PoolError::Backend(e) => match e.as_db_error() {
            Some(db) => format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code()),
            None => e.to_string(),
        },
        _ => error.to_string(),
    }
}

/// Stores the payloads with one `trackway.ingest_batch` call on `client`; one status per payload, in order.
///
/// `timeout` (`TRACKWAY_INGEST_TIMEOUT_MS`) bounds the wait for the answer: a statement that runs too long
/// (a batch too big for the server's time, a lock, a network partition without a reset) would otherwise
/// stall the relay. When it expires the relay sends the server a cancel request for the statement (so it
/// does not keep running and holding a backend), then discards the connection. A cancelled statement is a
/// refusal with SQLSTATE `timeout`, so the batch is split like one that hit `statement_timeout`; if the
/// cancel request cannot be delivered either, nothing answered at all (`Lost`).
pub async fn ingest_batch(client: Object, payloads: &[&str], timeout: Duration) -> Result<Vec<Status>, IngestError> {
    let call = async {
        let statement = client.prepare_cached(INGEST_BATCH).await?;
        client.query(&statement, &[&payloads]).await
    };
    let answer = tokio::time::timeout(timeout, call).await;
    let rows = match answer {
        Ok(rows) => rows.map_err(classify)?,
        Err(_) => {
            let waited = format!("no answer within {} ms", timeout.as_millis());
            let token = client.cancel_token();
            let cancelled = tokio::time::timeout(CONNECT_TIMEOUT, token.cancel_query(NoTls)).await;
            // The connection may still be busy with the call: never hand it out again.
            drop(Object::take(client));
            return Err(match cancelled {
                Ok(Ok(())) => IngestError::Refused {
                    sqlstate: "timeout".to_owned(),
                    message: format!("{waited}; the statement was cancelled"),
                },
                Ok(Err(e)) => IngestError::Lost(format!("{waited}, and the cancel request failed: {e}")),
                Err(_) => IngestError::Lost(format!("{waited}, and the cancel request got no answer either")),
            });
        }
    };
    let mut statuses = vec![None; payloads.len()];
    for row in rows {
        let ord: i32 = row.try_get(0).map_err(classify)?;
        let status: &str = row.try_get(1).map_err(classify)?;
        let error: Option<String> = row.try_get(2).map_err(classify)?;
        let slot = usize::try_from(ord).ok().and_then(|o| o.checked_sub(1)).and_then(|i| statuses.get_mut(i));
        let Some(slot) = slot else {
            return Err(IngestError::Unavailable(format!(
                "ingest_batch returned ord {ord} for {} payloads",
                payloads.len()
            )));
        };
        *slot = Some(match status {
            "inserted" => Status::Inserted,
            "duplicate" => Status::Duplicate,
            _ => Status::Invalid(error.unwrap_or_else(|| format!("rejected with status {status:?}"))),
        });
    }
    statuses
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            s.ok_or_else(|| IngestError::Unavailable(format!("ingest_batch returned no row for payload {}", i + 1)))
        })
        .collect()
}

/// Whether the database answers (`SELECT 1` on a pooled connection).
pub async fn ping(pool: &Pool) -> Result<(), String> {
    let client = pool.get().await.map_err(pool_error)?;
    client.simple_query("SELECT 1").await.map(drop).map_err(|e| e.to_string())
}

/// Sorts a failed call: a server error is a refusal unless its class says the environment is at fault
/// (see [`is_environment_error`]); a failure without a server error (connection lost, I/O) is `Lost`.
fn classify(error: tokio_postgres::Error) -> IngestError {
    let Some(db) = error.as_db_error() else {
        let message = error.to_string();
        // The client could not encode the call (a message above PostgreSQL's 1 GB limit): a smaller batch
        // may pass, so it is a refusal, not a lost connection.
        if message.starts_with("error serializing") || message.starts_with("error encoding") {
            return IngestError::Refused { sqlstate: "too_large".to_owned(), message };
        }
        return IngestError::Lost(message);
    };
    let message = format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code());
    if is_environment_error(db.code()) {
        IngestError::Unavailable(message)
    } else {
        IngestError::Refused { sqlstate: db.code().code().to_owned(), message }
    }
}

/// SQLSTATEs that say the database or the relay's access to it is not working, whatever the data: 08
/// connection, 25 transaction state (read-only standby), 28 authorization, 3D/3F missing database or schema,
/// 40 rollback (deadlock, serialization), 42 access rule or missing object (extension not installed,
/// privileges), 53 insufficient resources except out of memory (disk full, too many connections), 55 object
/// state (lock not available), 57P operator intervention (shutdown, cannot connect now), 58 system error,
/// F0 configuration file. Everything else — including 54 program limits, XX internal errors, P0 trigger
/// raises, 57014 statement timeout and 53200 out of memory — may or may not be the data's fault and is
/// decided by splitting.
fn is_environment_error(code: &SqlState) -> bool {
    let code = code.code();
    if code == SqlState::OUT_OF_MEMORY.code() {
        return false;
    }
    matches!(code.get(..2), Some("08" | "25" | "28" | "3D" | "3F" | "40" | "42" | "53" | "55" | "58" | "F0"))
        || code.starts_with("57P")
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

    #[test]
    fn only_environment_errors_skip_the_split() {
        for code in [
            SqlState::UNDEFINED_FUNCTION,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::INVALID_PASSWORD,
            SqlState::READ_ONLY_SQL_TRANSACTION,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::DISK_FULL,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::CONNECTION_FAILURE,
        ] {
            assert!(is_environment_error(&code), "{code:?}");
        }
        for code in [
            SqlState::CHARACTER_NOT_IN_REPERTOIRE,
            SqlState::UNIQUE_VIOLATION,
            SqlState::PROGRAM_LIMIT_EXCEEDED,
            SqlState::INTERNAL_ERROR,
            SqlState::RAISE_EXCEPTION,
            SqlState::QUERY_CANCELED,
            SqlState::OUT_OF_MEMORY,
        ] {
            assert!(!is_environment_error(&code), "{code:?}");
        }
    }
}
