//! The live protocol's messages (docs/live-protocol.md is the public description; keep the two in step):
//! what a client may send, how it is checked, and the frames the server sends back.
//!
//! Client messages are parsed in two steps so every mistake gets its own error code: JSON at all
//! (`bad_json`), an object with a known `type` (`bad_message`, `unknown_type`), then the fields of that
//! type (`bad_message`, `bad_target`, `bad_cursor`). Server frames are built as text: positions arrive
//! from the database as finished JSON and are spliced in without being parsed again.

use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use trackway_wire::Cursor;

/// Longest device or group id (the `trackway.positions.device_id` check allows 256 bytes).
pub const MAX_ID_BYTES: usize = 256;

/// What a subscription watches.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// One device.
    Device(String),
    /// Every device of a group in `trackway.device_groups`, as the membership stands when each row is read.
    Group(String),
}

impl Target {
    /// `device` or `group`: the `kind` argument of `trackway.authorize` and the key in frames.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Device(_) => "device",
            Target::Group(_) => "group",
        }
    }

    /// The device or group id.
    pub fn id(&self) -> &str {
        match self {
            Target::Device(id) | Target::Group(id) => id,
        }
    }

    /// Adds `"device": id` or `"group": id` to a frame.
    fn put(&self, frame: &mut Map<String, Value>) {
        frame.insert(self.kind().to_owned(), Value::String(self.id().to_owned()));
    }
}

/// A message from a client.
#[derive(Debug, PartialEq)]
pub enum ClientMessage {
    /// Authenticate, or renew the token of an authenticated connection.
    Auth {
        /// The access token.
        token: String,
    },
    /// Start watching a target.
    Subscribe {
        /// What to watch.
        target: Target,
        /// Resume after this cursor instead of starting from a snapshot (checked to parse).
        since: Option<String>,
    },
    /// Stop watching a target.
    Unsubscribe {
        /// What to stop watching.
        target: Target,
    },
    /// An application-level ping (answered with `pong`), for clients that cannot see WebSocket pings.
    Ping,
}

/// A client message with the optional `id` the client wants echoed in the answer.
#[derive(Debug, PartialEq)]
pub struct Request {
    /// The message.
    pub message: ClientMessage,
    /// Echoed in `subscribed`, `unsubscribed`, `pong` and `error` answers (string or number).
    pub id: Option<Value>,
}

/// Error codes sent in `error` frames (the connection stays open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The message is not JSON.
    BadJson,
    /// JSON, but not a message: not an object, no `type`, a missing or mistyped field.
    BadMessage,
    /// A `type` this server does not know.
    UnknownType,
    /// `device`/`group` missing, both given, empty or too long.
    BadTarget,
    /// `since` is not a cursor.
    BadCursor,
    /// The token's holder may not watch this target.
    Forbidden,
    /// The connection holds the most subscriptions allowed.
    TooManySubscriptions,
    /// Already subscribed to this target.
    AlreadySubscribed,
    /// `unsubscribe` of a target that is not subscribed.
    NotSubscribed,
    /// More positions than the replay limit were inserted after `since`: subscribe without it.
    ResumeTooFar,
    /// The database could not answer; try again.
    Unavailable,
    /// A renewed token was refused (the connection keeps its current one until that expires).
    BadToken,
    /// A renewed token belongs to someone else.
    AuthMismatch,
    /// The authentication service could not answer a renewal; the current token stays in force.
    AuthUnavailable,
}

impl ErrorCode {
    /// The code as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadTarget => "bad_target",
            ErrorCode::BadCursor => "bad_cursor",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::ResumeTooFar => "resume_too_far",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::BadToken => "bad_token",
            ErrorCode::AuthMismatch => "auth_mismatch",
            ErrorCode::AuthUnavailable => "auth_unavailable",
        }
    }
}

