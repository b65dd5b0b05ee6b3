//! What the live side needs to know, validated by the relay's configuration (`trackway-relay`'s `config`,
//! where every setting's variable, flag, default and range are stated), and the two settings that are
//! parsed here because their rules are the live side's: [`Origins`] and [`TileUrl`].

use std::{fmt, net::SocketAddr, time::Duration};

/// Validated settings of the live side (`/live`). `Debug` is derived: the one secret, the JWT secret,
/// is hidden by [`AuthConfig`]'s own `Debug`.
#[derive(Clone, Debug)]
pub struct LiveConfig {
    /// Where `/live` listens (`main` binds it; tests pass their own listener to `run`).
    pub addr: SocketAddr,
    /// How clients authenticate.
    pub auth: AuthConfig,
    /// Open connections allowed.
    pub max_connections: usize,
    /// Connections allowed that are not authenticated yet (before and after the upgrade).
    pub max_unauthenticated: usize,
    /// Open connections allowed per user.
    pub max_connections_per_user: usize,
    /// Longest wait for an HTTP request head.
    pub header_timeout: Duration,
    /// Longest a `subscribe` waits for the feed's answer.
    pub subscribe_timeout: Duration,
    /// Bytes of answers and replays a connection may have queued unread.
    pub max_queued_bytes: usize,
    /// Subscriptions allowed per connection.
    pub max_subscriptions: usize,
    /// Largest client message.
    pub max_message_bytes: usize,
    /// Time a new connection has to authenticate.
    pub auth_timeout: Duration,
    /// Server ping interval; silence for two intervals drops a client.
    pub ping_interval: Duration,
    /// Positions queued per client before coalescing (and, past it with distinct devices, closing).
    pub queue: usize,
    /// Longest a blocked socket may hold a client's frames.
    pub send_timeout: Duration,
    /// How far back a `since` may reach.
    pub replay: ReplayLimits,
    /// Most connections answering subscriptions at once.
    pub answer_connections: usize,
    /// Longest time between two reads of new positions.
    pub poll_interval: Duration,
    /// Tile URL template of the map page (`None`: offline grid only).
    pub map_tile_url: Option<TileUrl>,
    /// Which browser pages may open `/live`.
    pub origins: Origins,
}

/// How far back a `subscribe` with `since` may reach; past either limit the client gets `resume_too_far`
/// and starts again from a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayLimits {
    /// Most positions of the target replayed (`TRACKWAY_LIVE_MAX_REPLAY`).
    pub positions: usize,
    /// Most rows of every device stored after `since` (`TRACKWAY_LIVE_MAX_REPLAY_BEHIND`): the replay walks
    /// them all to find the target's, so this bounds what one replay costs the database.
    pub rows_behind: i64,
}

/// The web origins allowed to open `/live` from a browser, besides the relay's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origins {
    /// Any origin (`*`).
    Any,
    /// The relay's own origin and these (`scheme://host[:port]`, lower case).
    Listed(Vec<String>),
}

impl Origins {
    /// Parses `TRACKWAY_LIVE_ORIGINS`; the error says what is wrong (the caller names the setting).
    pub fn parse(text: &str) -> Result<Origins, String> {
        let text = text.trim();
        if text == "*" {
            return Ok(Origins::Any);
        }
        let mut listed = Vec::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let origin = item.trim_end_matches('/').to_ascii_lowercase();
            let host =
                after_http_scheme(&origin).ok_or_else(|| format!("{item:?} is not an http:// or https:// origin"))?;
            if !is_plain_host(host) {
                return Err(format!("{item:?}: an origin is scheme://host[:port], with no path"));
            }
            listed.push(origin);
        }
        Ok(Origins::Listed(listed))
    }

    /// Whether a handshake's `Origin` may open `/live`. `host` is the request's `Host` header: a page of
    /// the relay itself (the map page, same host and port) may when that host is an IP address or
    /// `localhost`. A page whose host is any other name must be listed: under DNS rebinding, an attacker's
    /// name resolves to the relay's address, and the attacker's page then has the same host as the relay.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        let own = after_http_scheme(&origin).filter(|own| is_address_or_localhost(own));
        match self {
            Origins::Any => true,
            Origins::Listed(listed) => {
                listed.contains(&origin)
                    || (own.is_some() && own == host.map(|h| h.trim().to_ascii_lowercase()).as_deref())
            }
        }
    }
}

