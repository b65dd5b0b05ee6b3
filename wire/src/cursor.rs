//! Live cursors: where a reader of `trackway_positions` stands, so that it can resume without a gap.
//!
//! Rows are ordered by `(ingest_xid, ingest_seq)`: the 64-bit id of the inserting transaction and a
//! sequence value taken at insert. Transactions commit out of xid order, so "every row after (xid, seq)"
//! alone could miss a row of an older transaction that was still running when the cursor was made. A cursor
//! therefore also names those transactions (`uncertain`): the ones below `xid` that were in progress in the
//! snapshot the cursor was taken from. Resuming returns every row that is after `(xid, seq)` or belongs to an
//! uncertain transaction. That never misses a row; it may repeat a few rows of transactions that committed
//! between the snapshot and the reader's last row (readers deduplicate by cursor or by `(deviceId, timestamp)`).
//!
//! Text form (opaque to clients, stable for this major version):
//! - `<xid>:<seq>` — nothing uncertain;
//! - `<xid>:<seq>:<x1>,<x2>,…` — these transactions (all `< xid`) were still running;
//! - `<xid>:<seq>:<h>-` — every transaction in `[h, xid)` is uncertain (used when the list would be too long).

use std::fmt;

use crate::error::{DecodeError, ErrorKind};

/// More in-progress transactions than this are summarised as a range, to keep cursors (and so NOTIFY
/// payloads) small even on a busy server.
pub const MAX_LISTED_UNCERTAIN: usize = 32;

/// Transactions below the cursor's xid whose rows may not have been seen yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uncertain {
    /// Exactly these transaction ids (sorted, unique, each `< xid`).
    List(Vec<u64>),
    /// Every transaction id from this one up to (excluding) the cursor's xid.
    From(u64),
}

/// A position in the stream of inserted rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Full (64-bit) id of the transaction of the last row seen.
    pub xid: u64,
    /// `ingest_seq` of the last row seen in that transaction.
    pub seq: i64,
    /// Older transactions that were still running when the cursor was made.
    pub uncertain: Uncertain,
}

impl Cursor {
    /// The cursor of row `(xid, seq)` read under a snapshot whose in-progress transactions are `in_progress`
    /// (in any order; ids at or above `xid` are irrelevant and dropped).
    pub fn new(xid: u64, seq: i64, in_progress: &[u64]) -> Cursor {
        let mut below: Vec<u64> = in_progress.iter().copied().filter(|&x| x < xid).collect();
        below.sort_unstable();
        below.dedup();
        let uncertain = match below.first() {
            Some(&lowest) if below.len() > MAX_LISTED_UNCERTAIN => Uncertain::From(lowest),
            _ => Uncertain::List(below),
        };
        Cursor { xid, seq, uncertain }
    }

    /// The cursor of row `(xid, seq)` given a snapshot (`xmax` and in-progress list `xip`) taken in the
    /// same transaction. A snapshot taken before the transaction got its id (REPEATABLE READ) cannot vouch
    /// for transactions in `[xmax, xid)`, so those become uncertain too.
    pub fn from_snapshot(xid: u64, seq: i64, snapshot_xmax: u64, xip: &[u64]) -> Cursor {
        let cursor = Cursor::new(xid, seq, xip);
        if snapshot_xmax >= xid {
            return cursor;
        }
        let lowest = xip.iter().copied().filter(|&x| x < snapshot_xmax).fold(snapshot_xmax, u64::min);
        Cursor { uncertain: Uncertain::From(lowest), ..cursor }
    }

    /// The cursor after replaying row `(xid, seq)` from this cursor under a snapshot (`snapshot_xmax`, `xip`).
    /// `more_in_txn` says whether rows of the same transaction follow it. A row after `(self.xid, self.seq)`
    /// moves the cursor there; a row of an uncertain (older) transaction keeps the position and only drops
    /// the uncertain transactions that are now fully delivered, so later rows already seen are not repeated.
    pub fn advance(&self, xid: u64, seq: i64, more_in_txn: bool, snapshot_xmax: u64, xip: &[u64]) -> Cursor {
        if (xid, seq) > (self.xid, self.seq) {
            return Cursor::from_snapshot(xid, seq, snapshot_xmax, xip);
        }
        let running = xip.iter().copied().filter(|&x| x < self.xid);
        match &self.uncertain {
            Uncertain::List(list) => {
                let rest: Vec<u64> =
                    list.iter().copied().filter(|&x| x > xid || (x == xid && more_in_txn)).chain(running).collect();
                Cursor::new(self.xid, self.seq, &rest)
            }
            Uncertain::From(_) => {
                let start = if more_in_txn { xid } else { xid.saturating_add(1) };
                let lowest = running.fold(start, u64::min);
                let uncertain = if lowest < self.xid { Uncertain::From(lowest) } else { Uncertain::List(Vec::new()) };
                Cursor { xid: self.xid, seq: self.seq, uncertain }
            }
        }
    }

