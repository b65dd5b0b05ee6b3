//! Live cursors: where a reader of `trackway_positions` stands, so that it can resume without a gap and
//! always reach the end.
//!
//! Rows are ordered by `(ingest_xid, ingest_seq)`: the 64-bit id of the inserting transaction and a
//! sequence value taken at insert. Transactions commit out of xid order, so "every row after (xid, seq)"
//! alone could miss a row of an older transaction that was still running when the cursor was made. A cursor
//! therefore also names those transactions (*behind* it): the ones below `xid` whose rows may not all have
//! been delivered yet, each with the last `ingest_seq` already delivered, so that a cursor can stand *inside*
//! such a transaction. Resuming returns every row that is after `(xid, seq)`, or after its position in a
//! transaction behind the cursor. That never misses a row; it may repeat a few rows of transactions that
//! committed between the snapshot and the reader's last row (readers deduplicate by cursor or by
//! `(deviceId, timestamp)`).
//!
//! Paging terminates: every row a page returns is excluded by the cursor of that row, and no row that was
//! not returned is ever excluded, so each page shrinks what is left.
//!
//! Text form (opaque to clients, stable for this major version): `<xid>:<seq>[:<item>,<item>,…]`, items
//! - `<x>` — every row of transaction `x` (`x < xid`) is still to come;
//! - `<x>@<s>` — the rows of `x` after sequence `s` are still to come;
//! - `<h>-` or `<h>@<s>-` (last item only) — a *range*: every row after `(h, s)` (`s` = 0 when absent) of
//!   every transaction below `xid`; used when too many transactions would have to be listed. Listed
//!   transactions are all below `h`.

use std::fmt;

use crate::error::{DecodeError, ErrorKind};

/// More in-progress transactions than this are summarised as a range when a cursor is *made* from a
/// snapshot for an announcement, to keep NOTIFY payloads small on a busy server.
pub const MAX_LISTED_UNCERTAIN: usize = 32;

/// Most transactions a cursor may list (well above any `max_connections`); cursors returned by
/// `positions_since` list every transaction left behind, up to this, so that paging always moves on.
pub const MAX_CURSOR_ITEMS: usize = 8192;

/// A transaction below the cursor's xid whose rows after `after` have not been delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Behind {
    /// Full transaction id.
    pub xid: u64,
    /// Last `ingest_seq` of this transaction already delivered (0: none; sequences start at 1).
    pub after: i64,
}

/// Every row after `(xid, seq)` below the cursor's own xid is still to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Transaction of the last row delivered from the range (or where the range starts).
    pub xid: u64,
    /// Sequence of that row (0: the range starts at the beginning of `xid`).
    pub seq: i64,
}

/// A position in the stream of inserted rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Full (64-bit) id of the transaction of the last row seen.
    pub xid: u64,
    /// `ingest_seq` of the last row seen in that transaction.
    pub seq: i64,
    /// Older transactions whose rows may not all have been delivered: sorted by xid, unique, each below
    /// `xid` and below the range's start.
    pub behind: Vec<Behind>,
    /// Every transaction from a point on may be behind (too many to list, or an early snapshot).
    pub range: Option<Range>,
}

impl Cursor {
    /// The cursor of row `(xid, seq)` read under a snapshot whose in-progress transactions are `in_progress`
    /// (in any order; ids at or above `xid` are irrelevant and dropped). More than
    /// [`MAX_LISTED_UNCERTAIN`] of them become a range (the form used in announcements).
    pub fn new(xid: u64, seq: i64, in_progress: &[u64]) -> Cursor {
        Cursor::listing(xid, seq, in_progress, MAX_LISTED_UNCERTAIN)
    }

    /// [`Cursor::new`] listing up to `limit` transactions before falling back to a range.
    fn listing(xid: u64, seq: i64, in_progress: &[u64], limit: usize) -> Cursor {
        let mut below: Vec<u64> = in_progress.iter().copied().filter(|&x| x < xid).collect();
        below.sort_unstable();
        below.dedup();
        match below.first() {
            Some(&lowest) if below.len() > limit => {
                Cursor { xid, seq, behind: Vec::new(), range: Some(Range { xid: lowest, seq: 0 }) }
            }
            _ => Cursor {
                xid,
                seq,
                behind: below.into_iter().map(|x| Behind { xid: x, after: 0 }).collect(),
                range: None,
            },
        }
    }

