//! Paging with cursors against a model of PostgreSQL's transactions and snapshots.
//!
//! Concurrent writers (long and short transactions, commits and rollbacks) insert rows with interleaved
//! sequence values; readers take cursors from announcements (made at insert time, as `ingest_batch` and the
//! insert trigger do) or from `current_cursor()`, and page through the rows the way
//! `trackway.positions_since` does (same filter, same order, one row of look-ahead, `Cursor::advance` per
//! row), sometimes resuming from a row in the middle of a page. For every generated schedule and page size:
//! paging to the end terminates, returns every row committed after the cursor was made, and never a row
//! that was not committed. `tests/cursor_paging.rs` at the workspace root checks the same against the real
//! SQL functions.

use proptest::prelude::*;
use trackway_wire::Cursor;

/// A tiny deterministic generator (xorshift), so one seed describes a whole schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Running,
    Committed,
    Aborted,
}

struct Txn {
    xid: u64,
    state: State,
    /// Event time of commit or abort.
    ended_at: Option<u64>,
}

/// A row: its transaction (index into `txns`), xid and sequence.
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
struct Row {
    xid: u64,
    seq: i64,
}

#[derive(Default)]
struct World {
    txns: Vec<Txn>,
    rows: Vec<Row>,
    next_xid: u64,
    next_seq: i64,
    latest_completed: u64,
    clock: u64,
}

/// A snapshot: `xmax` (one past the latest completed transaction) and the running transactions below it.
struct Snapshot {
    xmax: u64,
    xip: Vec<u64>,
}

impl World {
    fn new() -> World {
        World { next_xid: 100, next_seq: 1, latest_completed: 99, ..World::default() }
    }

    fn txn(&self, xid: u64) -> &Txn {
        &self.txns[(xid - 100) as usize]
    }

    fn snapshot(&self) -> Snapshot {
        let xmax = self.latest_completed + 1;
        let xip = self.txns.iter().filter(|t| t.state == State::Running && t.xid < xmax).map(|t| t.xid).collect();
        Snapshot { xmax, xip }
    }

    fn visible(&self, snapshot: &Snapshot, xid: u64) -> bool {
        xid < snapshot.xmax && !snapshot.xip.contains(&xid) && self.txn(xid).state == State::Committed
    }

    fn begin(&mut self) -> u64 {
        let xid = self.next_xid;
        self.next_xid += 1;
        self.txns.push(Txn { xid, state: State::Running, ended_at: None });
        xid
    }

    /// Inserts `n` rows in `xid`; returns the announcement cursor of each, made as the writer's
    /// `_snapshot()` makes it: every other running transaction below its own id is uncertain.
    fn insert(&mut self, xid: u64, n: usize) -> Vec<(Row, Cursor)> {
        let in_progress: Vec<u64> =
            self.txns.iter().filter(|t| t.state == State::Running && t.xid != xid).map(|t| t.xid).collect();
        (0..n)
            .map(|_| {
                let row = Row { xid, seq: self.next_seq };
                self.next_seq += 1;
                self.rows.push(row);
                (row, Cursor::from_snapshot(xid, row.seq, xid, &in_progress))
            })
            .collect()
    }

    fn end(&mut self, xid: u64, commit: bool) {
        self.clock += 1;
        let clock = self.clock;
        let t = &mut self.txns[(xid - 100) as usize];
        t.state = if commit { State::Committed } else { State::Aborted };
        t.ended_at = Some(clock);
        self.latest_completed = self.latest_completed.max(xid);
    }

    /// `positions_since(cursor, NULL, page)`: rows and the cursor after each.
    fn positions_since(&self, cursor: &Cursor, page: usize) -> Vec<(Row, Cursor)> {
        let snapshot = self.snapshot();
        let mut hits: Vec<Row> = self
            .rows
            .iter()
            .copied()
            .filter(|r| self.visible(&snapshot, r.xid))
            .filter(|r| {
                (r.xid, r.seq) > (cursor.xid, cursor.seq)
                    || cursor.behind.iter().any(|b| b.xid == r.xid && r.seq > b.after)
                    || cursor.range.is_some_and(|g| (r.xid, r.seq) > (g.xid, g.seq) && r.xid < cursor.xid)
            })
            .collect();
        hits.sort();
        hits.truncate(page + 1);
        (0..hits.len().min(page))
            .map(|i| {
                let more = hits.get(i + 1).is_some_and(|n| n.xid == hits[i].xid);
                let r = hits[i];
                (r, cursor.advance(r.xid, r.seq, more, snapshot.xmax, &snapshot.xip))
            })
            .collect()
    }
}

/// A reader: where it stands, what it must receive, what it received.
struct Reader {
    cursor: Cursor,
    page: usize,
    /// Event time at which the cursor was made: every row of a transaction that ends later is required.
    made_at: u64,
    /// Rows of the cursor's own transaction after its row are required too.
    own: Option<Row>,
    received: Vec<Row>,
}

