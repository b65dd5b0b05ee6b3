//! One WebSocket connection: authentication (handshake token or first message, renewal, expiry), the
//! client's requests, and writing its outbox. Two futures share the connection in one task:
//!
//! - the *reader* handles client messages in order: while a `subscribe` waits for the feed to answer it,
//!   it keeps reading (pings, pongs and closes count at once; requests wait in a small backlog, handled
//!   once the answer is queued, so answers keep the order of requests), and a `subscribe` the feed has not
//!   answered within `TRACKWAY_LIVE_SUBSCRIBE_TIMEOUT_MS` is answered `unavailable` (the feed then drops
//!   it);
//! - the *writer* takes frames from the outbox, pings, and writes; a socket that accepts nothing for
//!   the send timeout is dropped, so a client that never reads holds nobody else up.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::{
    self,
    protocol::{frame::coding::CloseCode as WsCloseCode, CloseFrame},
    Message,
};
use tokio_util::sync::CancellationToken;

use super::{
    auth::{AuthFailure, Authenticator, Identity, Refused},
    authorize::{self, Authorizer},
    command::{Command, Subscribe},
    limits::{Bucket, UserConnection, Users, AUTHORIZE_BURST, AUTHORIZE_PER_SECOND, MAX_ALLOWED},
    metrics::LiveMetrics,
    outbox::{Frame, Outbox, Taken},
    protocol::{self, ClientMessage, CloseCode, ErrorCode, Refusal, Request, Target, Text},
    router::ClientId,
};
use crate::config::LiveConfig;

/// What every session shares.
pub struct Shared {
    /// Limits and timeouts.
    pub config: LiveConfig,
    /// Token checks.
    pub auth: Authenticator,
    /// `trackway.authorize`, asked in batches.
    pub authorizer: Authorizer,
    /// Requests to the feed (bounded; a session waits when it is full).
    pub commands: mpsc::Sender<Command>,
    /// Live metrics.
    pub metrics: LiveMetrics,
    /// Next connection id.
    pub next_client: AtomicU64,
    /// Open authenticated connections per user, against `TRACKWAY_LIVE_MAX_CONNECTIONS_PER_USER`.
    pub users: Users,
    /// Places for writing big frames ([`BULK_FRAME_BYTES`] and more: snapshots, replays, a backlog), so
    /// that a thousand clients resuming at once do not stand, runnable, between every other client's
    /// live positions and the CPU.
    pub bulk: Semaphore,
}

/// Frames this big or bigger are written only with a place of [`Shared::bulk`].
pub const BULK_FRAME_BYTES: usize = 16 * 1024;
/// Places for big frames being written at once: enough to keep both cores busy with replays, few enough
/// that a live frame waits for at most this many big writes ahead of it.
pub const BULK_WRITERS: usize = 8;
/// Longest a big frame keeps its place: a client that does not read would otherwise hold it until its
/// send timeout.
const BULK_HOLD: std::time::Duration = std::time::Duration::from_millis(50);

/// Runs a connection until it closes. `token` came with the handshake (header or query), if any; `place`
/// is the connection's place among those not yet authenticated, given up once it authenticates.
pub async fn run<S>(
    socket: S,
    shared: Arc<Shared>,
    token: Option<String>,
    place: Option<OwnedSemaphorePermit>,
    shutdown: CancellationToken,
) where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let client = shared.next_client.fetch_add(1, Ordering::Relaxed);
    let outbox = Arc::new(
        Outbox::with_byte_budget(shared.config.queue, shared.config.max_queued_bytes)
            .counted_in(shared.metrics.queued_bytes.clone()),
    );
    let (sink, stream) = socket.split();
    let done = CancellationToken::new();
    let heard = Heard::new();
    let reader = Reader {
        client,
        shared: &shared,
        outbox: &outbox,
        heard: &heard,
        identity: None,
        targets: HashSet::new(),
        allowed: HashMap::new(),
        asks: Bucket::new(AUTHORIZE_BURST, AUTHORIZE_PER_SECOND),
        token: None,
        place,
        user_connection: None,
        waiting: None,
        backlog: Default::default(),
    };
    let session = async {
        tokio::join!(reader.run(stream, token, &shutdown, &done), write(sink, &shared, &outbox, &heard, &done));
        done.cancel();
    };
    // At shutdown, or once the writer has given up (a socket that took nothing for the send timeout), the
    // outbox closes even while the reader waits inside a request (for room, say, from a client that reads
    // nothing): the waits end and the session with them. (The first close code wins: a close already
    // asked for keeps its own.)
    let closer = async {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = done.cancelled() => {}
        }
        outbox.close(CloseCode::GoingAway);
    };
    tokio::join!(session, closer);
    // Leaving never holds the connection open: when the feed's queue is full, the leave waits in a task
    // of its own (one per closed connection, after the commands this session queued, so in order).
    let commands = shared.commands.clone();
    if let Err(mpsc::error::TrySendError::Full(leave)) = commands.try_send(Command::Leave { client }) {
        tokio::spawn(async move {
            let _ = commands.send(leave).await;
        });
    }
}

