//! Paging with `trackway.positions_since` against real concurrent writers.
//!
//! Generated schedules (one seed each; `TRACKWAY_TEST_SEED` replays one) interleave four writer sessions —
//! short and long transactions, commits and rollbacks, rows stored with `ingest_batch`, a plain `INSERT`
//! that sets the cursor columns by hand, and `COPY` — with readers that take `current_cursor()` and page
//! with page sizes from 1 up, sometimes keeping only part of a page before resuming, a third of them for
//! one device only (the device filter a resume uses). Afterwards more
//! readers start from announced cursors. For every reader: paging to the end terminates, returns every row
//! committed after its cursor was made and no row that was never committed.
//! `wire/tests/cursor_paging.rs` checks the same rules on a model with thousands of schedules.

use std::collections::{HashMap, HashSet};

use futures_util::SinkExt;
use tokio_postgres::Client;
use trackway_tests::{connect, fresh_database, ingest_generated, make_chunk, Listener};
use trackway_wire::format_timestamp;

const WRITERS: usize = 4;
const EVENTS: usize = 160;
const SEEDS: usize = 8;
/// 2026-11-27T00:00:00Z in Unix microseconds; row `n` of writer `w` is at this plus `n` seconds.
const BASE_MICROS: i64 = 1_795_737_600_000_000;

/// A row: writer (device `w<writer>`) and its number.
type Key = (usize, i64);

fn device(w: usize) -> String {
    format!("w{w}")
}

fn timestamp(n: i64) -> String {
    format_timestamp(BASE_MICROS + n * 1_000_000)
}

/// A writer session and its open transaction.
struct Writer {
    client: Client,
    /// The transaction's label (index in `Schedule::txns`) while one is open.
    open: Option<usize>,
    /// Rows written so far by this writer (numbers are never reused, also after a rollback).
    next_row: i64,
}

/// What happened to one transaction.
#[derive(Default)]
struct Txn {
    rows: Vec<Key>,
    /// Event at which it committed; `None` while open or when rolled back.
    committed_at: Option<usize>,
    /// Event at which each row was inserted.
    inserted_at: HashMap<Key, usize>,
}

/// A reader: its cursor, page size, and what it must and did receive.
struct Reader {
    cursor: String,
    page: i32,
    /// Event at which the cursor was made.
    made_at: usize,
    /// For a cursor from an announcement: the announced row's transaction and sequence.
    own: Option<(usize, i64)>,
    /// The one writer's device this reader asks for (`positions_since`'s device filter), or every row.
    device: Option<usize>,
    received: HashSet<Key>,
}

struct Schedule {
    seed: u64,
    rng: fastrand::Rng,
    db: String,
    writers: Vec<Writer>,
    reader_client: Client,
    txns: Vec<Txn>,
    readers: Vec<Reader>,
    key_txn: HashMap<Key, usize>,
}

impl Schedule {
    async fn new(seed: u64, index: usize) -> Schedule {
        let db = fresh_database(&format!("paging_{index}")).await;
        // The writers keep transactions open while others write (see make_chunk).
        make_chunk(&db, &timestamp(0)).await;
        let mut writers = Vec::new();
        for _ in 0..WRITERS {
            writers.push(Writer { client: connect(&db).await, open: None, next_row: 0 });
        }
        let reader_client = connect(&db).await;
        Schedule {
            seed,
            rng: fastrand::Rng::with_seed(seed),
            db,
            writers,
            reader_client,
            txns: Vec::new(),
            readers: Vec::new(),
            key_txn: HashMap::new(),
        }
    }

