//! Helpers of the live tests: a relay with its `/live` endpoint on a port-0 listener, a WebSocket client
//! that speaks the protocol as a client would (plain JSON, no relay types), and Directus-style tokens.

use std::{collections::HashSet, net::SocketAddr, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_tungstenite::{
    connect_async,
    tungstenite::{client::IntoClientRequest, http::HeaderValue, Message},
    MaybeTlsStream, WebSocketStream,
};
use trackway_relay::{config::Settings, Error, Shutdown};

/// The HS256 secret the live tests' relays and tokens share.
pub const SECRET: &str = "live-test-secret-0123456789";

/// Flags for a relay on `db` reading `stream`, with the live side on (listeners are passed in).
pub fn live_flags(db: &str, stream: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--database-url".into(),
        format!("{} dbname={db}", crate::server()),
        "--redis-url".into(),
        crate::relay::redis_url(),
        "--stream".into(),
        stream.into(),
        "--live-addr".into(),
        "127.0.0.1:0".into(),
    ];
    if !extra.contains(&"--live-poll-ms") {
        args.extend(["--live-poll-ms".into(), "200".into()]);
    }
    if !extra.contains(&"--auth") {
        args.extend(["--auth".into(), "jwt".into(), "--jwt-secret".into(), SECRET.into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A relay with a live endpoint, inside the test process.
pub struct LiveRelay {
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin: SocketAddr,
    /// `/live`.
    pub live: SocketAddr,
    shutdown: Shutdown,
    task: JoinHandle<Result<(), Error>>,
}

impl LiveRelay {
    /// Starts a relay from flags (see [`live_flags`]).
    pub async fn start(args: &[String]) -> LiveRelay {
        LiveRelay::start_on(args, TcpListener::bind("127.0.0.1:0").await.expect("bind live")).await
    }

    /// [`LiveRelay::start`] on a live listener bound beforehand, for a test that must know the page's
    /// origin before the relay starts (e.g. to allow it in Directus's CORS settings).
    pub async fn start_on(args: &[String], live_listener: TcpListener) -> LiveRelay {
        let mut argv = vec!["trackway-relay".to_owned()];
        argv.extend_from_slice(args);
        let mut config = Settings::load(argv).expect("valid config");
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let (admin, live) = (admin_listener.local_addr().expect("addr"), live_listener.local_addr().expect("addr"));
        let shutdown = Shutdown::new();
        let endpoint = trackway_relay::LiveEndpoint {
            config: config.live.take().expect("flags with a live side"),
            listener: live_listener,
        };
        let listeners = trackway_relay::Listeners { admin: admin_listener, live: Some(endpoint) };
        let task = tokio::spawn(trackway_relay::run(config, listeners, shutdown.clone()));
        let relay = LiveRelay { admin, live, shutdown, task };
        relay.wait_ready().await;
        relay
    }

    /// Waits until `/readyz` answers 200 (the feed has its cursor, LISTEN is on).
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some((200, _)) = crate::relay::http_get_opt(self.admin, "/readyz").await {
                // Readiness covers the connections; give the feed its first cursor too.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "relay never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        crate::relay::http_get(self.admin, "/metrics").await.1
    }

    /// `ws://…/live` with an optional query.
    pub fn url(&self, query: &str) -> String {
        if query.is_empty() {
            format!("ws://{}/live", self.live)
        } else {
            format!("ws://{}/live?{query}", self.live)
        }
    }

    /// What `run` returned, if it returns within `within` without being asked to stop.
    pub async fn finished(self, within: Duration) -> Option<Result<(), Error>> {
        let ended = tokio::time::timeout(within, self.task).await.ok().map(|joined| joined.expect("run's task"));
        self.shutdown.cancel();
        ended
    }

    /// Cancels the relay and waits for `run` to return.
    pub async fn stop(self) -> Result<(), Error> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task).await.expect("relay stops within 30 s").expect("task")
    }
}

/// A Directus-style access token signed with `secret`, valid for `ttl` (negative: already expired).
pub fn token_with(secret: &str, claims: Value, ttl_secs: i64) -> String {
    trackway_testkit::directus_token(secret, claims, ttl_secs).expect("token")
}

/// An administrator's token (15 minutes), as Directus issues them.
pub fn admin_token() -> String {
    token_with(SECRET, json!({"id": "admin-1", "role": "admin-role", "app_access": true, "admin_access": true}), 900)
}

/// A non-administrator's token.
pub fn user_token(id: &str, role: &str) -> String {
    token_with(SECRET, json!({"id": id, "role": role, "app_access": true, "admin_access": false}), 900)
}

/// A WebSocket client of `/live`.
pub struct Client {
    socket: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
    /// Frames received but not yet taken by `recv_type`.
    pub backlog: Vec<Value>,
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed {
    /// The close code (1006 when the connection just dropped).
    pub code: u16,
    /// The close reason.
    pub reason: String,
}

/// A handshake request for `url`, with an `Authorization: Bearer` header when `bearer` is given (for tests
/// that drive the socket themselves, a handshake that may fail included).
pub fn request(url: &str, bearer: Option<&str>) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().expect("request");
    if let Some(token) = bearer {
        request
            .headers_mut()
            .insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).expect("header"));
    }
    request
}