    /// The cursor of row `(xid, seq)` given a snapshot (`xmax` and in-progress list `xip`) taken in the
    /// same transaction. A snapshot taken before the transaction got its id (REPEATABLE READ) cannot vouch
    /// for transactions in `[xmax, xid)`, so those become uncertain too.
    pub fn from_snapshot(xid: u64, seq: i64, snapshot_xmax: u64, xip: &[u64]) -> Cursor {
        Cursor::from_snapshot_listing(xid, seq, snapshot_xmax, xip, MAX_LISTED_UNCERTAIN)
    }

    fn from_snapshot_listing(xid: u64, seq: i64, snapshot_xmax: u64, xip: &[u64], limit: usize) -> Cursor {
        let cursor = Cursor::listing(xid, seq, xip, limit);
        if snapshot_xmax >= xid {
            return cursor;
        }
        let lowest = xip.iter().copied().filter(|&x| x < snapshot_xmax).fold(snapshot_xmax, u64::min);
        Cursor { behind: Vec::new(), range: Some(Range { xid: lowest, seq: 0 }), ..cursor }
    }

    /// The cursor after replaying row `(xid, seq)` from this cursor, under a snapshot (`snapshot_xmax`,
    /// `xip`), when every row the cursor lets through that sorts before it has been delivered too (rows
    /// come in `(xid, seq)` order). `more_in_txn` says whether rows of the same transaction follow it.
    ///
    /// - A row after `(self.xid, self.seq)` moves the cursor there; every transaction still running below it
    ///   is listed (up to [`MAX_CURSOR_ITEMS`], never summarised as a range from scratch, which could send
    ///   rows again and again).
    /// - A row of a listed transaction keeps the position; that transaction stays listed at this row's
    ///   sequence when `more_in_txn`, listed transactions before it are done unless still running.
    /// - A row of the range moves the range's start to this row; transactions still running below it are
    ///   listed.
    pub fn advance(&self, xid: u64, seq: i64, more_in_txn: bool, snapshot_xmax: u64, xip: &[u64]) -> Cursor {
        if (xid, seq) > (self.xid, self.seq) {
            return Cursor::from_snapshot_listing(xid, seq, snapshot_xmax, xip, MAX_CURSOR_ITEMS);
        }
        // Running transactions have no visible row yet: whatever they insert is still to come.
        let running = |below: u64| xip.iter().copied().filter(move |&x| x < below).map(|x| Behind { xid: x, after: 0 });
        // Listed transactions are all below the range's start, so only a row of the range sorts after it.
        let in_range = self.range.is_some_and(|r| (xid, seq) > (r.xid, r.seq));
        let (behind, range): (Vec<Behind>, Option<Range>) = if in_range {
            // Listed transactions sort before the range: the visible ones are delivered.
            (running(xid).collect(), Some(Range { xid, seq }))
        } else {
            let kept = self.behind.iter().copied().filter(|b| b.xid > xid);
            let this = more_in_txn.then_some(Behind { xid, after: seq });
            let limit = self.range.map_or(self.xid, |r| r.xid);
            (kept.chain(this).chain(running(limit)).collect(), self.range)
        };
        Cursor::normalised(self.xid, self.seq, behind, range)
    }

    /// A cursor from parts: behind sorted, one entry per transaction (the earliest position wins, so
    /// nothing is skipped), entries at or above the range's start or the xid dropped (the range or the
    /// position covers them). Past [`MAX_CURSOR_ITEMS`] the list becomes a range from its first entry.
    fn normalised(xid: u64, seq: i64, mut behind: Vec<Behind>, range: Option<Range>) -> Cursor {
        let limit = range.map_or(xid, |r| r.xid);
        behind.retain(|b| b.xid < limit);
        behind.sort_unstable();
        behind.dedup_by_key(|b| b.xid);
        if behind.len() > MAX_CURSOR_ITEMS {
            let first = behind[0];
            return Cursor { xid, seq, behind: Vec::new(), range: Some(Range { xid: first.xid, seq: first.after }) };
        }
        Cursor { xid, seq, behind, range }
    }

    /// This cursor listing at most `max_items` transactions: a longer list becomes a range from its first
    /// entry, which lets through every row the list did (and maybe a few more, read again: never fewer).
    /// For a cursor a client hands back, whose list would otherwise be carried into the cursor of every
    /// row replayed to it.
    pub fn widened(&self, max_items: usize) -> Cursor {
        match self.behind.first() {
            Some(first) if self.behind.len() > max_items => Cursor {
                xid: self.xid,
                seq: self.seq,
                behind: Vec::new(),
                range: Some(Range { xid: first.xid, seq: first.after }),
            },
            _ => self.clone(),
        }
    }