/// A refused message: the code, a message for people, and what it concerned.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Says what is wrong.
    pub message: String,
    /// The request's `id`, when it had one.
    pub id: Option<Value>,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>, id: Option<Value>) -> Refusal {
        Refusal { code, message: message.into(), id }
    }

    /// `unavailable`: the database could not answer a `subscribe` now.
    pub fn database_unavailable(id: Option<Value>) -> Refusal {
        Refusal::new(ErrorCode::Unavailable, "the database is unavailable; subscribe again later", id)
    }
}

/// Parses one text frame from a client.
pub fn parse(text: &str) -> Result<Request, Refusal> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| Refusal::new(ErrorCode::BadJson, format!("not JSON: {e}"), None))?;
    let Value::Object(mut fields) = value else {
        return Err(Refusal::new(ErrorCode::BadMessage, "a message is a JSON object with a \"type\"", None));
    };
    let id = match fields.remove("id") {
        None | Some(Value::Null) => None,
        Some(v @ (Value::String(_) | Value::Number(_))) => Some(v),
        Some(_) => return Err(Refusal::new(ErrorCode::BadMessage, "id must be a string or a number", None)),
    };
    let refuse = |code, message: String| Refusal::new(code, message, id.clone());
    let kind = match fields.remove("type") {
        Some(Value::String(t)) => t,
        Some(_) => return Err(refuse(ErrorCode::BadMessage, "type must be a string".into())),
        None => return Err(refuse(ErrorCode::BadMessage, "the message has no \"type\"".into())),
    };
    let message = match kind.as_str() {
        "auth" => match fields.remove("token") {
            Some(Value::String(token)) if !token.is_empty() => ClientMessage::Auth { token },
            _ => return Err(refuse(ErrorCode::BadMessage, "auth needs a non-empty string \"token\"".into())),
        },
        "subscribe" => {
            let target = target(&mut fields).map_err(|m| refuse(ErrorCode::BadTarget, m))?;
            let since = match fields.remove("since") {
                None | Some(Value::Null) => None,
                // Parsed once here; a long list of transactions is widened to a range (which reads a
                // few rows again, never fewer), so that no client can make every replayed row's cursor
                // carry thousands of items.
                Some(Value::String(c)) => match Cursor::parse(&c) {
                    Ok(cursor) => Some(cursor.widened(trackway_wire::cursor::MAX_LISTED_UNCERTAIN).to_string()),
                    Err(e) => return Err(refuse(ErrorCode::BadCursor, format!("since: {e}"))),
                },
                Some(_) => return Err(refuse(ErrorCode::BadCursor, "since must be a cursor string".into())),
            };
            ClientMessage::Subscribe { target, since }
        }
        "unsubscribe" => {
            ClientMessage::Unsubscribe { target: target(&mut fields).map_err(|m| refuse(ErrorCode::BadTarget, m))? }
        }
        "ping" => ClientMessage::Ping,
        other => {
            let shown: String = other.chars().take(40).collect();
            return Err(refuse(
                ErrorCode::UnknownType,
                format!("unknown type {shown:?}: expected auth, subscribe, unsubscribe or ping"),
            ));
        }
    };
    Ok(Request { message, id })
}

/// Exactly one of `device` and `group`, a non-empty string of at most [`MAX_ID_BYTES`] bytes without
/// U+0000 (which PostgreSQL's text cannot hold: the query would fail on the server instead of here).
fn target(fields: &mut Map<String, Value>) -> Result<Target, String> {
    let id = |name: &str, value: Value| match value {
        Value::String(s) if s.is_empty() => Err(format!("{name} must not be empty")),
        Value::String(s) if s.len() > MAX_ID_BYTES => Err(format!("{name} is longer than {MAX_ID_BYTES} bytes")),
        Value::String(s) if s.contains('\0') => Err(format!("{name} must not contain the character U+0000")),
        Value::String(s) => Ok(s),
        _ => Err(format!("{name} must be a string")),
    };
    match (fields.remove("device"), fields.remove("group")) {
        (Some(d), None) => Ok(Target::Device(id("device", d)?)),
        (None, Some(g)) => Ok(Target::Group(id("group", g)?)),
        (Some(_), Some(_)) => Err("give either device or group, not both".into()),
        (None, None) => Err("name a \"device\" or a \"group\"".into()),
    }
}

