//! Connections, the throw-away benchmark database, and facts about the server.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio_postgres::{Client, Config, NoTls};
use trackway_testkit::InstallWait;

/// How often `CREATE EXTENSION trackway` is retried while the extension is not installed.
const EXTENSION_ATTEMPTS: u32 = 5;
/// Pause between two of those attempts.
const EXTENSION_RETRY_DELAY: Duration = Duration::from_secs(60);

/// Connects and drives the connection on a background task.
pub async fn connect(config: &Config) -> Result<Client> {
    let dbname = config.get_dbname().unwrap_or("(default)").to_owned();
    let (client, connection) =
        config.connect(NoTls).await.with_context(|| format!("connecting to database {dbname}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("connection to {dbname} failed: {e}");
        }
    });
    Ok(client)
}

/// A database name that needs no quoting, so it can be written into `CREATE DATABASE`.
pub fn check_database_name(name: &str) -> Result<()> {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63;
    if !plain {
        bail!("benchmark database name {name:?} must be lower-case letters, digits and '_' (at most 63)");
    }
    Ok(())
}

/// Drops (if present) and creates `name` through the maintenance connection.
pub async fn recreate_database(maintenance: &Client, name: &str) -> Result<()> {
    trackway_testkit::recreate_database(maintenance, name).await.with_context(|| format!("re-creating database {name}"))
}

pub async fn drop_database(maintenance: &Client, name: &str) -> Result<()> {
    trackway_testkit::drop_database(maintenance, name).await.with_context(|| format!("dropping database {name}"))
}

/// `CREATE EXTENSION trackway`, waiting for it while it is not installed (it may be being re-installed).
pub async fn create_extension(client: &Client) -> Result<()> {
    let wait = InstallWait { attempts: EXTENSION_ATTEMPTS, delay: EXTENSION_RETRY_DELAY };
    trackway_testkit::create_extension(client, Some(wait)).await.context("CREATE EXTENSION trackway")
}

/// A single value of a one-row query, as text.
pub async fn scalar(client: &Client, sql: &str) -> Result<String> {
    let row = client.query_one(sql, &[]).await.with_context(|| format!("running {sql}"))?;
    row.try_get::<_, String>(0).with_context(|| format!("reading the result of {sql}"))
}

/// Lines describing the machine and the server settings that matter for write throughput.
pub async fn machine_facts(client: &Client) -> Result<Vec<String>> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let mut facts = vec![
        format!("nproc: {cpus}; load average (1/5/15 min) at the end: {}", load.join(" ")),
        format!("PostgreSQL: {}", scalar(client, "SELECT version()").await?),
    ];
    let settings = client
        .query(
            "SELECT name, setting || coalesce(' ' || unit, '') FROM pg_settings
             WHERE name IN ('shared_buffers', 'synchronous_commit', 'fsync', 'wal_level', 'max_wal_size',
                            'checkpoint_timeout', 'work_mem')
             ORDER BY name",
            &[],
        )
        .await
        .context("reading server settings")?;
    let settings: Vec<String> =
        settings.iter().map(|r| format!("{}={}", r.get::<_, String>(0), r.get::<_, String>(1))).collect();
    facts.push(format!("settings: {}", settings.join(", ")));
    facts.push(format!(
        "trackway {}; TimescaleDB in the benchmark database: {}",
        scalar(client, "SELECT extversion::text FROM pg_extension WHERE extname = 'trackway'").await?,
        scalar(
            client,
            "SELECT CASE WHEN EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb') THEN 'yes' ELSE 'no' END"
        )
        .await?
    ));
    Ok(facts)
}

/// The benchmark database as a URL for the relay (no password: the benchmark uses trust auth).
pub fn database_url(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or("postgres"),
        config.get_dbname().unwrap_or("postgres")
    )
}