    /// Parses the text form; errors name the `cursor` and say what is wrong.
    pub fn parse(text: &str) -> Result<Cursor, DecodeError> {
        let mut parts = text.splitn(3, ':');
        let xid = parse_u64(parts.next().unwrap_or(""), "transaction id")?;
        let seq_text = parts.next().ok_or_else(|| cursor_error("expected <xid>:<seq>[:<uncertain>]"))?;
        let seq = parse_seq(seq_text, "sequence")?;
        let Some(rest) = parts.next() else {
            return Ok(Cursor { xid, seq, behind: Vec::new(), range: None });
        };
        let items: Vec<&str> = rest.split(',').collect();
        if items.len() > MAX_CURSOR_ITEMS + 1 {
            return Err(cursor_error("too many uncertain transactions"));
        }
        let mut behind = Vec::with_capacity(items.len());
        let mut range = None;
        for (i, item) in items.iter().enumerate() {
            if let Some(start) = item.strip_suffix('-') {
                if i + 1 != items.len() {
                    return Err(cursor_error("an uncertain range must be the last item"));
                }
                let (h, s) = parse_item(start, "uncertain range start")?;
                if h >= xid {
                    return Err(cursor_error("uncertain range must start below the transaction id"));
                }
                range = Some(Range { xid: h, seq: s });
            } else {
                let (x, after) = parse_item(item, "uncertain transaction id")?;
                if x >= xid {
                    return Err(cursor_error("uncertain transactions must be below the transaction id"));
                }
                behind.push(Behind { xid: x, after });
            }
        }
        if let Some(r) = range {
            if behind.iter().any(|b| b.xid >= r.xid) {
                return Err(cursor_error("uncertain transactions must be below the uncertain range"));
            }
        }
        Ok(Cursor::normalised(xid, seq, behind, range))
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.xid, self.seq)?;
        let mut separator = ':';
        for b in &self.behind {
            write!(f, "{separator}{}", b.xid)?;
            if b.after > 0 {
                write!(f, "@{}", b.after)?;
            }
            separator = ',';
        }
        if let Some(r) = self.range {
            write!(f, "{separator}{}", r.xid)?;
            if r.seq > 0 {
                write!(f, "@{}", r.seq)?;
            }
            f.write_str("-")?;
        }
        Ok(())
    }
}

/// `<x>` or `<x>@<s>`.
fn parse_item(text: &str, what: &str) -> Result<(u64, i64), DecodeError> {
    match text.split_once('@') {
        None => Ok((parse_u64(text, what)?, 0)),
        Some((x, s)) => Ok((parse_u64(x, what)?, parse_seq(s, "uncertain transaction sequence")?)),
    }
}

fn parse_seq(text: &str, what: &str) -> Result<i64, DecodeError> {
    text.parse::<i64>()
        .ok()
        .filter(|s| *s >= 0 && is_digits(text))
        .ok_or_else(|| cursor_error(&format!("{what} is not a non-negative integer")))
}

fn parse_u64(text: &str, what: &str) -> Result<u64, DecodeError> {
    if !is_digits(text) || text.len() > 20 {
        return Err(cursor_error(&format!("{what} is not a non-negative integer")));
    }
    text.parse::<u64>().map_err(|_| cursor_error(&format!("{what} is out of range")))
}

fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