/// Requests read while a `subscribe` waits for the feed, handled after its answer; more stop the reading
/// (the writer then does not count the client's silence against it).
const BACKLOG: usize = 64;

/// A `subscribe` sent to the feed and not answered yet.
struct Waiting {
    /// What it asked for.
    target: Target,
    /// The request's id, for an `unavailable` answer.
    id: Option<serde_json::Value>,
    /// `true` once subscribed, `false` when the feed refused it (its answer is queued either way).
    reply: oneshot::Receiver<bool>,
    /// Set by whichever decides first: the feed answering, or this session giving up.
    decided: Arc<std::sync::atomic::AtomicBool>,
    /// When to stop waiting and answer `unavailable` (`None`: the feed always answers; an unsubscribe).
    deadline: Option<tokio::time::Instant>,
    /// A `subscribe` (its target is held once answered `true`), else an `unsubscribe`.
    subscribing: bool,
}

/// When the client last sent anything, shared by the two halves.
struct Heard {
    start: Instant,
    /// Milliseconds after `start`.
    at: AtomicU64,
    /// The reader is not reading (its backlog is full): the client's silence is not its own doing.
    paused: std::sync::atomic::AtomicBool,
}

impl Heard {
    fn new() -> Heard {
        Heard { start: Instant::now(), at: AtomicU64::new(0), paused: Default::default() }
    }

    fn now(&self) {
        self.at.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long the client has been silent while the reader was reading.
    fn silence(&self) -> Duration {
        if self.paused.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        self.start.elapsed().saturating_sub(Duration::from_millis(self.at.load(Ordering::Relaxed)))
    }

    /// The reader stops (`true`) or starts again reading; silence counts from the restart.
    fn pause(&self, paused: bool) {
        if !paused {
            self.now();
        }
        self.paused.store(paused, Ordering::Relaxed);
    }
}

/// The reading half's state.
struct Reader<'a> {
    client: ClientId,
    shared: &'a Shared,
    outbox: &'a Arc<Outbox>,
    /// When the client last sent anything (the writer drops silent clients).
    heard: &'a Heard,
    /// Who the connection acts for, once authenticated.
    identity: Option<Identity>,
    /// Subscriptions held.
    targets: HashSet<Target>,
    /// `trackway.authorize` answers for this connection (cleared when the token is renewed, and when it
    /// holds [`MAX_ALLOWED`] answers).
    allowed: HashMap<Target, bool>,
    /// Paces this connection's `trackway.authorize` calls.
    asks: Bucket,
    /// The token in force (asked about again when it does not expire).
    token: Option<String>,
    /// The connection's place among those not yet authenticated (`None` once authenticated).
    place: Option<OwnedSemaphorePermit>,
    /// The connection counted for its user, once authenticated as one.
    user_connection: Option<UserConnection<'a>>,
    /// The `subscribe` waiting for the feed's answer, if any.
    waiting: Option<Waiting>,
    /// Requests read while `waiting`, in order.
    backlog: std::collections::VecDeque<String>,
}

