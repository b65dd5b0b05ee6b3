//! Verifies a client's token by asking Directus (the auth server of the product's users) who it
//! belongs to, for the relay's `directus` auth mode: the token may be a Directus access token (a JWT)
//! or a user's static token, and Directus itself decides whether it is valid right now (revoked, expired,
//! user suspended). The answer comes back as claims of the same shape as Directus's own JWT claims
//! (`id`, `role`, `app_access`, `admin_access`, `iss`), so one SQL authorize function serves both the
//! `jwt` mode (claims read from a verified JWT) and this one.
//!
//! Answers are cached for a short time, keyed by a SHA-256 of the token: the raw token is never stored
//! nor logged. A clear no is cached too (for [`REJECTION_TTL`] at most), and at most
//! [`MAX_CONCURRENT_CHECKS`] tokens are being checked with Directus at any time, so that a client trying
//! random tokens cannot make the relay hammer Directus until Directus's rate limiter refuses the relay for
//! everyone. Anything but a clear yes or a clear no from Directus (connection refused, timeout, 5xx,
//! a reply that does not parse, no free check slot within the timeout) is [`DirectusError::Unavailable`]:
//! never let in.
//!
//! Known limitation: plain `http://` only (reqwest is built without TLS); Directus is expected on the
//! same host or a private network.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use reqwest::{header::AUTHORIZATION, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The longest a token Directus refused is refused again without asking (a static token an administrator
/// has just created works at most this long after a client tried it too early).
pub const REJECTION_TTL: Duration = Duration::from_secs(10);

/// The most tokens checked with Directus at the same time; more wait for a slot (at most the timeout).
pub const MAX_CONCURRENT_CHECKS: usize = 16;

/// A client of one Directus server that verifies tokens and caches the answers.
pub struct DirectusAuth {
    /// `http://host:port` without a trailing slash.
    base: String,
    /// HTTP client whose every request is bounded by the `timeout` given to [`DirectusAuth::new`].
    http: reqwest::Client,
    /// The longest a check waits for a free slot among [`MAX_CONCURRENT_CHECKS`].
    timeout: Duration,
    /// Slots for checks in progress with Directus.
    checks: tokio::sync::Semaphore,
    /// Tokens Directus accepted (their claims and expiry), by SHA-256 of the token.
    accepted: Mutex<Cache<(Value, Option<SystemTime>)>>,
    /// Tokens Directus refused (what it said), by SHA-256 of the token; apart from `accepted`, so that
    /// many refused tokens never push an accepted one out.
    rejected: Mutex<Cache<String>>,
}

/// A token Directus accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// `{"id", "role", "app_access", "admin_access", "iss": "directus"}`, like Directus's JWT claims.
    pub claims: Value,
    /// When the token stops being valid: the `exp` claim of a JWT; `None` for a static token.
    pub expires_at: Option<SystemTime>,
    /// True when this answer came from the cache rather than from Directus just now.
    pub cached: bool,
}

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum DirectusError {
    /// Directus answered that the token is not valid (401 or 403); the message says what it answered.
    #[error("Directus rejected the token: {0}")]
    Rejected(String),
    /// No clear answer from Directus (unreachable, timeout, 5xx, unparseable reply): do not let in.
    #[error("Directus is unavailable: {0}")]
    Unavailable(String),
}

impl std::fmt::Debug for DirectusAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectusAuth").field("base", &self.base).finish_non_exhaustive()
    }
}

