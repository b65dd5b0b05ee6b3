//! Triage: whose fault a refused statement is, the data's or the moment's; batches are split, entries
//! probed, held and judged here.
//!
//! **The fault follows the entry, not the moment.** A refused statement (`IngestError::Refused`) does not
//! say whose fault it is: a full NOTIFY queue (54000), an internal error (XX000), an operator's guard
//! trigger (P0001) or a statement timeout refuse good data too. So a refused batch is split in halves
//! (breadth first), and an entry becomes a `rejected` dead letter only when it was refused *alone*, then
//! another write committed rows, and then it was refused alone *again*. Evidence comes only from commits
//! that stored rows in `positions` (the relay's, whichever shard they carried): a batch of only invalid or
//! duplicate payloads commits even while every INSERT is refused, so it proves nothing ([`Storer::commits`]).
//!
//! - When the batch and both its halves have been refused in a row ([`OUTAGE_STREAK`]) with nothing
//!   committed, one random entry not yet refused alone is tried alone (a probe). If that stores its row,
//!   the database works and the splitting goes on. If not, it is an outage: nothing is judged, the whole
//!   unresolved rest is retried as one batch after a backoff (`batches_total{outcome="retried"}`, one log
//!   line at the start and one at the end, `/readyz` 503 with the server's error).
//! - An entry refused alone with no commit since — above all a batch of one entry, which has no sibling to
//!   prove the database works — is *held*: left pending, not acknowledged, and sent again with the next
//!   batch. When anything commits after its refusal it is tried alone once more and judged. A held entry
//!   with nothing else to send is retried with backoff and never judged on its own evidence, however long
//!   the database refuses.
//!
//! Failures that depend on the batch's size are refusals too: `statement_timeout` (57014), the relay's own
//! `TRACKWAY_INGEST_TIMEOUT_MS` (the statement is cancelled on the server: SQLSTATE `timeout`), out of
//! memory (53200), a message too large to send (`too_large`). Splitting shrinks the batch until the pieces
//! pass; a single entry that still fails is judged by the same rule as any other.
//!
//! Unreachable databases and environment errors (`IngestError::Unavailable`) are retried whole with
//! backoff, without splitting. A delay in which the fault (say a guard trigger) switches on between a
//! commit and an entry's second lone refusal could still blame that entry; it takes two refusals of the
//! entry alone around a commit, which an outage that refuses everything never produces.

use std::collections::VecDeque;

use tokio_util::sync::CancellationToken;

use super::store::{Attempt, Item, Storer};
use crate::{database::Status, redis::Entry};

/// Refusals in a row, with nothing committed in between, after which the storer suspects an outage: the
/// batch and both its halves.
const OUTAGE_STREAK: u32 = 3;

/// The result for one payload sent to the database.
#[derive(Clone, Debug)]
pub(super) enum Stored {
    /// What `ingest_batch` said.
    Status(Status),
    /// The server refused this payload alone, and again alone after another write had committed: the
    /// fault follows the payload, not the moment.
    Rejected(String),
    /// The server refused this payload alone and nothing has committed since, so nothing shows the
    /// database works: not judged yet. Value: [`Storer::commits`] at that refusal.
    Held(u64),
    /// Sent to the database more than `max_deliveries` times without an answer (the relay or its
    /// connection died each time): not sent again. Value: the count.
    OverLimit(u64),
}

/// An entry refused alone and not judged yet: it stays pending (not acknowledged) and is sent again with
/// the next batch, so a later commit can tell whether the fault follows it.
pub(super) struct Held {
    /// The entry.
    pub(super) entry: Entry,
    /// Its payload text.
    pub(super) payload: String,
    /// [`Storer::commits`] when it was last refused alone.
    pub(super) refused_at: u64,
    /// Whether its store attempts are counted (see [`Item::counted`]).
    pub(super) counted: bool,
}

/// The triage policy over the storing stage: which sets of payloads are sent, and what a refusal says.
pub(super) struct Triage {
    /// The storing stage it sends through.
    storer: Storer,
}

impl Triage {
    /// Triage over `storer`.
    pub(super) fn new(storer: Storer) -> Triage {
        Triage { storer }
    }

