//! Access tokens as Directus signs them (HS256 with its `SECRET`), for the relay's `jwt` mode: the tests'
//! and the benchmarks' clients of `/live` carry them.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Signs `claims` with `secret`, adding what Directus puts in every token it issues unless `claims` has
/// it: `iss: "directus"`, `iat` now and `exp` `ttl_secs` from now (negative: already expired).
pub fn directus_token(secret: &str, claims: Value, ttl_secs: i64) -> Result<String, String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
    let now = i64::try_from(now).map_err(|e| e.to_string())?;
    let mut claims = claims;
    let object = claims.as_object_mut().ok_or("the claims must be a JSON object")?;
    object.entry("iss").or_insert(json!("directus"));
    object.entry("iat").or_insert(json!(now));
    object.entry("exp").or_insert(json!(now + ttl_secs));
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("signing a token: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_carries_directus_claims_and_verifies_with_its_secret() {
        let token = directus_token("s3cret", json!({"id": "u1", "admin_access": true}), 60).expect("token");
        let key = jsonwebtoken::DecodingKey::from_secret(b"s3cret");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_issuer(&["directus"]);
        let data = jsonwebtoken::decode::<Value>(&token, &key, &validation).expect("valid");
        assert_eq!(data.claims["id"], "u1");
        let exp = data.claims["exp"].as_i64().expect("exp");
        let iat = data.claims["iat"].as_i64().expect("iat");
        assert_eq!(exp - iat, 60);
        let wrong = jsonwebtoken::DecodingKey::from_secret(b"another");
        assert!(jsonwebtoken::decode::<Value>(&token, &wrong, &validation).is_err());
    }

    #[test]
    fn claims_given_are_kept() {
        let token = directus_token("k", json!({"iss": "elsewhere", "exp": 5}), 60).expect("token");
        let key = jsonwebtoken::DecodingKey::from_secret(b"k");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<Value>(&token, &key, &validation).expect("valid");
        assert_eq!((data.claims["iss"].as_str(), data.claims["exp"].as_i64()), (Some("elsewhere"), Some(5)));
        assert!(directus_token("k", json!([1]), 60).is_err());
    }
}
