//! Configuration: every setting is an environment variable and a command-line flag (the flag wins), with a
//! default where one is safe, and one clear error line for a bad value.
//!
//! Connection strings may carry passwords, so they are never echoed: not by `--help` (`hide_env_values`),
//! not in validation errors, not by `Debug`.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use clap::Parser;

use crate::error::Error;

/// The command line and environment, as parsed; [`Settings::validate`] turns it into a [`Config`].
#[derive(Parser)]
#[command(
    name = "trackway-relay",
    version,
    about = "Moves GPS positions from a Redis Stream into PostgreSQL \
    (through the trackway extension) and serves health and metrics endpoints."
)]
pub struct Settings {
    /// PostgreSQL connection string (URL or key=value form) of the database with the trackway extension.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@localhost:5432/trackway"
    )]
    pub database_url: String,

    /// Redis connection URL.
    #[arg(long, env = "REDIS_URL", hide_env_values = true, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Stream the ingestion service writes positions to.
    #[arg(long, env = "TRACKWAY_STREAM", default_value = "positions")]
    pub stream: String,

    /// Consumer group shared by every relay reading the stream.
    #[arg(long, env = "TRACKWAY_GROUP", default_value = "trackway")]
    pub group: String,

    /// This relay's consumer name in the group [default: <host name>-<process id>]. Give each relay a
    /// stable name so that after a restart it re-processes its own pending entries at once.
    #[arg(long, env = "TRACKWAY_CONSUMER")]
    pub consumer: Option<String>,

    /// Stream that receives entries that cannot be stored [default: <stream>:dead].
    #[arg(long, env = "TRACKWAY_DEAD_LETTER_STREAM")]
    pub dead_letter_stream: Option<String>,

    /// Field of a stream entry that holds the wire-format JSON payload.
    #[arg(long, env = "TRACKWAY_PAYLOAD_FIELD", default_value = "payload")]
    pub payload_field: String,

    /// Entries per read and per `trackway.ingest_batch` call (1–10000).
    #[arg(long, env = "TRACKWAY_BATCH_SIZE", default_value = "1000")]
    pub batch_size: String,

    /// Byte budget of one read from the stream (65536–1073741824): entries are read until their fields add
    /// up to this, so large entries make smaller batches; a batch holds at most this plus one entry.
    #[arg(long, env = "TRACKWAY_BATCH_BYTES", default_value = "16777216")]
    pub batch_bytes: String,

    /// Payloads larger than this many bytes are dead-lettered as `invalid` without being sent to the
    /// database (1–1073741823). Keep it equal to the database's `trackway.max_payload_bytes` (default 1 MiB).
    #[arg(long, env = "TRACKWAY_MAX_PAYLOAD_BYTES", default_value = "1048576")]
    pub max_payload_bytes: String,

    /// Longest wait for one `trackway.ingest_batch` answer, in milliseconds (100–3600000). After it the
    /// relay cancels the statement on the server, drops the connection and retries the batch in halves.
    #[arg(long, env = "TRACKWAY_INGEST_TIMEOUT_MS", default_value = "120000")]
    pub ingest_timeout_ms: String,

    /// How long one read waits for new entries, in milliseconds (1–60000). Shutdown waits at most this
    /// long for a read in flight.
    #[arg(long, env = "TRACKWAY_BLOCK_MS", default_value = "2000")]
    pub block_ms: String,

    /// An entry is dead-lettered (reason `max_deliveries`) once this many attempts to store it got no
    /// answer — the relay, or its database connection, died while the entry was in flight (≥ 1). Reads that
    /// never reached the database (database down, login refused, restarts during an outage) and refusals do
    /// not count. Counts are kept in the hash `<stream>:attempts`.
    #[arg(long, env = "TRACKWAY_MAX_DELIVERIES", default_value = "5")]
    pub max_deliveries: String,

    /// Entries pending on another consumer for longer than this (milliseconds, ≥ 1000) are taken over.
    #[arg(long, env = "TRACKWAY_CLAIM_IDLE_MS", default_value = "60000")]
    pub claim_idle_ms: String,

    /// Address of the admin HTTP server (/metrics, /healthz, /readyz).
    #[arg(long, env = "TRACKWAY_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin_addr: String,

    /// Log format: `json`, `text`, or `auto` (text on a terminal, JSON otherwise). Filter with RUST_LOG.
    #[arg(long, env = "TRACKWAY_LOG_FORMAT", default_value = "auto")]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// Validated configuration of one relay.
