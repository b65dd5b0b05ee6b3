//! Who watches what: subscriptions by device and by group, and the routing of each new position to the
//! outboxes of the clients that watch its device or one of its groups (each client once per position).
//!
//! Owned by the feed task alone (no lock): subscriptions are added and removed between reads, so a
//! subscription sees exactly the rows read after it was added (see `feed` for why that leaves no gap).
//!
//! A new subscription is first *held* while its answer (snapshot or replay) is read beside the feed
//! (`answers`): the rows routed to it meanwhile wait in its hold, in order, and follow the answer once it is
//! queued ([`Router::release`]). A client that already gets a row through a subscription in force gets it
//! from there, not again from a hold.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use super::{
    outbox::{Batch, Delivery, Outbox, Pushed},
    protocol::{CloseCode, Target},
};

/// Identifies a connection.
pub type ClientId = u64;

/// A position read from the database, with the groups its device belonged to when it was read.
pub struct Routed {
    /// The position as sent.
    pub delivery: Arc<Delivery>,
    /// Groups of its device.
    pub groups: Vec<String>,
}

struct Client {
    /// Where its positions go.
    outbox: Arc<Outbox>,
    /// What it watches (answered).
    targets: HashSet<Target>,
    /// Subscriptions whose answer is being read, each with the rows routed to it meanwhile.
    held: HashMap<Target, Hold>,
}

/// Rows waiting for a subscription's answer.
struct Hold {
    /// Which request the hold is for (a newer request for the same target replaces it).
    ticket: u64,
    /// In the order read; coalesced to the newest per device past the outbox's capacity.
    rows: Vec<Arc<Delivery>>,
}

/// Subscriptions of one kind by target id: the clients watching each.
type Index = HashMap<String, Vec<ClientId>>;

/// The subscription registry.
#[derive(Default)]
pub struct Router {
    clients: HashMap<ClientId, Client>,
    by_device: Index,
    by_group: Index,
    /// Held subscriptions, by device and by group (usually empty).
    held_device: Index,
    held_group: Index,
}

impl Router {
    /// Adds a subscription in force at once; `false` when the client already had it. (The feed holds new
    /// subscriptions instead: [`Router::hold`].)
    pub fn subscribe(&mut self, client: ClientId, outbox: &Arc<Outbox>, target: Target) -> bool {
        let entry = self.client(client, outbox);
        if !entry.targets.insert(target.clone()) {
            return false;
        }
        index_mut(&mut self.by_device, &mut self.by_group, &target)
            .entry(target.id().to_owned())
            .or_default()
            .push(client);
        true
    }

    /// Holds a new subscription while its answer is read: rows for it wait until [`Router::release`] with
    /// the same `ticket`. A request for a target the client holds or watches already replaces that one
    /// (its answer will cover what the old hold held).
    pub fn hold(&mut self, client: ClientId, outbox: &Arc<Outbox>, target: Target, ticket: u64) {
        let entry = self.client(client, outbox);
        let was_watched = entry.targets.remove(&target);
        let was_held = entry.held.insert(target.clone(), Hold { ticket, rows: Vec::new() }).is_some();
        if was_watched {
            unindex(index_mut(&mut self.by_device, &mut self.by_group, &target), client, &target);
        }
        if !was_held {
            index_mut(&mut self.held_device, &mut self.held_group, &target)
                .entry(target.id().to_owned())
                .or_default()
                .push(client);
        }
    }