/// An `error` frame.
pub fn error_frame(refusal: &Refusal) -> String {
    let mut frame = Map::new();
    frame.insert("type".into(), "error".into());
    frame.insert("code".into(), refusal.code.as_str().into());
    frame.insert("message".into(), refusal.message.clone().into());
    if let Some(id) = &refusal.id {
        frame.insert("id".into(), id.clone());
    }
    Value::Object(frame).to_string()
}

/// `{"type":"authenticated",…}`: who the connection acts for and until when (RFC 3339, or null).
pub fn authenticated_frame(user: Option<&str>, admin: bool, expires_at: Option<&str>) -> String {
    json!({"type": "authenticated", "user": user, "admin": admin, "expiresAt": expires_at}).to_string()
}

/// Most items (positions, snapshot documents) in one frame.
pub const MAX_FRAME_ITEMS: usize = 512;
/// Rough byte budget of one frame of positions or snapshot documents (the item that crosses it is the
/// frame's last).
pub const MAX_FRAME_BYTES: usize = 256 * 1024;

/// Whether a frame of `items` items and about `bytes` bytes is full (the item that made it so is its last).
pub fn frame_is_full(items: usize, bytes: usize) -> bool {
    items >= MAX_FRAME_ITEMS || bytes >= MAX_FRAME_BYTES
}

/// Items (`{cursor, position}`) cut into `positions` frames by [`frame_is_full`], each with its count.
pub fn positions_frames<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<(String, usize)> {
    let mut frames = Vec::new();
    let mut part: Vec<&str> = Vec::new();
    let mut bytes = 0;
    let mut close = |part: &mut Vec<&str>, bytes: &mut usize| {
        let count = part.len();
        frames.push((positions_frame(part.drain(..), *bytes), count));
        *bytes = 0;
    };
    for item in items {
        bytes += item.len() + 1;
        part.push(item);
        if frame_is_full(part.len(), bytes) {
            close(&mut part, &mut bytes);
        }
    }
    if !part.is_empty() {
        close(&mut part, &mut bytes);
    }
    frames
}

/// A frame's text. Snapshot documents, replays and live positions going to several clients are shared: a
/// frame holding them is the shared bytes (validated UTF-8, written as they are), or for a `subscribed`
/// frame the client's own head around the shared bytes, joined only when it is written.
#[derive(Debug, Clone)]
pub enum Text {
    /// A frame of one client's own.
    Own(String),
    /// A client's own head, bytes shared with other clients, and the closing.
    Around {
        /// The client's part (`{"cursor":…,"id":…,…,"snapshot":[`).
        head: String,
        /// Shared.
        shared: Utf8Bytes,
        /// `]}`.
        tail: &'static str,
    },
    /// A frame shared whole.
    Shared(Utf8Bytes),
}

impl Text {
    /// Bytes the frame takes on the wire.
    pub fn len(&self) -> usize {
        match self {
            Text::Own(text) => text.len(),
            Text::Around { head, shared, tail } => head.len() + shared.len() + tail.len(),
            Text::Shared(bytes) => bytes.len(),
        }
    }

    /// Whether the frame is empty (never, for a real frame).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame's text in one piece, as the WebSocket writes it (a copy only for [`Text::Around`]; shared
    /// bytes are not validated again).
    pub fn into_text(self) -> Utf8Bytes {
        match self {
            Text::Own(text) => Utf8Bytes::from(text),
            Text::Around { head, shared, tail } => {
                let mut joined = String::with_capacity(head.len() + shared.len() + tail.len());
                joined.push_str(&head);
                joined.push_str(shared.as_str());
                joined.push_str(tail);
                Utf8Bytes::from(joined)
            }
            Text::Shared(text) => text,
        }
    }
}

impl From<String> for Text {
    fn from(text: String) -> Text {
        Text::Own(text)
    }
}