impl Reader<'_> {
    async fn run<R>(
        mut self,
        mut stream: R,
        token: Option<String>,
        shutdown: &CancellationToken,
        done: &CancellationToken,
    ) where
        R: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    {
        // Requests are handled in futures of their own (boxed): the session of an idle connection, which
        // waits here, is then as small as this loop, not as large as the largest request (10,000 idle
        // connections each held 3.6 KB of reader otherwise).
        let metrics = &self.shared.metrics;
        if let Some(token) = token {
            if !Box::pin(self.first_auth(&token)).await {
                return;
            }
        } else if !self.shared.auth.required() {
            Box::pin(self.accept(Authenticator::anonymous())).await;
        }
        let deadline = tokio::time::Instant::now() + self.shared.config.auth_timeout;
        loop {
            let expiry = self.identity.as_ref().and_then(|i| i.expires_at).map(instant_of);
            let recheck = self.identity.as_ref().and_then(|i| i.recheck_at).map(tokio::time::Instant::from_std);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return self.outbox.close(CloseCode::GoingAway),
                () = done.cancelled() => return,
                () = tokio::time::sleep_until(deadline), if self.identity.is_none() => {
                    metrics.auth_failures.with_label_values(&[AuthFailure::Timeout.label()]).inc();
                    return self.outbox.close(CloseCode::Unauthorized);
                }
                () = sleep_until_opt(expiry), if expiry.is_some() => {
                    return self.outbox.close(CloseCode::TokenExpired);
                }
                () = sleep_until_opt(recheck), if recheck.is_some() && self.waiting.is_none() => {
                    if !Box::pin(self.recheck()).await {
                        return self.outbox.close(CloseCode::TokenExpired);
                    }
                }
                answered = wait_for(&mut self.waiting), if self.waiting.is_some() => {
                    match answered {
                        Some(Answered::Feed(target, true)) => {
                            self.targets.insert(target);
                        }
                        Some(Answered::TimedOut(id)) => {
                            let message = "the relay could not answer this subscription in time; try again later";
                            Box::pin(self.refuse(ErrorCode::Unavailable, message.to_owned(), id)).await;
                        }
                        Some(Answered::Feed(_, false)) | None => {}
                    }
                    if let Err(code) = Box::pin(self.handle_backlog()).await {
                        return self.outbox.close(code);
                    }
                }
                message = stream.next(), if self.backlog.len() < BACKLOG => {
                    self.heard.now();
                    let close = match message {
                        None => None,
                        Some(Ok(Message::Text(text))) if self.waiting.is_some() => {
                            self.backlog.push_back(text.as_str().to_owned());
                            self.heard.pause(self.backlog.len() >= BACKLOG);
                            continue;
                        }
                        Some(Ok(Message::Text(text))) => match Box::pin(self.handle(text.as_str())).await {
                            Ok(()) => continue,
                            Err(code) => Some(code),
                        },
                        Some(Ok(Message::Binary(_))) => Some(CloseCode::Unsupported),
                        Some(Ok(Message::Close(_))) => {
                            // tungstenite has queued the answering close frame; the next read sends it and
                            // then reports the end.
                            metrics.closes.with_label_values(&["client"]).inc();
                            continue;
                        }
                        Some(Ok(_)) => continue, // ping, pong: `heard` is enough
                        Some(Err(tungstenite::Error::Capacity(_))) => Some(CloseCode::TooBig),
                        Some(Err(tungstenite::Error::Utf8(_))) => Some(CloseCode::InvalidData),
                        Some(Err(tungstenite::Error::Protocol(_))) => Some(CloseCode::Protocol),
                        Some(Err(_)) => {
                            metrics.closes.with_label_values(&["gone"]).inc();
                            None
                        }
                    };
                    match close {
                        Some(code) => self.outbox.close(code),
                        None => done.cancel(),
                    }
                    return;
                }
            }
        }
    }

    /// Handles the requests read while a `subscribe` waited, until one waits again.
    async fn handle_backlog(&mut self) -> Result<(), CloseCode> {
        while self.waiting.is_none() {
            let Some(text) = self.backlog.pop_front() else { break };
            self.handle(&text).await?;
        }
        self.heard.pause(false);
        Ok(())
    }

    /// Handles one text message; `Err` closes the connection with that code.
    async fn handle(&mut self, text: &str) -> Result<(), CloseCode> {
        let metrics = &self.shared.metrics;
        let Request { message, id } = match protocol::parse(text) {
            Ok(request) => request,
            Err(refusal) => {
                metrics.frames_in.with_label_values(&["invalid"]).inc();
                self.answer("error", protocol::error_frame(&refusal)).await;
                return Ok(());
            }
        };
        let kind = match &message {
            ClientMessage::Auth { .. } => "auth",
            ClientMessage::Subscribe { .. } => "subscribe",
            ClientMessage::Unsubscribe { .. } => "unsubscribe",
            ClientMessage::Ping => "ping",
        };
        metrics.frames_in.with_label_values(&[kind]).inc();
        match message {
            ClientMessage::Auth { token } if self.identity.is_none() => {
                return if self.first_auth(&token).await { Ok(()) } else { Err(CloseCode::Unauthorized) };
            }
            ClientMessage::Auth { token } => self.renew(&token, id).await,
            // Anything else before authenticating breaks the protocol.
            _ if self.identity.is_none() => return Err(CloseCode::Unauthorized),
            ClientMessage::Ping => self.answer("pong", protocol::pong_frame(id.as_ref())).await,
            ClientMessage::Subscribe { target, since } => self.subscribe(target, since, id).await,
            ClientMessage::Unsubscribe { target } => {
                if self.targets.remove(&target) {
                    self.room().await;
                    // Waited for like a subscribe (reading on meanwhile), without a deadline: the feed
                    // applies unsubscribes as they come, outage or not.
                    let (reply, answered) = oneshot::channel();
                    let (client, outbox) = (self.client, self.outbox.clone());
                    let reason = protocol::Unsubscribed::Requested;
                    let command = Command::Unsubscribe {
                        client,
                        outbox,
                        target: target.clone(),
                        id: id.clone(),
                        reason,
                        reply: Some(reply),
                    };
                    self.send(command).await;
                    self.waiting = Some(Waiting {
                        target,
                        id,
                        reply: answered,
                        decided: Default::default(),
                        deadline: None,
                        subscribing: false,
                    });
                } else {
                    let message = format!("not subscribed to {} {:?}", target.kind(), target.id());
                    self.refuse(ErrorCode::NotSubscribed, message, id).await;
                }
            }
        }
        Ok(())
    }

    /// Authenticates the connection; on failure queues the reason and closes. `false` when refused.
    async fn first_auth(&mut self, token: &str) -> bool {
        match self.shared.auth.authenticate(token).await {
            Ok(identity) => {
                if let Some(user) = identity.user.as_deref() {
                    let Some(counted) = self.shared.users.enter(user) else {
                        self.shared.metrics.auth_failures.with_label_values(&[AuthFailure::UserLimit.label()]).inc();
                        let limit = self.shared.users.limit;
                        let reason = format!("this user already has {limit} connections open");
                        self.outbox.close_with_reason(CloseCode::TooManyConnections, reason);
                        return false;
                    };
                    self.user_connection = Some(counted);
                }
                self.token = Some(token.to_owned());
                self.accept(identity).await;
                true
            }
            Err(refused) => {
                self.shared.metrics.auth_failures.with_label_values(&[refused.reason.label()]).inc();
                let code = refused.close_code();
                // The reason goes in the close frame (the connection ends with it).
                self.outbox.close_with_reason(code, refusal_text(&refused));
                false
            }
        }
    }

    /// Takes an identity and tells the client.
    async fn accept(&mut self, identity: Identity) {
        let frame =
            protocol::authenticated_frame(identity.user.as_deref(), identity.admin, identity.expires_text().as_deref());
        self.identity = Some(identity);
        self.place = None;
        self.answer("authenticated", frame).await;
    }

    /// A renewed token: same user, then every subscription is checked again.
    async fn renew(&mut self, token: &str, id: Option<serde_json::Value>) {
        let metrics = &self.shared.metrics;
        let identity = match self.shared.auth.authenticate(token).await {
            Ok(identity) => identity,
            Err(refused) => {
                metrics.auth_failures.with_label_values(&[refused.reason.label()]).inc();
                let code = if refused.reason == AuthFailure::Unavailable {
                    ErrorCode::AuthUnavailable
                } else {
                    ErrorCode::BadToken
                };
                let message = format!("{}; the current token stays in force until it expires", refused.message);
                return self.refuse(code, message, id).await;
            }
        };
        if identity.user != self.identity.as_ref().and_then(|i| i.user.clone()) {
            metrics.auth_failures.with_label_values(&[AuthFailure::Mismatch.label()]).inc();
            let message = "the new token belongs to another user; open a new connection for them".to_owned();
            return self.refuse(ErrorCode::AuthMismatch, message, id).await;
        }
        self.token = Some(token.to_owned());
        self.accept(identity).await;
        self.reauthorize().await;
    }

    /// Every subscription held is checked again with the claims now in force (after a renewal or a
    /// re-check), the per-connection answers forgotten first. A "no" removes it as `forbidden`; a database
    /// that cannot answer removes it as `unavailable` (fail closed: the client may subscribe again later,
    /// resuming with `since`). Returns once the feed has queued every `unsubscribed`, so that answers to
    /// later requests come after them (protocol §3).
    async fn reauthorize(&mut self) {
        self.allowed.clear();
        let held: Vec<Target> = self.targets.iter().cloned().collect();
        let mut queued = Vec::new();
        for target in held {
            let reason = match self.authorized(&target).await {
                Ok(true) => continue,
                Ok(false) => protocol::Unsubscribed::Forbidden,
                Err(why) => {
                    tracing::warn!(error = %why, "trackway.authorize failed on a re-check: subscription removed");
                    protocol::Unsubscribed::Unavailable
                }
            };
            self.targets.remove(&target);
            let (client, outbox) = (self.client, self.outbox.clone());
            let (reply, answered) = oneshot::channel();
            self.send(Command::Unsubscribe { client, outbox, target, id: None, reason, reply: Some(reply) }).await;
            queued.push(answered);
        }
        // The feed applies unsubscribes as they come, outage or not (an error: it stopped, at shutdown).
        for answered in queued {
            let _ = answered.await;
        }
    }

    /// Directus is asked again about the token in force (every cache lifetime); `false` when it no longer
    /// accepts it, or now says it belongs to another user. Its answer is a renewal: the fresh claims
    /// replace the old ones (an administrator demoted in Directus is one no longer) and every subscription
    /// is authorized again. An unreachable Directus does not end sessions it let in: it is asked again later.
    async fn recheck(&mut self) -> bool {
        let later = Instant::now() + recheck_interval(&self.shared.config);
        let Some(token) = self.token.clone() else { return true };
        let answer = self.shared.auth.authenticate(&token).await;
        let Some(identity) = self.identity.as_mut() else { return true };
        match answer {
            Ok(fresh) if fresh.user == identity.user => {
                let changed = fresh.claims != identity.claims || fresh.expires_at != identity.expires_at;
                let fresh = Identity { recheck_at: fresh.recheck_at.or(Some(later)), ..fresh };
                if changed {
                    self.accept(fresh).await;
                } else {
                    *identity = fresh;
                }
                // Grants may have changed without the claims: every re-check is a renewal.
                self.reauthorize().await;
                true
            }
            Ok(_) => {
                self.shared.metrics.auth_failures.with_label_values(&[AuthFailure::Mismatch.label()]).inc();
                false
            }
            Err(refused) if refused.reason == AuthFailure::Unavailable => {
                identity.recheck_at = Some(later);
                true
            }
            Err(refused) => {
                self.shared.metrics.auth_failures.with_label_values(&[refused.reason.label()]).inc();
                false
            }
        }
    }

    async fn subscribe(&mut self, target: Target, since: Option<String>, id: Option<serde_json::Value>) {
        if self.targets.contains(&target) {
            let message = format!("already subscribed to {} {:?}", target.kind(), target.id());
            return self.refuse(ErrorCode::AlreadySubscribed, message, id).await;
        }
        if self.targets.len() >= self.shared.config.max_subscriptions {
            let message = format!("a connection may hold {} subscriptions", self.shared.config.max_subscriptions);
            return self.refuse(ErrorCode::TooManySubscriptions, message, id).await;
        }
        match self.authorized(&target).await {
            Ok(true) => {}
            Ok(false) => {
                let message = format!("this token may not watch {} {:?}", target.kind(), target.id());
                return self.refuse(ErrorCode::Forbidden, message, id).await;
            }
            Err(why) => {
                tracing::warn!(error = %why, "trackway.authorize failed");
                let message = "the database could not check this subscription; try again later".to_owned();
                return self.refuse(ErrorCode::Unavailable, message, id).await;
            }
        }
        self.room().await;
        let (reply, subscribed) = oneshot::channel();
        let (client, outbox) = (self.client, self.outbox.clone());
        let decided = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let request = Subscribe {
            client,
            outbox,
            target: target.clone(),
            since,
            id: id.clone(),
            reply,
            decided: decided.clone(),
        };
        if self.shared.commands.try_send(Command::Subscribe(request)).is_err() {
            let message = "the relay is too busy to take this subscription now; try again later".to_owned();
            return self.refuse(ErrorCode::Unavailable, message, id).await;
        }
        let deadline = tokio::time::Instant::now() + self.shared.config.subscribe_timeout;
        self.waiting =
            Some(Waiting { target, id, reply: subscribed, decided, deadline: Some(deadline), subscribing: true });
    }

    /// `trackway.authorize(claims, kind, id)`, asked once per target and connection.
    async fn authorized(&mut self, target: &Target) -> authorize::Answer {
        let metrics = &self.shared.metrics;
        if !self.shared.auth.required() {
            return Ok(true);
        }
        if let Some(&answer) = self.allowed.get(target) {
            metrics.authorize.with_label_values(&["hit"]).inc();
            return Ok(answer);
        }
        metrics.authorize.with_label_values(&["miss"]).inc();
        // A client asking about target after target waits its turn; the others are not slowed down.
        tokio::time::sleep_until(self.asks.take(tokio::time::Instant::now())).await;
        if self.allowed.len() >= MAX_ALLOWED {
            self.allowed.clear();
        }
        let claims: Arc<str> = self.identity.as_ref().map_or_else(|| "{}".into(), |i| i.claims.to_string().into());
        let answer = self.shared.authorizer.ask(claims, target).await?;
        self.allowed.insert(target.clone(), answer);
        Ok(answer)
    }

    /// Waits, not reading the client, while its unread answers are too many or too big: the feed queues
    /// answers without waiting, so a request for one waits here instead. Silence is not counted meanwhile.
    async fn room(&self) {
        self.heard.pause(true);
        self.outbox.room().await;
        self.heard.pause(false);
    }

    async fn send(&self, command: Command) {
        // The feed only stops at shutdown, when this connection is closing anyway.
        let _ = self.shared.commands.send(command).await;
    }

    async fn answer(&self, kind: &'static str, frame: String) {
        self.outbox.answer(kind, frame).await;
    }

    async fn refuse(&self, code: ErrorCode, message: String, id: Option<serde_json::Value>) {
        self.answer("error", protocol::error_frame(&Refusal { code, message, id })).await;
    }
}

