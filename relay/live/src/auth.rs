//! Who is connecting: tokens checked in the configured mode, giving the claims `trackway.authorize`
//! decides subscriptions with.
//!
//! - `jwt`: HS256 signed with Directus's `SECRET`, `iss` as configured (`directus`), `exp` required and
//!   in the future (no leeway), an `id` claim; `role`, `app_access`, `admin_access` as Directus puts them.
//! - `directus`: Directus itself answers for the token (JWT or static), see [`super::directus`].
//! - `none`: everyone is an administrator (local demos only; the relay warns at start and in `/readyz`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

use super::{
    directus::{DirectusAuth, DirectusError},
    protocol::CloseCode,
};
use crate::config::AuthConfig;

/// Most entries in the Directus answer cache.
const DIRECTUS_CACHE_CAPACITY: usize = 10_000;

/// An authenticated connection's identity.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The token's claims, as `trackway.authorize` receives them.
    pub claims: Value,
    /// The user id (`id` claim); `None` without authentication.
    pub user: Option<String>,
    /// `admin_access` claim.
    pub admin: bool,
    /// When the token stops being valid; the connection is closed then unless renewed.
    pub expires_at: Option<SystemTime>,
    /// When to ask Directus again about the token (`directus` mode): its answer replaces these claims.
    pub recheck_at: Option<Instant>,
}

impl Identity {
    /// `expires_at` as RFC 3339, for the `authenticated` frame.
    pub fn expires_text(&self) -> Option<String> {
        let at = self.expires_at?;
        let secs = at.duration_since(UNIX_EPOCH).ok()?.as_secs();
        let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).ok()?).ok()?;
        t.format(&time::format_description::well_known::Rfc3339).ok()
    }
}

/// Why an authentication failed: the `reason` label of `trackway_live_auth_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// Not a JSON Web Token.
    Malformed,
    /// The signature does not verify.
    Signature,
    /// The token has expired.
    Expired,
    /// Not issued by the configured issuer.
    Issuer,
    /// A claim is missing or unusable (`id`, `exp`, not valid yet).
    Claims,
    /// Directus refused the token.
    Rejected,
    /// Directus could not be asked: the client may try again.
    Unavailable,
    /// No token came within `TRACKWAY_LIVE_AUTH_TIMEOUT_MS`.
    Timeout,
    /// A renewed token belongs to another user.
    Mismatch,
    /// The user has `TRACKWAY_LIVE_MAX_CONNECTIONS_PER_USER` connections open already.
    UserLimit,
}

impl AuthFailure {
    /// Every failure, for documentation checks.
    pub const ALL: [AuthFailure; 10] = [
        AuthFailure::Malformed,
        AuthFailure::Signature,
        AuthFailure::Expired,
        AuthFailure::Issuer,
        AuthFailure::Claims,
        AuthFailure::Rejected,
        AuthFailure::Unavailable,
        AuthFailure::Timeout,
        AuthFailure::Mismatch,
        AuthFailure::UserLimit,
    ];

    /// The metric label (and the word that starts a refusal's close reason).
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Malformed => "malformed",
            AuthFailure::Signature => "signature",
            AuthFailure::Expired => "expired",
            AuthFailure::Issuer => "issuer",
            AuthFailure::Claims => "claims",
            AuthFailure::Rejected => "rejected",
            AuthFailure::Unavailable => "unavailable",
            AuthFailure::Timeout => "timeout",
            AuthFailure::Mismatch => "mismatch",
            AuthFailure::UserLimit => "user_limit",
        }
    }
}

/// Why a token was refused.
#[derive(Debug)]
pub struct Refused {
    /// Why, as a metric label.
    pub reason: AuthFailure,
    /// Says what is wrong, never with the token in it.
    pub message: String,
}

impl Refused {
    fn new(reason: AuthFailure, message: impl Into<String>) -> Refused {
        Refused { reason, message: message.into() }
    }

