//! A client's outbox: everything waiting to be written to one WebSocket, in order, with back-pressure
//! that never blocks the writer of the outbox (the feed, or the client's own request handler).
//!
//! - Answers (`subscribed`, `error`, …) are never dropped; the request handler waits while too many are
//!   unread (the client stops being read: TCP pushes back on it, nobody else).
//! - Live positions are queued up to `capacity`. The positions of one read that go alike to several
//!   clients come as one shared [`Batch`]: a client that takes it alone (it is keeping up) writes the
//!   batch's frames, built once by the first writer and shared (a broadcast to 1,000 clients is framed
//!   once, not 1,000 times); a client that is behind gets its queued positions framed together as before.
//!   A client behind (still holding earlier positions) may have up to twice `capacity` queued; a push past
//!   that coalesces the queue to the newest position per device (a map wants the latest, not the backlog);
//!   if more than `capacity` remain — the client is behind on more distinct devices than that — the outbox
//!   closes with [`CloseCode::TooSlow`] and its positions are dropped. (A pass costs the whole queue, and
//!   runs on the feed: once per `capacity` positions, not once per position as when it ran at `capacity`,
//!   which cost the feed 0.1 ms per routed row for every client kept behind at 1,024, 0.6 ms at 4,096.)
//! - Replayed positions (a `subscribe` with `since`) are every position the client asked for: they come
//!   as answer frames (`positions` frames built once per replay, shared by every client resuming the same
//!   target from the same cursor), queued whatever the capacity (at most `TRACKWAY_LIVE_MAX_REPLAY` per
//!   request) and never coalesced.
//! - Answers and replayed positions together are bounded in bytes (`TRACKWAY_LIVE_MAX_QUEUED_BYTES`): a
//!   push past the budget closes the outbox with [`CloseCode::TooSlow`] (a client that does not read while
//!   asking for snapshot after snapshot would otherwise hold them all). Live positions are bounded by count.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, OnceLock},
    time::Instant,
};

use prometheus::IntGauge;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use super::protocol::{self, CloseCode, Text};

/// Most answers waiting unread before the client's requests stop being read.
pub const MAX_PENDING_ANSWERS: usize = 64;
/// Bytes of answers and replayed positions waiting unread past which the client's requests stop being
/// read (a client that asks for snapshot after snapshot without reading them holds about this much, not
/// its whole byte budget).
pub const MAX_PENDING_ANSWER_BYTES: usize = 1024 * 1024;

/// One position on its way to clients; shared by every outbox it goes to.
#[derive(Debug)]
pub struct Delivery {
    /// Device of the position (coalescing key).
    pub device: Arc<str>,
    /// `{"cursor":…,"position":…}` — the frame element, encoded once for every client.
    pub item: String,
    /// The position's time (µs since 1970): coalescing keeps the latest, not the last inserted (a late
    /// record must not replace the newest position of its device).
    pub ts: i64,
    /// When the relay learnt of the commit that made it (the notification, or the read when none came):
    /// the start of the commit→send lag.
    pub noticed: Instant,
}

/// Live positions of one read going alike to one or more clients, in order; their `positions` frames are
/// built once, when a writer first takes the batch whole, and shared by every client that does.
pub struct Batch {
    /// The positions.
    deliveries: Vec<Arc<Delivery>>,
    /// The frames, once built.
    frames: OnceLock<Vec<Utf8Bytes>>,
}

impl Batch {
    /// A batch of these positions (not empty).
    pub fn new(deliveries: Vec<Arc<Delivery>>) -> Arc<Batch> {
        Arc::new(Batch { deliveries, frames: OnceLock::new() })
    }

    /// The batch's `positions` frames (cut by [`protocol::frame_is_full`]), built by the first caller.
    fn frames(&self) -> &[Utf8Bytes] {
        self.frames.get_or_init(|| {
            protocol::positions_frames(self.deliveries.iter().map(|d| d.item.as_str()))
                .into_iter()
                .map(|(frame, _)| Utf8Bytes::from(frame))
                .collect()
        })
    }
}