    async fn step(&mut self, event: usize) {
        let w = self.rng.usize(..WRITERS);
        match self.rng.u8(..10) {
            0 | 1 if self.writers[w].open.is_none() => {
                self.writers[w].client.batch_execute("BEGIN").await.expect("BEGIN");
                self.txns.push(Txn::default());
                self.writers[w].open = Some(self.txns.len() - 1);
            }
            2..=4 if self.writers[w].open.is_some() => {
                let n = if self.rng.u8(..5) == 0 { self.rng.i64(20..70) } else { self.rng.i64(1..4) };
                self.insert(w, n, event).await;
            }
            5 | 6 if self.writers[w].open.is_some() => {
                let txn = self.writers[w].open.take().expect("open");
                if self.rng.u8(..5) == 0 {
                    self.writers[w].client.batch_execute("ROLLBACK").await.expect("ROLLBACK");
                } else {
                    self.writers[w].client.batch_execute("COMMIT").await.expect("COMMIT");
                    self.txns[txn].committed_at = Some(event);
                }
            }
            7 => {
                let cursor: String = self
                    .reader_client
                    .query_one("SELECT trackway.current_cursor()", &[])
                    .await
                    .expect("current_cursor")
                    .get(0);
                let (page, device) = (self.page_size(), self.filter());
                self.readers.push(Reader { cursor, page, made_at: event, own: None, device, received: HashSet::new() });
            }
            _ => {
                for r in 0..self.readers.len() {
                    if self.rng.bool() {
                        self.page(r).await;
                    }
                }
            }
        }
    }

    /// A third of the readers read one writer's device only.
    fn filter(&mut self) -> Option<usize> {
        (self.rng.u8(..3) == 0).then(|| self.rng.usize(..WRITERS))
    }

    fn page_size(&mut self) -> i32 {
        if self.rng.bool() {
            self.rng.i32(1..4)
        } else {
            self.rng.i32(4..40)
        }
    }

    /// Inserts `n` rows for writer `w` in its open transaction, by a route chosen at random.
    async fn insert(&mut self, w: usize, n: i64, event: usize) {
        let txn = self.writers[w].open.expect("open");
        let first = self.writers[w].next_row;
        self.writers[w].next_row += n;
        let keys: Vec<Key> = (first..first + n).map(|i| (w, i)).collect();
        let client = &self.writers[w].client;
        match self.rng.u8(..3) {
            0 => {
                let payloads: Vec<String> = keys
                    .iter()
                    .map(|&(w, i)| {
                        format!(
                            r#"{{"deviceId":"{}","timestamp":"{}","latitude":54.5,"longitude":25.25}}"#,
                            device(w),
                            timestamp(i)
                        )
                    })
                    .collect();
                let rows = client
                    .query("SELECT status FROM trackway.ingest_batch($1::text[])", &[&payloads])
                    .await
                    .expect("ingest_batch");
                assert!(rows.iter().all(|r| r.get::<_, &str>(0) == "inserted"), "seed {}", self.seed);
            }
            1 => {
                // A plain INSERT that tries to set the cursor columns itself: the database must not let it.
                for &(w, i) in &keys {
                    client
                        .execute(
                            "INSERT INTO trackway.positions
                                 (device_id, ts, latitude, longitude, ingest_xid, ingest_seq, ingested_at)
                             VALUES ($1, $2::text::timestamptz, 54.5, 25.25, '3', 1, '2000-01-01')",
                            &[&device(w), &timestamp(i)],
                        )
                        .await
                        .expect("INSERT");
                }
            }
            _ => {
                let sink = client
                    .copy_in("COPY trackway.positions (device_id, ts, latitude, longitude, ingest_xid) FROM STDIN")
                    .await
                    .expect("COPY");
                futures_util::pin_mut!(sink);
                let text: String =
                    keys.iter().map(|&(w, i)| format!("{}\t{}\t54.5\t25.25\t5\n", device(w), timestamp(i))).collect();
                sink.send(bytes::Bytes::from(text)).await.expect("send");
                sink.finish().await.expect("finish COPY");
            }
        }
        for key in keys {
            self.txns[txn].rows.push(key);
            self.txns[txn].inserted_at.insert(key, event);
            self.key_txn.insert(key, txn);
        }
    }

    /// One page for reader `r`; the number of rows it kept (0 at the end).
    async fn page(&mut self, r: usize) -> usize {
        let reader = &self.readers[r];
        let devices: Option<Vec<String>> = reader.device.map(|w| vec![device(w)]);
        let rows = self
            .reader_client
            .query(
                "SELECT cursor, device_id, extract(epoch FROM ts)::int8 FROM trackway.positions_since($1, $3, $2)",
                &[&reader.cursor, &reader.page, &devices],
            )
            .await
            .unwrap_or_else(|e| panic!("seed {}: positions_since({}): {e:?}", self.seed, reader.cursor));
        if rows.is_empty() {
            return 0;
        }
        // Sometimes the client only used part of the page before it resumed.
        let keep = if self.rng.u8(..3) == 0 { self.rng.usize(1..=rows.len()) } else { rows.len() };
        let reader = &mut self.readers[r];
        for row in &rows[..keep] {
            let device: &str = row.get(1);
            let w: usize = device[1..].parse().expect("writer");
            reader.received.insert((w, key_number(row.get(2))));
        }
        reader.cursor = rows[keep - 1].get(0);
        keep
    }