/// A target's snapshot, cut into frame-sized parts once and shared by every subscriber answered from it.
/// The first part goes in the `subscribed` frame (with the count of documents still to come,
/// `remaining`); each further part is a `snapshot` frame of its own, the same bytes for everyone.
pub struct Snapshot {
    /// Documents in each part, and the part (`doc,doc,…`).
    parts: Vec<(usize, Utf8Bytes)>,
    /// The `snapshot` frames of the parts after the first.
    more: Vec<Utf8Bytes>,
}

impl Snapshot {
    /// The snapshot of `target` with these finished wire documents, in order.
    pub fn new(target: &Target, documents: &[String]) -> Snapshot {
        let mut parts = Vec::new();
        let mut part = String::new();
        let mut count = 0;
        for doc in documents {
            if count > 0 {
                part.push(',');
            }
            part.push_str(doc);
            count += 1;
            if frame_is_full(count, part.len()) {
                parts.push((count, Utf8Bytes::from(std::mem::take(&mut part))));
                count = 0;
            }
        }
        if count > 0 || parts.is_empty() {
            parts.push((count, Utf8Bytes::from(part)));
        }
        let mut head = Map::new();
        head.insert("type".into(), "snapshot".into());
        target.put(&mut head);
        let head = reopened(&Value::Object(head).to_string(), "snapshot");
        let more = parts[1..]
            .iter()
            .map(|(_, part)| {
                let mut frame = String::with_capacity(head.len() + part.len() + 2);
                frame.push_str(&head);
                frame.push_str(part.as_str());
                frame.push_str("]}");
                Utf8Bytes::from(frame)
            })
            .collect();
        Snapshot { parts, more }
    }

    /// The frames answering one subscriber: `{"type":"subscribed",…,"cursor":…,"snapshot":[…]}` with the
    /// first part (and `remaining` when more follow), then the `snapshot` frames of the others.
    pub fn frames(&self, target: &Target, id: Option<&Value>, cursor: &str) -> Vec<Text> {
        let mut head = Map::new();
        head.insert("type".into(), "subscribed".into());
        target.put(&mut head);
        if let Some(id) = id {
            head.insert("id".into(), id.clone());
        }
        head.insert("cursor".into(), cursor.into());
        let remaining: usize = self.parts[1..].iter().map(|(count, _)| count).sum();
        if remaining > 0 {
            head.insert("remaining".into(), remaining.into());
        }
        let head = reopened(&Value::Object(head).to_string(), "snapshot");
        let mut frames = Vec::with_capacity(self.parts.len());
        frames.push(Text::Around { head, shared: self.parts[0].1.clone(), tail: "]}" });
        frames.extend(self.more.iter().cloned().map(Text::Shared));
        frames
    }
}

/// An object's text (ending with `}`) reopened to append `"<field>":[`.
fn reopened(object: &str, field: &str) -> String {
    let mut text = String::with_capacity(object.len() + field.len() + 6);
    text.push_str(&object[..object.len() - 1]);
    text.push_str(",\"");
    text.push_str(field);
    text.push_str("\":[");
    text
}

/// `{"type":"subscribed",…,"since":…,"replay":n}`: the `n` replayed positions follow in `positions` frames.
pub fn subscribed_replay_frame(target: &Target, id: Option<&Value>, since: &str, replay: usize) -> String {
    let mut frame = Map::new();
    frame.insert("type".into(), "subscribed".into());
    target.put(&mut frame);
    if let Some(id) = id {
        frame.insert("id".into(), id.clone());
    }
    frame.insert("since".into(), since.into());
    frame.insert("replay".into(), replay.into());
    Value::Object(frame).to_string()
}

/// Why a subscription ended: the `reason` of an `unsubscribed` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsubscribed {
    /// The client asked.
    Requested,
    /// A renewed or re-checked token no longer allows it (do not ask again with this token).
    Forbidden,
    /// The database could not check it again (fail closed; the client may subscribe again later).
    Unavailable,
}

