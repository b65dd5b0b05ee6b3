//! Configuration: every setting is an environment variable and a command-line flag (the flag wins), with a
//! default where one is safe, and one clear error line for a bad value.
//!
//! Connection strings may carry passwords, so they are never echoed: not by `--help` (`hide_env_values`),
//! not in validation errors, not by `Debug`.

use std::{ffi::OsStr, fmt, net::SocketAddr, ops::RangeInclusive, str::FromStr, sync::Arc, time::Duration};

use clap::{builder::TypedValueParser, Parser};

use trackway_ingest::IngestConfig;
use trackway_live::{AuthConfig, LiveConfig, Origins, ReplayLimits, TileUrl};
use trackway_redis::StreamNames;

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

    /// Redis connection URL; with TRACKWAY_REDIS_CLUSTER=true, a comma-separated list of Redis Cluster nodes
    /// (any of them; the relay learns the rest).
    #[arg(long, env = "REDIS_URL", hide_env_values = true, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// `true` when REDIS_URL names a Redis Cluster: commands go to the node serving their key's slot,
    /// following MOVED and ASK, and the relay carries on by itself after a failover or a slot migration.
    #[arg(
        long,
        env = "TRACKWAY_REDIS_CLUSTER",
        value_name = "BOOL",
        default_value = "false",
        value_parser = yes_or_no(),
        action = clap::ArgAction::Set
    )]
    pub redis_cluster: bool,

    /// Stream the ingestion service writes positions to.
    #[arg(long, env = "TRACKWAY_STREAM", default_value = "positions")]
    pub stream: String,

    /// Shards of the stream (0–1024): 0 reads TRACKWAY_STREAM itself; N reads `<stream>:{0}` …
    /// `<stream>:{N-1}` (each device's positions in its shard, chosen by the producer: README "Scaling
    /// out"), one consumer per shard, each shard with its own dead letters (`<stream>:{i}:dead`) and attempts.
    #[arg(long, env = "TRACKWAY_STREAM_SHARDS", default_value = "0", value_parser = whole::<u32>(0..=1024))]
    pub stream_shards: u32,

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
    #[arg(long, env = "TRACKWAY_BATCH_SIZE", default_value = "1000", value_parser = whole::<usize>(1..=10_000))]
    pub batch_size: usize,

    /// Byte budget of one read from the stream (65536–1073741824): entries are read until their fields add
    /// up to this, so large entries make smaller batches; a batch holds at most this plus one entry.
    #[arg(
        long,
        env = "TRACKWAY_BATCH_BYTES",
        default_value = "16777216",
        value_parser = whole::<usize>(65_536..=1 << 30),
    )]
    pub batch_bytes: usize,

    /// Payloads larger than this many bytes are dead-lettered as `invalid` without being sent to the
    /// database (1–1073741823). Keep it equal to the database's `trackway.max_payload_bytes` (default 1 MiB).
    #[arg(
        long,
        env = "TRACKWAY_MAX_PAYLOAD_BYTES",
        default_value = "1048576",
        value_parser = whole::<usize>(1..=(1 << 30) - 1),
    )]
    pub max_payload_bytes: usize,

    /// Longest wait for one `trackway.ingest_batch` answer, in milliseconds (100–3600000). After it the
    /// relay cancels the statement on the server, drops the connection and retries the batch in halves.
    #[arg(
        long = "ingest-timeout-ms",
        env = "TRACKWAY_INGEST_TIMEOUT_MS",
        value_name = "MS",
        default_value = "120000",
        value_parser = millis(100..=3_600_000),
    )]
    pub ingest_timeout: Duration,

    /// How long one read waits for new entries, in milliseconds (1–60000). Shutdown waits at most this
    /// long for a read in flight.
    #[arg(
        long = "block-ms",
        env = "TRACKWAY_BLOCK_MS",
        value_name = "MS",
        default_value = "2000",
        value_parser = millis(1..=60_000),
    )]
    pub block: Duration,

    /// An entry is dead-lettered (reason `max_deliveries`) once this many attempts to store it got no
    /// answer — the relay, or its database connection, died while the entry was in flight (≥ 1). Reads that
    /// never reached the database (database down, login refused, restarts during an outage) and refusals do
    /// not count. Counts are kept in the hash `<stream>:attempts`.
    #[arg(long, env = "TRACKWAY_MAX_DELIVERIES", default_value = "5", value_parser = whole::<u64>(1..=1_000_000))]
    pub max_deliveries: u64,

    /// Entries pending on another consumer for longer than this (milliseconds, ≥ 1000) are taken over.
    #[arg(
        long = "claim-idle-ms",
        env = "TRACKWAY_CLAIM_IDLE_MS",
        value_name = "MS",
        default_value = "60000",
        value_parser = millis(1000..=86_400_000),
    )]
    pub claim_idle: Duration,

    /// Address of the admin HTTP server (/metrics, /healthz, /readyz).
    #[arg(
        long,
        env = "TRACKWAY_ADMIN_ADDR",
        value_name = "ADDRESS",
        default_value = "127.0.0.1:9090",
        value_parser = address("127.0.0.1:9090"),
    )]
    pub admin_addr: SocketAddr,

    /// Address of the live WebSocket endpoint (`/live`), or `off` for a relay that only ingests.
    #[arg(
        long,
        env = "TRACKWAY_LIVE_ADDR",
        value_name = "ADDRESS",
        default_value = "0.0.0.0:8080",
        value_parser = live_address(),
    )]
    pub live_addr: LiveAddr,

    /// How live clients authenticate: `jwt` (HS256 tokens signed with TRACKWAY_JWT_SECRET, Directus's
    /// SECRET), `directus` (each token is checked by Directus at TRACKWAY_DIRECTUS_URL) or `none` (local
    /// demos only: anyone may watch everything).
    #[arg(long, env = "TRACKWAY_AUTH", default_value = "jwt")]
    pub auth: AuthMode,

    /// HMAC secret of `jwt` mode: the `SECRET` Directus signs its access tokens with.
    #[arg(long, env = "TRACKWAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// The `iss` claim tokens must carry in `jwt` mode.
    #[arg(long, env = "TRACKWAY_JWT_ISSUER", default_value = "directus")]
    pub jwt_issuer: String,

    /// Base URL of Directus for `directus` mode (http://host:8055).
    #[arg(long, env = "TRACKWAY_DIRECTUS_URL")]
    pub directus_url: Option<String>,

    /// Longest wait for Directus to answer a token check, in milliseconds (100–60000); no answer refuses.
    #[arg(
        long = "directus-timeout-ms",
        env = "TRACKWAY_DIRECTUS_TIMEOUT_MS",
        value_name = "MS",
        default_value = "3000",
        value_parser = millis(100..=60_000),
    )]
    pub directus_timeout: Duration,

    /// How long a token Directus accepted is trusted without asking again, in seconds (1–86400); never
    /// longer than the token itself lives. Connections with tokens that do not expire are checked again
    /// this often.
    #[arg(
        long = "directus-cache-seconds",
        env = "TRACKWAY_DIRECTUS_CACHE_SECONDS",
        value_name = "SECONDS",
        default_value = "60",
        value_parser = seconds(1..=86_400),
    )]
    pub directus_cache: Duration,

    /// Most open live connections (1–1000000); more are refused with HTTP 503.
    #[arg(
        long,
        env = "TRACKWAY_LIVE_MAX_CONNECTIONS",
        default_value = "20000",
        value_parser = whole::<usize>(1..=1_000_000),
    )]
    pub live_max_connections: usize,

    /// Most connections to the live address not yet authenticated (1–1000000): from the TCP accept until
    /// their session has a valid token (at most TRACKWAY_LIVE_AUTH_TIMEOUT_MS after the upgrade). More are
    /// closed at once, so anonymous connections cannot take the slots and descriptors of authenticated ones.
    #[arg(
        long,
        env = "TRACKWAY_LIVE_MAX_UNAUTHENTICATED",
        default_value = "1000",
        value_parser = whole::<usize>(1..=1_000_000),
    )]
    pub live_max_unauthenticated: usize,

    /// Most open live connections of one user (one `id` claim), 1–1000000; more are closed with 4010.
    #[arg(
        long,
        env = "TRACKWAY_LIVE_MAX_CONNECTIONS_PER_USER",
        default_value = "100",
        value_parser = whole::<usize>(1..=1_000_000),
    )]
    pub live_max_connections_per_user: usize,

    /// Most bytes of answers (snapshots included) and replayed positions queued unread for one connection
    /// (65536–1073741824); past it the connection is closed as too slow (4008). At least twice the
    /// largest replay (`TRACKWAY_LIVE_MAX_REPLAY` positions) or snapshot a client may ask for.
    #[arg(
        long,
        env = "TRACKWAY_LIVE_MAX_QUEUED_BYTES",
        default_value = "16777216",
        value_parser = whole::<usize>(65_536..=1 << 30),
    )]
    pub live_max_queued_bytes: usize,

    /// Longest a `subscribe` waits for its snapshot or replay, in milliseconds (100–600000); then it is
    /// answered `unavailable` (the client may ask again) while the connection carries on.
    #[arg(
        long = "live-subscribe-timeout-ms",
        env = "TRACKWAY_LIVE_SUBSCRIBE_TIMEOUT_MS",
        value_name = "MS",
        default_value = "10000",
        value_parser = millis(100..=600_000),
    )]
    pub live_subscribe_timeout: Duration,

    /// Longest wait for a request's head (method, path, headers) on the live address, in milliseconds
    /// (100–600000); a client slower than that is disconnected.
    #[arg(
        long = "live-header-timeout-ms",
        env = "TRACKWAY_LIVE_HEADER_TIMEOUT_MS",
        value_name = "MS",
        default_value = "10000",
        value_parser = millis(100..=600_000),
    )]
    pub live_header_timeout: Duration,

    /// Most subscriptions one connection may hold (1–100000).
    #[arg(
        long,
        env = "TRACKWAY_LIVE_MAX_SUBSCRIPTIONS",
        default_value = "100",
        value_parser = whole::<usize>(1..=100_000),
    )]
    pub live_max_subscriptions: usize,

    /// Largest message a client may send, in bytes (256–16777216); larger closes the connection (1009).
    #[arg(
        long,
        env = "TRACKWAY_LIVE_MAX_MESSAGE_BYTES",
        default_value = "65536",
        value_parser = whole::<usize>(256..=1 << 24),
    )]
    pub live_max_message_bytes: usize,

    /// A connection that has not authenticated this many milliseconds after opening is closed (100–600000).
    #[arg(
        long = "live-auth-timeout-ms",
        env = "TRACKWAY_LIVE_AUTH_TIMEOUT_MS",
        value_name = "MS",
        default_value = "10000",
        value_parser = millis(100..=600_000),
    )]
    pub live_auth_timeout: Duration,

    /// The server pings every client this often, in milliseconds (100–3600000); a client that has sent
    /// nothing (not even a pong) for two intervals is dropped.
    #[arg(
        long = "live-ping-ms",
        env = "TRACKWAY_LIVE_PING_MS",
        value_name = "MS",
        default_value = "30000",
        value_parser = millis(100..=3_600_000),
    )]
    pub live_ping: Duration,

    /// Live positions a client behind may have queued, in distinct devices (1–1000000): past twice this its
    /// queued positions of each device are replaced by the newest, and a client with more distinct devices
    /// queued than this is closed.
    #[arg(long, env = "TRACKWAY_LIVE_QUEUE", default_value = "1024", value_parser = whole::<usize>(1..=1_000_000))]
    pub live_queue: usize,

    /// A client whose connection accepts no data for this many milliseconds is dropped (100–600000).
    #[arg(
        long = "live-send-timeout-ms",
        env = "TRACKWAY_LIVE_SEND_TIMEOUT_MS",
        value_name = "MS",
        default_value = "10000",
        value_parser = millis(100..=600_000),
    )]
    pub live_send_timeout: Duration,

    /// Most positions a `subscribe` with `since` replays (1–1000000); further back, the client gets the
    /// error `resume_too_far` and starts again from a snapshot.
    #[arg(
        long,
        env = "TRACKWAY_LIVE_MAX_REPLAY",
        default_value = "10000",
        value_parser = whole::<usize>(1..=1_000_000),
    )]
    pub live_max_replay: usize,

    /// Most rows (of every device) stored after a `since` for its replay to be read (1000–1000000000):
    /// finding one target's positions walks every row after the cursor (about 0.3 µs each), so a `since`
    /// further back gets `resume_too_far` at once instead of holding an answer connection until its
    /// statement timeout.
    #[arg(
        long,
        env = "TRACKWAY_LIVE_MAX_REPLAY_BEHIND",
        default_value = "1000000",
        value_parser = whole::<i64>(1_000..=1_000_000_000),
    )]
    pub live_max_replay_behind: i64,

    /// Database connections that answer `subscribe` (snapshots and replays) beside the live feed, each
    /// running one batch at a time (1–64); subscriptions wait for a free one.
    #[arg(long, env = "TRACKWAY_LIVE_ANSWER_CONNECTIONS", default_value = "4", value_parser = whole::<usize>(1..=64))]
    pub live_answer_connections: usize,

    /// The relay reads new positions at least this often, in milliseconds (10–60000), even when no
    /// notification woke it (with `trackway.announce = off` this is the live latency).
    #[arg(
        long = "live-poll-ms",
        env = "TRACKWAY_LIVE_POLL_MS",
        value_name = "MS",
        default_value = "1000",
        value_parser = millis(10..=60_000),
    )]
    pub live_poll: Duration,

    /// Optional map tiles for the live map page (`/` on the live address): an http(s) URL template with
    /// `{z}`, `{x}` and `{y}`, e.g. `https://tiles.example.com/{z}/{x}/{y}.png`. Without it the page draws
    /// an offline coordinate grid and loads nothing from other hosts; with it, the page's
    /// Content-Security-Policy allows images from that origin only.
    #[arg(long, env = "TRACKWAY_MAP_TILE_URL")]
    pub map_tile_url: Option<String>,

    /// Web origins whose pages may open `/live`, comma-separated, e.g.
    /// `https://maps.example.com,https://ops.example.com`; `*` allows any. A browser sends its page's
    /// origin with the handshake: one not allowed gets HTTP 403, so another site cannot use a visitor's
    /// browser to open the endpoint. The relay's own map page is allowed without being listed when it is
    /// opened by IP address or as `localhost`; opened by any other host name (behind a proxy, say), list
    /// that origin here (a name not listed could be an attacker's, pointed at this address by DNS
    /// rebinding). Clients that send no `Origin` (services, CLI tools) are not affected.
    #[arg(long, env = "TRACKWAY_LIVE_ORIGINS", default_value = "")]
    pub live_origins: String,

    /// `true` lets `TRACKWAY_AUTH=none` serve a live address other than loopback (any page or host that
    /// reaches it then sees every position without a token). Without it, `none` with an address such as
    /// 0.0.0.0 is refused at start. For a container whose port is published to the host's loopback only.
    #[arg(
        long,
        env = "TRACKWAY_LIVE_UNAUTHENTICATED_REMOTE",
        value_name = "BOOL",
        default_value = "false",
        value_parser = yes_or_no(),
        action = clap::ArgAction::Set,
    )]
    pub live_unauthenticated_remote: bool,

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

