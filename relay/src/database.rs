//! PostgreSQL side: a small connection pool and the one call the ingest path makes,
//! `trackway.ingest_batch(text[])`.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{error::SqlState, NoTls};

use crate::error::Error;

/// The ingest call; each batch is one statement, so it commits on its own (autocommit) when it returns.
const INGEST_BATCH: &str = "SELECT ord, status, error FROM trackway.ingest_batch($1::text[])";

/// Connections in the pool: the consumer needs one; readiness checks and later readers share the rest.
const POOL_SIZE: usize = 4;
/// How long a caller waits for a pooled connection, and for a new connection to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for an `ingest_batch` answer. A server that stops answering (a network partition without a
/// reset) would otherwise stall the relay; after this the connection is discarded and the batch retried,
/// which is safe because storing is idempotent.
const INGEST_TIMEOUT: Duration = Duration::from_secs(120);
/// TCP keepalive idle time, so dead peers are noticed in well under the kernel's default two hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

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
    /// shutting down, missing extension or privilege, deadlock...). Nothing about the data; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The server refused the statement because of the data in it (a data exception or limit that the
    /// decoder did not catch). Retrying the same batch fails again; smaller batches isolate the cause.
    #[error("{0}")]
    Rejected(String),
}

/// Builds the pool; connections open lazily, so an unreachable server is not an error here.
pub fn pool(config: &tokio_postgres::Config) -> Result<Pool, Error> {
    let mut config = config.clone();
    if config.get_application_name().is_none() {
        config.application_name("trackway-relay");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.keepalives(true).keepalives_idle(KEEPALIVE_IDLE);
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| Error::Pool(e.to_string()))
}

/// Stores the payloads with one `trackway.ingest_batch` call; one status per payload, in order.
pub async fn ingest_batch(pool: &Pool, payloads: &[&str]) -> Result<Vec<Status>, IngestError> {
    let client = pool.get().await.map_err(|e| IngestError::Unavailable(e.to_string()))?;
    let call = async {
        let statement = client.prepare_cached(INGEST_BATCH).await?;
        client.query(&statement, &[&payloads]).await
    };
    let answer = tokio::time::timeout(INGEST_TIMEOUT, call).await;
    let rows = match answer {
        Ok(rows) => rows.map_err(classify)?,
        Err(_) => {
            // The connection may still be busy with the call: never hand it out again.
            drop(deadpool_postgres::Object::take(client));
            return Err(IngestError::Unavailable(format!("no answer within {} s", INGEST_TIMEOUT.as_secs())));
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
    let client = pool.get().await.map_err(|e| e.to_string())?;
    client.simple_query("SELECT 1").await.map(drop).map_err(|e| e.to_string())
}

/// Sorts a failed call: only errors that the data can cause are `Rejected`; everything else — lost
/// connections, shutdowns, a missing extension, permissions, deadlocks — is `Unavailable`, so a
/// misconfigured relay retries instead of dead-lettering good entries.
fn classify(error: tokio_postgres::Error) -> IngestError {
    let message = match error.as_db_error() {
        Some(db) => format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code()),
        None => error.to_string(),
    };
    match error.code() {
        Some(code) if is_data_error(code) => IngestError::Rejected(message),
        _ => IngestError::Unavailable(message),
    }
}

/// SQLSTATE classes caused by the statement's data: 22 data exception, 23 integrity constraint, 54 program
/// limit exceeded, P0 PL/pgSQL raise, XX internal error.
fn is_data_error(code: &SqlState) -> bool {
    matches!(code.code().get(..2), Some("22" | "23" | "54" | "P0" | "XX"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_errors_are_rejections() {
        assert!(is_data_error(&SqlState::CHARACTER_NOT_IN_REPERTOIRE));
        assert!(is_data_error(&SqlState::PROGRAM_LIMIT_EXCEEDED));
        assert!(!is_data_error(&SqlState::UNDEFINED_FUNCTION));
        assert!(!is_data_error(&SqlState::ADMIN_SHUTDOWN));
        assert!(!is_data_error(&SqlState::T_R_DEADLOCK_DETECTED));
        assert!(!is_data_error(&SqlState::INSUFFICIENT_PRIVILEGE));
    }
}