impl DirectusAuth {
    /// A verifier for the Directus at `base_url` (`http://host:port`, optionally with a path prefix).
    /// Each request to Directus gives up after `timeout`; an accepted token is served from the cache for
    /// at most `cache_ttl` (and never past its own expiry); the cache holds at most `cache_capacity`
    /// tokens (0 turns it off). Errors name the bad argument.
    pub fn new(
        base_url: &str,
        timeout: Duration,
        cache_ttl: Duration,
        cache_capacity: usize,
    ) -> Result<DirectusAuth, String> {
        let url = reqwest::Url::parse(base_url).map_err(|e| format!("Directus URL {base_url:?}: {e}"))?;
        if url.scheme() != "http" {
            return Err(format!(
                "Directus URL {base_url:?}: only http:// is supported (the relay is built without TLS)"
            ));
        }
        if url.host_str().is_none() {
            return Err(format!("Directus URL {base_url:?}: no host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("Directus URL {base_url:?}: must not have a query or fragment"));
        }
        if timeout.is_zero() {
            return Err("Directus timeout must be more than zero".to_owned());
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| format!("Directus HTTP client: {e}"))?;
        Ok(DirectusAuth {
            base: url.as_str().trim_end_matches('/').to_owned(),
            http,
            timeout,
            checks: tokio::sync::Semaphore::new(MAX_CONCURRENT_CHECKS),
            accepted: Mutex::new(Cache::new(cache_ttl, cache_capacity)),
            rejected: Mutex::new(Cache::new(cache_ttl.min(REJECTION_TTL), cache_capacity)),
        })
    }

    /// Asks Directus whose `token` this is (`GET /users/me?fields=id,role` and `GET /policies/me/globals`
    /// with it as a Bearer token), or answers from the cache.
    pub async fn verify(&self, token: &str) -> Result<Verified, DirectusError> {
        // Without a token Directus answers as the public role; a token no header can carry never reaches it.
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(DirectusError::Rejected(
                "the token is empty or has characters other than visible ASCII".into(),
            ));
        }
        let key = cache_key(token);
        if let Some(answer) = self.cached(&key) {
            return answer;
        }
        let Ok(_slot) = tokio::time::timeout(self.timeout, self.checks.acquire()).await else {
            return Err(DirectusError::Unavailable(format!(
                "{MAX_CONCURRENT_CHECKS} tokens were already being checked with Directus for the whole timeout"
            )));
        };
        // Another session may have asked about the same token while this one waited.
        if let Some(answer) = self.cached(&key) {
            return answer;
        }
        let (me, globals) = tokio::join!(
            self.get::<Me>(token, "/users/me?fields=id,role"),
            self.get::<Globals>(token, "/policies/me/globals")
        );
        let (me, globals) = match (me, globals) {
            (Ok(me), Ok(globals)) => (me, globals),
            (Err(DirectusError::Rejected(why)), _) | (_, Err(DirectusError::Rejected(why))) => {
                lock(&self.rejected).insert(key, why.clone(), None, Instant::now(), SystemTime::now());
                return Err(DirectusError::Rejected(why));
            }
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        let claims = json!({
            "id": me.id,
            "role": me.role,
            "app_access": globals.app_access,
            "admin_access": globals.admin_access,
            "iss": "directus",
        });
        let expires_at = jwt_expiry(token);
        lock(&self.accepted).insert(key, (claims.clone(), expires_at), expires_at, Instant::now(), SystemTime::now());
        Ok(Verified { claims, expires_at, cached: false })
    }

    /// The cached answer about a token, if any is still valid.
    fn cached(&self, key: &[u8; 32]) -> Option<Result<Verified, DirectusError>> {
        let now = Instant::now();
        if let Some((claims, expires_at)) = lock(&self.accepted).get(key, now) {
            return Some(Ok(Verified { claims, expires_at, cached: true }));
        }
        lock(&self.rejected).get(key, now).map(|why| Err(DirectusError::Rejected(format!("(remembered) {why}"))))
    }

    /// One GET to Directus with `token`, its `data` member parsed as `T`.
    async fn get<T: for<'de> Deserialize<'de>>(&self, token: &str, path: &str) -> Result<T, DirectusError> {
        let endpoint = path.split('?').next().unwrap_or(path);
        let unavailable = |what: String| DirectusError::Unavailable(format!("GET {endpoint}: {what}"));
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .send()
            .await
            .map_err(|e| unavailable(describe(&e)))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| unavailable(describe(&e)))?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(DirectusError::Rejected(format!("GET {endpoint} answered {status}{}", error_detail(&body))));
        }
        if !status.is_success() {
            return Err(unavailable(format!("answered {status}{}", error_detail(&body))));
        }
        serde_json::from_slice::<Data<T>>(&body)
            .map(|d| d.data)
            .map_err(|e| unavailable(format!("reply does not parse ({e})")))
    }
}

/// Locks a cache. A panic while holding the lock cannot leave the map inconsistent for our use: carry on.
fn lock<V>(cache: &Mutex<Cache<V>>) -> std::sync::MutexGuard<'_, Cache<V>> {
    cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Directus's reply envelope: `{"data": ...}`.