    /// Ends the hold `ticket` of a subscription: when `subscribed` (its answer is queued) the rows it held
    /// follow the answer and the subscription is in force; otherwise (refused, given up) they are dropped.
    /// A ticket that is no longer the hold's (a newer request replaced it) changes nothing.
    pub fn release(&mut self, client: ClientId, target: &Target, ticket: u64, subscribed: bool) -> Pushed {
        let Some(entry) = self.clients.get_mut(&client) else { return Pushed::default() };
        if entry.held.get(target).is_none_or(|h| h.ticket != ticket) {
            return Pushed::default();
        }
        let hold = entry.held.remove(target).expect("looked up");
        unindex(index_mut(&mut self.held_device, &mut self.held_group, target), client, target);
        let mut pushed = Pushed::default();
        if subscribed {
            // Rows that other holds of this client also wait for are delivered now, not again later.
            let sent: HashSet<*const Delivery> = hold.rows.iter().map(Arc::as_ptr).collect();
            for other in entry.held.values_mut() {
                other.rows.retain(|r| !sent.contains(&Arc::as_ptr(r)));
            }
            entry.targets.insert(target.clone());
            index_mut(&mut self.by_device, &mut self.by_group, target)
                .entry(target.id().to_owned())
                .or_default()
                .push(client);
            pushed = entry.outbox.push_live(&hold.rows);
        }
        let closed = entry.outbox.closed().is_some();
        if closed || (entry.targets.is_empty() && entry.held.is_empty()) {
            self.leave(client);
        }
        pushed
    }

    /// Removes a subscription; `false` when the client did not have it (a held one is dropped).
    pub fn unsubscribe(&mut self, client: ClientId, target: &Target) -> bool {
        let Some(entry) = self.clients.get_mut(&client) else { return false };
        if entry.held.remove(target).is_some() {
            unindex(index_mut(&mut self.held_device, &mut self.held_group, target), client, target);
        }
        let had = entry.targets.remove(target);
        if had {
            unindex(index_mut(&mut self.by_device, &mut self.by_group, target), client, target);
        }
        if entry.targets.is_empty() && entry.held.is_empty() {
            self.clients.remove(&client);
        }
        had
    }

    /// Removes every subscription of a client (it disconnected).
    pub fn leave(&mut self, client: ClientId) {
        if let Some(entry) = self.clients.remove(&client) {
            for target in entry.targets {
                unindex(index_mut(&mut self.by_device, &mut self.by_group, &target), client, &target);
            }
            for target in entry.held.into_keys() {
                unindex(index_mut(&mut self.held_device, &mut self.held_group, &target), client, &target);
            }
        }
    }

    /// Whether no client watches or waits for anything (no subscription in force, none held): then rows
    /// read would go to nobody.
    pub fn is_idle(&self) -> bool {
        self.clients.is_empty()
    }

    /// Subscriptions in force (held ones not counted).
    pub fn subscriptions(&self) -> usize {
        self.clients.values().map(|c| c.targets.len()).sum()
    }

    fn client(&mut self, client: ClientId, outbox: &Arc<Outbox>) -> &mut Client {
        self.clients.entry(client).or_insert_with(|| Client {
            outbox: outbox.clone(),
            targets: HashSet::new(),
            held: HashMap::new(),
        })
    }

    /// Sends each position to every client watching its device or one of its groups, once per client,
    /// in order; a client that gets it through no subscription in force keeps it in the holds it matches.
    /// Clients whose outbox closed are forgotten. Returns the sum of what the pushes did.
    pub fn route(&mut self, rows: &[Routed]) -> Pushed {
        // Per client, the rows it gets (indexes into `rows`, in order).
        let mut per_client: HashMap<ClientId, Vec<usize>> = HashMap::new();
        let mut seen: HashSet<ClientId> = HashSet::new();
        let mut gone = Vec::new();
        let holding = !self.held_device.is_empty() || !self.held_group.is_empty();
        for (i, row) in rows.iter().enumerate() {
            seen.clear();
            let watchers = self
                .by_device
                .get(&*row.delivery.device)
                .into_iter()
                .flatten()
                .chain(row.groups.iter().filter_map(|g| self.by_group.get(g)).flatten());
            for &client in watchers {
                if seen.insert(client) {
                    per_client.entry(client).or_default().push(i);
                }
            }
            if holding {
                self.keep_for_holds(row, &seen, &mut gone);
            }
        }
        // Clients that get the same rows share one batch (framed once: a broadcast's usual case).
        let mut batches: HashMap<Vec<usize>, Arc<Batch>> = HashMap::new();
        let mut total = Pushed::default();
        for (client, indexes) in per_client {
            let Some(entry) = self.clients.get(&client) else { continue };
            let batch = batches
                .entry(indexes)
                .or_insert_with_key(|indexes| Batch::new(indexes.iter().map(|&i| rows[i].delivery.clone()).collect()));
            let pushed = entry.outbox.push_batch(batch);
            total.queued += pushed.queued;
            total.coalesced += pushed.coalesced;
            total.dropped += pushed.dropped;
            if entry.outbox.closed().is_some() {
                gone.push(client);
            }
        }
        for client in gone {
            self.leave(client);
        }
        total
    }