/// How live clients prove who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// HS256 JWTs (Directus access tokens) checked with the shared secret.
    Jwt,
    /// Tokens checked by Directus itself (`GET /users/me`).
    Directus,
    /// No authentication: everyone may watch everything (local demos only).
    None,
}

/// Validated configuration of one relay: each room's part, and what the binary itself uses. `Debug` shows
/// no password (tokio-postgres and redis redact their own; see `debug_never_shows_the_password`).
#[derive(Clone)]
pub struct Config {
    /// Where the positions go (both sides connect with it).
    pub database: tokio_postgres::Config,
    /// The ingest side: Redis, the consumer group and the batch rules.
    pub ingest: IngestConfig,
    /// Admin HTTP address (`main` binds it; tests pass their own listener to `run`).
    pub admin_addr: SocketAddr,
    /// The live side, `None` when `TRACKWAY_LIVE_ADDR=off`.
    pub live: Option<LiveConfig>,
    /// Log output format.
    pub log_format: LogFormat,
}

impl Settings {
    /// The configuration from `args` (the process's, or a test's) and the environment. A request for
    /// `--help` or `--version` and a malformed command line are [`Error::Usage`] (clap prints them); a bad
    /// value is [`Error::Config`], naming the setting.
    pub fn load<I, T>(args: I) -> Result<Config, Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let settings = Settings::try_parse_from(args).map_err(|e| match e.kind() {
            // A rule's own message ("error: " is clap's prefix).
            clap::error::ErrorKind::ValueValidation => {
                Error::Config(e.to_string().trim_start_matches("error: ").trim_end().to_owned())
            }
            _ => Error::Usage(e),
        })?;
        settings.validate()
    }

    /// Checks what the parsers could not (rules between settings, connection strings); the error names the
    /// setting and never repeats a connection string.
    pub fn validate(self) -> Result<Config, Error> {
        let bad = setting_error;
        let database = tokio_postgres::Config::from_str(&self.database_url)
            .map_err(|e| bad("DATABASE_URL", format!("not a valid PostgreSQL connection string ({e})")))?;
        if database.get_user().is_none() {
            return Err(bad("DATABASE_URL", "names no user (add user=… or postgres://user@host/db)".into()));
        }
        let redis = trackway_redis::Endpoint::parse(&self.redis_url, self.redis_cluster).map_err(|e| {
            let what = if self.redis_cluster { "not a list of Redis URLs" } else { "not a valid Redis URL" };
            bad("REDIS_URL", format!("{what} ({e})"))
        })?;
        for (name, value) in [
            ("TRACKWAY_STREAM", &self.stream),
            ("TRACKWAY_GROUP", &self.group),
            ("TRACKWAY_PAYLOAD_FIELD", &self.payload_field),
        ] {
            if value.is_empty() {
                return Err(bad(name, "must not be empty".into()));
            }
        }
        let live = self.live()?;
        let consumer = match self.consumer.as_deref() {
            Some("") => return Err(bad("TRACKWAY_CONSUMER", "must not be empty".into())),
            Some(c) => c.to_owned(),
            None => default_consumer(),
        };
        let shards = self.shard_names(consumer)?;
        let ingest = IngestConfig {
            redis,
            shards,
            batch_size: self.batch_size,
            batch_bytes: self.batch_bytes,
            max_payload_bytes: self.max_payload_bytes,
            ingest_timeout: self.ingest_timeout,
            block: self.block,
            max_deliveries: self.max_deliveries,
            claim_idle: self.claim_idle,
        };
        Ok(Config { database, ingest, admin_addr: self.admin_addr, live, log_format: self.log_format })
    }

    /// The Redis names of each shard of the stream: the stream itself when it is not sharded, else
    /// `<stream>:{i}` for i in 0..N; each with its dead letters (`<stream>:dead`, or
    /// `<TRACKWAY_DEAD_LETTER_STREAM>:{i}` when sharded) and attempts (`<stream>:attempts`).
    fn shard_names(&self, consumer: String) -> Result<Vec<StreamNames>, Error> {
        let bad = setting_error;
        let sharded = self.stream_shards > 0;
        if sharded && (self.stream.contains('{') || self.stream.contains('}')) {
            return Err(bad(
                "TRACKWAY_STREAM",
                "with TRACKWAY_STREAM_SHARDS the shards are <stream>:{i}: the name must not contain { or }".into(),
            ));
        }
        let streams: Vec<String> = if sharded {
            (0..self.stream_shards).map(|i| format!("{}:{{{i}}}", self.stream)).collect()
        } else {
            vec![self.stream.clone()]
        };
        let mut shards = Vec::with_capacity(streams.len());
        for (i, stream) in streams.into_iter().enumerate() {
            let dead_letter = match (&self.dead_letter_stream, sharded) {
                (Some(dead), true) => format!("{dead}:{{{i}}}"),
                (Some(dead), false) => dead.clone(),
                (None, _) => format!("{stream}:dead"),
            };
            let attempts = format!("{stream}:attempts");
            if dead_letter == stream || dead_letter == attempts {
                return Err(bad(
                    "TRACKWAY_DEAD_LETTER_STREAM",
                    format!("must differ from TRACKWAY_STREAM and {attempts:?}"),
                ));
            }
            let tag = trackway_redis::hash_tag(&stream);
            if self.redis_cluster
                && (trackway_redis::hash_tag(&dead_letter) != tag || trackway_redis::hash_tag(&attempts) != tag)
            {
                // The settle and claim scripts touch the stream, its dead letters and its attempts at once:
                // in a cluster all three must hash to one slot.
                return Err(bad(
                    "TRACKWAY_STREAM",
                    format!(
                        "with TRACKWAY_REDIS_CLUSTER=true the stream, its dead letters ({dead_letter:?}) and its \
                         attempts ({attempts:?}) must share a hash tag, e.g. TRACKWAY_STREAM=positions:{{0}} (or \
                         TRACKWAY_STREAM_SHARDS, whose shards are tagged)"
                    ),
                ));
            }
            shards.push(StreamNames {
                stream,
                group: self.group.clone(),
                consumer: consumer.clone(),
                dead_letter,
                attempts,
                payload_field: self.payload_field.clone(),
            });
        }
        Ok(shards)
    }

    /// The live settings, checked like the rest (`None` when the live side is off).
    fn live(&self) -> Result<Option<LiveConfig>, Error> {
        let bad = setting_error;
        let LiveAddr::At(addr) = self.live_addr else {
            return Ok(None);
        };
        let auth = match self.auth {
            AuthMode::Jwt => {
                let secret = self.jwt_secret.clone().filter(|s| !s.is_empty()).ok_or_else(|| {
                    bad("TRACKWAY_JWT_SECRET", "is required when TRACKWAY_AUTH=jwt (Directus's SECRET)".into())
                })?;
                if self.jwt_issuer.is_empty() {
                    return Err(bad("TRACKWAY_JWT_ISSUER", "must not be empty".into()));
                }
                AuthConfig::Jwt { secret, issuer: self.jwt_issuer.clone() }
            }
            AuthMode::Directus => {
                let url = self.directus_url.clone().unwrap_or_default();
                let url = url.trim_end_matches('/').to_owned();
                if url.starts_with("https://") {
                    // Checked here, at start: the live side would otherwise fail to start on its own
                    // while ingestion carried on.
                    return Err(bad(
                        "TRACKWAY_DIRECTUS_URL",
                        "https:// is not supported (the relay is built without TLS): reach Directus over \
                         http:// on the same host or a private network"
                            .into(),
                    ));
                }
                if !url.starts_with("http://") || url.len() < 10 {
                    return Err(bad(
                        "TRACKWAY_DIRECTUS_URL",
                        "is required when TRACKWAY_AUTH=directus: an http:// URL".into(),
                    ));
                }
                AuthConfig::Directus { url, timeout: self.directus_timeout, cache_ttl: self.directus_cache }
            }
            AuthMode::None => {
                if !self.live_unauthenticated_remote && !addr.ip().is_loopback() {
                    return Err(bad(
                        "TRACKWAY_LIVE_ADDR",
                        format!(
                            "{addr} is reachable from other hosts, and TRACKWAY_AUTH=none would show them every \
                             position without a token: bind a loopback address such as 127.0.0.1:8080, use \
                             TRACKWAY_AUTH=jwt or directus, or set TRACKWAY_LIVE_UNAUTHENTICATED_REMOTE=true"
                        ),
                    ));
                }
                AuthConfig::None
            }
        };
        let map_tile_url = match self.map_tile_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(TileUrl::parse(text).map_err(|why| bad("TRACKWAY_MAP_TILE_URL", why))?),
        };
        let origins = Origins::parse(&self.live_origins).map_err(|why| bad("TRACKWAY_LIVE_ORIGINS", why))?;
        Ok(Some(LiveConfig {
            map_tile_url,
            origins,
            addr,
            auth,
            max_connections: self.live_max_connections,
            max_unauthenticated: self.live_max_unauthenticated,
            max_connections_per_user: self.live_max_connections_per_user,
            header_timeout: self.live_header_timeout,
            max_queued_bytes: self.live_max_queued_bytes,
            subscribe_timeout: self.live_subscribe_timeout,
            max_subscriptions: self.live_max_subscriptions,
            max_message_bytes: self.live_max_message_bytes,
            auth_timeout: self.live_auth_timeout,
            ping_interval: self.live_ping,
            queue: self.live_queue,
            send_timeout: self.live_send_timeout,
            replay: ReplayLimits { positions: self.live_max_replay, rows_behind: self.live_max_replay_behind },
            answer_connections: self.live_answer_connections,
            poll_interval: self.live_poll,
        }))
    }
}