impl Unsubscribed {
    /// The word in the frame (docs/live-protocol.md).
    pub fn label(self) -> &'static str {
        match self {
            Unsubscribed::Requested => "requested",
            Unsubscribed::Forbidden => "forbidden",
            Unsubscribed::Unavailable => "unavailable",
        }
    }
}

/// `{"type":"unsubscribed",…,"reason":…}`.
pub fn unsubscribed_frame(target: &Target, id: Option<&Value>, reason: Unsubscribed) -> String {
    let mut frame = Map::new();
    frame.insert("type".into(), "unsubscribed".into());
    target.put(&mut frame);
    if let Some(id) = id {
        frame.insert("id".into(), id.clone());
    }
    frame.insert("reason".into(), reason.label().into());
    Value::Object(frame).to_string()
}

/// `{"type":"pong"}`, with the ping's id.
pub fn pong_frame(id: Option<&Value>) -> String {
    match id {
        Some(id) => json!({"type": "pong", "id": id}).to_string(),
        None => r#"{"type":"pong"}"#.to_owned(),
    }
}

/// One element of a `positions` frame: `{"cursor":…,"position":<wire document>}`. `position` is JSON
/// text produced by the database (`trackway.positions_since`), used as it is.
pub fn position_item(cursor: &str, position: &str) -> String {
    let cursor = Value::String(cursor.to_owned()).to_string();
    let mut item = String::with_capacity(cursor.len() + position.len() + 26);
    item.push_str("{\"cursor\":");
    item.push_str(&cursor);
    item.push_str(",\"position\":");
    item.push_str(position);
    item.push('}');
    item
}

/// A `positions` frame from finished items, oldest first.
pub fn positions_frame<'a>(items: impl Iterator<Item = &'a str>, size_hint: usize) -> String {
    let mut frame = String::with_capacity(size_hint + 40);
    frame.push_str("{\"type\":\"positions\",\"positions\":[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            frame.push(',');
        }
        frame.push_str(item);
    }
    frame.push_str("]}");
    frame
}

/// WebSocket close codes the server uses (docs/live-protocol.md lists them with their meaning).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCode {
    /// 1001: the relay is shutting down; reconnect (to another relay) and resume.
    GoingAway,
    /// 1003: a binary frame; the protocol is JSON text.
    Unsupported,
    /// 1007: a text frame that is not UTF-8.
    InvalidData,
    /// 1002: the client broke the WebSocket protocol (bad framing, unmasked frames…).
    Protocol,
    /// 1009: a message larger than the limit.
    TooBig,
    /// 4001: no valid token (missing, malformed, bad signature, wrong issuer, expired, refused by Directus,
    /// none within the authentication deadline, or another message before `auth`).
    Unauthorized,
    /// 4003: the token expired (or Directus stopped accepting it) and was not renewed.
    TokenExpired,
    /// 4004: the authentication service (Directus) could not be asked; try again later.
    AuthUnavailable,
    /// 4008: the client reads too slowly (it was still behind on more distinct devices than its queue
    /// holds). A client whose socket accepts nothing for the send timeout cannot be sent a close frame: its
    /// connection is dropped (the client sees 1006); both count as `too_slow`.
    TooSlow,
    /// 4009: nothing heard from the client (not even a pong) for two ping intervals.
    Silent,
    /// 4010: the token's user already has `TRACKWAY_LIVE_MAX_CONNECTIONS_PER_USER` connections open.
    TooManyConnections,
}