    /// Adds `row` to the holds it matches of clients not in `delivered`. A hold past twice its outbox's
    /// capacity keeps the newest row per device (a pass over the hold at most once per `capacity` rows, as
    /// in the outbox); one still past the capacity closes the client as too slow (into `gone`).
    fn keep_for_holds(&mut self, row: &Routed, delivered: &HashSet<ClientId>, gone: &mut Vec<ClientId>) {
        let Router { clients, held_device, held_group, .. } = self;
        // One target per held id the row matches (not one per client: a storm holds a thousand).
        let device = &row.delivery.device;
        let by_device = held_device.get(&**device).map(|holders| (Target::Device(device.to_string()), holders));
        let by_group =
            row.groups.iter().filter_map(|g| held_group.get(g).map(|holders| (Target::Group(g.clone()), holders)));
        for (target, holders) in by_device.into_iter().chain(by_group) {
            for client in holders.iter().filter(|c| !delivered.contains(c)) {
                let Some(entry) = clients.get_mut(client) else { continue };
                let capacity = entry.outbox.capacity();
                let Some(hold) = entry.held.get_mut(&target) else { continue };
                hold.rows.push(row.delivery.clone());
                if hold.rows.len() > capacity.saturating_mul(2) {
                    coalesce(&mut hold.rows);
                    if hold.rows.len() > capacity {
                        entry.outbox.close(CloseCode::TooSlow);
                        gone.push(*client);
                    }
                }
            }
        }
    }
}

/// The index of a target's kind, of the two given (device, group).
fn index_mut<'a>(devices: &'a mut Index, groups: &'a mut Index, target: &Target) -> &'a mut Index {
    match target {
        Target::Device(_) => devices,
        Target::Group(_) => groups,
    }
}

fn unindex(index: &mut Index, client: ClientId, target: &Target) {
    if let Some(list) = index.get_mut(target.id()) {
        list.retain(|&c| c != client);
        if list.is_empty() {
            index.remove(target.id());
        }
    }
}