/// A bad setting: the error names its variable and its flag.
fn setting_error(name: &str, why: String) -> Error {
    Error::Config(format!("{name} (--{}): {why}", flag_of(name)))
}

/// Where the live side listens, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveAddr {
    /// `TRACKWAY_LIVE_ADDR=off`: a relay that only ingests.
    Off,
    /// The address to bind.
    At(SocketAddr),
}

/// A setting's value parser: one rule from text to the type the relay uses, run by clap for the flag and
/// the variable alike, at start. Its error names the variable and the flag (never the value of a hidden
/// one: the connection strings are not parsed here) and the rule that was broken.
#[derive(Clone)]
struct Rule<T>(Check<T>);

/// A rule's function: the value, or why the text is not one.
type Check<T> = Arc<dyn Fn(&str) -> Result<T, String> + Send + Sync>;

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Rule<T> {
    type Value = T;

    fn parse_ref(&self, _: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<T, clap::Error> {
        let text = value.to_str().ok_or_else(|| "is not UTF-8".to_owned());
        text.and_then(|text| (self.0)(text)).map_err(|why| {
            let env = arg.and_then(clap::Arg::get_env).map(|e| e.to_string_lossy().into_owned());
            let flag = arg.and_then(clap::Arg::get_long).unwrap_or("?");
            let setting = env.map_or_else(|| format!("--{flag}"), |env| format!("{env} (--{flag})"));
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{setting}: {why}\n"))
        })
    }
}

/// A rule from a function.
fn rule<T>(check: impl Fn(&str) -> Result<T, String> + Send + Sync + 'static) -> Rule<T> {
    Rule(Arc::new(check))
}

/// A whole number within `range`, straight into the type the relay uses.
fn whole<T>(range: RangeInclusive<T>) -> Rule<T>
where
    T: FromStr + PartialOrd + fmt::Display + Send + Sync + 'static,
{
    rule(move |text| {
        let value: T = text.trim().parse().map_err(|_| format!("{text:?} is not a whole number"))?;
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(format!("{value} is outside {}–{}", range.start(), range.end()))
        }
    })
}