    /// The close code for a connection that could not authenticate at all.
    pub fn close_code(&self) -> CloseCode {
        if self.reason == AuthFailure::Unavailable {
            CloseCode::AuthUnavailable
        } else {
            CloseCode::Unauthorized
        }
    }
}

/// Checks tokens in the configured mode.
pub enum Authenticator {
    /// Nobody is asked anything.
    None,
    /// HS256 JWTs.
    Jwt {
        /// The shared secret.
        key: DecodingKey,
        /// Algorithm, issuer, required claims.
        validation: Box<Validation>,
    },
    /// Directus answers.
    Directus {
        /// The client and its cache.
        auth: DirectusAuth,
        /// How long an answer about a token without expiry holds.
        cache_ttl: Duration,
    },
}

impl Authenticator {
    /// Builds the checker for a configuration.
    pub fn new(config: &AuthConfig) -> Result<Authenticator, String> {
        Ok(match config {
            AuthConfig::None => Authenticator::None,
            AuthConfig::Jwt { secret, issuer } => {
                let mut validation = Validation::new(Algorithm::HS256);
                validation.set_issuer(&[issuer]);
                validation.set_required_spec_claims(&["exp", "iss"]);
                validation.leeway = 0;
                validation.validate_aud = false;
                Authenticator::Jwt {
                    key: DecodingKey::from_secret(secret.as_bytes()),
                    validation: Box::new(validation),
                }
            }
            AuthConfig::Directus { url, timeout, cache_ttl } => Authenticator::Directus {
                auth: DirectusAuth::new(url, *timeout, *cache_ttl, DIRECTUS_CACHE_CAPACITY)?,
                cache_ttl: *cache_ttl,
            },
        })
    }

    /// Whether connections need a token at all.
    pub fn required(&self) -> bool {
        !matches!(self, Authenticator::None)
    }

    /// The identity of connections in `none` mode.
    pub fn anonymous() -> Identity {
        Identity {
            claims: json!({"id": null, "role": null, "admin_access": true, "app_access": true}),
            user: None,
            admin: true,
            expires_at: None,
            recheck_at: None,
        }
    }

    /// Checks a token.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, Refused> {
        match self {
            Authenticator::None => Ok(Authenticator::anonymous()),
            Authenticator::Jwt { key, validation } => {
                let data = jsonwebtoken::decode::<Value>(token, key, validation).map_err(|e| jwt_refusal(e.kind()))?;
                identity(data.claims, None)
            }
            Authenticator::Directus { auth, cache_ttl } => match auth.verify(token).await {
                Ok(verified) => {
                    // Directus is asked again every cache lifetime whether or not the token expires: the
                    // claims (admin, role) and the user's grants may change long before `exp`.
                    let mut id = identity(verified.claims, Some(Instant::now() + *cache_ttl))?;
                    id.expires_at = verified.expires_at;
                    Ok(id)
                }
                Err(DirectusError::Rejected(why)) => {
                    Err(Refused::new(AuthFailure::Rejected, format!("Directus refused: {why}")))
                }
                Err(DirectusError::Unavailable(why)) => {
                    Err(Refused::new(AuthFailure::Unavailable, format!("Directus could not be asked: {why}")))
                }
            },
        }
    }
}

/// The identity in verified claims; a token without a string `id` is refused.
fn identity(claims: Value, recheck_at: Option<Instant>) -> Result<Identity, Refused> {
    let Some(user) = claims.get("id").and_then(Value::as_str).map(str::to_owned) else {
        return Err(Refused::new(AuthFailure::Claims, "the token has no user id (claim \"id\")"));
    };
    let admin = claims.get("admin_access").and_then(Value::as_bool).unwrap_or(false);
    let expires_at = match claims.get("exp").and_then(Value::as_u64) {
        None => None,
        Some(exp) => Some(UNIX_EPOCH.checked_add(Duration::from_secs(exp)).ok_or_else(|| {
            Refused::new(AuthFailure::Claims, "the token's \"exp\" claim is too far in the future to be a time")
        })?),
    };
    Ok(Identity { claims, user: Some(user), admin, expires_at, recheck_at })
}