    /// Stores the payloads (see the [module](self) for the rule). Every result is final except [`Stored::Held`].
    /// `None` at shutdown during an outage.
    ///
    /// **Attempts** (`max_deliveries`): before a counted item is sent, its count in `<stream>:attempts` goes
    /// up by one, and once the server answered (commit or refusal) it goes down again (the settle script
    /// removes it when the entry is settled). What stays counted is attempts that got no answer because
    /// the relay or its connection died with the entry in flight; more than `max_deliveries` of them and the
    /// entry is dead-lettered as `max_deliveries` instead of being sent again. Reads, restarts and outages
    /// in which nothing reaches the database (server down, login refused) count nothing.
    pub(super) async fn store(&mut self, items: &[Item<'_>], shutdown: &CancellationToken) -> Option<Vec<Stored>> {
        let n = items.len();
        let commits_before = self.storer.commits();
        let mut results: Vec<Option<Stored>> = vec![None; n];
        let mut lone: Vec<Option<u64>> = items.iter().map(|i| i.refused_at).collect();
        let mut counted: Vec<bool> = items.iter().map(|i| i.counted).collect();
        let mut queue: VecDeque<Vec<usize>> = VecDeque::new();
        if n > 0 {
            queue.push_back((0..n).collect());
        }
        let mut streak = 0;
        let mut last_error = String::new();
        // Whether this call already waited after an outage round.
        let mut waited = false;
        loop {
            while let Some(mut set) = queue.pop_front() {
                set.retain(|&i| results[i].is_none());
                if set.is_empty() {
                    continue;
                }
                match self.storer.attempt(items, &set, &mut counted, shutdown).await? {
                    Attempt::OverLimit(over) => {
                        for (i, count) in over {
                            results[i] = Some(Stored::OverLimit(count));
                        }
                        queue.push_front(set);
                    }
                    Attempt::Committed(statuses) => {
                        streak = 0;
                        for (&i, status) in set.iter().zip(statuses) {
                            results[i] = Some(Stored::Status(status));
                        }
                    }
                    Attempt::Refused(error) => {
                        streak += 1;
                        if let [i] = set[..] {
                            match lone[i] {
                                Some(at) if at < self.storer.commits() => {
                                    results[i] = Some(Stored::Rejected(error.clone()))
                                }
                                _ => lone[i] = Some(self.storer.commits()),
                            }
                        } else {
                            self.storer.split();
                            tracing::debug!(entries = set.len(), %error, "database refused the batch; splitting it");
                            let right = set.split_off(set.len() / 2);
                            queue.push_back(set);
                            queue.push_back(right);
                        }
                        last_error = error;
                        if streak >= OUTAGE_STREAK {
                            streak = 0;
                            if !self.probe(items, &mut results, &mut lone, &mut counted, shutdown).await? {
                                // Everything tried was refused, one entry alone too: an outage.
                                let rest: Vec<usize> = (0..n).filter(|&i| results[i].is_none()).collect();
                                if rest.is_empty() {
                                    break;
                                }
                                if !self.storer.outage(&last_error, shutdown).await {
                                    return None;
                                }
                                waited = true;
                                queue.clear();
                                if rest.iter().all(|&i| lone[i].is_some()) {
                                    // Only entries refused alone are left: give them back as held, so the
                                    // next batch can show whether the database works.
                                    break;
                                }
                                queue.push_back(rest);
                            }
                        }
                    }
                }
            }
            // Entries refused alone before the latest commit are tried alone again, and judged.
            let judge: Vec<usize> = (0..n)
                .filter(|&i| results[i].is_none() && lone[i].is_some_and(|at| at < self.storer.commits()))
                .collect();
            if judge.is_empty() {
                break;
            }
            queue.extend(judge.into_iter().map(|i| vec![i]));
        }
        let held = results.iter().filter(|r| r.is_none()).count();
        if held > 0 && self.storer.commits() == commits_before && !waited {
            // Nothing stored: the database refused every write of this call. Wait before they come back.
            if !self.storer.outage(&last_error, shutdown).await {
                return None;
            }
        }
        Some(results.into_iter().zip(lone).map(|(r, at)| r.unwrap_or(Stored::Held(at.unwrap_or(0)))).collect())
    }

    /// Tries random entries that were not refused alone yet, alone, until one stores its row (`true`) or
    /// is refused (`false`). An entry that commits without storing a row (invalid, or a duplicate) gets its
    /// final result but proves nothing about the database, so the next one is tried.
    async fn probe(
        &mut self,
        items: &[Item<'_>],
        results: &mut [Option<Stored>],
        lone: &mut [Option<u64>],
        counted: &mut [bool],
        shutdown: &CancellationToken,
    ) -> Option<bool> {
        loop {
            let candidates: Vec<usize> =
                (0..items.len()).filter(|&i| results[i].is_none() && lone[i].is_none()).collect();
            if candidates.is_empty() {
                return Some(false);
            }
            let i = candidates[fastrand::usize(..candidates.len())];
            match self.storer.attempt(items, &[i], counted, shutdown).await? {
                Attempt::OverLimit(over) => {
                    for (i, count) in over {
                        results[i] = Some(Stored::OverLimit(count));
                    }
                }
                Attempt::Committed(mut statuses) => {
                    let status = statuses.pop();
                    let stored = matches!(status, Some(Status::Inserted));
                    results[i] = status.map(Stored::Status);
                    if stored {
                        return Some(true);
                    }
                }
                Attempt::Refused(_) => {
                    lone[i] = Some(self.storer.commits());
                    return Some(false);
                }
            }
        }
    }
}