    /// Closes open transactions, adds readers from announced cursors, pages every reader to the end and
    /// checks what each received.
    async fn finish(&mut self, listener: &mut Listener, event: usize) {
        for w in 0..WRITERS {
            if let Some(txn) = self.writers[w].open.take() {
                self.writers[w].client.batch_execute("COMMIT").await.expect("COMMIT");
                self.txns[txn].committed_at = Some(event);
            }
        }
        let seqs = self.sequences().await;
        let entries = listener.entries(std::time::Duration::from_millis(300)).await;
        assert!(!entries.is_empty() || self.txns.iter().all(|t| t.committed_at.is_none() || t.rows.is_empty()));
        for _ in 0..8.min(entries.len()) {
            let e = &entries[self.rng.usize(..entries.len())];
            let position = &e["position"];
            let device = position["deviceId"].as_str().expect("deviceId");
            let key =
                (device[1..].parse().expect("writer"), key_number_iso(position["timestamp"].as_str().expect("ts")));
            let txn = self.key_txn[&key];
            let (page, device) = (self.page_size(), self.filter());
            self.readers.push(Reader {
                cursor: e["cursor"].as_str().expect("cursor").to_owned(),
                page,
                made_at: self.txns[txn].inserted_at[&key],
                own: Some((txn, seqs[&key])),
                device,
                received: HashSet::new(),
            });
        }
        let total: usize = self.txns.iter().map(|t| t.rows.len()).sum();
        for r in 0..self.readers.len() {
            let mut pages = 0;
            while self.page(r).await > 0 {
                pages += 1;
                assert!(
                    pages <= total + 2,
                    "seed {}: paging from a cursor did not end (now at {})",
                    self.seed,
                    self.readers[r].cursor
                );
            }
            self.check(r, &seqs);
        }
    }

    /// `ingest_seq` of every stored row.
    async fn sequences(&self) -> HashMap<Key, i64> {
        let client = connect(&self.db).await;
        let rows = client
            .query("SELECT device_id, extract(epoch FROM ts)::int8, ingest_seq FROM trackway.positions", &[])
            .await
            .expect("rows");
        rows.iter()
            .map(|row| {
                let device: &str = row.get(0);
                ((device[1..].parse().expect("writer"), key_number(row.get(1))), row.get(2))
            })
            .collect()
    }

    fn check(&self, r: usize, seqs: &HashMap<Key, i64>) {
        let reader = &self.readers[r];
        for key in &reader.received {
            let txn = self.key_txn[key];
            assert!(
                self.txns[txn].committed_at.is_some(),
                "seed {}: delivered a row never committed: {key:?}",
                self.seed
            );
            assert!(
                reader.device.is_none_or(|w| w == key.0),
                "seed {}: a reader of device {:?} got a row of another: {key:?}",
                self.seed,
                reader.device
            );
        }
        for (label, txn) in self.txns.iter().enumerate() {
            let Some(committed_at) = txn.committed_at else { continue };
            for key in txn.rows.iter().filter(|key| reader.device.is_none_or(|w| w == key.0)) {
                let required = match reader.own {
                    Some((own, seq)) if own == label => seqs[key] > seq,
                    _ => committed_at > reader.made_at,
                };
                assert!(
                    !required || reader.received.contains(key),
                    "seed {}: reader from event {} (page {}, device {:?}) missed row {key:?} of a transaction committed at {committed_at}; cursor now {}",
                    self.seed,
                    reader.made_at,
                    reader.page,
                    reader.device,
                    reader.cursor
                );
            }
        }
    }
}

/// The row number of a time in Unix seconds.
fn key_number(epoch_seconds: i64) -> i64 {
    epoch_seconds - BASE_MICROS / 1_000_000
}

