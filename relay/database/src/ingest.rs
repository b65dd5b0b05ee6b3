//! The ingest path's one call, `trackway.ingest_batch(text[])`, and how its failures are sorted: the
//! environment's fault (retried), no answer (retried, and counted), or a refusal the data may have
//! caused (split by the triage).

use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use tokio_postgres::{error::SqlState, NoTls};

use super::{self as database, sql};

/// How long an `ingest_batch` call may go unanswered before the relay asks, on another connection,
/// whether the server answers at all (see [`ingest_batch`]).
const PROBE_EVERY: Duration = Duration::from_secs(5);

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

/// Why a batch was not stored. `Clone`: one statement may carry several consumers' batches, and each gets
/// the statement's failure.
#[derive(Clone, Debug, thiserror::Error)]
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

/// A pooled connection for [`ingest_batch`]. An error here means nothing was sent (server down, login
/// refused, pool exhausted, a silent path).
pub async fn connection(pool: &Pool) -> Result<Object, IngestError> {
    database::pooled(pool).await.map_err(|e| IngestError::Unavailable(e.to_string()))
}

/// How the wait for an `ingest_batch` answer ended.
enum Outcome {
    /// The server answered (rows or an error).
    Answered(Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>),
    /// `TRACKWAY_INGEST_TIMEOUT_MS` passed.
    TimedOut,
    /// The server did not answer a probe either.
    Silent(database::DbError),
}

/// Stores the payloads with one `trackway.ingest_batch` call on `client`; one status per payload, in order.
///
/// `timeout` (`TRACKWAY_INGEST_TIMEOUT_MS`) bounds the wait for the answer: a statement that runs too long
/// (a batch too big for the server's time, a lock) would otherwise stall the relay. When it expires the
/// relay sends the server a cancel request for the statement (so it does not keep running and holding a
/// backend), then discards the connection. A cancelled statement is a refusal with SQLSTATE `timeout`, so
/// the batch is split like one that hit `statement_timeout`; if the cancel request cannot be delivered
/// either, nothing answered at all (`Lost`).
///
/// A long statement and a silent path look alike from here, so every [`PROBE_EVERY`] without an answer
/// the relay asks the server on another of `pool`'s connections whether it answers at all. When it does
/// not, the path is down: the call is given up at once as `Lost` (no cancel request: it would take the same
/// silent path), its connection dropped, and the batch retried on a new connection once the server
/// answers. If the statement did reach the server, the retry finds its rows stored (`duplicate`).
pub async fn ingest_batch(
    pool: &Pool,
    client: Object,
    payloads: &[&str],
    timeout: Duration,
) -> Result<Vec<Status>, IngestError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let outcome = {
        let call = async {
            let statement = client.prepare_cached(sql::INGEST_BATCH).await?;
            client.query(&statement, &[&payloads]).await
        };
        tokio::pin!(call);
        loop {
            let probe_at = (tokio::time::Instant::now() + PROBE_EVERY).min(deadline);
            tokio::select! {
                rows = &mut call => break Outcome::Answered(rows),
                () = tokio::time::sleep_until(probe_at) => {
                    if probe_at >= deadline {
                        break Outcome::TimedOut;
                    }
                    if let Err(why) = database::ping(pool, database::QUICK).await {
                        break Outcome::Silent(why);
                    }
                }
            }
        }
    };
    let rows = match outcome {
        Outcome::Answered(rows) => rows.map_err(classify)?,
        Outcome::Silent(why) => {
            drop(Object::take(client));
            return Err(IngestError::Lost(format!(
                "no answer, and the server does not answer on another connection either: {why}"
            )));
        }
        Outcome::TimedOut => {
            let waited = format!("no answer within {} ms", timeout.as_millis());
            let token = client.cancel_token();
            let cancelled = tokio::time::timeout(database::CONNECT_TIMEOUT, token.cancel_query(NoTls)).await;
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
