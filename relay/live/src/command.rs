//! The requests the feed takes (sessions and answer connections send them): the one vocabulary between
//! them, so that neither imports the other.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::oneshot;

use super::{
    outbox::{AnswerFrame, Outbox},
    protocol::{self, Target},
    router::ClientId,
};

/// What sessions ask of the feed. The channel is bounded; senders wait when it is full.
pub enum Command {
    /// Answer with a snapshot (or a replay after `since`) and add the subscription.
    Subscribe(Subscribe),
    /// Remove a subscription and answer `unsubscribed` after the positions already queued.
    Unsubscribe {
        /// The connection.
        client: ClientId,
        /// Its outbox.
        outbox: Arc<Outbox>,
        /// What to stop watching.
        target: Target,
        /// The request's id, echoed.
        id: Option<Value>,
        /// Why it ends.
        reason: protocol::Unsubscribed,
        /// Told once the answer is queued (a client's own `unsubscribe` waits for it, so that answers keep
        /// the order of requests).
        reply: Option<oneshot::Sender<bool>>,
    },
    /// The connection ended.
    Leave {
        /// The connection.
        client: ClientId,
    },
    /// An answer connection has read the answer to a held subscription, or refused or dropped it. The
    /// feed queues the answer (unless the session gave up waiting and answered the client itself), then the
    /// rows held for it (or drops them), then tells the session: in one step, so that nothing the feed
    /// routes comes between the answer and the held rows, and the session's next request follows both.
    Answered {
        /// The request.
        request: Subscribe,
        /// The hold's ticket ([`Router::hold`]).
        ticket: u64,
        /// The answer's frames; none when nobody waits for it any more.
        frames: Option<Vec<AnswerFrame>>,
        /// Whether the answer is `subscribed` (not a refusal).
        subscribed: bool,
    },
}

/// A subscription request; it waits in the feed for the next cycle.
pub struct Subscribe {
    /// The connection.
    pub client: ClientId,
    /// Its outbox (the answer and then the positions go there).
    pub outbox: Arc<Outbox>,
    /// What it wants to watch.
    pub target: Target,
    /// Resume point (already checked to parse).
    pub since: Option<String>,
    /// The request's id, echoed.
    pub id: Option<Value>,
    /// `true` once subscribed, `false` when refused (the refusal is in the outbox).
    pub reply: oneshot::Sender<bool>,
    /// Set by whichever decides first: the feed, just before it queues its answer ([`Subscribe::claim`]),
    /// or the session, when it gives up waiting (then the feed drops the request, unanswered).
    pub decided: Arc<std::sync::atomic::AtomicBool>,
}

impl Subscribe {
    /// `true` when the feed may answer (and the session will wait for it); `false` when the session has
    /// given up and answered the client itself.
    pub fn claim(&self) -> bool {
        !self.decided.swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// `true` when nobody waits for the answer any more: the session gave up, or the connection closed.
    pub fn abandoned(&self) -> bool {
        self.decided.load(std::sync::atomic::Ordering::Acquire) || self.outbox.closed().is_some()
    }
}
