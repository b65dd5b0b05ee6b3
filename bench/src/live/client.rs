//! The benchmark's side of `/live` (docs/live-protocol.md): WebSocket clients that authenticate with
//! `Authorization: Bearer`, subscribe, and record when each position arrives; and the position keys
//! (`deviceId`, `timestamp`) that tie a received item, a NOTIFY entry and an XADD together.
//!
//! Frames are not parsed into a JSON tree: a `positions` frame of a broadcast can hold hundreds of
//! positions and 200 clients receive each of them. The keys are found with a substring search instead:
//! every position document, in a frame (jsonb text: keys ordered by length) as in a NOTIFY payload
//! (compact wire text, or a reference entry `cursor`, `deviceId`, `timestamp`), has its `deviceId` before
//! its `timestamp`, and the generated attributes have numeric keys only.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, LazyLock,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use memchr::memmem::Finder;
use tokio::{net::TcpStream, sync::watch};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::header::AUTHORIZATION, protocol::WebSocketConfig, Message},
    MaybeTlsStream, WebSocketStream,
};

/// A client's WebSocket.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a handshake, an authentication or a subscription may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

static DEVICE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"deviceId\""));
static TIMESTAMP_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"timestamp\""));

/// Calls `found(deviceId, timestamp)` for each position in `text`, in order.
pub fn scan_keys(text: &[u8], mut found: impl FnMut(&[u8], &[u8])) {
    let mut at = 0;
    while let Some(d) = DEVICE_KEY.find(&text[at..]) {
        let Some((device, after)) = string_value(text, at + d + 10) else { return };
        let Some(t) = TIMESTAMP_KEY.find(&text[after..]) else { return };
        let Some((timestamp, after)) = string_value(text, after + t + 11) else { return };
        found(device, timestamp);
        at = after;
    }
}

/// The string after a key (`: "…"`, any spaces), and the index after its closing quote. The values
/// scanned (device ids, timestamps) hold no escapes.
fn string_value(text: &[u8], mut at: usize) -> Option<(&[u8], usize)> {
    while matches!(text.get(at), Some(b' ' | b':')) {
        at += 1;
    }
    if text.get(at) != Some(&b'"') {
        return None;
    }
    let start = at + 1;
    let len = memchr::memchr(b'"', text.get(start..)?)?;
    Some((&text[start..start + len], start + len + 1))
}

/// Every generated position by key: `deviceId` + `\0` + `timestamp` → its index.
pub struct Keys {
    map: HashMap<Box<[u8]>, u32>,
}

impl Keys {
    /// Indexes `payloads` (wire text); also returns each payload's device id.
    pub fn new(payloads: &[String]) -> Result<(Keys, Vec<String>)> {
        let mut map = HashMap::with_capacity(payloads.len());
        let mut devices = Vec::with_capacity(payloads.len());
        for (i, p) in payloads.iter().enumerate() {
            let mut key = None;
            scan_keys(p.as_bytes(), |d, t| key = Some((join(d, t), String::from_utf8_lossy(d).into_owned())));
            let Some((key, device)) = key else { bail!("no deviceId/timestamp in payload {p}") };
            if map.insert(key, u32::try_from(i)?).is_some() {
                bail!("two payloads with the same deviceId and timestamp: {p}");
            }
            devices.push(device);
        }
        Ok((Keys { map }, devices))
    }

    pub fn get(&self, device: &[u8], timestamp: &[u8]) -> Option<u32> {
        let mut buf = [0u8; 128];
        let n = device.len() + 1 + timestamp.len();
        if n > buf.len() {
            return self.map.get(&*join(device, timestamp)).copied();
        }
        buf[..device.len()].copy_from_slice(device);
        buf[device.len() + 1..n].copy_from_slice(timestamp);
        self.map.get(&buf[..n]).copied()
    }
}

fn join(device: &[u8], timestamp: &[u8]) -> Box<[u8]> {
    [device, b"\0", timestamp].concat().into_boxed_slice()
}

/// Opens a connection with the token in the handshake and waits for `authenticated`.
pub async fn connect(url: &str, token: &str, read_buffer: usize) -> Result<Socket> {
    let mut request = url.into_client_request().context("live URL")?;
    request.headers_mut().insert(AUTHORIZATION, format!("Bearer {token}").parse().context("token header")?);
    let config = WebSocketConfig::default().read_buffer_size(read_buffer).write_buffer_size(0);
    let (mut socket, _) =
        tokio::time::timeout(ANSWER_TIMEOUT, tokio_tungstenite::connect_async_with_config(request, Some(config), true))
            .await
            .context("handshake timed out")?
            .context("WebSocket handshake")?;
    let first = next_text(&mut socket).await?;
    if !first.contains("\"type\":\"authenticated\"") {
        bail!("expected authenticated, got {first}");
    }
    Ok(socket)
}

/// Opens a WebSocket that needs no authentication (pg_eventserv's).
pub async fn connect_plain(url: &str, read_buffer: usize) -> Result<Socket> {
    let config = WebSocketConfig::default().read_buffer_size(read_buffer).write_buffer_size(0);
    let (socket, _) =
        tokio::time::timeout(ANSWER_TIMEOUT, tokio_tungstenite::connect_async_with_config(url, Some(config), true))
            .await
            .context("handshake timed out")?
            .context("WebSocket handshake")?;
    Ok(socket)
}