/// A JWT library error as a refusal (reason label and message).
fn jwt_refusal(kind: &ErrorKind) -> Refused {
    match kind {
        ErrorKind::ExpiredSignature => Refused::new(AuthFailure::Expired, "the token has expired"),
        ErrorKind::InvalidIssuer => {
            Refused::new(AuthFailure::Issuer, "the token was not issued by the configured issuer")
        }
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            Refused::new(AuthFailure::Signature, "the token's signature does not verify")
        }
        ErrorKind::MissingRequiredClaim(claim) => {
            Refused::new(AuthFailure::Claims, format!("the token has no {claim:?} claim"))
        }
        ErrorKind::ImmatureSignature => Refused::new(AuthFailure::Claims, "the token is not valid yet"),
        _ => Refused::new(AuthFailure::Malformed, "not a JSON Web Token"),
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{encode, EncodingKey, Header};

    use super::*;

    #[test]
    fn every_failure_has_its_own_label_and_readme_lists_it() {
        let readme = include_str!("../../../README.md");
        let line =
            readme.lines().find(|l| l.contains("trackway_live_auth_failures_total{reason=")).expect("README line");
        let mut seen = std::collections::HashSet::new();
        for failure in AuthFailure::ALL {
            assert!(seen.insert(failure.label()), "{failure:?} repeats a label");
            assert!(line.contains(failure.label()), "README does not list {}", failure.label());
        }
    }

    fn jwt(secret: &str, claims: Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).expect("token")
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
    }

    fn checker() -> Authenticator {
        Authenticator::new(&AuthConfig::Jwt { secret: "s3cret".into(), issuer: "directus".into() }).expect("jwt")
    }

    async fn reason(token: &str) -> &'static str {
        checker().authenticate(token).await.expect_err("refused").reason.label()
    }

    #[tokio::test]
    async fn directus_tokens_verify_and_carry_their_claims() {
        let exp = now() + 900;
        let token = jwt(
            "s3cret",
            json!({"id": "u1", "role": "r1", "app_access": true, "admin_access": false, "iss": "directus", "exp": exp}),
        );
        let id = checker().authenticate(&token).await.expect("valid");
        assert_eq!((id.user.as_deref(), id.admin), (Some("u1"), false));
        assert_eq!(id.claims["role"], "r1");
        assert_eq!(id.expires_at, Some(UNIX_EPOCH + Duration::from_secs(exp)));
        assert!(id.expires_text().expect("rfc3339").ends_with('Z'));
    }

    #[tokio::test]
    async fn forged_expired_foreign_and_malformed_tokens_are_refused_with_their_reason() {
        let claims = |iss: &str, exp: u64| json!({"id": "u1", "admin_access": true, "iss": iss, "exp": exp});
        assert_eq!(reason(&jwt("other", claims("directus", now() + 60))).await, "signature");
        assert_eq!(reason(&jwt("s3cret", claims("directus", now() - 1))).await, "expired");
        assert_eq!(reason(&jwt("s3cret", claims("someone", now() + 60))).await, "issuer");
        assert_eq!(reason(&jwt("s3cret", json!({"id": "u1", "iss": "directus"}))).await, "claims");
        assert_eq!(reason(&jwt("s3cret", json!({"iss": "directus", "exp": now() + 60}))).await, "claims");
        assert_eq!(reason("not.a.token").await, "malformed");
        assert_eq!(reason("").await, "malformed");
        // alg "none" with the right claims: refused.
        let unsigned = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            base64_url(&json!({"id": "u1", "admin_access": true, "iss": "directus", "exp": now() + 60}).to_string())
        );
        assert_ne!(checker().authenticate(&unsigned).await.map(|_| ()).map_err(|r| r.reason.label()), Ok(()));
    }

    fn base64_url(text: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = text.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
}