/// Keeps, of rows in reading order, the newest (greatest time, the last read among equals) of each
/// device, in their order.
fn coalesce(rows: &mut Vec<Arc<Delivery>>) {
    let mut newest: HashMap<&str, (i64, usize)> = HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        let entry = newest.entry(&*row.device).or_insert((row.ts, i));
        if row.ts >= entry.0 {
            *entry = (row.ts, i);
        }
    }
    let keep: HashSet<usize> = newest.into_values().map(|(_, i)| i).collect();
    let mut i = 0;
    rows.retain(|_| {
        i += 1;
        keep.contains(&(i - 1))
    });
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::outbox::{Frame, Taken};

    fn row(device: &str, groups: &[&str], n: u32) -> Routed {
        Routed {
            delivery: Arc::new(Delivery {
                device: device.into(),
                item: n.to_string(),
                ts: i64::from(n),
                noticed: Instant::now(),
            }),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn received(outbox: &Outbox) -> String {
        outbox
            .take(&mut Taken::default())
            .into_iter()
            .map(|f| match f {
                Frame::Text(t, _) => t.into_text().to_string().replace(r#"{"type":"positions","positions":"#, ""),
                Frame::Close(c) => c.code().to_string(),
            })
            .collect()
    }

    #[test]
    fn clients_that_get_the_same_rows_share_their_frames() {
        let mut router = Router::default();
        let outboxes: Vec<Arc<Outbox>> = (0..3).map(|_| Arc::new(Outbox::new(100))).collect();
        for (client, outbox) in outboxes.iter().enumerate() {
            router.subscribe(client as ClientId, outbox, Target::Group("fleet".into()));
        }
        router.subscribe(2, &outboxes[2], Target::Device("d3".into()));
        router.route(&[row("d1", &["fleet"], 1), row("d3", &[], 2)]);
        let frame = |outbox: &Outbox| match outbox.take(&mut Taken::default()).remove(0) {
            Frame::Text(crate::protocol::Text::Shared(t), _) => t,
            _ => panic!("not a shared frame"),
        };
        let (a, b, c) = (frame(&outboxes[0]), frame(&outboxes[1]), frame(&outboxes[2]));
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same rows: the same frame");
        assert_ne!(a.as_ptr(), c.as_ptr(), "other rows: a frame of their own");
        assert_eq!(c.as_str(), r#"{"type":"positions","positions":[1,2]}"#);
    }

    #[test]
    fn positions_reach_device_and_group_watchers_once_each() {
        let mut router = Router::default();
        let (a, b) = (Arc::new(Outbox::new(100)), Arc::new(Outbox::new(100)));
        assert!(router.subscribe(1, &a, Target::Device("d1".into())));
        assert!(router.subscribe(1, &a, Target::Group("fleet".into())));
        assert!(!router.subscribe(1, &a, Target::Group("fleet".into())));
        assert!(router.subscribe(2, &b, Target::Group("other".into())));
        let pushed = router.route(&[row("d1", &["fleet"], 1), row("d2", &["fleet", "other"], 2), row("d3", &[], 3)]);
        assert_eq!(pushed.queued, 3);
        assert_eq!(received(&a), "[1,2]}");
        assert_eq!(received(&b), "[2]}");
        assert_eq!(router.subscriptions(), 3);

        assert!(router.unsubscribe(1, &Target::Group("fleet".into())));
        assert!(!router.unsubscribe(1, &Target::Group("fleet".into())));
        router.route(&[row("d1", &["fleet"], 4), row("d2", &["fleet"], 5)]);
        assert_eq!(received(&a), "[4]}");
        router.leave(1);
        router.route(&[row("d1", &[], 6)]);
        assert_eq!(received(&a), "");
        assert_eq!(router.subscriptions(), 1);
    }

    #[test]
    fn rows_wait_in_a_hold_and_follow_the_answer() {
        let mut router = Router::default();
        let a = Arc::new(Outbox::new(100));
        router.subscribe(1, &a, Target::Device("d1".into()));
        router.hold(1, &a, Target::Group("fleet".into()), 7);
        router.route(&[row("d1", &["fleet"], 1), row("d2", &["fleet"], 2)]);
        assert_eq!(received(&a), "[1]}", "d1 comes through the device subscription, d2 waits");
        assert_eq!(router.subscriptions(), 1, "a held subscription is not in force yet");
        a.push_answer("subscribed", "S".into());
        assert_eq!(router.release(1, &Target::Group("fleet".into()), 6, true), Pushed::default(), "an old ticket");
        let pushed = router.release(1, &Target::Group("fleet".into()), 7, true);
        assert_eq!(pushed.queued, 1);
        router.route(&[row("d2", &["fleet"], 3)]);
        assert_eq!(received(&a), "S[2,3]}");
        assert_eq!(router.subscriptions(), 2);
    }

    #[test]
    fn a_refused_hold_drops_its_rows_and_keeps_those_of_other_holds() {
        let mut router = Router::default();
        let a = Arc::new(Outbox::new(100));
        router.hold(1, &a, Target::Group("g1".into()), 1);
        router.hold(1, &a, Target::Group("g2".into()), 2);
        router.route(&[row("d1", &["g1", "g2"], 1), row("d2", &["g1"], 2)]);
        router.release(1, &Target::Group("g1".into()), 1, false);
        assert_eq!(received(&a), "", "refused: nothing of g1's hold is sent");
        router.release(1, &Target::Group("g2".into()), 2, true);
        assert_eq!(received(&a), "[1]}", "d1 was held for g2 too");
        router.route(&[row("d2", &["g1"], 3)]);
        assert_eq!(received(&a), "", "g1 is not watched");
    }

    #[test]
    fn a_row_held_by_two_holds_is_sent_once() {
        let mut router = Router::default();
        let a = Arc::new(Outbox::new(100));
        router.hold(1, &a, Target::Device("d1".into()), 1);
        router.hold(1, &a, Target::Group("g".into()), 2);
        router.route(&[row("d1", &["g"], 1)]);
        router.release(1, &Target::Device("d1".into()), 1, true);
        router.release(1, &Target::Group("g".into()), 2, true);
        assert_eq!(received(&a), "[1]}");
    }

    #[test]
    fn a_hold_past_the_capacity_keeps_the_newest_row_per_device_then_closes() {
        let mut router = Router::default();
        let a = Arc::new(Outbox::new(2));
        router.hold(1, &a, Target::Group("g".into()), 1);
        // Up to twice the capacity is held as it comes; the fifth row makes a pass.
        router.route(&[row("d1", &["g"], 1), row("d1", &["g"], 2), row("d2", &["g"], 3), row("d1", &["g"], 4)]);
        router.route(&[row("d2", &["g"], 5)]);
        router.release(1, &Target::Group("g".into()), 1, true);
        assert_eq!(received(&a), "[4,5]}");
        let b = Arc::new(Outbox::new(2));
        router.hold(2, &b, Target::Group("h".into()), 2);
        router.route(&[row("d1", &["h"], 1), row("d2", &["h"], 2), row("d3", &["h"], 3), row("d1", &["h"], 4)]);
        assert_eq!(received(&b), "", "4 rows held, 3 devices: no pass yet");
        router.route(&[row("d2", &["h"], 5)]);
        assert_eq!(received(&b), "4008");
        assert_eq!(router.release(2, &Target::Group("h".into()), 2, true), Pushed::default());
    }

    #[test]
    fn the_router_is_idle_only_while_nothing_is_watched_or_held() {
        let mut router = Router::default();
        let a = Arc::new(Outbox::new(10));
        assert!(router.is_idle());
        router.hold(1, &a, Target::Device("d1".into()), 1);
        assert!(!router.is_idle(), "a held subscription waits for rows");
        router.release(1, &Target::Device("d1".into()), 1, true);
        assert!(!router.is_idle());
        router.unsubscribe(1, &Target::Device("d1".into()));
        assert!(router.is_idle());
        router.subscribe(2, &a, Target::Group("g".into()));
        router.leave(2);
        assert!(router.is_idle());
    }

    #[test]
    fn leaving_drops_holds() {
        let mut router = Router::default();
        let a = Arc::new(Outbox::new(10));
        router.hold(1, &a, Target::Device("d1".into()), 1);
        router.leave(1);
        router.route(&[row("d1", &[], 1)]);
        assert_eq!(router.release(1, &Target::Device("d1".into()), 1, true), Pushed::default());
        assert_eq!(received(&a), "");
    }

    #[test]
    fn clients_closed_as_too_slow_are_forgotten() {
        let mut router = Router::default();
        let slow = Arc::new(Outbox::new(1));
        router.subscribe(1, &slow, Target::Group("g".into()));
        // The first read is taken whole (the client kept up so far); the next finds it behind, past twice
        // the capacity with two devices.
        assert_eq!(router.route(&[row("d1", &["g"], 1), row("d2", &["g"], 2)]).queued, 2);
        let pushed = router.route(&[row("d2", &["g"], 3)]);
        assert_eq!((pushed.queued, pushed.coalesced, pushed.dropped), (1, 1, 2));
        assert_eq!(router.subscriptions(), 0);
        assert_eq!(received(&slow), "4008");
    }
}