#[derive(Deserialize)]
struct Data<T> {
    /// The payload.
    data: T,
}

/// `GET /users/me?fields=id,role`. `role` is absent when the user may not read it, null without a role.
#[derive(Deserialize)]
struct Me {
    /// The user's id.
    id: String,
    /// The user's role id.
    #[serde(default)]
    role: Option<String>,
}

/// `GET /policies/me/globals`: the access the user's policies give (Directus 11). A missing flag is false.
#[derive(Deserialize)]
struct Globals {
    /// May use the Data Studio app.
    #[serde(default)]
    app_access: bool,
    /// Is an administrator (every permission).
    #[serde(default)]
    admin_access: bool,
}

/// ` (CODE: message)` from Directus's `{"errors":[{"message", "extensions":{"code"}}]}`, or empty.
fn error_detail(body: &[u8]) -> String {
    let Ok(value) = serde_json::from_slice::<Value>(body) else { return String::new() };
    let first = &value["errors"][0];
    match (first["extensions"]["code"].as_str(), first["message"].as_str()) {
        (Some(code), Some(message)) => format!(" ({code}: {message})"),
        (Some(text), None) | (None, Some(text)) => format!(" ({text})"),
        (None, None) => String::new(),
    }
}

/// What went wrong with a request, without the URL's query (no secret is in it, but keep it short).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut text = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        text.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    text
}

/// The cache key of a token: its SHA-256.
fn cache_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The `exp` claim of an access token Directus issued (a JWT with `"iss": "directus"`), read without
/// checking the signature (Directus checked it), or `None` for any other token: a static token is free
/// text that may look like a JWT, and its made-up `exp` must not be taken for an expiry.
pub fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    if claims["iss"] != "directus" {
        return None;
    }
    let exp = &claims["exp"];
    let seconds = match exp.as_u64() {
        Some(s) => Duration::from_secs(s),
        None => Duration::try_from_secs_f64(exp.as_f64()?).ok()?,
    };
    UNIX_EPOCH.checked_add(seconds)
}

/// Answers about tokens, bounded in count and in age. Times are passed in so tests need no sleeping.
struct Cache<V> {
    /// The longest an entry is served.
    ttl: Duration,
    /// The most entries held; 0: nothing is cached.
    capacity: usize,
    /// By SHA-256 of the token.
    entries: HashMap<[u8; 32], Entry<V>>,
}

/// One answer.
struct Entry<V> {
    /// What Directus answered.
    value: V,
    /// When it was stored: the oldest goes first when the cache is full.
    stored: Instant,
    /// After this it is not served: min(stored + ttl, the token's expiry).
    valid_until: Instant,
}

impl<V: Clone> Cache<V> {
    fn new(ttl: Duration, capacity: usize) -> Cache<V> {
        Cache { ttl, capacity, entries: HashMap::new() }
    }

    /// The entry for `key` when still valid at `now`; an expired one is dropped.
    fn get(&mut self, key: &[u8; 32], now: Instant) -> Option<V> {
        let entry = self.entries.get(key)?;
        if now >= entry.valid_until {
            self.entries.remove(key);
            return None;
        }
        Some(entry.value.clone())
    }

