//! A fresh database with the extension: drop and re-create it, then `CREATE EXTENSION trackway`, retried
//! where a retry can help.

use std::time::Duration;

use tokio_postgres::{error::SqlState, Client, Error};

/// Attempts of `CREATE EXTENSION trackway` while it races another session creating the extension's roles.
const RACE_ATTEMPTS: u32 = 3;

/// How long [`create_extension`] waits for the extension's files while they are not installed.
#[derive(Clone, Copy, Debug)]
pub struct InstallWait {
    /// Attempts in all, the last one included.
    pub attempts: u32,
    /// Pause between two attempts.
    pub delay: Duration,
}

/// Drops `name` if it exists (disconnecting its sessions) and creates it empty, in UTF-8, through the
/// `maintenance` connection. `name` is written into the statements as it is: it must need no quoting.
pub async fn recreate_database(maintenance: &Client, name: &str) -> Result<(), Error> {
    drop_database(maintenance, name).await?;
    // Separate statements: DROP/CREATE DATABASE cannot run in the implicit transaction of a batch.
    maintenance.batch_execute(&format!("CREATE DATABASE {name} ENCODING 'UTF8' TEMPLATE template0")).await
}

/// Drops `name` if it exists, disconnecting its sessions.
pub async fn drop_database(maintenance: &Client, name: &str) -> Result<(), Error> {
    maintenance.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await
}

/// `CREATE EXTENSION trackway` in the database of `client`.
///
/// On a cluster where the extension's roles do not exist yet, two sessions creating the extension at the
/// same moment race in its `IF NOT EXISTS … CREATE ROLE` and one fails with a unique violation on
/// pg_authid (seen on the first test run after setup). CREATE EXTENSION is transactional: it is tried
/// again, up to three attempts. With `install_wait`, an extension whose files are not (or not completely)
/// installed — it may be being re-installed — is waited for too, with a line on stderr per wait.
pub async fn create_extension(client: &Client, install_wait: Option<InstallWait>) -> Result<(), Error> {
    let (mut races, mut waits) = (1, 1);
    loop {
        match client.batch_execute("CREATE EXTENSION trackway").await {
            Ok(()) => return Ok(()),
            Err(e) if races < RACE_ATTEMPTS && e.code() == Some(&SqlState::UNIQUE_VIOLATION) => races += 1,
            Err(e) => match install_wait {
                Some(wait) if waits < wait.attempts && extension_missing(&e) => {
                    eprintln!(
                        "CREATE EXTENSION trackway failed ({}); retrying in {}s ({waits}/{})",
                        describe(&e),
                        wait.delay.as_secs(),
                        wait.attempts
                    );
                    tokio::time::sleep(wait.delay).await;
                    waits += 1;
                }
                _ => return Err(e),
            },
        }
    }
}

/// Whether the error says the extension's files are not (or not completely) installed.
fn extension_missing(e: &Error) -> bool {
    let text = describe(e);
    text.contains("is not available")
        || text.contains("could not open extension control file")
        || text.contains("could not access file")
        || text.contains("could not load library")
}

/// The server's message of a database error (tokio-postgres only says "db error" in `Display`).
pub fn describe(e: &Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}