/// How a `subscribe` sent to the feed ended.
enum Answered {
    /// The feed answered (the answer is queued): `true` when the target is now held.
    Feed(Target, bool),
    /// The feed did not answer in time; it will not (its answer channel is closed): the client is to be
    /// answered `unavailable`, with the request's id.
    TimedOut(Option<serde_json::Value>),
}

/// Waits for the feed's answer to the `subscribe` in `waiting` and takes it out.
async fn wait_for(waiting: &mut Option<Waiting>) -> Option<Answered> {
    let w = waiting.as_mut()?;
    let Some(deadline) = w.deadline else {
        let _ = (&mut w.reply).await;
        return waiting.take().map(|w| Answered::Feed(w.target, false));
    };
    let held = match tokio::time::timeout_at(deadline, &mut w.reply).await {
        Ok(answer) => Some(answer.unwrap_or(false)),
        // Past the deadline, whoever decides first wins: this session (the feed will drop the request)...
        Err(_) if !w.decided.swap(true, Ordering::AcqRel) => None,
        // ...or the feed, which is queuing its answer right now.
        Err(_) => Some((&mut w.reply).await.unwrap_or(false)),
    };
    let Waiting { target, id, subscribing, .. } = waiting.take()?;
    Some(match held {
        Some(held) => Answered::Feed(target, held && subscribing),
        None => Answered::TimedOut(id),
    })
}