    /// Parses the text form; errors name the `cursor` and say what is wrong.
    pub fn parse(text: &str) -> Result<Cursor, DecodeError> {
        let mut parts = text.splitn(3, ':');
        let xid = parse_u64(parts.next().unwrap_or(""), "transaction id")?;
        let seq_text = parts.next().ok_or_else(|| cursor_error("expected <xid>:<seq>[:<uncertain>]"))?;
        let seq = seq_text
            .parse::<i64>()
            .ok()
            .filter(|s| *s >= 0 && is_digits(seq_text))
            .ok_or_else(|| cursor_error("sequence is not a non-negative integer"))?;
        let uncertain = match parts.next() {
            None => Uncertain::List(Vec::new()),
            Some(rest) => parse_uncertain(rest, xid)?,
        };
        Ok(Cursor { xid, seq, uncertain })
    }

    /// The listed uncertain transactions (empty for the range form).
    pub fn uncertain_list(&self) -> &[u64] {
        match &self.uncertain {
            Uncertain::List(list) => list,
            Uncertain::From(_) => &[],
        }
    }

    /// The lower bound of the uncertain range, when the cursor uses the range form.
    pub fn uncertain_from(&self) -> Option<u64> {
        match self.uncertain {
            Uncertain::From(h) => Some(h),
            Uncertain::List(_) => None,
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.xid, self.seq)?;
        match &self.uncertain {
            Uncertain::List(list) if list.is_empty() => Ok(()),
            Uncertain::List(list) => {
                for (i, x) in list.iter().enumerate() {
                    write!(f, "{}{x}", if i == 0 { ':' } else { ',' })?;
                }
                Ok(())
            }
            Uncertain::From(h) => write!(f, ":{h}-"),
        }
    }
}

fn parse_uncertain(text: &str, xid: u64) -> Result<Uncertain, DecodeError> {
    if let Some(from) = text.strip_suffix('-') {
        let h = parse_u64(from, "uncertain range start")?;
        if h >= xid {
            return Err(cursor_error("uncertain range must start below the transaction id"));
        }
        return Ok(Uncertain::From(h));
    }
    let mut list = Vec::new();
    for item in text.split(',') {
        let x = parse_u64(item, "uncertain transaction id")?;
        if x >= xid {
            return Err(cursor_error("uncertain transactions must be below the transaction id"));
        }
        list.push(x);
    }
    if list.len() > 4 * MAX_LISTED_UNCERTAIN {
        return Err(cursor_error("too many uncertain transactions"));
    }
    list.sort_unstable();
    list.dedup();
    Ok(Uncertain::List(list))
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

    #[test]
    fn text_form_round_trips() {
        for c in [
            Cursor::new(812, 10045, &[]),
            Cursor::new(812, 0, &[811, 799, 900, 799]),
            Cursor::new(10_000, 5, &(1..=100).collect::<Vec<_>>()),
        ] {
            assert_eq!(Cursor::parse(&c.to_string()), Ok(c.clone()), "{c}");
        }
    }

    #[test]
    fn new_keeps_only_older_transactions_sorted() {
        let c = Cursor::new(812, 3, &[900, 811, 799, 811]);
        assert_eq!(c.to_string(), "812:3:799,811");
        assert_eq!(c.uncertain_list(), &[799, 811]);
        assert_eq!(c.uncertain_from(), None);
    }

    #[test]
    fn an_early_snapshot_makes_later_transactions_uncertain() {
        assert_eq!(Cursor::from_snapshot(812, 3, 900, &[799]).to_string(), "812:3:799");
        assert_eq!(Cursor::from_snapshot(812, 3, 805, &[799, 803]).to_string(), "812:3:799-");
        assert_eq!(Cursor::from_snapshot(812, 3, 805, &[]).to_string(), "812:3:805-");
    }

    #[test]
    fn advancing_past_the_position_moves_it() {
        let c = Cursor::parse("812:3:799").expect("cursor");
        assert_eq!(c.advance(812, 4, true, 900, &[]).to_string(), "812:4");
        assert_eq!(c.advance(850, 1, false, 900, &[799, 860]).to_string(), "850:1:799");
    }

    #[test]
    fn replaying_an_uncertain_transaction_keeps_the_position() {
        let c = Cursor::parse("812:3:700,799").expect("cursor");
        // All of 700 delivered, 799 still to come: only 799 stays uncertain.
        assert_eq!(c.advance(700, 9, false, 900, &[]).to_string(), "812:3:799");
        // 700 has more rows after this one: it stays uncertain too.
        assert_eq!(c.advance(700, 9, true, 900, &[]).to_string(), "812:3:700,799");
        // Everything delivered, one transaction still running.
        assert_eq!(c.advance(799, 1, false, 900, &[805, 950]).to_string(), "812:3:805");
        let r = Cursor::parse("812:3:700-").expect("cursor");
        assert_eq!(r.advance(750, 1, false, 900, &[]).to_string(), "812:3:751-");
        assert_eq!(r.advance(811, 1, false, 900, &[]).to_string(), "812:3");
        assert_eq!(r.advance(811, 1, false, 900, &[720]).to_string(), "812:3:720-");
    }

    #[test]
    fn long_lists_become_a_range() {
        let c = Cursor::new(1000, 1, &(500..600).collect::<Vec<_>>());
        assert_eq!(c.to_string(), "1000:1:500-");
        assert_eq!(c.uncertain_from(), Some(500));
        assert!(c.uncertain_list().is_empty());
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
            ("99999999999999999999999:1", "transaction id"),
            ("12:1:", "uncertain transaction id"),
        ] {
            let err = Cursor::parse(text).expect_err(text);
            assert_eq!(err.path, "cursor");
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }
}
