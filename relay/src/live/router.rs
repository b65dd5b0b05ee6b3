//! Who watches what: subscriptions by device and by group, and the routing of each new position to the
//! outboxes of the clients that watch its device or one of its groups (each client once per position).
//!
//! Owned by the feed task alone (no lock): subscriptions are added and removed between reads, so a
//! subscription sees exactly the rows read after it was added (see `feed` for why that leaves no gap).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use super::{
    outbox::{Delivery, Outbox, Pushed},
    protocol::Target,
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
    /// What it watches.
    targets: HashSet<Target>,
}

/// The subscription registry.
#[derive(Default)]
pub struct Router {
    clients: HashMap<ClientId, Client>,
    by_device: HashMap<String, Vec<ClientId>>,
    by_group: HashMap<String, Vec<ClientId>>,
}

impl Router {
    /// Adds a subscription; `false` when the client already had it.
    pub fn subscribe(&mut self, client: ClientId, outbox: &Arc<Outbox>, target: Target) -> bool {
        let entry =
            self.clients.entry(client).or_insert_with(|| Client { outbox: outbox.clone(), targets: HashSet::new() });
        if !entry.targets.insert(target.clone()) {
            return false;
        }
        self.index(&target).entry(target.id().to_owned()).or_default().push(client);
        true
    }

    /// Removes a subscription; `false` when the client did not have it.
    pub fn unsubscribe(&mut self, client: ClientId, target: &Target) -> bool {
        let Some(entry) = self.clients.get_mut(&client) else { return false };
        if !entry.targets.remove(target) {
            return false;
        }
        if entry.targets.is_empty() {
            self.clients.remove(&client);
        }
        self.unindex(client, target);
        true
    }

    /// Removes every subscription of a client (it disconnected).
    pub fn leave(&mut self, client: ClientId) {
        if let Some(entry) = self.clients.remove(&client) {
            for target in entry.targets {
                self.unindex(client, &target);
            }
        }
    }

    /// Subscriptions held.
    pub fn subscriptions(&self) -> usize {
        self.clients.values().map(|c| c.targets.len()).sum()
    }

    fn index(&mut self, target: &Target) -> &mut HashMap<String, Vec<ClientId>> {
        match target {
            Target::Device(_) => &mut self.by_device,
            Target::Group(_) => &mut self.by_group,
        }
    }

    fn unindex(&mut self, client: ClientId, target: &Target) {
        let index = self.index(target);
        if let Some(list) = index.get_mut(target.id()) {
            list.retain(|&c| c != client);
            if list.is_empty() {
                index.remove(target.id());
            }
        }
    }

    /// Sends each position to every client watching its device or one of its groups, once per client,
    /// in order. Clients whose outbox closed are forgotten. Returns the sum of what the pushes did.
    pub fn route(&mut self, rows: &[Routed]) -> Pushed {
        let mut per_client: HashMap<ClientId, Vec<Arc<Delivery>>> = HashMap::new();
        let mut seen: HashSet<ClientId> = HashSet::new();
        for row in rows {
            seen.clear();
            let watchers = self
                .by_device
                .get(&*row.delivery.device)
                .into_iter()
                .flatten()
                .chain(row.groups.iter().filter_map(|g| self.by_group.get(g)).flatten());
            for &client in watchers {
                if seen.insert(client) {
                    per_client.entry(client).or_default().push(row.delivery.clone());
                }
            }
        }
        let mut total = Pushed::default();
        let mut gone = Vec::new();
        for (client, deliveries) in per_client {
            let Some(entry) = self.clients.get(&client) else { continue };
            let pushed = entry.outbox.push_live(&deliveries);
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
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::live::outbox::{Frame, Taken};

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
                Frame::Text(t, _) => t.replace(r#"{"type":"positions","positions":"#, ""),
                Frame::Close(c) => c.code().to_string(),
            })
            .collect()
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
    fn clients_closed_as_too_slow_are_forgotten() {
        let mut router = Router::default();
        let slow = Arc::new(Outbox::new(1));
        router.subscribe(1, &slow, Target::Group("g".into()));
        // The first read is taken whole (the client kept up so far); the next finds it behind.
        assert_eq!(router.route(&[row("d1", &["g"], 1), row("d2", &["g"], 2)]).queued, 2);
        let pushed = router.route(&[row("d3", &["g"], 3)]);
        assert_eq!((pushed.queued, pushed.dropped), (0, 3));
        assert_eq!(router.subscriptions(), 0);
        assert_eq!(received(&slow), "4008");
    }
}
