//! Acknowledging stage: XACK of the handled entries and the dead letters, in parts of bounded size, retried
//! while Redis is unavailable.

use tokio_util::sync::CancellationToken;

use crate::{
    backoff::{BackendState, Backoff},
    metrics::Metrics,
    redis::{DeadLetter, Group, Link},
};

/// What to tell Redis about a handled batch.
#[derive(Default)]
pub(super) struct Settlement {
    /// Entries to acknowledge (stored, duplicate, or deleted from the stream).
    pub(super) acks: Vec<String>,
    /// Entries to dead-letter and acknowledge.
    pub(super) dead: Vec<DeadLetter>,
}

/// Most acknowledgements in one settle script call.
const SETTLE_MAX_IDS: usize = 5000;
/// Most dead-letter bytes in one settle script call (a larger single dead letter goes alone).
const SETTLE_MAX_BYTES: usize = 8 << 20;

/// Acknowledging stage: XACK and dead letters, on a connection of its own.
pub(super) struct Settler {
    /// Group operations and names.
    group: Group,
    /// Connection for acknowledgements (never blocked by a read).
    link: Link,
    /// Redis up/down (shared with the reader), logged once per change.
    redis: BackendState,
    /// Delay between attempts.
    backoff: Backoff,
    /// Counters.
    metrics: Metrics,
}

impl Settler {
    /// A settler of `group`'s entries over `link`, a connection no read blocks.
    pub(super) fn new(group: Group, link: Link, redis: BackendState, metrics: Metrics) -> Settler {
        Settler { group, link, redis, backoff: Backoff::default(), metrics }
    }

    /// Acknowledges and dead-letters, retrying while Redis is unavailable; gives up only at shutdown (the
    /// entries stay pending and come back as duplicates). One script call carries at most
    /// [`SETTLE_MAX_IDS`] acknowledgements or [`SETTLE_MAX_BYTES`] of dead letters (at least one), so a
    /// batch of large dead letters becomes several calls instead of one huge request.
    pub(super) async fn settle(&mut self, settlement: Settlement, shutdown: &CancellationToken) {
        let Settlement { acks, dead } = settlement;
        let acks: Vec<&str> = acks.iter().map(String::as_str).collect();
        for part in acks.chunks(SETTLE_MAX_IDS) {
            if !self.settle_part(part, &[], shutdown).await {
                return;
            }
        }
        let mut rest = &dead[..];
        while !rest.is_empty() {
            let mut bytes = 0;
            let take = rest
                .iter()
                .take_while(|letter| {
                    let fits = bytes == 0 || bytes + letter.bytes() <= SETTLE_MAX_BYTES;
                    bytes += letter.bytes();
                    fits
                })
                .count()
                .clamp(1, SETTLE_MAX_IDS);
            let (part, later) = rest.split_at(take);
            if !self.settle_part(&[], part, shutdown).await {
                return;
            }
            rest = later;
        }
    }

    /// One settle script call, retried until it succeeds. `false` at shutdown.
    async fn settle_part(&mut self, acks: &[&str], dead: &[DeadLetter], shutdown: &CancellationToken) -> bool {
        loop {
            match self.group.settle(&mut self.link, acks, dead).await {
                Ok(settled) => {
                    self.backoff.reset();
                    if self.redis.succeeded() {
                        self.metrics.reconnects.with_label_values(&["redis"]).inc();
                    }
                    self.metrics.acks.inc_by(settled.acked);
                    // Not written: no longer pending (settled by another relay, or the group was lost).
                    let written: Vec<&DeadLetter> =
                        dead.iter().zip(&settled.written).filter(|(_, written)| **written).map(|(l, _)| l).collect();
                    for letter in &written {
                        self.metrics.dead_letters.with_label_values(&[letter.reason.label()]).inc();
                        tracing::debug!(id = %letter.entry.id, reason = letter.reason.label(), error = %letter.error, "dead-lettered");
                    }
                    if let Some(first) = written.first() {
                        tracing::info!(count = written.len(), first_id = %first.entry.id, first_error = %first.error,
                                       "entries dead-lettered");
                    }
                    return true;
                }
                Err(e) => {
                    self.metrics.settle_failures.inc();
                    self.redis.failed(&e);
                    if !self.backoff.wait(shutdown).await {
                        tracing::info!("shutdown while Redis is unavailable; handled entries stay pending");
                        return false;
                    }
                }
            }
        }
    }

    /// Leaves the group when nothing is pending on this consumer, so stopped relays do not pile up in it.
    pub(super) async fn leave_if_idle(&mut self) {
        if self.redis.is_down() {
            return;
        }
        match self.group.leave_if_idle(&mut self.link).await {
            Ok(true) => tracing::debug!("left the consumer group (no pending entries)"),
            Ok(false) => tracing::info!("entries still pending on this consumer; they will be re-processed"),
            Err(e) => tracing::debug!(error = %e, "could not leave the consumer group"),
        }
    }
}