#[derive(Clone)]
pub struct Config {
    /// Where the positions go.
    pub database: tokio_postgres::Config,
    /// Where the positions come from.
    pub redis: redis::ConnectionInfo,
    /// Names in Redis: stream, group, consumer, dead-letter stream, payload field.
    pub names: StreamNames,
    /// Entries per read and per database round trip.
    pub batch_size: usize,
    /// Byte budget of one read (a batch holds at most this plus one entry).
    pub batch_bytes: usize,
    /// Payloads above this are dead-lettered as `invalid` without a database round trip.
    pub max_payload_bytes: usize,
    /// Longest wait for one `ingest_batch` answer; then the statement is cancelled and the batch split.
    pub ingest_timeout: Duration,
    /// Blocking read timeout.
    pub block: Duration,
    /// Unanswered store attempts after which an entry is dead-lettered.
    pub max_deliveries: u64,
    /// Idle time after which another consumer's pending entries are claimed.
    pub claim_idle: Duration,
    /// Admin HTTP address (`main` binds it; tests pass their own listener to `run`).
    pub admin_addr: SocketAddr,
    /// Log output format.
    pub log_format: LogFormat,
}

/// The Redis names the relay works with.
#[derive(Clone, Debug)]
pub struct StreamNames {
    /// Stream read by the consumer group.
    pub stream: String,
    /// Consumer group name.
    pub group: String,
    /// This relay's consumer name.
    pub consumer: String,
    /// Stream that receives dead letters.
    pub dead_letter: String,
    /// Hash of unanswered store attempts per entry id (`<stream>:attempts`).
    pub attempts: String,
    /// Entry field holding the payload.
    pub payload_field: String,
}

impl Settings {
    /// Checks every value; the error names the setting and never repeats a connection string.
    pub fn validate(self) -> Result<Config, Error> {
        let bad = |name: &str, why: String| Error::Config(format!("{name} (--{}): {why}", flag_of(name)));
        let database = tokio_postgres::Config::from_str(&self.database_url)
            .map_err(|e| bad("DATABASE_URL", format!("not a valid PostgreSQL connection string ({e})")))?;
        if database.get_user().is_none() {
            return Err(bad("DATABASE_URL", "names no user (add user=… or postgres://user@host/db)".into()));
        }
        let redis = redis::IntoConnectionInfo::into_connection_info(self.redis_url.as_str())
            .map_err(|e| bad("REDIS_URL", format!("not a valid Redis URL ({e})")))?;
        for (name, value) in [
            ("TRACKWAY_STREAM", &self.stream),
            ("TRACKWAY_GROUP", &self.group),
            ("TRACKWAY_PAYLOAD_FIELD", &self.payload_field),
        ] {
            if value.is_empty() {
                return Err(bad(name, "must not be empty".into()));
            }
        }
        let number = |name: &str, text: &str, range: std::ops::RangeInclusive<u64>| {
            let value: u64 = text.trim().parse().map_err(|_| bad(name, format!("{text:?} is not a whole number")))?;
            if range.contains(&value) {
                Ok(value)
            } else {
                Err(bad(name, format!("{value} is outside {}–{}", range.start(), range.end())))
            }
        };
        let batch_size = number("TRACKWAY_BATCH_SIZE", &self.batch_size, 1..=10_000)?;
        let batch_bytes = number("TRACKWAY_BATCH_BYTES", &self.batch_bytes, 65_536..=1 << 30)?;
        let max_payload_bytes = number("TRACKWAY_MAX_PAYLOAD_BYTES", &self.max_payload_bytes, 1..=(1 << 30) - 1)?;
        let ingest_timeout_ms = number("TRACKWAY_INGEST_TIMEOUT_MS", &self.ingest_timeout_ms, 100..=3_600_000)?;
        let block_ms = number("TRACKWAY_BLOCK_MS", &self.block_ms, 1..=60_000)?;
        let max_deliveries = number("TRACKWAY_MAX_DELIVERIES", &self.max_deliveries, 1..=1_000_000)?;
        let claim_idle_ms = number("TRACKWAY_CLAIM_IDLE_MS", &self.claim_idle_ms, 1000..=86_400_000)?;
        let admin_addr = self.admin_addr.parse().map_err(|_| {
            bad("TRACKWAY_ADMIN_ADDR", format!("{:?} is not an address like 127.0.0.1:9090", self.admin_addr))
        })?;
        let consumer = match self.consumer {
            Some(c) if c.is_empty() => return Err(bad("TRACKWAY_CONSUMER", "must not be empty".into())),
            Some(c) => c,
            None => default_consumer(),
        };
        let dead_letter = self.dead_letter_stream.unwrap_or_else(|| format!("{}:dead", self.stream));
        let attempts = format!("{}:attempts", self.stream);
        if dead_letter == self.stream || dead_letter == attempts {
            return Err(bad(
                "TRACKWAY_DEAD_LETTER_STREAM",
                format!("must differ from TRACKWAY_STREAM and {attempts:?}"),
            ));
        }
        Ok(Config {
            database,
            redis,
            names: StreamNames {
                stream: self.stream,
                group: self.group,
                consumer,
                dead_letter,
                attempts,
                payload_field: self.payload_field,
            },
            batch_size: usize::try_from(batch_size).unwrap_or(1000),
            batch_bytes: usize::try_from(batch_bytes).unwrap_or(1 << 24),
            max_payload_bytes: usize::try_from(max_payload_bytes).unwrap_or(1 << 20),
            ingest_timeout: Duration::from_millis(ingest_timeout_ms),
            block: Duration::from_millis(block_ms),
            max_deliveries,
            claim_idle: Duration::from_millis(claim_idle_ms),
            admin_addr,
            log_format: self.log_format,
        })
    }
}