/// The row number of a wire timestamp (`2026-11-27T00:00:07.000Z`).
fn key_number_iso(text: &str) -> i64 {
    let time = text.get(11..19).expect("hh:mm:ss");
    let day: i64 = text.get(8..10).expect("day").parse().expect("day");
    let parts: Vec<i64> = time.split(':').map(|p| p.parse().expect("number")).collect();
    (day - 27) * 86_400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_from_any_cursor_ends_and_misses_no_committed_row() {
    let seeds: Vec<u64> = match std::env::var("TRACKWAY_TEST_SEED") {
        Ok(seed) => vec![seed.parse().expect("TRACKWAY_TEST_SEED")],
        Err(_) => (0..SEEDS).map(|_| fastrand::u64(..)).collect(),
    };
    for (index, &seed) in seeds.iter().enumerate() {
        eprintln!("cursor paging: seed {seed} (TRACKWAY_TEST_SEED={seed} replays it)");
        let mut schedule = Schedule::new(seed, index).await;
        let mut listener = Listener::start(&schedule.db).await;
        for event in 0..EVENTS {
            schedule.step(event).await;
        }
        schedule.finish(&mut listener, EVENTS).await;
        let readers = schedule.readers.len();
        let received: usize = schedule.readers.iter().map(|r| r.received.len()).sum();
        eprintln!("cursor paging: seed {seed}: {readers} readers, {received} rows received, all checked");
    }
}

/// The page size of the reads below: the live feed's.
const PAGE: i32 = 2_000;

/// Rows each read below may touch beyond the rows it returns, all tables together: one more row tells
/// whether the last row's transaction continues, a little for the cursor's other ranges and chunks.
const PAGE_OVERHEAD: i64 = 500;

/// The table rows the current transaction has read so far, by sequential and by index scans.
async fn tuples_read(transaction: &tokio_postgres::Transaction<'_>) -> i64 {
    let sql = "SELECT coalesce(sum(seq_tup_read + idx_tup_fetch), 0)::bigint FROM pg_stat_xact_user_tables";
    transaction.query_one(sql, &[]).await.expect("pg_stat_xact counters").get(0)
}

/// What one read of a page after `cursor` costs beyond the `rows` it must return, in tuples read, inside
/// a transaction of its own.
async fn page_cost(client: &mut Client, read: &str, cursor: &str, rows: usize) -> i64 {
    let transaction = client.transaction().await.expect("begin");
    let before = tuples_read(&transaction).await;
    let got = transaction.query(read, &[&cursor, &PAGE]).await.unwrap_or_else(|e| panic!("{read}: {e:?}"));
    assert_eq!(got.len(), rows, "{read}: the rows after the cursor, or a full page");
    let cost = tuples_read(&transaction).await - before;
    transaction.rollback().await.expect("rollback");
    cost - rows as i64
}

/// A page after a cursor costs a page, however many rows lie after the cursor (a live feed or a
/// client that fell behind, a backlog, a resume from long ago) and however few (a feed that keeps up), on
/// a table never analyzed and on an analyzed one, hypertable chunks included, with the plans PL/pgSQL
/// makes for the call's values and with the one it may keep for any values after five calls. Each read
/// used to take every row after the cursor (a bitmap scan of the whole range) and sort them for the
/// first page: 100,000 rows read for 100 returned, and a feed behind by 200,000 rows spent 150 ms on each
/// page of 2,000. A first fix read each range in cursor order, but its generic plan walked the whole
/// index to meet the (empty) list of transactions behind the cursor: 200,101 rows read beyond a page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_costs_a_page_however_far_behind_the_cursor_is() {
    let db = fresh_database("paging_cost").await;
    let mut client = connect(&db).await;
    client
        .batch_execute("ALTER TABLE trackway.positions SET (autovacuum_enabled = false)")
        .await
        .expect("no autovacuum on the table");
    let far_behind: String = client.query_one("SELECT trackway.current_cursor()", &[]).await.expect("cursor").get(0);
    // 100 rows per transaction as a relay's batches would come (the planner weighs how many rows a
    // transaction holds): row r is device r mod 1,000 at its (r div 1,000)-th time, 36 minutes apart, so
    // 200,000 rows span five days (five chunks of a hypertable).
    let devices = ("d-", 1_000);
    assert_eq!(ingest_generated(&client, 0..200_000, 100, devices, "36 minutes").await, 200_000);
    let caught_up: String = client.query_one("SELECT trackway.current_cursor()", &[]).await.expect("cursor").get(0);
    assert_eq!(ingest_generated(&client, 200_000..200_100, 100, devices, "36 minutes").await, 100);
    let reads =
        ["SELECT * FROM trackway.positions_since($1, NULL, $2)", "SELECT * FROM trackway.live_rows_since($1, $2)"];
    for analyzed in [false, true] {
        if analyzed {
            client.batch_execute("ANALYZE trackway.positions").await.expect("analyze");
        } else {
            let never: bool = client
                .query_one(
                    "SELECT bool_and(c.reltuples < 0) FROM pg_class c
                     WHERE c.oid = 'trackway.positions'::regclass
                        OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'trackway.positions'::regclass)",
                    &[],
                )
                .await
                .expect("reltuples")
                .get(0);
            assert!(never, "the table was analyzed already: this pass would prove nothing");
        }
        // PL/pgSQL plans its statements for the call's values (custom plans), and after five calls may keep
        // one plan for any values (generic): both must be cheap.
        for mode in ["force_custom_plan", "force_generic_plan"] {
            client.batch_execute(&format!("SET plan_cache_mode = {mode}")).await.expect("plan_cache_mode");
            for read in reads {
                for (cursor, after, rows) in [(&far_behind, "200,100", PAGE as usize), (&caught_up, "100", 100)] {
                    let cost = page_cost(&mut client, read, cursor, rows).await;
                    let case = format!("{mode}, analyzed: {analyzed}, {after} rows after the cursor");
                    eprintln!("page cost ({case}): {cost} tuples beyond the {rows} returned by `{read}`");
                    assert!(cost <= PAGE_OVERHEAD, "{cost} tuples read beyond the {rows} returned ({case}): `{read}`");
                }
            }
            // How far behind a cursor stands is told without reading what lies after it.
            for (cursor, after) in [(&far_behind, 200_100i64), (&caught_up, 100)] {
                let transaction = client.transaction().await.expect("begin");
                let before = tuples_read(&transaction).await;
                let estimate: i64 = transaction
                    .query_one("SELECT trackway.rows_since_estimate($1)", &[cursor])
                    .await
                    .expect("rows_since_estimate")
                    .get(0);
                let cost = tuples_read(&transaction).await - before;
                transaction.rollback().await.expect("rollback");
                let case = format!("{mode}, analyzed: {analyzed}, {after} rows after the cursor");
                assert_eq!(estimate, after, "one writer, nothing refused or rolled back: exact ({case})");
                assert!(cost <= PAGE_OVERHEAD, "{cost} tuples read to estimate {after} rows behind ({case})");
            }
        }
    }
}

