//! Token checks by Directus (`TRACKWAY_AUTH=directus`). PLACEHOLDER until the Directus client lands:
//! every token is refused as `Unavailable`, so nobody is let in by mistake.

use std::time::{Duration, SystemTime};

/// A token Directus accepted.
pub struct Verified {
    /// Claims in the shape of Directus's JWT claims.
    pub claims: serde_json::Value,
    /// When the token expires (JWTs), `None` for static tokens.
    pub expires_at: Option<SystemTime>,
    /// Served from the cache.
    pub cached: bool,
}

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum DirectusError {
    /// Directus refused the token.
    #[error("{0}")]
    Rejected(String),
    /// Directus could not be asked.
    #[error("{0}")]
    Unavailable(String),
}

/// Asks Directus about tokens.
pub struct DirectusAuth;

impl DirectusAuth {
    /// A client for `base_url`.
    pub fn new(_base_url: &str, _timeout: Duration, _ttl: Duration, _capacity: usize) -> Result<DirectusAuth, String> {
        Ok(DirectusAuth)
    }

    /// Checks a token.
    pub async fn verify(&self, _token: &str) -> Result<Verified, DirectusError> {
        Err(DirectusError::Unavailable("not built yet".into()))
    }
}