/// The command-line flag of an environment variable (`TRACKWAY_BATCH_SIZE` → `batch-size`).
fn flag_of(env: &str) -> String {
    env.strip_prefix("TRACKWAY_").unwrap_or(env).to_ascii_lowercase().replace('_', "-")
}

/// `<host name>-<process id>`: unique among live relays, new after every restart.
fn default_consumer() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "relay".to_owned());
    format!("{host}-{}", std::process::id())
}

impl fmt::Debug for Config {
    /// Shows where the relay connects without any password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("database", &describe_database(&self.database))
            .field("redis", &self.redis.addr().to_string())
            .field("names", &self.names)
            .field("batch_size", &self.batch_size)
            .field("batch_bytes", &self.batch_bytes)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("ingest_timeout", &self.ingest_timeout)
            .field("block", &self.block)
            .field("max_deliveries", &self.max_deliveries)
            .field("claim_idle", &self.claim_idle)
            .field("admin_addr", &self.admin_addr)
            .finish()
    }
}

/// `user@host:port/dbname`, for logs.
pub fn describe_database(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{}@{host}:{port}/{}", config.get_user().unwrap_or("?"), config.get_dbname().unwrap_or("?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, Error> {
        let mut argv = vec!["trackway-relay"];
        argv.extend_from_slice(args);
        Settings::try_parse_from(argv).map_err(|e| Error::Config(e.to_string()))?.validate()
    }

    #[test]
    fn defaults_are_valid() {
        let config = parse(&[]).expect("defaults");
        assert_eq!(config.names.stream, "positions");
        assert_eq!(config.names.dead_letter, "positions:dead");
        assert_eq!(config.names.attempts, "positions:attempts");
        assert_eq!(config.batch_size, 1000);
        assert_eq!(config.ingest_timeout, Duration::from_secs(120));
        assert_eq!((config.batch_bytes, config.max_payload_bytes), (16 << 20, 1 << 20));
        assert!(config.names.consumer.ends_with(&format!("-{}", std::process::id())));
    }

    #[test]
    fn bad_values_name_the_setting_and_hide_secrets() {
        let err = parse(&["--database-url", "postgres://u:hunter2@h:notaport/db"]).unwrap_err().to_string();
        assert!(err.starts_with("DATABASE_URL (--database-url): "), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        for (flag, value, name) in [
            ("--batch-size", "0", "TRACKWAY_BATCH_SIZE"),
            ("--batch-bytes", "1000", "TRACKWAY_BATCH_BYTES"),
            ("--max-payload-bytes", "0", "TRACKWAY_MAX_PAYLOAD_BYTES"),
            ("--ingest-timeout-ms", "5", "TRACKWAY_INGEST_TIMEOUT_MS"),
            ("--ingest-timeout-ms", "later", "TRACKWAY_INGEST_TIMEOUT_MS"),
            ("--block-ms", "70000", "TRACKWAY_BLOCK_MS"),
            ("--block-ms", "soon", "TRACKWAY_BLOCK_MS"),
            ("--max-deliveries", "0", "TRACKWAY_MAX_DELIVERIES"),
            ("--claim-idle-ms", "10", "TRACKWAY_CLAIM_IDLE_MS"),
            ("--admin-addr", "nowhere", "TRACKWAY_ADMIN_ADDR"),
            ("--redis-url", "http://x", "REDIS_URL"),
        ] {
            let err = parse(&[flag, value]).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{name} ({flag}): ")), "{flag} {value}: {err}");
        }
    }

    #[test]
    fn help_documents_every_setting() {
        use clap::CommandFactory;
        let help = Settings::command().render_long_help().to_string();
        for name in [
            "DATABASE_URL",
            "REDIS_URL",
            "TRACKWAY_STREAM",
            "TRACKWAY_GROUP",
            "TRACKWAY_CONSUMER",
            "TRACKWAY_DEAD_LETTER_STREAM",
            "TRACKWAY_PAYLOAD_FIELD",
            "TRACKWAY_BATCH_SIZE",
            "TRACKWAY_BATCH_BYTES",
            "TRACKWAY_MAX_PAYLOAD_BYTES",
            "TRACKWAY_INGEST_TIMEOUT_MS",
            "TRACKWAY_BLOCK_MS",
            "TRACKWAY_MAX_DELIVERIES",
            "TRACKWAY_CLAIM_IDLE_MS",
            "TRACKWAY_ADMIN_ADDR",
            "RUST_LOG",
        ] {
            assert!(help.contains(name), "--help does not mention {name}:\n{help}");
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        let config =
            parse(&["--database-url", "postgres://u:hunter2@db:5433/x", "--redis-url", "redis://:sekrit@r:6379"])
                .expect("valid");
        let shown = format!("{config:?}");
        assert!(shown.contains("u@db:5433/x"), "{shown}");
        assert!(!shown.contains("hunter2") && !shown.contains("sekrit"), "{shown}");
    }
}