/// What the writer of a connection takes out in one go.
pub enum Frame {
    /// A finished text frame and its `type` (for metrics).
    Text(Text, &'static str),
    /// Close with this code; nothing follows.
    Close(CloseCode),
}

/// Counts of what happened to positions in the outbox, for metrics.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct Taken {
    /// Positions written in the frames taken.
    pub delivered: u64,
    /// Each delivered position's `noticed` (for the lag histogram).
    pub noticed: Vec<Instant>,
}

/// A frame of an answer: a `subscribed` and its `snapshot` frames, an `error`, or the `positions` frames of
/// a replay (built once, shared by every client resuming the same target from the same cursor).
pub struct AnswerFrame {
    /// The frame.
    pub text: Text,
    /// Its `type` (for metrics).
    pub kind: &'static str,
    /// Positions it carries (replayed positions), for `trackway_live_positions_delivered_total`.
    pub positions: u64,
}

impl AnswerFrame {
    /// A frame of this client's own, carrying no positions.
    pub fn own(kind: &'static str, text: String) -> AnswerFrame {
        AnswerFrame { text: Text::Own(text), kind, positions: 0 }
    }
}

enum Slot {
    /// An answer frame (never dropped or coalesced).
    Answer(AnswerFrame),
    /// A live position (may be coalesced).
    Live(Arc<Delivery>),
    /// Live positions queued together and shared (taken apart into `Live` slots to be coalesced).
    Batch(Arc<Batch>),
}

#[derive(Default)]
struct State {
    slots: VecDeque<Slot>,
    /// Live positions among `slots`.
    live: usize,
    /// Answers among `slots`.
    answers: usize,
    /// Bytes of the answers and replayed positions among `slots`.
    bytes: usize,
    /// Set once: the connection is to be closed with this code.
    closed: Option<CloseCode>,
    /// Text of the close frame, when the closer gave one.
    reason: Option<String>,
}

/// The outbox of one connection; the feed and the connection's tasks share it through an `Arc`.
pub struct Outbox {
    state: Mutex<State>,
    /// Live positions allowed before coalescing.
    capacity: usize,
    /// Bytes of answers and replayed positions allowed queued.
    max_bytes: usize,
    /// Wakes the writer: something to send, or closed.
    ready: Notify,
    /// Wakes a request handler waiting for answers to drain.
    drained: Notify,
    /// Cancelled when the outbox closes, for a writer blocked on a socket.
    shut: CancellationToken,
    /// The bytes of answers and replays queued in every outbox (`trackway_live_queued_bytes`), when counted.
    gauge: Option<IntGauge>,
}

/// What a push of live positions did.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// Positions queued.
    pub queued: u64,
    /// Queued positions replaced by a newer one of their device.
    pub coalesced: u64,
    /// Positions dropped because the outbox closed as too slow (including the ones pushed now).
    pub dropped: u64,
}

impl Outbox {
    /// An empty outbox holding up to `capacity` live positions before coalescing, and answers and replays
    /// of any size.
    pub fn new(capacity: usize) -> Outbox {
        Outbox::with_byte_budget(capacity, usize::MAX)
    }