impl Client {
    /// Connects to `url`, with an `Authorization: Bearer` header when `bearer` is given.
    pub async fn connect(url: &str, bearer: Option<&str>) -> Client {
        let (socket, _) = connect_async(request(url, bearer)).await.expect("WebSocket handshake");
        Client { socket, backlog: Vec::new() }
    }

    /// [`Client::authenticated`], or `None` when the server refuses the handshake (e.g. no place free).
    pub async fn try_authenticated(url: &str, token: &str) -> Option<Client> {
        let (socket, _) = connect_async(request(url, Some(token))).await.ok()?;
        let mut client = Client { socket, backlog: Vec::new() };
        client.recv_type("authenticated").await;
        Some(client)
    }

    /// Connects with a bearer token and waits for `authenticated`.
    pub async fn authenticated(url: &str, token: &str) -> Client {
        let mut client = Client::connect(url, Some(token)).await;
        let frame = client.recv_type("authenticated").await;
        assert!(frame["user"].is_string() || frame["user"].is_null(), "{frame}");
        client
    }

    /// Sends a JSON message.
    pub async fn send(&mut self, message: Value) {
        self.socket.send(Message::text(message.to_string())).await.expect("send");
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: &str) {
        self.socket.send(Message::text(text.to_owned())).await.expect("send");
    }

    /// Sends a raw message (binary, oversized…).
    pub async fn send_message(&mut self, message: Message) {
        let _ = self.socket.send(message).await;
    }

    /// The next text frame as JSON, within `timeout`; `None` on timeout. Panics when the connection closes.
    pub async fn recv_within(&mut self, timeout: Duration) -> Option<Value> {
        if !self.backlog.is_empty() {
            return Some(self.backlog.remove(0));
        }
        self.next_frame(timeout).await
    }

    /// The next text frame, within 10 s.
    pub async fn recv(&mut self) -> Value {
        self.recv_within(Duration::from_secs(10)).await.expect("a frame within 10 s")
    }