/// `rows_since_estimate` measures how far behind a cursor stands by the rows stored, never by the numbers a
/// cursor claims (a made-up cursor must not pass for a near one: the live relay lets a replay walk the
/// rows only below a budget of them), errs high for sequence numbers no row holds (a rolled-back batch),
/// and may be called by `trackway_reader`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn how_far_behind_a_cursor_stands_is_measured_by_the_rows_not_by_the_cursor() {
    let db = fresh_database("rows_since_estimate").await;
    let client = connect(&db).await;
    let estimate = |cursor: String| {
        let client = &client;
        async move {
            client
                .query_one("SELECT trackway.rows_since_estimate($1)", &[&cursor])
                .await
                .unwrap_or_else(|e| panic!("rows_since_estimate({cursor}): {e:?}"))
                .get::<_, i64>(0)
        }
    };
    let start: String = client.query_one("SELECT trackway.current_cursor()", &[]).await.expect("cursor").get(0);
    assert_eq!(estimate(start.clone()).await, 0, "nothing stored after it");
    ingest_generated(&client, 0..250, 250, ("d-", 10), "1 second").await;
    ingest_generated(&client, 250..500, 250, ("d-", 10), "1 second").await;
    assert_eq!(estimate(start.clone()).await, 500);
    let cursors: Vec<String> = client
        .query("SELECT cursor FROM trackway.positions_since($1, NULL, 500)", &[&start])
        .await
        .expect("the rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(cursors.len(), 500);
    assert_eq!(estimate(cursors[199].clone()).await, 300, "after the 200th row");
    assert_eq!(estimate(cursors[499].clone()).await, 0, "after the last row");
    // Made up: a transaction older than every row with a sequence number past every row's. Taken at its
    // word it would stand after everything; by the rows, every row lies after it.
    assert_eq!(estimate("3:999999999999".to_owned()).await, 500, "a made-up cursor is measured by the rows");
    // Numbers taken and given back between rows count: the estimate errs high, never low, for them.
    ingest_generated(&client, 500..750, 250, ("d-", 10), "1 second").await;
    let mut other = connect(&db).await;
    let transaction = other.transaction().await.expect("begin");
    ingest_generated(&transaction, 750..1_000, 250, ("d-", 10), "1 second").await;
    transaction.rollback().await.expect("rollback");
    ingest_generated(&client, 1_000..1_250, 250, ("d-", 10), "1 second").await;
    assert_eq!(estimate(cursors[499].clone()).await, 750, "500 stored, 250 numbers rolled back between them");
    assert_eq!(estimate(start.clone()).await, 1_250);
    // The relay's role (a member of trackway_reader) may ask.
    client.batch_execute("SET ROLE trackway_reader").await.expect("set role");
    assert_eq!(estimate(start).await, 1_250, "as trackway_reader");
}