    /// [`Outbox::new`] closing as too slow once more than `max_bytes` of answers and replayed positions
    /// would be queued.
    pub fn with_byte_budget(capacity: usize, max_bytes: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            max_bytes,
            ready: Notify::new(),
            drained: Notify::new(),
            shut: CancellationToken::new(),
            gauge: None,
        }
    }

    /// This outbox, its queued answer and replay bytes counted in `gauge` (shared by every outbox).
    pub fn counted_in(mut self, gauge: IntGauge) -> Outbox {
        self.gauge = Some(gauge);
        self
    }

    /// Forgets the queued bytes (taken, or dropped with the queue).
    fn release(&self, state: &mut State) {
        if let Some(gauge) = &self.gauge {
            gauge.sub(i64::try_from(state.bytes).unwrap_or(i64::MAX));
        }
        state.bytes = 0;
    }

    /// Live positions allowed before coalescing (`TRACKWAY_LIVE_QUEUE`).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Closes with `code` (the first code wins) and tells a blocked writer.
    fn shut(&self, state: &mut State, code: CloseCode) {
        if state.closed.is_none() {
            self.release(state);
        }
        close_locked(state, code);
        self.shut.cancel();
    }

    /// Resolves once the outbox has closed as too slow, or for a shutdown: a writer blocked on the socket
    /// then gives up at once (the client is not reading; a close frame would not get through either).
    pub async fn abandoned(&self) {
        self.shut.cancelled().await;
        if !matches!(self.closed(), Some(CloseCode::TooSlow | CloseCode::GoingAway)) {
            std::future::pending::<()>().await;
        }
    }

    /// Counts `bytes` more against the budget; past it the outbox closes as too slow (`false`).
    fn spend(&self, state: &mut State, bytes: usize) -> bool {
        if state.bytes.saturating_add(bytes) > self.max_bytes {
            self.shut(state, CloseCode::TooSlow);
            return false;
        }
        state.bytes += bytes;
        if let Some(gauge) = &self.gauge {
            gauge.add(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        true
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the queue half-changed in a way that matters more
        // than losing the connection: keep going with what is there.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues live positions; never waits.
    pub fn push_live(&self, deliveries: &[Arc<Delivery>]) -> Pushed {
        let mut state = self.lock();
        let pushed = self.push_locked(&mut state, deliveries);
        drop(state);
        if pushed.queued > 0 || pushed.dropped > 0 {
            self.ready.notify_one();
        }
        pushed
    }

    /// Queues a batch of live positions shared with other clients, whole when it fits (a client keeping up
    /// then writes its shared frames); never waits.
    pub fn push_batch(&self, batch: &Arc<Batch>) -> Pushed {
        let mut state = self.lock();
        let count = batch.deliveries.len();
        let pushed = if state.closed.is_some() {
            Pushed::default()
        } else if state.live == 0 || state.live + count <= self.coalescing_point() {
            // The same rule as `push_live`'s: nothing to coalesce.
            state.slots.push_back(Slot::Batch(batch.clone()));
            state.live += count;
            Pushed { queued: count as u64, ..Pushed::default() }
        } else {
            self.push_locked(&mut state, &batch.deliveries)
        };
        drop(state);
        if pushed.queued > 0 || pushed.dropped > 0 {
            self.ready.notify_one();
        }
        pushed
    }

    /// How many live positions a client behind may have queued before they are coalesced: twice the
    /// capacity, so that a pass over the queue comes at most once per `capacity` positions.
    fn coalescing_point(&self) -> usize {
        self.capacity.saturating_mul(2)
    }

    /// [`Outbox::push_live`] under the lock.
    fn push_locked(&self, state: &mut State, deliveries: &[Arc<Delivery>]) -> Pushed {
        if state.closed.is_some() {
            return Pushed::default();
        }
        // A client that has taken everything queued before is keeping up: one read's worth of rows (a
        // page of the feed at most) is queued whole, however many; only a client still holding earlier
        // positions counts as behind.
        let keeping_up = state.live == 0;
        state.slots.extend(deliveries.iter().cloned().map(Slot::Live));
        state.live += deliveries.len();
        let mut pushed = Pushed { queued: deliveries.len() as u64, ..Pushed::default() };
        if keeping_up || state.live <= self.coalescing_point() {
            return pushed;
        }
        pushed.coalesced = coalesce(state);
        if state.live > self.capacity {
            pushed.dropped = state.live as u64;
            self.shut(state, CloseCode::TooSlow);
        }
        pushed
    }

    /// Queues a one-frame answer of this client's own; never waits.
    pub fn push_answer(&self, kind: &'static str, answer: String) {
        self.push_answers(vec![AnswerFrame::own(kind, answer)]);
    }

    /// Queues the frames of one answer, in order (a `subscribed` and its `snapshot` frames, or its
    /// replay's `positions` frames); never waits.
    pub fn push_answers(&self, frames: Vec<AnswerFrame>) {
        let mut state = self.lock();
        if state.closed.is_some() {
            return;
        }
        if !self.spend(&mut state, frames.iter().map(|f| f.text.len()).sum()) {
            drop(state);
            self.ready.notify_one();
            return;
        }
        state.answers += frames.len();
        state.slots.extend(frames.into_iter().map(Slot::Answer));
        drop(state);
        self.ready.notify_one();
    }

    /// Waits while the client has [`MAX_PENDING_ANSWERS`] answers or [`MAX_PENDING_ANSWER_BYTES`] of
    /// answers and replays unread (only the client's own request handler calls this, before a request
    /// whose answer the feed queues). Returns `false` once the outbox is closed.
    pub async fn room(&self) -> bool {
        loop {
            let drained = self.drained.notified();
            {
                let state = self.lock();
                if state.closed.is_some() {
                    return false;
                }
                if state.has_room() {
                    return true;
                }
            }
            drained.await;
        }
    }

    /// Queues an answer, waiting first while [`MAX_PENDING_ANSWERS`] are unread (only the client's own
    /// request handler calls this). Returns `false` once the outbox is closed.
    pub async fn answer(&self, kind: &'static str, frame: String) -> bool {
        loop {
            let drained = self.drained.notified();
            {
                let mut state = self.lock();
                if state.closed.is_some() {
                    return false;
                }
                if state.has_room() {
                    if !self.spend(&mut state, frame.len()) {
                        drop(state);
                        self.ready.notify_one();
                        return false;
                    }
                    state.slots.push_back(Slot::Answer(AnswerFrame::own(kind, frame)));
                    state.answers += 1;
                    drop(state);
                    self.ready.notify_one();
                    return true;
                }
            }
            drained.await;
        }
    }

    /// Asks for the connection to be closed with `code` (the first request wins). Queued frames are dropped.
    pub fn close(&self, code: CloseCode) {
        let mut state = self.lock();
        self.shut(&mut state, code);
        drop(state);
        self.ready.notify_one();
        self.drained.notify_waiters();
    }

    /// [`Outbox::close`] with the text for the close frame.
    pub fn close_with_reason(&self, code: CloseCode, reason: String) {
        let mut state = self.lock();
        if state.closed.is_none() {
            state.reason = Some(reason);
        }
        self.shut(&mut state, code);
        drop(state);
        self.ready.notify_one();
        self.drained.notify_waiters();
    }

    /// The close frame's text, when one was given.
    pub fn close_reason(&self) -> Option<String> {
        self.lock().reason.clone()
    }

    /// The close code once [`Outbox::close`] was called.
    pub fn closed(&self) -> Option<CloseCode> {
        self.lock().closed
    }

    /// Waits until there is something to take (or the outbox is closed).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Takes what is queued as frames (consecutive positions share a `positions` frame), or the close.
    pub fn take(&self, taken: &mut Taken) -> Vec<Frame> {
        let mut state = self.lock();
        if let Some(code) = state.closed {
            return vec![Frame::Close(code)];
        }
        let mut frames = Vec::new();
        let mut own = OwnFrame::default();
        let had_answers = state.answers > 0 || state.bytes > 0;
        while let Some(slot) = state.slots.pop_front() {
            match slot {
                Slot::Answer(answer) => {
                    state.answers -= 1;
                    taken.delivered += answer.positions;
                    own.flush(&mut frames);
                    frames.push(Frame::Text(answer.text, answer.kind));
                }
                Slot::Live(d) => {
                    taken.delivered += 1;
                    taken.noticed.push(d.noticed);
                    own.add(d, &mut frames);
                }
                Slot::Batch(batch) => {
                    taken.delivered += batch.deliveries.len() as u64;
                    taken.noticed.extend(batch.deliveries.iter().map(|d| d.noticed));
                    let alone = own.is_empty() && !matches!(state.slots.front(), Some(Slot::Live(_) | Slot::Batch(_)));
                    if alone {
                        // The client is keeping up: the frames every such client writes.
                        frames.extend(batch.frames().iter().map(|f| Frame::Text(Text::Shared(f.clone()), "positions")));
                    } else {
                        // Behind: its queued positions share frames of its own, as few as fit.
                        for d in &batch.deliveries {
                            own.add(d.clone(), &mut frames);
                        }
                    }
                }
            }
        }
        state.live = 0;
        self.release(&mut state);
        own.flush(&mut frames);
        drop(state);
        if had_answers {
            self.drained.notify_waiters();
        }
        frames
    }
}

/// A `positions` frame of one client's own being filled from its queued live positions.
#[derive(Default)]
struct OwnFrame {
    items: Vec<Arc<Delivery>>,
    /// About the bytes of `items` (for [`protocol::frame_is_full`]).
    bytes: usize,
}

impl OwnFrame {
    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Adds a position; a frame that is full goes to `frames`.
    fn add(&mut self, delivery: Arc<Delivery>, frames: &mut Vec<Frame>) {
        self.bytes += delivery.item.len() + 1;
        self.items.push(delivery);
        if protocol::frame_is_full(self.items.len(), self.bytes) {
            self.flush(frames);
        }
    }

    /// Sends what was added so far to `frames` as one frame, if anything.
    fn flush(&mut self, frames: &mut Vec<Frame>) {
        if !self.items.is_empty() {
            let frame = protocol::positions_frame(self.items.iter().map(|d| d.item.as_str()), self.bytes);
            frames.push(Frame::Text(Text::Own(frame), "positions"));
            self.items.clear();
            self.bytes = 0;
        }
    }
}

/// Keeps, of the queued live positions, only the latest (greatest time) of each device (the last queued
/// among equals: a late record never replaces a newer position); returns how many went.
fn coalesce(state: &mut State) -> u64 {
    if state.slots.iter().any(|slot| matches!(slot, Slot::Batch(_))) {
        let slots = std::mem::take(&mut state.slots);
        for slot in slots {
            match slot {
                Slot::Batch(batch) => state.slots.extend(batch.deliveries.iter().cloned().map(Slot::Live)),
                other => state.slots.push_back(other),
            }
        }
    }
    // Per device, the slot to keep: greatest time, the last queued among equals.
    let mut best: HashMap<Arc<str>, (i64, usize)> = HashMap::new();
    for (i, slot) in state.slots.iter().enumerate() {
        if let Slot::Live(d) = slot {
            let entry = best.entry(d.device.clone()).or_insert((d.ts, i));
            if d.ts >= entry.0 {
                *entry = (d.ts, i);
            }
        }
    }
    let before = state.slots.len();
    let mut i = 0;
    state.slots.retain(|slot| {
        let keep = match slot {
            Slot::Live(d) => best.get(&d.device).is_some_and(|&(_, at)| at == i),
            _ => true,
        };
        i += 1;
        keep
    });
    let removed = before - state.slots.len();
    state.live -= removed;
    removed as u64
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let mut state = self.lock();
        let mut taken = std::mem::take(&mut *state);
        drop(state);
        self.release(&mut taken);
    }
}

impl State {
    /// Fewer than [`MAX_PENDING_ANSWERS`] answers and [`MAX_PENDING_ANSWER_BYTES`] bytes wait unread.
    fn has_room(&self) -> bool {
        self.answers < MAX_PENDING_ANSWERS && self.bytes < MAX_PENDING_ANSWER_BYTES
    }
}

fn close_locked(state: &mut State, code: CloseCode) {
    if state.closed.is_none() {
        state.closed = Some(code);
        state.slots.clear();
        state.live = 0;
        state.answers = 0;
        state.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_replays_past_the_byte_budget_close_as_too_slow() {
        let outbox = Outbox::with_byte_budget(10, 110);
        // 60 bytes and a 44-byte frame.
        outbox.push_answers(vec![AnswerFrame::own("subscribed", "x".repeat(60)), replayed(&[1])]);
        assert_eq!(outbox.closed(), None);
        let mut taken = Taken::default();
        assert_eq!(outbox.take(&mut taken).len(), 2, "taken: the budget is free again");
        outbox.push_answer("subscribed", "x".repeat(60));
        outbox.push_answer("subscribed", "x".repeat(60));
        assert_eq!(outbox.closed(), Some(CloseCode::TooSlow), "120 bytes unread against 110");
    }

    /// A replay's `positions` frame of items `{"n":…}`, shared as replays are.
    fn replayed(ns: &[u32]) -> AnswerFrame {
        let items: Vec<String> = ns.iter().map(|n| format!("{{\"n\":{n}}}")).collect();
        let (frame, count) = protocol::positions_frames(items.iter().map(String::as_str)).remove(0);
        AnswerFrame { text: Text::Shared(Utf8Bytes::from(frame)), kind: "positions", positions: count as u64 }
    }

    fn delivery(device: &str, n: u32) -> Arc<Delivery> {
        // Times follow the numbers, so a smaller number is an older position.
        Arc::new(Delivery {
            device: device.into(),
            item: format!("{{\"n\":{n}}}"),
            ts: i64::from(n),
            noticed: Instant::now(),
        })
    }

    fn texts(outbox: &Outbox) -> Vec<String> {
        outbox
            .take(&mut Taken::default())
            .into_iter()
            .map(|f| match f {
                Frame::Text(t, _) => t.into_text().to_string(),
                Frame::Close(c) => format!("close {}", c.code()),
            })
            .collect()
    }

    #[test]
    fn positions_share_a_frame_and_answers_keep_their_place() {
        let outbox = Outbox::new(10);
        outbox.push_live(&[delivery("a", 1), delivery("b", 2)]);
        outbox.push_answers(vec![AnswerFrame::own("subscribed", "{\"type\":\"subscribed\"}".into()), replayed(&[3])]);
        outbox.push_live(&[delivery("a", 4)]);
        assert_eq!(
            texts(&outbox),
            vec![
                r#"{"type":"positions","positions":[{"n":1},{"n":2}]}"#.to_owned(),
                r#"{"type":"subscribed"}"#.to_owned(),
                r#"{"type":"positions","positions":[{"n":3}]}"#.to_owned(),
                r#"{"type":"positions","positions":[{"n":4}]}"#.to_owned(),
            ]
        );
        assert!(texts(&outbox).is_empty());
    }

    fn shared_frames(outbox: &Outbox) -> Vec<Utf8Bytes> {
        outbox
            .take(&mut Taken::default())
            .into_iter()
            .map(|f| match f {
                Frame::Text(Text::Shared(t), _) => t,
                Frame::Text(other, _) => panic!("a frame of the client's own: {other:?}"),
                Frame::Close(c) => panic!("closed {c:?}"),
            })
            .collect()
    }

    #[test]
    fn a_batch_taken_alone_is_framed_once_for_every_client() {
        let (a, b) = (Outbox::new(10), Outbox::new(10));
        let batch = Batch::new(vec![delivery("a", 1), delivery("b", 2)]);
        a.push_batch(&batch);
        b.push_batch(&batch);
        let (x, y) = (shared_frames(&a), shared_frames(&b));
        assert_eq!(x.len(), 1);
        assert_eq!(x[0].as_str(), r#"{"type":"positions","positions":[{"n":1},{"n":2}]}"#);
        assert_eq!(x[0].as_ptr(), y[0].as_ptr(), "the same bytes, not a copy per client");
    }

    #[test]
    fn a_client_behind_gets_its_batches_framed_together_and_coalesced_when_full() {
        let outbox = Outbox::new(3);
        outbox.push_batch(&Batch::new(vec![delivery("a", 1), delivery("b", 2)]));
        outbox.push_batch(&Batch::new(vec![delivery("a", 3)]));
        assert_eq!(texts(&outbox), vec![r#"{"type":"positions","positions":[{"n":1},{"n":2},{"n":3}]}"#.to_owned()]);
        outbox.push_batch(&Batch::new(vec![delivery("a", 4), delivery("b", 5)]));
        outbox.push_batch(&Batch::new(vec![delivery("a", 6), delivery("c", 7)]));
        // 4 queued; 3 more pass twice the capacity: a pass over the queue, batches taken apart.
        let pushed = outbox.push_batch(&Batch::new(vec![delivery("b", 8), delivery("a", 9), delivery("c", 10)]));
        assert_eq!(pushed, Pushed { queued: 3, coalesced: 4, dropped: 0 });
        assert_eq!(texts(&outbox), vec![r#"{"type":"positions","positions":[{"n":8},{"n":9},{"n":10}]}"#.to_owned()]);
    }

    #[test]
    fn a_full_queue_keeps_the_newest_position_per_device() {
        let outbox = Outbox::new(2);
        let first = outbox.push_live(&[delivery("a", 1), delivery("b", 2), delivery("a", 3), delivery("a", 4)]);
        assert_eq!(first, Pushed { queued: 4, coalesced: 0, dropped: 0 }, "a burst into an empty queue stays whole");
        let next = outbox.push_live(&[delivery("b", 5)]);
        assert_eq!(next, Pushed { queued: 1, coalesced: 3, dropped: 0 }, "past twice the capacity: a pass");
        // a1 and a3 went (a4 is newer), b2 went (b5 replaces it).
        assert_eq!(texts(&outbox), vec![r#"{"type":"positions","positions":[{"n":4},{"n":5}]}"#.to_owned()]);
    }

    #[test]
    fn a_late_record_never_replaces_the_latest_position_of_its_device() {
        let outbox = Outbox::new(2);
        outbox.push_live(&[delivery("a", 5), delivery("b", 6), delivery("a", 7), delivery("b", 8)]);
        // a3 is older than the queued a7: it is the one coalesced away; a5 and b6 go too.
        let pushed = outbox.push_live(&[delivery("a", 3)]);
        assert_eq!(pushed, Pushed { queued: 1, coalesced: 3, dropped: 0 });
        assert_eq!(texts(&outbox), vec![r#"{"type":"positions","positions":[{"n":7},{"n":8}]}"#.to_owned()]);
    }

    #[test]
    fn too_many_distinct_devices_close_the_outbox_as_too_slow() {
        let outbox = Outbox::new(2);
        outbox.push_live(&[delivery("a", 1), delivery("b", 2), delivery("c", 3)]);
        let pushed = outbox.push_live(&[delivery("d", 4), delivery("e", 5)]);
        assert_eq!(pushed, Pushed { queued: 2, coalesced: 0, dropped: 5 });
        assert_eq!(outbox.closed(), Some(CloseCode::TooSlow));
        assert_eq!(texts(&outbox), vec!["close 4008".to_owned()]);
        assert_eq!(outbox.push_live(&[delivery("a", 5)]), Pushed::default());
    }

    #[test]
    fn replayed_positions_are_never_coalesced_or_counted_against_the_capacity() {
        let outbox = Outbox::new(1);
        outbox.push_answers(vec![AnswerFrame::own("subscribed", "{}".into()), replayed(&[0, 1, 2, 3, 4])]);
        outbox.push_live(&[delivery("a", 10), delivery("a", 11)]);
        let pushed = outbox.push_live(&[delivery("a", 12)]);
        assert_eq!(pushed, Pushed { queued: 1, coalesced: 2, dropped: 0 });
        let mut taken = Taken::default();
        let frames = outbox.take(&mut taken);
        assert_eq!(taken.delivered, 6);
        assert_eq!(frames.len(), 3, "subscribed, the replay's frame, the live position's");
    }

    #[tokio::test]
    async fn a_request_waits_for_room_while_a_megabyte_of_answers_is_unread() {
        let outbox = Arc::new(Outbox::new(4));
        assert!(outbox.room().await);
        outbox.push_answer("subscribed", "x".repeat(MAX_PENDING_ANSWER_BYTES));
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.room().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "1 MiB unread: no room");
        assert_eq!(texts(&outbox).len(), 1);
        assert!(waiting.await.expect("joined"), "read: room again");
    }

    #[tokio::test]
    async fn answers_wait_for_the_client_to_read() {
        let outbox = Arc::new(Outbox::new(4));
        for _ in 0..MAX_PENDING_ANSWERS {
            assert!(outbox.answer("pong", "{}".into()).await);
        }
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.answer("pong", "{\"last\":1}".into()).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the 65th answer must wait");
        assert_eq!(texts(&outbox).len(), MAX_PENDING_ANSWERS);
        assert!(waiting.await.expect("joined"));
        outbox.close(CloseCode::GoingAway);
        assert!(!outbox.answer("pong", "{}".into()).await);
    }
}