/// A duration given in milliseconds, within `range`.
fn millis(range: RangeInclusive<u64>) -> Rule<Duration> {
    let whole = whole(range).0;
    rule(move |text| whole(text).map(Duration::from_millis))
}

/// A duration given in seconds, within `range`.
fn seconds(range: RangeInclusive<u64>) -> Rule<Duration> {
    let whole = whole(range).0;
    rule(move |text| whole(text).map(Duration::from_secs))
}

/// A socket address (`host:port` with an IP address).
fn address(example: &'static str) -> Rule<SocketAddr> {
    rule(move |text| text.trim().parse().map_err(|_| format!("{text:?} is not an address like {example}")))
}

/// The live address, or `off`.
fn live_address() -> Rule<LiveAddr> {
    let at = address("0.0.0.0:8080 (or off)").0;
    rule(
        move |text| {
            if text.trim().eq_ignore_ascii_case("off") {
                Ok(LiveAddr::Off)
            } else {
                at(text).map(LiveAddr::At)
            }
        },
    )
}

/// `true`/`false` (also yes/no, 1/0, on/off; empty is false).
fn yes_or_no() -> Rule<bool> {
    rule(|text| match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => Ok(true),
        "false" | "no" | "0" | "off" | "" => Ok(false),
        other => Err(format!("{other:?} is not true or false")),
    })
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
    /// Every field (destructured, so a new one cannot be left out), the database as `user@host:port/db`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Config { database, ingest, admin_addr, live, log_format } = self;
        f.debug_struct("Config")
            .field("database", &describe_database(database))
            .field("ingest", ingest)
            .field("admin_addr", admin_addr)
            .field("live", live)
            .field("log_format", log_format)
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
        if !args.contains(&"--jwt-secret") {
            argv.extend(["--jwt-secret", "test-secret"]);
        }
        argv.extend_from_slice(args);
        Settings::load(argv)
    }

    #[test]
    fn defaults_are_valid() {
        let config = parse(&[]).expect("defaults");
        assert_eq!(config.ingest.shards[0].stream, "positions");
        assert_eq!(config.ingest.shards[0].dead_letter, "positions:dead");
        assert_eq!(config.ingest.shards[0].attempts, "positions:attempts");
        assert_eq!(config.ingest.batch_size, 1000);
        assert_eq!(config.ingest.ingest_timeout, Duration::from_secs(120));
        assert_eq!((config.ingest.batch_bytes, config.ingest.max_payload_bytes), (16 << 20, 1 << 20));
        assert!(config.ingest.shards[0].consumer.ends_with(&format!("-{}", std::process::id())));
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
            ("--live-addr", "everywhere", "TRACKWAY_LIVE_ADDR"),
            ("--live-queue", "0", "TRACKWAY_LIVE_QUEUE"),
            ("--live-ping-ms", "5", "TRACKWAY_LIVE_PING_MS"),
            ("--jwt-secret", "", "TRACKWAY_JWT_SECRET"),
        ] {
            let err = parse(&[flag, value]).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{name} ({flag}): ")), "{flag} {value}: {err}");
        }
    }

    #[test]
    fn live_settings_have_safe_defaults_and_modes_need_their_parts() {
        let live = parse(&[]).expect("defaults").live.expect("live on by default");
        assert_eq!(live.addr.to_string(), "0.0.0.0:8080");
        assert_eq!((live.queue, live.replay.positions, live.ping_interval), (1024, 10_000, Duration::from_secs(30)));
        assert_eq!(live.replay.rows_behind, 1_000_000);
        assert!(parse(&["--live-addr", "off"]).expect("off").live.is_none());
        let err = parse(&["--auth", "directus"]).unwrap_err().to_string();
        assert!(err.starts_with("TRACKWAY_DIRECTUS_URL (--directus-url): "), "{err}");
        let live = parse(&["--auth", "directus", "--directus-url", "http://d:8055/"]).expect("directus").live;
        assert!(matches!(live.map(|l| l.auth), Some(AuthConfig::Directus { url, .. }) if url == "http://d:8055"));
        let err = parse(&["--auth", "directus", "--directus-url", "https://d.example"]).unwrap_err().to_string();
        assert!(err.starts_with("TRACKWAY_DIRECTUS_URL (--directus-url): https:// is not supported"), "{err}");
        let shown = format!("{:?}", parse(&["--jwt-secret", "hunter2"]).expect("jwt"));
        assert!(!shown.contains("hunter2") && shown.contains("jwt (issuer \"directus\")"), "{shown}");
    }

    #[test]
    fn auth_none_serves_loopback_unless_told_otherwise() {
        let none = |flags: &[&str]| parse(&[&["--auth", "none"], flags].concat());
        for addr in ["127.0.0.1:8080", "[::1]:8080", "127.0.0.2:0"] {
            assert!(none(&["--live-addr", addr]).is_ok(), "{addr}");
        }
        for addr in ["0.0.0.0:8080", "[::]:8080", "192.168.1.20:8080"] {
            let err = none(&["--live-addr", addr]).unwrap_err().to_string();
            assert!(
                err.starts_with("TRACKWAY_LIVE_ADDR (--live-addr): ") && err.contains("TRACKWAY_AUTH=none"),
                "{err}"
            );
            let allowed = none(&["--live-addr", addr, "--live-unauthenticated-remote", "true"]);
            assert_eq!(
                allowed.expect("explicitly allowed").live.expect("live").addr.to_string().parse(),
                Ok(addr.parse::<SocketAddr>().unwrap())
            );
        }
        let err =
            none(&["--live-addr", "0.0.0.0:1", "--live-unauthenticated-remote", "maybe"]).unwrap_err().to_string();
        assert!(err.starts_with("TRACKWAY_LIVE_UNAUTHENTICATED_REMOTE"), "{err}");
        // With a token required, any address is fine.
        assert!(parse(&["--jwt-secret", "s", "--live-addr", "0.0.0.0:8080"]).is_ok());
    }

    #[test]
    fn live_origins_are_checked_and_the_relays_own_page_is_allowed_by_address() {
        let origins = |flags: &[&str]| parse(flags).expect("valid").live.expect("live").origins;
        let own = origins(&[]);
        assert_eq!(own, Origins::Listed(vec![]));
        for host in ["127.0.0.1:8080", "localhost:8080", "[::1]:8080", "192.168.1.20:8080", "10.0.0.1", "localhost"] {
            assert!(own.allows(&format!("http://{host}"), Some(host)), "the map page at {host}");
            assert!(!own.allows(&format!("http://{host}"), Some("127.0.0.1:9999")), "another port than {host}");
        }
        // DNS rebinding: the attacker's name resolves to the relay, so its page has the relay's Host.
        assert!(!own.allows("http://rebind.attacker.example:8080", Some("rebind.attacker.example:8080")));
        assert!(!own.allows("http://relay.local:8080", Some("relay.local:8080")), "a name must be listed");
        let named = origins(&["--live-origins", "http://relay.local:8080"]);
        assert!(named.allows("http://relay.local:8080", Some("relay.local:8080")), "listed, it may");
        assert!(!own.allows("https://evil.example", Some("127.0.0.1:8080")));
        assert!(!own.allows("null", Some("127.0.0.1:8080")));
        let listed = origins(&["--live-origins", " https://Maps.example.com/ , http://127.0.0.1:3000"]);
        assert!(listed.allows("https://maps.example.com", Some("relay:8080")));
        assert!(listed.allows("HTTP://127.0.0.1:3000", None));
        assert!(!listed.allows("https://maps.example.com.evil.example", Some("relay:8080")));
        assert!(!listed.allows("http://maps.example.com", Some("relay:8080")), "the scheme is part of it");
        assert!(origins(&["--live-origins", "*"]).allows("https://anything.example", None));
        for bad in ["maps.example.com", "https://maps.example.com/app", "ftp://x"] {
            let err = parse(&["--live-origins", bad]).unwrap_err().to_string();
            assert!(err.starts_with("TRACKWAY_LIVE_ORIGINS (--live-origins): "), "{err}");
        }
    }

    #[test]
    fn map_tile_url_is_optional_and_checked() {
        let live = parse(&[]).expect("defaults").live.expect("live");
        assert_eq!(live.map_tile_url, None);
        let live = parse(&["--map-tile-url", ""]).expect("empty is unset").live.expect("live");
        assert_eq!(live.map_tile_url, None);
        let live = parse(&["--map-tile-url", "https://tiles.example.com:8443/osm/{z}/{x}/{y}.png"]).expect("valid");
        let tiles = live.live.expect("live").map_tile_url.expect("tile url");
        assert_eq!(tiles.origin, "https://tiles.example.com:8443");
        assert_eq!(tiles.template, "https://tiles.example.com:8443/osm/{z}/{x}/{y}.png");
        for bad in [
            "ftp://tiles.example.com/{z}/{x}/{y}.png",
            "https://tiles.example.com/{z}/{x}.png",
            "https://{s}.tiles.example.com/{z}/{x}/{y}.png",
            "https://tiles.example.com",
            "https://tiles.example.com/{z}/{x}/{y}.png; script-src *",
            "https://tiles.example.com/{z}/{x}/{y}.png\"",
        ] {
            let err = parse(&["--map-tile-url", bad]).unwrap_err().to_string();
            assert!(err.starts_with("TRACKWAY_MAP_TILE_URL (--map-tile-url): "), "{bad}: {err}");
        }
    }

    /// Every setting, read from the flags themselves (so a new one cannot be left out): its variable is
    /// in `--help` with a description, and README.md has a settings-table row for it.
    #[test]
    fn help_and_readme_document_every_setting() {
        use clap::CommandFactory;
        let command = Settings::command();
        let help = command.clone().render_long_help().to_string();
        let readme = include_str!("../../README.md");
        let mut names = Vec::new();
        for arg in command.get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            let name = env.to_str().expect("ASCII variable name").to_owned();
            let described = arg.get_long_help().or(arg.get_help()).is_some_and(|h| !h.to_string().trim().is_empty());
            assert!(described, "{name} has no description in --help");
            assert!(help.contains(&name), "--help does not mention {name}:\n{help}");
            assert!(readme.contains(&format!("\n| `{name}` |")), "README.md has no settings-table row for {name}");
            names.push(name);
        }
        // The flags seen are the relay's settings, not an empty list that checks nothing.
        for known in ["DATABASE_URL", "TRACKWAY_LIVE_ORIGINS", "TRACKWAY_LOG_FORMAT", "TRACKWAY_MAP_TILE_URL"] {
            assert!(names.iter().any(|n| n == known), "{known} is not a flag's variable: {names:?}");
        }
        // Read by the logger, not a flag.
        assert!(help.contains("RUST_LOG"), "--help does not mention RUST_LOG");
        assert!(readme.contains("\n| `RUST_LOG` |"), "README.md has no row for RUST_LOG");
    }

    #[test]
    fn a_cluster_stream_shares_its_slot_with_its_dead_letters_and_attempts() {
        let cluster = |flags: &[&str]| {
            parse(&[&["--redis-cluster", "true", "--redis-url", "redis://a:1,redis://b:2"], flags].concat())
        };
        let err = cluster(&[]).unwrap_err().to_string();
        assert!(err.starts_with("TRACKWAY_STREAM (--stream): with TRACKWAY_REDIS_CLUSTER=true"), "{err}");
        let config = cluster(&["--stream", "positions:{7}"]).expect("a hash-tagged stream");
        assert_eq!(config.ingest.shards[0].dead_letter, "positions:{7}:dead");
        assert!(matches!(config.ingest.redis, trackway_redis::Endpoint::Cluster(ref seeds) if seeds.len() == 2));
        let err = cluster(&["--stream", "positions:{7}", "--dead-letter-stream", "dead"]).unwrap_err().to_string();
        assert!(err.starts_with("TRACKWAY_STREAM (--stream): "), "{err}");
        assert!(cluster(&["--stream", "positions:{7}", "--dead-letter-stream", "dead:{7}"]).is_ok());
        // One server: any names, as before.
        assert!(parse(&["--stream", "positions", "--dead-letter-stream", "dead"]).is_ok());
    }

    #[test]
    fn a_sharded_stream_is_one_key_per_shard_each_with_its_own_dead_letters_and_attempts() {
        let config = parse(&["--stream", "positions", "--stream-shards", "3"]).expect("sharded");
        let names: Vec<_> =
            config.ingest.shards.iter().map(|n| (&n.stream[..], &n.dead_letter[..], &n.attempts[..])).collect();
        assert_eq!(
            names,
            [
                ("positions:{0}", "positions:{0}:dead", "positions:{0}:attempts"),
                ("positions:{1}", "positions:{1}:dead", "positions:{1}:attempts"),
                ("positions:{2}", "positions:{2}:dead", "positions:{2}:attempts"),
            ]
        );
        let config = parse(&["--stream-shards", "2", "--dead-letter-stream", "dead"]).expect("named dead letters");
        assert_eq!(config.ingest.shards[1].dead_letter, "dead:{1}");
        let cluster = ["--redis-cluster", "true", "--redis-url", "redis://a:1", "--stream-shards", "16"];
        assert_eq!(parse(&cluster).expect("shards are tagged").ingest.shards.len(), 16);
        let err = parse(&["--stream", "p:{x}", "--stream-shards", "2"]).unwrap_err().to_string();
        assert!(err.starts_with("TRACKWAY_STREAM (--stream): with TRACKWAY_STREAM_SHARDS"), "{err}");
        let err = parse(&["--stream-shards", "1025"]).unwrap_err().to_string();
        assert!(err.starts_with("TRACKWAY_STREAM_SHARDS (--stream-shards): 1025 is outside 0–1024"), "{err}");
        assert_eq!(parse(&[]).expect("defaults").ingest.shards.len(), 1, "not sharded by default");
    }

    #[test]
    fn debug_never_shows_the_password() {
        let config =
            parse(&["--database-url", "postgres://u:hunter2@db:5433/x", "--redis-url", "redis://:sekrit@r:6379"])
                .expect("valid");
        let shown = format!("{config:?}");
        assert!(shown.contains("u@db:5433/x"), "{shown}");
        assert!(!shown.contains("hunter2") && !shown.contains("sekrit"), "{shown}");
        let jwt = parse(&["--jwt-secret", "topsecretvalue", "--live-queue", "77"]).expect("valid");
        let shown = format!("{jwt:?}");
        assert!(!shown.contains("topsecretvalue"), "{shown}");
        assert!(shown.contains("queue: 77") && shown.contains("jwt (issuer"), "{shown}");
    }
}