    /// Stores an answer about a token that expires at `expires_at` (if it does), unless it would not be
    /// valid for any time. When full, expired entries go first, then the oldest.
    fn insert(&mut self, key: [u8; 32], value: V, expires_at: Option<SystemTime>, now: Instant, now_wall: SystemTime) {
        let mut lifetime = self.ttl;
        if let Some(exp) = expires_at {
            lifetime = lifetime.min(exp.duration_since(now_wall).unwrap_or(Duration::ZERO));
        }
        if self.capacity == 0 || lifetime.is_zero() {
            return;
        }
        let Some(valid_until) = now.checked_add(lifetime) else { return };
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.entries.retain(|_, e| e.valid_until > now);
            while self.entries.len() >= self.capacity {
                let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.stored).map(|(k, _)| *k) else {
                    break;
                };
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, Entry { value, stored: now, valid_until });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(payload.to_string());
        format!("{header}.{body}.c2lnbmF0dXJl")
    }

    fn claims(n: u32) -> Value {
        json!({ "id": format!("user-{n}"), "role": null, "app_access": true, "admin_access": false })
    }

    fn accepted(n: u32, expires_at: Option<SystemTime>) -> (Value, Option<SystemTime>) {
        (claims(n), expires_at)
    }

    #[test]
    fn jwt_expiry_reads_exp() {
        let token = jwt(&json!({ "id": "u", "exp": 1_796_123_506u64, "iss": "directus" }));
        assert_eq!(jwt_expiry(&token), Some(UNIX_EPOCH + Duration::from_secs(1_796_123_506)));
    }

    #[test]
    fn jwt_expiry_accepts_fractional_and_padded() {
        let token = jwt(&json!({ "exp": 10.5, "iss": "directus" }));
        assert_eq!(jwt_expiry(&token), Some(UNIX_EPOCH + Duration::from_millis(10_500)));
        let mut parts: Vec<String> =
            jwt(&json!({ "exp": 7, "iss": "directus" })).split('.').map(str::to_owned).collect();
        while !parts[1].len().is_multiple_of(4) {
            parts[1].push('=');
        }
        assert_eq!(jwt_expiry(&parts.join(".")), Some(UNIX_EPOCH + Duration::from_secs(7)));
    }

    #[test]
    fn jwt_expiry_none_for_static_and_malformed_tokens() {
        assert_eq!(jwt_expiry("kF3x-static-token_value"), None);
        assert_eq!(jwt_expiry("a.b"), None);
        assert_eq!(jwt_expiry("a.b.c.d"), None);
        assert_eq!(jwt_expiry("x.!!!.y"), None);
        assert_eq!(jwt_expiry(&jwt(&json!({ "id": "no exp" }))), None);
        assert_eq!(jwt_expiry(&jwt(&json!({ "exp": "tomorrow" }))), None);
        assert_eq!(jwt_expiry(&jwt(&json!({ "exp": -5, "iss": "directus" }))), None);
        // A static token shaped like a JWT: its `exp` was not issued by Directus.
        assert_eq!(jwt_expiry(&jwt(&json!({ "exp": 4_000_000_000u64 }))), None);
        assert_eq!(jwt_expiry(&jwt(&json!({ "exp": 4_000_000_000u64, "iss": "someone" }))), None);
        // Past what a clock can hold: no expiry rather than a panic.
        assert_eq!(jwt_expiry(&jwt(&json!({ "exp": u64::MAX, "iss": "directus" }))), None);
        assert_eq!(jwt_expiry(&format!("e30.{}.s", URL_SAFE_NO_PAD.encode("not json"))), None);
    }

    #[test]
    fn cache_key_is_sha256_not_the_token() {
        let key = cache_key("abc");
        // SHA-256("abc")
        assert_eq!(key[..4], [0xba, 0x78, 0x16, 0xbf]);
        assert_ne!(cache_key("abc"), cache_key("abd"));
    }

    #[test]
    fn cache_serves_until_ttl() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut cache = Cache::new(Duration::from_secs(30), 10);
        cache.insert(cache_key("t"), accepted(1, None), None, now, wall);
        let hit = cache.get(&cache_key("t"), now + Duration::from_secs(29)).unwrap();
        assert_eq!(hit, accepted(1, None));
        assert!(cache.get(&cache_key("other"), now).is_none());
        assert!(cache.get(&cache_key("t"), now + Duration::from_secs(30)).is_none());
        assert_eq!(cache.len(), 0, "an expired entry is dropped when looked up");
    }

    #[test]
    fn cache_entry_never_outlives_token_expiry() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut cache = Cache::new(Duration::from_secs(300), 10);
        let exp = wall + Duration::from_secs(5);
        cache.insert(cache_key("jwt"), accepted(1, Some(exp)), Some(exp), now, wall);
        let hit = cache.get(&cache_key("jwt"), now + Duration::from_secs(4)).unwrap();
        assert_eq!(hit.1, Some(exp));
        assert!(cache.get(&cache_key("jwt"), now + Duration::from_secs(5)).is_none());
    }

    #[test]
    fn cache_skips_expired_tokens_and_zero_capacity_or_ttl() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut cache = Cache::new(Duration::from_secs(300), 10);
        let past = Some(wall - Duration::from_secs(1));
        cache.insert(cache_key("old"), accepted(1, past), past, now, wall);
        assert_eq!(cache.len(), 0);
        let mut off = Cache::new(Duration::from_secs(300), 0);
        off.insert(cache_key("t"), accepted(1, None), None, now, wall);
        assert_eq!(off.len(), 0);
        let mut no_ttl = Cache::new(Duration::ZERO, 10);
        no_ttl.insert(cache_key("t"), accepted(1, None), None, now, wall);
        assert_eq!(no_ttl.len(), 0);
    }

    #[test]
    fn cache_full_evicts_expired_first_then_oldest() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let s = Duration::from_secs;
        let mut cache = Cache::new(s(100), 3);
        // "short" expires at now+10 through its token expiry, though it is the newest of the three.
        cache.insert(cache_key("a"), accepted(1, None), None, now, wall);
        cache.insert(cache_key("b"), accepted(2, None), None, now + s(1), wall);
        let soon = Some(wall + s(12));
        cache.insert(cache_key("short"), accepted(3, soon), soon, now + s(2), wall + s(2));
        assert_eq!(cache.len(), 3);

        // Full at now+20: "short" has expired and goes, the older "a" and "b" stay.
        cache.insert(cache_key("d"), accepted(4, None), None, now + s(20), wall + s(20));
        assert_eq!(cache.len(), 3);
        let at = now + s(21);
        assert!(cache.get(&cache_key("short"), at).is_none());
        assert!(cache.get(&cache_key("a"), at).is_some());
        assert!(cache.get(&cache_key("b"), at).is_some());

        // Full again, nothing expired: the oldest ("a") goes.
        cache.insert(cache_key("e"), accepted(5, None), None, now + s(22), wall + s(22));
        assert_eq!(cache.len(), 3);
        let at = now + s(23);
        assert!(cache.get(&cache_key("a"), at).is_none());
        for kept in ["b", "d", "e"] {
            assert!(cache.get(&cache_key(kept), at).is_some(), "{kept} kept");
        }
    }

    #[test]
    fn cache_replacing_a_key_does_not_evict() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut cache = Cache::new(Duration::from_secs(100), 2);
        cache.insert(cache_key("a"), accepted(1, None), None, now, wall);
        cache.insert(cache_key("b"), accepted(2, None), None, now, wall);
        cache.insert(cache_key("a"), accepted(3, None), None, now, wall);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&cache_key("a"), now).unwrap().0, claims(3));
        assert!(cache.get(&cache_key("b"), now).is_some());
    }

    /// A Directus that accepts connections and never answers: the relay must not open more than
    /// [`MAX_CONCURRENT_CHECKS`] checks (two requests each) at a time, however many tokens are tried. A
    /// check holds its slot until its requests time out (400 ms), so every connection opened in the
    /// first 300 ms belongs to the first wave.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checks_in_progress_are_capped() {
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let start = Instant::now();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let seen = accepted.clone();
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                seen.lock().unwrap().push(start.elapsed());
                open.push(socket); // held, never answered
            }
        });
        let auth = Arc::new(DirectusAuth::new(&url, Duration::from_millis(400), Duration::from_secs(60), 10).unwrap());
        let tries = (0..3 * MAX_CONCURRENT_CHECKS).map(|n| {
            let auth = auth.clone();
            tokio::spawn(async move { auth.verify(&format!("token-{n}")).await })
        });
        for answer in futures_util::future::join_all(tries).await {
            assert!(matches!(answer.expect("task"), Err(DirectusError::Unavailable(_))));
        }
        let first_wave = accepted.lock().unwrap().iter().filter(|at| **at < Duration::from_millis(300)).count();
        assert!(first_wave <= 2 * MAX_CONCURRENT_CHECKS, "{first_wave} connections to Directus at once");
        assert!(first_wave >= MAX_CONCURRENT_CHECKS, "{first_wave}: the checks did run side by side");
    }

    #[test]
    fn refusals_are_cached_briefly_and_apart_from_acceptances() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut rejected = Cache::new(Duration::from_secs(60).min(REJECTION_TTL), 2);
        rejected.insert(cache_key("bad"), "401".to_owned(), None, now, wall);
        assert_eq!(rejected.get(&cache_key("bad"), now + REJECTION_TTL / 2).as_deref(), Some("401"));
        assert_eq!(rejected.get(&cache_key("bad"), now + REJECTION_TTL), None);
    }

    #[test]
    fn error_detail_reads_directus_errors() {
        let body = br#"{"errors":[{"message":"Token expired.","extensions":{"code":"TOKEN_EXPIRED"}}]}"#;
        assert_eq!(error_detail(body), " (TOKEN_EXPIRED: Token expired.)");
        assert_eq!(error_detail(b"<html>bad gateway</html>"), "");
    }

    #[test]
    fn new_checks_its_arguments() {
        let s = Duration::from_secs(1);
        assert!(DirectusAuth::new("http://127.0.0.1:8055/", s, s, 10).is_ok());
        assert!(DirectusAuth::new("https://auth.example", s, s, 10).unwrap_err().contains("only http://"));
        assert!(DirectusAuth::new("not a url", s, s, 10).unwrap_err().contains("not a url"));
        assert!(DirectusAuth::new("http://127.0.0.1:8055", Duration::ZERO, s, 10).unwrap_err().contains("timeout"));
    }

    /// A stand-in Directus answering every request with `status` and `body`; returns its URL.
    async fn canned(status: &'static str, body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        url
    }

    async fn verify_against(status: &'static str, body: &'static str) -> Result<Verified, DirectusError> {
        let s = Duration::from_secs(2);
        DirectusAuth::new(&canned(status, body).await, s, s, 10).unwrap().verify("secret-token-value").await
    }

    #[tokio::test]
    async fn answers_401_and_403_are_rejected_with_directus_code() {
        let body = r#"{"errors":[{"message":"Token expired.","extensions":{"code":"TOKEN_EXPIRED"}}]}"#;
        for status in ["401 Unauthorized", "403 Forbidden"] {
            match verify_against(status, body).await {
                Err(DirectusError::Rejected(m)) => {
                    assert!(m.contains(&status[..3]) && m.contains("TOKEN_EXPIRED"), "{m}");
                    assert!(!m.contains("secret-token-value"), "{m}");
                }
                other => panic!("{status}: expected Rejected, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn other_answers_are_unavailable() {
        for (status, body) in [
            ("502 Bad Gateway", "<html>bad gateway</html>"),
            ("500 Internal Server Error", r#"{"errors":[{"message":"boom"}]}"#),
            ("429 Too Many Requests", "{}"),
            ("200 OK", "not json"),
            ("200 OK", r#"{"data":{"role":"r"}}"#),
            ("200 OK", r#"{"data":null}"#),
        ] {
            match verify_against(status, body).await {
                Err(DirectusError::Unavailable(m)) => assert!(!m.contains("secret-token-value"), "{m}"),
                other => panic!("{status} {body}: expected Unavailable, got {other:?}"),
            }
        }
    }

    #[test]
    fn verify_future_is_send() {
        // The WebSocket server calls `verify` from spawned tasks: no lock may be held across an await.
        fn assert_send<T: Send>(_: &T) {}
        let s = Duration::from_secs(1);
        let auth = DirectusAuth::new("http://127.0.0.1:9", s, s, 10).unwrap();
        assert_send(&auth.verify("token"));
        fn assert_sync<T: Send + Sync>() {}
        assert_sync::<DirectusAuth>();
    }

    #[tokio::test]
    async fn empty_or_unprintable_tokens_are_rejected_without_asking() {
        // Nothing listens at this URL's port 9 (discard): asking would give Unavailable, not Rejected.
        let s = Duration::from_secs(1);
        let auth = DirectusAuth::new("http://127.0.0.1:9", s, s, 10).unwrap();
        for token in ["", "two words", "line\nbreak", "tab\t", "caf\u{e9}"] {
            assert!(matches!(auth.verify(token).await, Err(DirectusError::Rejected(_))), "{token:?}");
        }
    }

    #[tokio::test]
    async fn unreachable_directus_is_unavailable() {
        // Bind then drop a listener: nothing listens on that port now.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let auth =
            DirectusAuth::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2), Duration::from_secs(60), 10)
                .unwrap();
        let err = auth.verify("some-token").await.unwrap_err();
        assert!(matches!(err, DirectusError::Unavailable(_)), "{err:?}");
        assert!(!err.to_string().contains("some-token"), "{err}");
    }
}