/// How often a token without expiry is checked again (Directus's cache lifetime).
fn recheck_interval(config: &LiveConfig) -> Duration {
    match &config.auth {
        crate::config::AuthConfig::Directus { cache_ttl, .. } => *cache_ttl,
        _ => Duration::from_secs(60),
    }
}

/// A close reason for a refused token (the client sees it in the close frame).
fn refusal_text(refused: &Refused) -> String {
    format!("{}: {}", refused.reason.label(), refused.message)
}

/// The monotonic instant of a wall-clock time (now, if it is past; about a century from now at most, as
/// no clock can hold every time a token may name).
fn instant_of(at: SystemTime) -> tokio::time::Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let left = at.duration_since(SystemTime::now()).unwrap_or_default().min(CENTURY);
    tokio::time::Instant::now() + left
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The writing half: frames from the outbox, pings, and the close.
async fn write<W>(mut sink: W, shared: &Shared, outbox: &Outbox, heard: &Heard, done: &CancellationToken)
where
    W: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let metrics = &shared.metrics;
    let config = &shared.config;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + config.ping_interval, config.ping_interval);
    loop {
        tokio::select! {
            biased;
            () = outbox.ready() => {
                let mut taken = Taken::default();
                for frame in outbox.take(&mut taken) {
                    match frame {
                        Frame::Text(text, kind) => {
                            let sent = tokio::select! {
                                sent = send_frame(&mut sink, text, shared) => sent,
                                () = outbox.abandoned() => {
                                    let code = outbox.closed().unwrap_or(CloseCode::TooSlow);
                                    metrics.closes.with_label_values(&[code.label()]).inc();
                                    false
                                }
                            };
                            if !sent {
                                done.cancel();
                                return;
                            }
                            metrics.frames_out.with_label_values(&[kind]).inc();
                        }
                        Frame::Close(code) => {
                            let reason = outbox.close_reason().unwrap_or_default();
                            close(&mut sink, code, reason, metrics, done).await;
                            return;
                        }
                    }
                }
                metrics.delivered.inc_by(taken.delivered);
                let now = Instant::now();
                for noticed in taken.noticed {
                    metrics.notify_to_send.observe(now.duration_since(noticed).as_secs_f64());
                }
            }
            () = done.cancelled() => return,
            _ = ping.tick() => {
                if heard.silence() > config.ping_interval * 2 {
                    outbox.close(CloseCode::Silent);
                    continue;
                }
                if !send(&mut sink, Message::Ping(Default::default()), config.send_timeout, metrics).await {
                    done.cancel();
                    return;
                }
            }
        }
    }
}