fn cursor_error(message: &str) -> DecodeError {
    DecodeError { path: "cursor".to_owned(), kind: ErrorKind::Syntax, message: message.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(text: &str) -> Cursor {
        Cursor::parse(text).expect(text)
    }

    #[test]
    fn text_form_round_trips() {
        for cursor in [
            Cursor::new(812, 10045, &[]),
            Cursor::new(812, 0, &[811, 799, 900, 799]),
            Cursor::new(10_000, 5, &(1..=100).collect::<Vec<_>>()),
        ] {
            assert_eq!(Cursor::parse(&cursor.to_string()), Ok(cursor.clone()), "{cursor}");
        }
        for text in ["812:3", "812:3:799", "812:3:700@5,799", "812:3:700-", "812:3:600,650@2,700@9-"] {
            assert_eq!(c(text).to_string(), text);
        }
    }

    #[test]
    fn a_long_list_widens_to_a_range_from_its_first_entry() {
        assert_eq!(c("900:3:700@5,799,850@2").widened(3).to_string(), "900:3:700@5,799,850@2");
        assert_eq!(c("900:3:700@5,799,850@2").widened(2).to_string(), "900:3:700@5-");
        assert_eq!(c("900:3:700,799,850@2,860-").widened(1).to_string(), "900:3:700-");
        assert_eq!(c("900:3:860@4-").widened(0).to_string(), "900:3:860@4-", "a range alone stays");
        assert_eq!(c("900:3").widened(0).to_string(), "900:3");
    }

    #[test]
    fn new_keeps_only_older_transactions_sorted() {
        let cursor = Cursor::new(812, 3, &[900, 811, 799, 811]);
        assert_eq!(cursor.to_string(), "812:3:799,811");
        assert_eq!(cursor.range, None);
    }

    #[test]
    fn an_early_snapshot_makes_later_transactions_uncertain() {
        assert_eq!(Cursor::from_snapshot(812, 3, 900, &[799]).to_string(), "812:3:799");
        assert_eq!(Cursor::from_snapshot(812, 3, 805, &[799, 803]).to_string(), "812:3:799-");
        assert_eq!(Cursor::from_snapshot(812, 3, 805, &[]).to_string(), "812:3:805-");
    }

    #[test]
    fn advancing_past_the_position_moves_it() {
        let cursor = c("812:3:799");
        assert_eq!(cursor.advance(812, 4, true, 900, &[]).to_string(), "812:4");
        assert_eq!(cursor.advance(850, 1, false, 900, &[799, 860]).to_string(), "850:1:799");
        // Past the position, running transactions are listed however many there are.
        let many: Vec<u64> = (800..900).collect();
        let moved = cursor.advance(950, 1, false, 1000, &many);
        assert_eq!(moved.behind.len(), 100);
        assert_eq!(moved.range, None);
    }

    #[test]
    fn a_cursor_stands_inside_a_listed_transaction() {
        let cursor = c("812:3:700,799");
        // All of 700 delivered, 799 still to come: only 799 stays uncertain.
        assert_eq!(cursor.advance(700, 9, false, 900, &[]).to_string(), "812:3:799");
        // 700 has more rows after this one: the cursor stands at its row 9.
        assert_eq!(cursor.advance(700, 9, true, 900, &[]).to_string(), "812:3:700@9,799");
        assert_eq!(c("812:3:700@9,799").advance(700, 15, true, 900, &[]).to_string(), "812:3:700@15,799");
        // Everything delivered, one transaction still running.
        assert_eq!(cursor.advance(799, 1, false, 900, &[805, 950]).to_string(), "812:3:805");
    }

    #[test]
    fn a_cursor_stands_inside_a_range() {
        let range = c("812:3:700-");
        assert_eq!(range.advance(750, 1, false, 900, &[]).to_string(), "812:3:750@1-");
        assert_eq!(range.advance(750, 1, true, 900, &[]).to_string(), "812:3:750@1-");
        assert_eq!(range.advance(811, 1, false, 900, &[]).to_string(), "812:3:811@1-");
        // 720 still runs: it is listed, the range moves on past it.
        assert_eq!(range.advance(760, 4, false, 900, &[720]).to_string(), "812:3:720,760@4-");
        // A listed transaction of a cursor with a range keeps the range where it is.
        let mixed = c("812:3:720,760@4-");
        assert_eq!(mixed.advance(720, 2, true, 900, &[]).to_string(), "812:3:720@2,760@4-");
        assert_eq!(mixed.advance(720, 2, false, 900, &[]).to_string(), "812:3:760@4-");
    }

    #[test]
    fn parse_normalises_and_keeps_the_earliest_position() {
        assert_eq!(c("812:3:799@5,700,799@2").to_string(), "812:3:700,799@2");
    }

    #[test]
    fn long_lists_become_a_range_in_announcements() {
        let cursor = Cursor::new(1000, 1, &(500..600).collect::<Vec<_>>());
        assert_eq!(cursor.to_string(), "1000:1:500-");
        assert_eq!(cursor.range, Some(Range { xid: 500, seq: 0 }));
        assert!(cursor.behind.is_empty());
    }

    #[test]
    fn bad_cursors_are_clear_errors() {
        for (text, needle) in [
            ("", "transaction id"),
            ("abc:1", "transaction id"),
            ("12", "expected"),
            ("12:-1", "sequence"),
            ("12:+1", "sequence"),
            ("12:1:13", "below"),
            ("12:1:x", "uncertain transaction id"),
            ("12:1:12-", "below"),
            ("12:1:5-,3", "last item"),
            ("12:1:7,5-", "below the uncertain range"),
            ("12:1:5@x", "uncertain transaction sequence"),
            ("12:1:5@", "uncertain transaction sequence"),
            ("99999999999999999999999:1", "transaction id"),
            ("12:1:", "uncertain transaction id"),
        ] {
            let err = Cursor::parse(text).expect_err(text);
            assert_eq!(err.path, "cursor");
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }
}
