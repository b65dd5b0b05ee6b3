//! The relay's Directus auth (`trackway_relay::live::directus`) against a real Directus 11: which tokens
//! it accepts, with which claims, which it rejects, what it does when Directus is down, and that
//! Directus's own access tokens are HS256 JWTs signed with `SECRET` (what the relay's `jwt` mode relies on).
//!
//! Needs Directus installed by `scripts/directus-install` and the local PostgreSQL; not the `trackway`
//! extension.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use trackway_relay::live::directus::{DirectusAuth, DirectusError, Verified};
use trackway_tests::directus::Directus;

const TIMEOUT: Duration = Duration::from_secs(3);

fn auth(directus: &Directus) -> DirectusAuth {
    DirectusAuth::new(&directus.url, TIMEOUT, Duration::from_secs(60), 100).expect("DirectusAuth::new")
}

/// The header and payload of a JWT, decoded without any check.
fn decode(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts");
    let part = |s: &str| serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(s).expect("base64url")).expect("JSON");
    (part(parts[0]), part(parts[1]))
}

/// True when `token`'s HS256 signature is right for `secret`.
fn hs256_valid(token: &str, secret: &str) -> bool {
    let (signed, signature) = token.rsplit_once('.').expect("a JWT");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC key");
    mac.update(signed.as_bytes());
    mac.verify_slice(&URL_SAFE_NO_PAD.decode(signature).expect("base64url signature")).is_ok()
}

