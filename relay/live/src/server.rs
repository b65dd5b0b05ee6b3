//! The live HTTP server: `/live` upgrades to a WebSocket (RFC 6455 handshake answered here, the socket
//! then driven by tokio-tungstenite); `/`, `/map.js`, `/map.css` and `/config.json` are the live map page
//! ([`super::page`]); everything else is 404. The token may come in the handshake: `Authorization: Bearer
//! …` or, for browsers that cannot set headers, the `access_token` query parameter.
//!
//! What a connection costs before anyone knows who it is, is bounded: the accept loop is hyper's own
//! HTTP/1 server (axum's `serve` cannot set these), with a deadline for the request head
//! (`TRACKWAY_LIVE_HEADER_TIMEOUT_MS`); every accepted connection holds one of
//! `TRACKWAY_LIVE_MAX_UNAUTHENTICATED` places until its session authenticates (beyond them new
//! connections are closed at once); an upgraded one also holds one of `TRACKWAY_LIVE_MAX_CONNECTIONS` slots
//! (HTTP 503 past it).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::{Query, Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Extension, Router,
};
use hyper::service::Service as _;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_tungstenite::{
    tungstenite::{handshake::derive_accept_key, protocol::WebSocketConfig},
    WebSocketStream,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::session::{self, Shared};

/// What the handler needs.
#[derive(Clone)]
struct ServerState {
    shared: Arc<Shared>,
    /// One permit per open connection.
    slots: Arc<Semaphore>,
    /// Sessions, so shutdown can wait for them to close.
    sessions: TaskTracker,
    shutdown: CancellationToken,
}

/// The place a connection holds among `TRACKWAY_LIVE_MAX_UNAUTHENTICATED` until its session authenticates,
/// shared by the HTTP connection and (after the upgrade) the session, which takes it.
#[derive(Clone)]
pub struct Unauthenticated(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl Unauthenticated {
    /// The place, taken out (by the session, at the upgrade); `None` once taken.
    fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
}

/// How long a failed `accept` (out of file descriptors, say) waits before the next.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `/live` until shutdown; returns once every session has closed (or after `grace`).
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(%addr, path = "/live", "live endpoint listening");
    let sessions = TaskTracker::new();
    let unauthenticated = Arc::new(Semaphore::new(shared.config.max_unauthenticated));
    let state = ServerState {
        slots: Arc::new(Semaphore::new(shared.config.max_connections)),
        shared: shared.clone(),
        sessions: sessions.clone(),
        shutdown: shutdown.clone(),
    };
    let page = super::page::routes(&state.shared.config);
    let app = Router::new().route("/live", get(upgrade)).with_state(state).merge(page);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(shared.config.header_timeout);
    let connections = TaskTracker::new();
    loop {
        let (tcp, _peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "live endpoint: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Ok(place) = unauthenticated.clone().try_acquire_owned() else {
            // Full of connections nobody has vouched for yet: this one is closed unread.
            shared.metrics.closes.with_label_values(&["unauthenticated"]).inc();
            continue;
        };
        // Positions are small frames that should leave at once: no Nagle delay waiting for the client's ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let place = Unauthenticated(Arc::new(Mutex::new(Some(place))));
        let app = TowerToHyperService::new(app.clone());
        // Every request of the connection can see its place; the upgrade hands it to the session.
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(place.clone());
            app.call(request)
        });
        let connection = http.serve_connection(TokioIo::new(tcp), service);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let connection = connection.with_upgrades();
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "live HTTP connection ended");
            }
        });
    }
    connections.close();
    sessions.close();
    let drained = async {
        connections.wait().await;
        sessions.wait().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!("live sessions still open after the shutdown grace period");
    }
    Ok(())
}

/// Answers the WebSocket handshake and starts the session.
async fn upgrade(
    State(state): State<ServerState>,
    Extension(place): Extension<Unauthenticated>,
    Query(query): Query<HashMap<String, String>>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    let is_upgrade =
        header_has(headers, header::CONNECTION, "upgrade") && header_has(headers, header::UPGRADE, "websocket");
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).filter(|_| is_upgrade) else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, "websocket")],
            "This is the Trackway live endpoint: connect with a WebSocket client (see docs/live-protocol.md).\n",
        )
            .into_response();
    };
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return (StatusCode::BAD_REQUEST, [(header::SEC_WEBSOCKET_VERSION, "13")], "WebSocket version 13 only\n")
            .into_response();
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if !origin.to_str().is_ok_and(|o| state.shared.config.origins.allows(o, host)) {
            state.shared.metrics.closes.with_label_values(&["origin"]).inc();
            return (
                StatusCode::FORBIDDEN,
                "this page's origin may not open the live endpoint (TRACKWAY_LIVE_ORIGINS)\n",
            )
                .into_response();
        }
    }
    let Ok(permit) = state.slots.clone().try_acquire_owned() else {
        state.shared.metrics.closes.with_label_values(&["capacity"]).inc();
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], "too many live connections\n")
            .into_response();
    };
    let accept = derive_accept_key(key.as_bytes());
    let token = bearer(headers)
        .filter(|t| !t.is_empty())
        .or_else(|| query.get("access_token").cloned().filter(|t| !t.is_empty()));
    let on_upgrade = hyper::upgrade::on(&mut request);
    let ServerState { shared, sessions, shutdown, .. } = state;
    let place = place.take();
    sessions.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(shared.config.max_message_bytes))
            .max_frame_size(Some(shared.config.max_message_bytes))
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let socket = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            Some(config),
        )
        .await;
        let _open = OpenConnection::new(&shared, permit);
        session::run(socket, shared.clone(), token, place, shutdown).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Whether a comma-separated header lists `token` (case-insensitive).
fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

/// The token of an `Authorization: Bearer …` header.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// An upgraded connection: counted in `trackway_live_connections` and holding its slot until dropped, even
/// when its session ends in a panic (a bug, but one that must not leak a slot or skew the gauge).
struct OpenConnection<'a> {
    /// Where the gauge is.
    shared: &'a Shared,
    /// The connection's slot among `TRACKWAY_LIVE_MAX_CONNECTIONS`.
    _permit: OwnedSemaphorePermit,
}

impl<'a> OpenConnection<'a> {
    fn new(shared: &'a Shared, permit: OwnedSemaphorePermit) -> OpenConnection<'a> {
        shared.metrics.connections.inc();
        OpenConnection { shared, _permit: permit }
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.shared.metrics.connections.dec();
    }
}