/// Subscribes to `kind` (`device` or `group`) `id` and waits for `subscribed`.
pub async fn subscribe(socket: &mut Socket, kind: &str, id: &str) -> Result<()> {
    let request = serde_json::json!({"type": "subscribe", kind: id, "id": 1}).to_string();
    socket.send(Message::text(request)).await.context("sending subscribe")?;
    let answer = next_text(socket).await?;
    if !answer.contains("\"type\":\"subscribed\"") {
        bail!("subscribe {kind} {id}: {}", answer.chars().take(300).collect::<String>());
    }
    Ok(())
}

async fn next_text(socket: &mut Socket) -> Result<String> {
    loop {
        let message = tokio::time::timeout(ANSWER_TIMEOUT, socket.next())
            .await
            .context("no answer from the relay")?
            .context("the relay closed the connection")?
            .context("reading from the relay")?;
        match message {
            Message::Text(text) => return Ok(text.as_str().to_owned()),
            Message::Close(frame) => bail!("the relay closed the connection: {frame:?}"),
            _ => continue,
        }
    }
}

/// What one client received while it was running.
#[derive(Default)]
pub struct Received {
    /// `(position index, receipt time in µs after the benchmark's start)`, in arrival order.
    pub deliveries: Vec<(u32, u32)>,
    /// Items whose key is not a generated position.
    pub unknown: u64,
    /// How the connection ended before it was asked to stop, if it did.
    pub ended: Option<String>,
}

/// Reads until `stop` turns true (or the connection ends), recording each position's arrival; adds
/// the count of items received to `total` as they come.
pub async fn receive(
    socket: Socket,
    keys: Arc<Keys>,
    t0: Instant,
    stop: watch::Receiver<bool>,
    total: Arc<AtomicU64>,
) -> Received {
    receive_frames(socket, keys, t0, stop, total, true).await
}

/// [`receive`] from a server whose every text frame is a position (pg_eventserv forwards NOTIFY payloads).
pub async fn receive_payloads(
    socket: Socket,
    keys: Arc<Keys>,
    t0: Instant,
    stop: watch::Receiver<bool>,
    total: Arc<AtomicU64>,
) -> Received {
    receive_frames(socket, keys, t0, stop, total, false).await
}

async fn receive_frames(
    mut socket: Socket,
    keys: Arc<Keys>,
    t0: Instant,
    mut stop: watch::Receiver<bool>,
    total: Arc<AtomicU64>,
    positions_frames_only: bool,
) -> Received {
    let mut received = Received::default();
    loop {
        let message = tokio::select! {
            biased;
            message = socket.next() => message,
            _ = stop.wait_for(|s| *s) => return received,
        };
        let at = micros_since(t0);
        match message {
            Some(Ok(Message::Text(text))) => {
                let text = text.as_bytes();
                if positions_frames_only && !text.starts_with(b"{\"type\":\"positions\"") {
                    continue;
                }
                let before = received.deliveries.len();
                scan_keys(text, |d, t| match keys.get(d, t) {
                    Some(i) => received.deliveries.push((i, at)),
                    None => received.unknown += 1,
                });
                total.fetch_add((received.deliveries.len() - before) as u64, Ordering::Relaxed);
            }
            Some(Ok(Message::Close(frame))) => {
                received.ended = Some(format!("closed by the relay: {frame:?}"));
                return received;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                received.ended = Some(format!("connection failed: {e}"));
                return received;
            }
            None => {
                received.ended = Some("connection ended".to_owned());
                return received;
            }
        }
    }
}

/// Microseconds from `t0` to now (saturating at u32::MAX, 71 minutes).
pub fn micros_since(t0: Instant) -> u32 {
    u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_in_frames_notifications_and_payloads() {
        let frame = br#"{"type":"positions","positions":[{"cursor":"7:1","position":{"angle": 1, "deviceId": "d1", "latitude": 1, "timestamp": "2026-11-27T08:00:00.000Z", "attributes": {"11": {"__bigint": "1"}}}},{"cursor":"7:2","position":{"deviceId": "d2", "timestamp": "2026-11-27T08:00:01.000Z"}}]}"#;
        let notify = br#"{"positions":[{"cursor":"812:1","position":{"deviceId":"d1","timestamp":"t1","latitude":1}},{"cursor":"812:2:9","deviceId":"d2","timestamp":"t2"}]}"#;
        let mut seen = Vec::new();
        scan_keys(frame, |d, t| seen.push((d.to_vec(), t.to_vec())));
        scan_keys(notify, |d, t| seen.push((d.to_vec(), t.to_vec())));
        let seen: Vec<(String, String)> =
            seen.into_iter().map(|(d, t)| (String::from_utf8(d).unwrap(), String::from_utf8(t).unwrap())).collect();
        let expected =
            [("d1", "2026-11-27T08:00:00.000Z"), ("d2", "2026-11-27T08:00:01.000Z"), ("d1", "t1"), ("d2", "t2")];
        assert_eq!(seen, expected.map(|(d, t)| (d.to_owned(), t.to_owned())));

        let payloads = trackway_sim::workload(300, 10, 1);
        let (keys, devices) = Keys::new(&payloads).unwrap();
        assert_eq!(devices.len(), 300);
        let mut found = Vec::new();
        for p in &payloads {
            scan_keys(p.as_bytes(), |d, t| found.push(keys.get(d, t)));
        }
        assert_eq!(found, (0..300).map(Some).collect::<Vec<_>>());
        assert_eq!(keys.get(b"d1", b"t1"), None);
    }
}