    /// The next frame of `kind`; other frames are kept in the backlog.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        if let Some(i) = self.backlog.iter().position(|f| f["type"] == kind) {
            return self.backlog.remove(i);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.next_frame(left).await.unwrap_or_else(|| panic!("no {kind:?} frame within 10 s"));
            if frame["type"] == kind {
                return frame;
            }
            self.backlog.push(frame);
        }
    }

    /// The next text frame from the socket (not the backlog), within `timeout`; pings and pongs skipped.
    async fn next_frame(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await.ok()? {
                Some(Ok(Message::Text(text))) => return Some(serde_json::from_str(text.as_str()).expect("JSON frame")),
                Some(Ok(Message::Close(frame))) => panic!("connection closed: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed: {e}"),
                None => panic!("connection ended"),
            }
        }
    }

    /// Subscribes and returns the `subscribed` frame (panics on an error frame). A snapshot that came in
    /// several frames is returned whole: the documents of the `snapshot` frames after it are appended to
    /// its `snapshot`, and `frames` says how many frames there were.
    pub async fn subscribe(&mut self, target: Value) -> Value {
        let mut message = target;
        message["type"] = json!("subscribe");
        self.send(message).await;
        loop {
            let frame = self.recv().await;
            match frame["type"].as_str() {
                Some("subscribed") => return self.rest_of_snapshot(frame).await,
                Some("error") => panic!("subscribe refused: {frame}"),
                _ => self.backlog.push(frame),
            }
        }
    }

    /// The `snapshot` frames that follow a `subscribed` frame with `remaining`, appended to its snapshot.
    pub async fn rest_of_snapshot(&mut self, mut subscribed: Value) -> Value {
        let mut remaining = subscribed["remaining"].as_u64().unwrap_or(0);
        let mut frames = 1;
        while remaining > 0 {
            let more = self.recv().await;
            assert_eq!(more["type"], "snapshot", "the rest of the snapshot comes next: {more}");
            assert_eq!((&more["device"], &more["group"]), (&subscribed["device"], &subscribed["group"]));
            let docs = more["snapshot"].as_array().expect("documents").clone();
            assert!(!docs.is_empty() && docs.len() as u64 <= remaining, "{} of {remaining}", docs.len());
            remaining -= docs.len() as u64;
            subscribed["snapshot"].as_array_mut().expect("snapshot").extend(docs);
            frames += 1;
        }
        subscribed["frames"] = json!(frames);
        subscribed
    }

    /// Collects positions (`{cursor, position}`) until `count` arrived or `timeout` passed since the last one.
    pub async fn positions(&mut self, count: usize, timeout: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        let backlog = std::mem::take(&mut self.backlog);
        for frame in backlog {
            if frame["type"] == "positions" {
                out.extend(frame["positions"].as_array().expect("positions").iter().cloned());
            } else {
                self.backlog.push(frame);
            }
        }
        while out.len() < count {
            match self.next_frame(timeout).await {
                Some(frame) if frame["type"] == "positions" => {
                    out.extend(frame["positions"].as_array().expect("positions").iter().cloned())
                }
                Some(frame) => self.backlog.push(frame),
                None => break,
            }
        }
        out
    }

    /// Waits for the server to close the connection (answering nothing), within `timeout`.
    pub async fn closed(&mut self, timeout: Duration) -> Closed {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => panic!("connection still open after {timeout:?}"),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return frame.map_or(Closed { code: 1005, reason: String::new() }, |f| Closed {
                        code: u16::from(f.code),
                        reason: f.reason.to_string(),
                    })
                }
                Ok(Some(Ok(Message::Text(text)))) => {
                    self.backlog.push(serde_json::from_str(text.as_str()).unwrap_or(Value::Null));
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => return Closed { code: 1006, reason: String::new() },
            }
        }
    }

    /// Closes from the client side.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// `(deviceId, timestamp)` of each position item.
pub fn keys(items: &[Value]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|i| {
            let p = &i["position"];
            (p["deviceId"].as_str().expect("deviceId").to_owned(), p["timestamp"].as_str().expect("ts").to_owned())
        })
        .collect()
}

/// The same as a set.
pub fn key_set(items: &[Value]) -> HashSet<(String, String)> {
    keys(items).into_iter().collect()
}

/// A wire-format payload for `device` at second `n` after a fixed start, with a 64-bit attribute and a
/// byte string so every test also checks they survive.
pub fn payload(device: &str, n: u32) -> String {
    let ts = format!("2026-11-27T10:{:02}:{:02}.{:03}Z", (n / 60) % 60, n % 60, n / 3600 % 1000);
    json!({
        "deviceId": device, "timestamp": ts, "latitude": 54.0 + f64::from(n % 1000) / 10000.0,
        "longitude": 25.0, "speed": n % 120, "angle": n % 360,
        "attributes": {"239": 1, "11": {"__bigint": "18446744073709551615"}, "281": {"__buffer_b64": "UDAzMDA="}}
    })
    .to_string()
}