impl CloseCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::GoingAway => 1001,
            CloseCode::Unsupported => 1003,
            CloseCode::InvalidData => 1007,
            CloseCode::Protocol => 1002,
            CloseCode::TooBig => 1009,
            CloseCode::Unauthorized => 4001,
            CloseCode::TokenExpired => 4003,
            CloseCode::AuthUnavailable => 4004,
            CloseCode::TooSlow => 4008,
            CloseCode::Silent => 4009,
            CloseCode::TooManyConnections => 4010,
        }
    }

    /// The `reason` label of `trackway_live_closes_total`.
    pub fn label(self) -> &'static str {
        match self {
            CloseCode::GoingAway => "shutdown",
            CloseCode::Unsupported => "binary",
            CloseCode::InvalidData => "invalid_utf8",
            CloseCode::Protocol => "protocol",
            CloseCode::TooBig => "too_big",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::AuthUnavailable => "auth_unavailable",
            CloseCode::TooSlow => "too_slow",
            CloseCode::Silent => "silent",
            CloseCode::TooManyConnections => "too_many_connections",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unsubscribe_reason_is_in_the_protocol_document() {
        let doc = include_str!("../../../docs/live-protocol.md");
        let row = doc.lines().find(|l| l.starts_with("| `reason` | `requested`")).expect("the reason row");
        for reason in [Unsubscribed::Requested, Unsubscribed::Forbidden, Unsubscribed::Unavailable] {
            assert!(row.contains(&format!("`{}`", reason.label())), "{reason:?}");
            let frame: Value = serde_json::from_str(&unsubscribed_frame(&Target::Device("d".into()), None, reason))
                .expect("JSON frame");
            assert_eq!(frame["reason"], reason.label());
        }
    }

    fn code(text: &str) -> ErrorCode {
        parse(text).expect_err(text).code
    }

    #[test]
    fn messages_parse_with_their_ids() {
        let r = parse(r#"{"type":"subscribe","device":"356307042441013","id":7}"#).expect("valid");
        assert_eq!(
            r.message,
            ClientMessage::Subscribe { target: Target::Device("356307042441013".into()), since: None }
        );
        assert_eq!(r.id, Some(json!(7)));
        let r = parse(r#"{"type":"subscribe","group":"fleet","since":"10:2:7@1"}"#).expect("valid");
        assert_eq!(
            r.message,
            ClientMessage::Subscribe { target: Target::Group("fleet".into()), since: Some("10:2:7@1".into()) }
        );
        assert_eq!(
            parse(r#"{"type":"auth","token":"t"}"#).expect("auth").message,
            ClientMessage::Auth { token: "t".into() }
        );
        assert_eq!(parse(r#"{"type":"ping","id":"a"}"#).expect("ping").id, Some(json!("a")));
    }

    #[test]
    fn every_mistake_has_its_code_and_keeps_the_id() {
        assert_eq!(code("{not json"), ErrorCode::BadJson);
        assert_eq!(code("[1,2]"), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"device":"a"}"#), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"type":5}"#), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"type":"subscribe","id":{"x":1},"device":"a"}"#), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"subscribe"}"#), ErrorCode::BadTarget);
        assert_eq!(code(r#"{"type":"subscribe","device":""}"#), ErrorCode::BadTarget);
        assert_eq!(code(r#"{"type":"subscribe","group":"a\u0000b"}"#), ErrorCode::BadTarget);
        assert_eq!(code(r#"{"type":"unsubscribe","device":"\u0000"}"#), ErrorCode::BadTarget);
        assert_eq!(code(r#"{"type":"subscribe","device":"a","group":"b"}"#), ErrorCode::BadTarget);
        assert_eq!(code(r#"{"type":"unsubscribe","group":7}"#), ErrorCode::BadTarget);
        let long = format!(r#"{{"type":"subscribe","device":"{}"}}"#, "x".repeat(MAX_ID_BYTES + 1));
        assert_eq!(code(&long), ErrorCode::BadTarget);
        assert_eq!(code(r#"{"type":"subscribe","device":"a","since":"yesterday"}"#), ErrorCode::BadCursor);
        assert_eq!(code(r#"{"type":"subscribe","device":"a","since":12}"#), ErrorCode::BadCursor);
        assert_eq!(code(r#"{"type":"auth"}"#), ErrorCode::BadMessage);
        let r = parse(r#"{"type":"subscribe","id":"q1"}"#).expect_err("no target");
        assert_eq!(r.id, Some(json!("q1")));
        let frame: Value = serde_json::from_str(&error_frame(&r)).expect("json");
        assert_eq!(frame["type"], "error");
        assert_eq!(frame["code"], "bad_target");
        assert_eq!(frame["id"], "q1");
    }

    fn parsed(text: &Text) -> Value {
        serde_json::from_str(text.clone().into_text().as_str()).expect("a JSON frame")
    }

    #[test]
    fn a_big_snapshot_comes_in_bounded_frames_shared_by_its_subscribers() {
        let target = Target::Device("d".into());
        let docs: Vec<String> = (0..1300).map(|n| format!("{{\"n\":{n}}}")).collect();
        let snapshot = Snapshot::new(&target, &docs);
        let (a, b) = (snapshot.frames(&target, Some(&json!("a")), "9:0"), snapshot.frames(&target, None, "9:0"));
        assert_eq!(a.len(), 3, "512 + 512 + 276 documents");
        let first = parsed(&a[0]);
        assert_eq!((first["type"].as_str(), first["id"].as_str()), (Some("subscribed"), Some("a")));
        assert_eq!((first["snapshot"].as_array().map(Vec::len), first["remaining"].as_u64()), (Some(512), Some(788)));
        let mut all: Vec<Value> = first["snapshot"].as_array().expect("array").clone();
        for more in &a[1..] {
            let frame = parsed(more);
            assert_eq!((frame["type"].as_str(), frame["device"].as_str()), (Some("snapshot"), Some("d")));
            all.extend(frame["snapshot"].as_array().expect("array").iter().cloned());
        }
        assert_eq!(all, docs.iter().map(|d| serde_json::from_str::<Value>(d).expect("doc")).collect::<Vec<_>>());
        match (&a[0], &b[0], &a[1], &b[1]) {
            (Text::Around { shared: x, .. }, Text::Around { shared: y, .. }, Text::Shared(p), Text::Shared(q)) => {
                assert_eq!((x.as_ptr(), p.as_ptr()), (y.as_ptr(), q.as_ptr()), "the same bytes, not copies");
            }
            other => panic!("unexpected frames {other:?}"),
        }
        let large: Vec<String> = (0..3).map(|_| format!("{{\"x\":\"{}\"}}", "y".repeat(200_000))).collect();
        let frames = Snapshot::new(&target, &large).frames(&target, None, "9:0");
        assert_eq!(frames.len(), 2, "a frame closes once past 256 KiB (the document that crosses it is its last)");
    }

    #[test]
    fn frames_are_json_and_carry_positions_verbatim() {
        let doc = r#"{"deviceId":"d","attributes":{"11":{"__bigint":"18446744073709551615"}}}"#;
        let item = position_item("5:1", doc);
        let frame: Value =
            serde_json::from_str(&positions_frame([item.as_str(), item.as_str()].into_iter(), 0)).expect("json");
        assert_eq!(frame["positions"][1]["cursor"], "5:1");
        assert_eq!(frame["positions"][0]["position"]["attributes"]["11"]["__bigint"], "18446744073709551615");
        let target = Target::Group("g".into());
        let frames = Snapshot::new(&target, &[doc.to_owned()]).frames(&target, Some(&json!(3)), "9:0");
        assert_eq!(frames.len(), 1);
        let frame = parsed(&frames[0]);
        assert_eq!((frame["group"].as_str(), frame["id"].as_i64()), (Some("g"), Some(3)));
        assert_eq!(frame["snapshot"][0]["deviceId"], "d");
        assert_eq!(frame.get("remaining"), None, "all of it is here");
        let empty = Snapshot::new(&target, &[]).frames(&target, None, "9:0");
        assert_eq!(parsed(&empty[0])["snapshot"], json!([]));
        let replay: Value =
            serde_json::from_str(&subscribed_replay_frame(&target, None, "1:1", 4)).expect("replay frame");
        assert_eq!((replay["since"].as_str(), replay["replay"].as_u64()), (Some("1:1"), Some(4)));
    }
}