/// A validated tile URL template: http(s), with `{z}`, `{x}` and `{y}`, and an origin without placeholders
/// (the page's Content-Security-Policy names it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TileUrl {
    /// The template as given.
    pub template: String,
    /// `scheme://host[:port]`.
    pub origin: String,
}

impl TileUrl {
    /// Checks a template; the error says what is wrong (the caller names the setting).
    pub fn parse(text: &str) -> Result<TileUrl, String> {
        let template = text.trim();
        let rest =
            after_http_scheme(template).ok_or_else(|| format!("{template:?} is not an http:// or https:// URL"))?;
        let host_end = rest.find('/').ok_or_else(|| format!("{template:?} has no path with {{z}}/{{x}}/{{y}}"))?;
        if !is_plain_host(&rest[..host_end]) {
            return Err(format!("{template:?}: the host must be a plain host name or address (no placeholders)"));
        }
        for part in ["{z}", "{x}", "{y}"] {
            if !template.contains(part) {
                return Err(format!("{template:?} lacks {part}"));
            }
        }
        // It goes into a header and a JSON document: no spaces, quotes, or CSP separators.
        if template
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | ';' | ',' | '<' | '>'))
        {
            return Err(format!("{template:?} contains spaces, quotes, ';', ',' or angle brackets"));
        }
        let origin = template[..template.len() - rest.len() + host_end].to_owned();
        Ok(TileUrl { template: template.to_owned(), origin })
    }
}

/// What follows `http://` or `https://` in `url`; `None` for any other scheme.
fn after_http_scheme(url: &str) -> Option<&str> {
    url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))
}

/// Whether `host[:port]` (lower case) names an IP address or `localhost`: names no DNS answer can move.
fn is_address_or_localhost(host_port: &str) -> bool {
    let host = match host_port.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => host_port,
    };
    host == "localhost" || host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok()
}

/// A host name or address with an optional port and nothing else (no placeholders, path or user info):
/// what the tile URL's and the allowed origins' hosts must be.
fn is_plain_host(host: &str) -> bool {
    !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

/// The authentication mode with what it needs.
#[derive(Clone)]
pub enum AuthConfig {
    /// HS256 with this secret and issuer.
    Jwt {
        /// Directus's `SECRET`.
        secret: String,
        /// Required `iss` claim.
        issuer: String,
    },
    /// Ask Directus.
    Directus {
        /// Base URL.
        url: String,
        /// Longest wait for one answer.
        timeout: Duration,
        /// Longest time an accepted token is trusted without asking again.
        cache_ttl: Duration,
    },
    /// Nobody is asked anything.
    None,
}

impl fmt::Debug for AuthConfig {
    /// Names the mode, never the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthConfig::Jwt { issuer, .. } => write!(f, "jwt (issuer {issuer:?})"),
            AuthConfig::Directus { url, timeout, cache_ttl } => {
                write!(f, "directus ({url}, timeout {timeout:?}, cache {cache_ttl:?})")
            }
            AuthConfig::None => f.write_str("none (no authentication)"),
        }
    }
}

/// A live configuration for unit tests: `auth` and `map_tile_url` as given, the rest small and valid (the
/// relay's defaults are stated once, in its settings).
#[cfg(test)]
pub(crate) fn for_tests(auth: AuthConfig, map_tile_url: Option<TileUrl>) -> LiveConfig {
    let second = Duration::from_secs(1);
    LiveConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        auth,
        max_connections: 10,
        max_unauthenticated: 10,
        max_connections_per_user: 10,
        header_timeout: second,
        subscribe_timeout: second,
        max_queued_bytes: 1 << 20,
        max_subscriptions: 10,
        max_message_bytes: 65_536,
        auth_timeout: second,
        ping_interval: second,
        queue: 16,
        send_timeout: second,
        replay: ReplayLimits { positions: 100, rows_behind: 1_000_000 },
        answer_connections: 1,
        poll_interval: second,
        map_tile_url,
        origins: Origins::Listed(Vec::new()),
    }
}