impl Reader {
    fn page(&mut self, world: &World, rng: &mut Rng) -> usize {
        let rows = world.positions_since(&self.cursor, self.page);
        if rows.is_empty() {
            return 0;
        }
        // Sometimes the client only got part of the page before it had to resume.
        let keep = if rng.chance(30) { 1 + rng.below(rows.len() as u64) as usize } else { rows.len() };
        for (row, _) in &rows[..keep] {
            self.received.push(*row);
        }
        self.cursor = rows[keep - 1].1.clone();
        // A cursor must survive its text form.
        self.cursor = Cursor::parse(&self.cursor.to_string()).expect("cursor text");
        keep
    }

    fn check(&self, world: &World, seed: u64) {
        for r in &self.received {
            assert_eq!(world.txn(r.xid).state, State::Committed, "seed {seed}: delivered uncommitted row {r:?}");
        }
        for r in &world.rows {
            let t = world.txn(r.xid);
            if t.state != State::Committed {
                continue;
            }
            let required = match self.own {
                Some(own) if own.xid == r.xid => r.seq > own.seq,
                _ => t.ended_at.is_some_and(|at| at > self.made_at),
            };
            if required {
                assert!(
                    self.received.contains(r),
                    "seed {seed}: row {r:?} committed after the cursor was never delivered (cursor now {})",
                    self.cursor
                );
            }
        }
    }
}

fn run(seed: u64) {
    let mut rng = Rng(seed | 1);
    let mut world = World::new();
    let mut running: Vec<u64> = Vec::new();
    let mut readers: Vec<Reader> = Vec::new();
    let steps = 40 + rng.below(120);
    // Some schedules keep more transactions open than an announcement lists (its cursors use a range).
    let busy = rng.chance(30);
    let max_running = if busy { 3 * trackway_wire::cursor::MAX_LISTED_UNCERTAIN } else { 8 };
    for _ in 0..steps {
        match rng.below(10) {
            0 | 1 if running.len() < max_running => running.push(world.begin()),
            _ if busy && running.len() < 2 * trackway_wire::cursor::MAX_LISTED_UNCERTAIN => running.push(world.begin()),
            2..=4 if !running.is_empty() => {
                let xid = running[rng.below(running.len() as u64) as usize];
                // Long transactions insert many rows, more than most pages.
                let n = if rng.chance(20) { 5 + rng.below(40) } else { 1 + rng.below(3) } as usize;
                let announced = world.insert(xid, n);
                if rng.chance(25) {
                    let (row, cursor) = announced[rng.below(n as u64) as usize].clone();
                    let page = 1 + rng.below(12) as usize;
                    readers.push(Reader { cursor, page, made_at: world.clock, own: Some(row), received: Vec::new() });
                }
            }
            5 | 6 if !running.is_empty() => {
                let i = rng.below(running.len() as u64) as usize;
                let xid = running.swap_remove(i);
                let commit = !rng.chance(20);
                world.end(xid, commit);
            }
            7 => {
                let s = world.snapshot();
                let cursor = Cursor::from_snapshot(s.xmax, 0, s.xmax, &s.xip);
                let page = 1 + rng.below(12) as usize;
                readers.push(Reader { cursor, page, made_at: world.clock, own: None, received: Vec::new() });
            }
            _ => {
                for reader in &mut readers {
                    if rng.chance(50) {
                        reader.page(&world, &mut rng);
                    }
                }
            }
        }
    }
    for xid in running.drain(..) {
        let commit = !rng.chance(20);
        world.end(xid, commit);
    }
    let total = world.rows.len();
    for reader in &mut readers {
        let mut pages = 0;
        while reader.page(&world, &mut rng) > 0 {
            pages += 1;
            assert!(pages <= total + 1, "seed {seed}: paging did not terminate (cursor {})", reader.cursor);
        }
        reader.check(&world, seed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn paging_terminates_and_misses_nothing(seed in any::<u64>()) {
        run(seed);
    }
}

/// The reproduction of the issue: a long transaction with more rows than a page still runs when a later
/// one commits; paging from the later one's cursor must move through the long one, not repeat its start.
#[test]
fn a_long_transaction_larger_than_a_page_is_paged_through() {
    let mut world = World::new();
    let long = world.begin();
    let short = world.begin();
    world.insert(long, 300);
    let (_, cursor) = world.insert(short, 1).pop().expect("row");
    world.end(short, true);
    world.end(long, true);
    let mut reader = Reader { cursor, page: 100, made_at: world.clock - 2, own: None, received: Vec::new() };
    let mut rng = Rng(7);
    let mut pages = 0;
    while reader.page(&world, &mut rng) > 0 {
        pages += 1;
        assert!(pages < 10, "paging repeats itself: cursor {}", reader.cursor);
    }
    assert_eq!(reader.received.len(), 300);
}
