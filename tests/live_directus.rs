//! The live endpoint authenticating against a real Directus: tokens Directus issued through
//! `POST /auth/login` (admin and non-admin), in `jwt` mode (checked with Directus's SECRET) and in
//! `directus` mode (checked by Directus itself, static tokens too), and Directus down.

use std::time::Duration;

use serde_json::json;
use trackway_tests::{
    connect,
    directus::Directus,
    fresh_database,
    live::{keys, live_flags, payload, Client, LiveRelay},
    relay::{metric, unique},
};

async fn ingest(db: &str, payloads: &[String]) {
    let client = connect(db).await;
    client.query("SELECT trackway.ingest_batch($1::text[])", &[&payloads]).await.expect("ingest_batch");
}

/// Grants the non-admin Directus user one device, by user id.
async fn grant(db: &str, directus: &Directus, device: &str) {
    connect(db)
        .await
        .execute("INSERT INTO trackway.live_grants VALUES ($1, 'device', $2)", &[&directus.user_id, &device])
        .await
        .expect("grant");
}

async fn forbidden(client: &mut Client, device: &str) {
    client.send(json!({"type": "subscribe", "device": device})).await;
    assert_eq!(client.recv_type("error").await["code"], "forbidden", "{device}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directus_tokens_in_jwt_mode() {
    let directus = Directus::shared().await;
    let db = fresh_database("live_dx_jwt").await;
    grant(&db, directus, "granted").await;
    let flags = live_flags(&db, &unique("live_dx_jwt"), &["--auth", "jwt", "--jwt-secret", &directus.secret]);
    let relay = LiveRelay::start(&flags).await;
    let admin_token = directus.login(&directus.admin_email, &directus.admin_password).await;
    let user_token = directus.login(&directus.user_email, &directus.user_password).await;

    let mut admin = Client::connect(&relay.url(""), Some(&admin_token)).await;
    let hello = admin.recv_type("authenticated").await;
    assert_eq!((hello["user"].as_str(), hello["admin"].as_bool()), (Some(directus.admin_id.as_str()), Some(true)));
    assert!(hello["expiresAt"].is_string(), "Directus tokens expire: {hello}");
    admin.subscribe(json!({"device": "anything"})).await;

    let mut user = Client::connect(&relay.url(&format!("access_token={user_token}")), None).await;
    assert_eq!(user.recv_type("authenticated").await["admin"], false);
    user.subscribe(json!({"device": "granted"})).await;
    forbidden(&mut user, "anything").await;
    ingest(&db, &[payload("granted", 1), payload("anything", 1)]).await;
    assert_eq!(keys(&user.positions(1, Duration::from_secs(5)).await)[0].0, "granted");
    assert_eq!(keys(&admin.positions(1, Duration::from_secs(5)).await)[0].0, "anything");

    // A Directus static token is not a JWT: jwt mode refuses it.
    let mut static_token = Client::connect(&relay.url(""), Some(&directus.user_static_token)).await;
    assert_eq!(static_token.closed(Duration::from_secs(5)).await.code, 4001);
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directus_mode_asks_directus_and_refuses_while_it_is_down() {
    // Its own Directus: this test stops it.
    let directus = Directus::start().await;
    let db = fresh_database("live_dx_mode").await;
    grant(&db, &directus, "granted").await;
    let flags = live_flags(
        &db,
        &unique("live_dx_mode"),
        &["--auth", "directus", "--directus-url", &directus.url, "--directus-timeout-ms", "1000"],
    );
    let relay = LiveRelay::start(&flags).await;
    let admin_token = directus.login(&directus.admin_email, &directus.admin_password).await;
    let user_token = directus.login(&directus.user_email, &directus.user_password).await;

    let mut admin = Client::authenticated(&relay.url(""), &admin_token).await;
    admin.subscribe(json!({"group": "everything"})).await;
    let mut user = Client::authenticated(&relay.url(""), &user_token).await;
    user.subscribe(json!({"device": "granted"})).await;
    forbidden(&mut user, "other").await;
    // The static token Directus gave the user works too (checked by Directus, no expiry).
    let mut by_static = Client::connect(&relay.url(""), Some(&directus.user_static_token)).await;
    let hello = by_static.recv_type("authenticated").await;
    assert_eq!((hello["user"].as_str(), hello["expiresAt"].is_null()), (Some(directus.user_id.as_str()), true));
    by_static.subscribe(json!({"device": "granted"})).await;
    // Tokens Directus does not know are refused.
    let mut bogus = Client::connect(&relay.url(""), Some("definitely-not-a-directus-token")).await;
    let closed = bogus.closed(Duration::from_secs(5)).await;
    assert_eq!(closed.code, 4001, "{closed:?}");

    // Directus down: a token it has not vouched for yet is refused with 4004, never let in.
    directus.stop();
    let fresh = trackway_tests::live::token_with(
        &directus.secret,
        json!({"id": directus.user_id, "role": directus.user_role}),
        600,
    );
    let mut during = Client::connect(&relay.url(""), Some(&fresh)).await;
    let closed = during.closed(Duration::from_secs(10)).await;
    assert_eq!(closed.code, 4004, "{closed:?}");
    // Connections Directus let in earlier keep working.
    ingest(&db, &[payload("granted", 2)]).await;
    assert_eq!(user.positions(1, Duration::from_secs(5)).await.len(), 1);
    let text = relay.metrics().await;
    assert_eq!(metric(&text, "trackway_live_auth_failures_total{reason=\"unavailable\"}"), 1.0);
    assert_eq!(metric(&text, "trackway_live_auth_failures_total{reason=\"rejected\"}"), 1.0);
    relay.stop().await.expect("clean stop");
}

/// In `directus` mode every re-check is a renewal: an administrator demoted in Directus stops being one
/// on open connections (new claims, subscriptions authorized again), and a grant removed in the database
/// applies at the next re-check. Both used to last as long as the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directus_rechecks_replace_the_claims_and_authorize_again() {
    let directus = Directus::shared().await;
    let db = fresh_database("live_dx_recheck").await;
    let flags = live_flags(
        &db,
        &unique("live_dx_recheck"),
        &["--auth", "directus", "--directus-url", &directus.url, "--directus-cache-seconds", "1"],
    );
    let relay = LiveRelay::start(&flags).await;
    // An administrator of its own, with a static token (this test changes the user's role).
    let suffix = unique("x").replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let (email, token) = (format!("admin-{suffix}@example.com"), format!("static-token-{suffix}"));
    let (status, user) = directus
        .request(
            "POST",
            "/users",
            Some(&directus.admin_token),
            Some(json!({"email": email, "password": "not-used-0123", "role": directus.admin_role, "token": token})),
        )
        .await;
    assert_eq!(status, 200, "{user}");
    let user_id = user["data"]["id"].as_str().expect("user id").to_owned();
    connect(&db)
        .await
        .execute("INSERT INTO trackway.live_grants VALUES ($1, 'device', 'granted')", &[&user_id])
        .await
        .expect("grant");

    let mut client = Client::connect(&relay.url(""), Some(&token)).await;
    assert_eq!(client.recv_type("authenticated").await["admin"], true);
    client.subscribe(json!({"device": "anything"})).await;
    client.subscribe(json!({"device": "granted"})).await;

    // Demoted in Directus: within a re-check or two, no longer an administrator on this connection.
    let (status, answer) = directus
        .request(
            "PATCH",
            &format!("/users/{user_id}"),
            Some(&directus.admin_token),
            Some(json!({"role": directus.user_role})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let hello = client.recv_type("authenticated").await;
    assert_eq!((hello["user"].as_str(), hello["admin"].as_bool()), (Some(user_id.as_str()), Some(false)), "{hello}");
    let gone = client.recv_type("unsubscribed").await;
    assert_eq!((gone["device"].as_str(), gone["reason"].as_str()), (Some("anything"), Some("forbidden")), "{gone}");
    ingest(&db, &[payload("anything", 1), payload("granted", 1)]).await;
    assert_eq!(keys(&client.positions(1, Duration::from_secs(5)).await)[0].0, "granted");

    // The grant removed in the database: gone at the next re-check, with nothing else changed.
    connect(&db)
        .await
        .execute("DELETE FROM trackway.live_grants WHERE grantee = $1", &[&user_id])
        .await
        .expect("revoke");
    let gone = client.recv_type("unsubscribed").await;
    assert_eq!((gone["device"].as_str(), gone["reason"].as_str()), (Some("granted"), Some("forbidden")), "{gone}");

    // A token Directus refused is remembered for a while: asked again, the relay does not ask Directus.
    for (attempt, remembered) in [(1, false), (2, true)] {
        let mut bogus = Client::connect(&relay.url(""), Some("no-such-token-0123456789")).await;
        let closed = bogus.closed(Duration::from_secs(5)).await;
        assert_eq!(closed.code, 4001, "{closed:?}");
        assert_eq!(closed.reason.contains("(remembered)"), remembered, "attempt {attempt}: {closed:?}");
    }
    relay.stop().await.expect("clean stop");
}