/// The live feed reads each row's groups by index, whatever the statistics say: with a few hundred
/// memberships, analyzed, the planner took a sequential scan of the whole of `device_groups` for every row
/// read (10 µs a row at 200 memberships, twice the rest of a row's cost). A page of 1,000 rows must read
/// each row's memberships and little else of `device_groups`, with the plan PL/pgSQL makes for the call's
/// values and with the one it may keep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_reads_each_rows_groups_by_index() {
    const DEVICES: i64 = 200;
    const ROWS: i64 = 1_000;
    let db = fresh_database("groups_by_index").await;
    let mut client = connect(&db).await;
    let cursor: String = client.query_one("SELECT trackway.current_cursor()", &[]).await.expect("cursor").get(0);
    // Row r is device r mod 200 at its (r div 200)-th second; every device is in one group of ten.
    assert_eq!(ingest_generated(&client, 0..ROWS, ROWS, ("d-", DEVICES), "1 second").await, ROWS);
    client
        .execute(
            "INSERT INTO trackway.device_groups (group_id, device_id)
             SELECT 'g-' || (d % 10), 'd-' || d FROM generate_series(0, $1::bigint - 1) AS d",
            &[&DEVICES],
        )
        .await
        .expect("memberships");
    client.batch_execute("ANALYZE trackway.positions; ANALYZE trackway.device_groups").await.expect("analyze");
    let read = "SELECT * FROM trackway.live_rows_since($1, $2)";
    let groups_read = "SELECT coalesce(sum(seq_tup_read + idx_tup_fetch), 0)::bigint FROM pg_stat_xact_user_tables
                       WHERE relid = 'trackway.device_groups'::regclass";
    for mode in ["force_custom_plan", "force_generic_plan"] {
        client.batch_execute(&format!("SET plan_cache_mode = {mode}")).await.expect("plan_cache_mode");
        // Six calls: PL/pgSQL may keep a generic plan from the sixth on.
        for call in 1..=6 {
            let transaction = client.transaction().await.expect("begin");
            let before: i64 = transaction.query_one(groups_read, &[]).await.expect("counters").get(0);
            let rows = transaction.query(read, &[&cursor, &2_000i32]).await.expect("live_rows_since");
            let memberships: usize = rows.iter().map(|r| r.get::<_, Vec<String>>("group_ids").len()).sum();
            let cost = transaction.query_one(groups_read, &[]).await.expect("counters").get::<_, i64>(0) - before;
            transaction.rollback().await.expect("rollback");
            assert_eq!((rows.len(), memberships), (ROWS as usize, ROWS as usize), "every row, each with its group");
            assert!(
                cost <= memberships as i64 + PAGE_OVERHEAD,
                "{cost} tuples of device_groups read for {memberships} memberships ({mode}, call {call})"
            );
        }
    }
}