/// An HS256 JWT of `claims` (which carry their own `iss`, `iat` and `exp`) signed with `secret`.
fn sign(claims: &Value, secret: &str) -> String {
    trackway_testkit::directus_token(secret, claims.clone(), 0).expect("token")
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// Claims like the non-admin user's, valid for `exp_in` seconds from now (negative: already expired).
fn user_claims(directus: &Directus, exp_in: i64) -> Value {
    let now = now_secs() as i64;
    json!({
        "id": directus.user_id, "role": directus.user_role, "app_access": true, "admin_access": false,
        "iat": now - 3600, "exp": now + exp_in, "iss": "directus",
    })
}

/// The four claims an authorize function reads, taken from a Directus JWT.
fn authz_claims(jwt: &str) -> Value {
    let (_, claims) = decode(jwt);
    json!({
        "id": claims["id"], "role": claims["role"], "app_access": claims["app_access"],
        "admin_access": claims["admin_access"], "iss": claims["iss"],
    })
}

#[tokio::test]
async fn admin_jwt_gives_admin_claims() {
    let directus = Directus::shared().await;
    let verified = auth(directus).verify(&directus.admin_token).await.unwrap();
    assert_eq!(
        verified.claims,
        json!({ "id": directus.admin_id, "role": directus.admin_role, "app_access": true, "admin_access": true, "iss": "directus" })
    );
    assert!(!verified.cached);
    assert_eq!(verified.claims, authz_claims(&directus.admin_token), "same claims as in Directus's JWT");
    let exp = decode(&directus.admin_token).1["exp"].as_u64().unwrap();
    assert_eq!(verified.expires_at, Some(UNIX_EPOCH + Duration::from_secs(exp)));
}

#[tokio::test]
async fn non_admin_jwt_gives_user_claims() {
    let directus = Directus::shared().await;
    let verified = auth(directus).verify(&directus.user_token).await.unwrap();
    assert_eq!(verified.claims["id"], json!(directus.user_id));
    assert_eq!(verified.claims["role"], json!(directus.user_role));
    assert_eq!(verified.claims["app_access"], json!(true));
    assert_eq!(verified.claims["admin_access"], json!(false));
    assert_eq!(verified.claims, authz_claims(&directus.user_token), "same claims as in Directus's JWT");
    assert!(verified.expires_at.unwrap() > SystemTime::now());
}

#[tokio::test]
async fn static_token_works_and_has_no_expiry() {
    let directus = Directus::shared().await;
    let verified = auth(directus).verify(&directus.user_static_token).await.unwrap();
    assert_eq!(
        verified.claims,
        json!({ "id": directus.user_id, "role": directus.user_role, "app_access": true, "admin_access": false, "iss": "directus" })
    );
    assert_eq!(verified.expires_at, None);
}

fn assert_rejected(result: Result<Verified, DirectusError>, token: &str) -> String {
    match result {
        Err(DirectusError::Rejected(message)) => {
            assert!(!message.contains(token), "the message must not carry the token: {message}");
            message
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_tokens_are_rejected() {
    let directus = Directus::shared().await;
    let auth = auth(directus);

    let garbage = "not-a-token-at-all";
    let message = assert_rejected(auth.verify(garbage).await, garbage);
    assert!(message.contains("401"), "{message}");

    let wrong_secret = sign(&user_claims(directus, 600), "not the secret of this Directus");
    let message = assert_rejected(auth.verify(&wrong_secret).await, &wrong_secret);
    assert!(message.contains("INVALID_TOKEN"), "{message}");

    let expired = sign(&user_claims(directus, -60), &directus.secret);
    let message = assert_rejected(auth.verify(&expired).await, &expired);
    assert!(message.contains("TOKEN_EXPIRED"), "{message}");

    // The control: the same claims, in date and signed with the right secret, are accepted.
    let good = sign(&user_claims(directus, 600), &directus.secret);
    assert_eq!(auth.verify(&good).await.unwrap().claims["id"], json!(directus.user_id));
}

#[tokio::test]
async fn second_verification_is_cached() {
    let directus = Directus::shared().await;
    let auth = auth(directus);
    let first = auth.verify(&directus.user_token).await.unwrap();
    let second = auth.verify(&directus.user_token).await.unwrap();
    assert!(!first.cached);
    assert!(second.cached);
    assert_eq!(first.claims, second.claims);
    assert_eq!(first.expires_at, second.expires_at);
    // A rejection is not cached as anything: it is asked again and rejected again.
    for _ in 0..2 {
        assert_rejected(auth.verify("garbage-token").await, "garbage-token");
    }
}

#[tokio::test]
async fn directus_own_jwt_is_hs256_with_secret() {
    let directus = Directus::shared().await;
    let token = directus.login(&directus.user_email, &directus.user_password).await;
    let (header, claims) = decode(&token);
    assert_eq!(header["alg"], json!("HS256"));
    assert!(hs256_valid(&token, &directus.secret), "signed with SECRET");
    assert!(!hs256_valid(&token, "another secret"));
    assert_eq!(claims["iss"], json!("directus"));
    assert_eq!(claims["id"], json!(directus.user_id));
    assert_eq!(claims["role"], json!(directus.user_role));
    assert_eq!(claims["app_access"], json!(true));
    assert_eq!(claims["admin_access"], json!(false));
    let (iat, exp) = (claims["iat"].as_u64().unwrap(), claims["exp"].as_u64().unwrap());
    assert!(iat <= now_secs() + 5 && exp > now_secs() && exp > iat, "iat {iat}, exp {exp}");
}

#[tokio::test]
async fn directus_down_is_unavailable_not_rejected() {
    let directus = Directus::start().await;
    let auth = auth(&directus);
    let before = auth.verify(&directus.user_token).await.unwrap();
    let fresh = directus.login(&directus.admin_email, &directus.admin_password).await;
    directus.stop();

    let started = Instant::now();
    let result = auth.verify(&fresh).await;
    let took = started.elapsed();
    match result {
        Err(DirectusError::Unavailable(message)) => assert!(!message.contains(&fresh), "{message}"),
        other => panic!("expected Unavailable with Directus down, got {other:?}"),
    }
    assert!(took < TIMEOUT + Duration::from_secs(2), "took {took:?}");

    // What was verified while it was up is still served from the cache.
    let again = auth.verify(&directus.user_token).await.unwrap();
    assert!(again.cached);
    assert_eq!(again.claims, before.claims);
}

#[tokio::test]
async fn silent_directus_times_out_as_unavailable() {
    // Accepts connections and never answers: only the timeout ends the wait.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let timeout = Duration::from_millis(800);
    let auth = DirectusAuth::new(&format!("http://{addr}"), timeout, Duration::from_secs(60), 10).unwrap();
    let started = Instant::now();
    let result = auth.verify("some-token").await;
    let took = started.elapsed();
    assert!(matches!(result, Err(DirectusError::Unavailable(_))), "{result:?}");
    assert!(took >= timeout && took < timeout + Duration::from_secs(2), "took {took:?}");
    hold.abort();
}