/// A text frame as a WebSocket message (shared bytes stay shared).
fn message(text: Text) -> Message {
    Message::Text(text.into_text())
}

/// Writes one frame (a big one with a place of [`Shared::bulk`], held while it is written but at most
/// [`BULK_HOLD`]); `false` when the connection is to be dropped.
async fn send_frame<W>(sink: &mut W, text: Text, shared: &Shared) -> bool
where
    W: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let (timeout, metrics) = (shared.config.send_timeout, &shared.metrics);
    if text.len() < BULK_FRAME_BYTES {
        return send(sink, message(text), timeout, metrics).await;
    }
    // Boxed: the writer of an idle connection need not be as large as this rarer path.
    Box::pin(send_big(sink, text, shared)).await
}

/// [`send_frame`] for a frame of [`BULK_FRAME_BYTES`] or more.
async fn send_big<W>(sink: &mut W, text: Text, shared: &Shared) -> bool
where
    W: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let (timeout, metrics) = (shared.config.send_timeout, &shared.metrics);
    // Never closed.
    let Ok(place) = shared.bulk.acquire().await else { return false };
    let sending = send(sink, message(text), timeout, metrics);
    tokio::pin!(sending);
    tokio::select! {
        sent = &mut sending => return sent,
        () = tokio::time::sleep(BULK_HOLD) => {}
    }
    // The client reads slowly: the rest of this frame goes without the place.
    drop(place);
    sending.await
}

/// Writes one message within the send timeout; `false` when the connection is to be dropped.
async fn send<W>(sink: &mut W, message: Message, timeout: std::time::Duration, metrics: &LiveMetrics) -> bool
where
    W: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    match tokio::time::timeout(timeout, sink.send(message)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => {
            metrics.closes.with_label_values(&["gone"]).inc();
            false
        }
        Err(_) => {
            // The socket took nothing for the whole timeout: a close frame would not get through either.
            metrics.closes.with_label_values(&[CloseCode::TooSlow.label()]).inc();
            false
        }
    }
}

/// Sends the close frame, then gives the client a moment to answer it before the socket is dropped.
async fn close<W>(sink: &mut W, code: CloseCode, reason: String, metrics: &LiveMetrics, done: &CancellationToken)
where
    W: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    metrics.closes.with_label_values(&[code.label()]).inc();
    let reason = if reason.is_empty() { code.label().to_owned() } else { reason };
    // Close reasons are limited to 123 bytes.
    let mut reason: String = reason.chars().take(100).collect();
    while reason.len() > 123 {
        reason.pop();
    }
    let frame = CloseFrame { code: WsCloseCode::from(code.code()), reason: reason.into() };
    let sent = tokio::time::timeout(std::time::Duration::from_secs(1), sink.send(Message::Close(Some(frame)))).await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), done.cancelled()).await;
    }
    done.cancel();
}
