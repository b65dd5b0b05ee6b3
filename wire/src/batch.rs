//! Planning one `ingest_batch` call: decode every payload, drop repeats, order rows for the insert.
//!
//! The database does one `INSERT` for the planned rows (see [`crate::StorePolicy`] for which); the rows it reports as
//! inserted become `inserted`, every other valid payload `duplicate`. Rows are sorted by
//! `(device_id, ts)` so that concurrent batches take row locks in the same order and cannot deadlock.

use crate::{decode, DecodeError, ErrorKind, Limits, Position};

/// What became of one payload of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A new row was stored.
    Inserted,
    /// A row with the same `(deviceId, timestamp)` exists already, or came earlier in the same batch.
    Duplicate,
    /// The payload was rejected; nothing was stored for it.
    Invalid(DecodeError),
}

impl Outcome {
    /// The status word of `trackway.ingest_batch`.
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Inserted => "inserted",
            Outcome::Duplicate => "duplicate",
            Outcome::Invalid(_) => "invalid",
        }
    }
}

/// The decoded, de-duplicated rows of a batch and what is already known about each payload.
#[derive(Debug)]
pub struct BatchPlan {
    /// Rows to insert, sorted by `(device_id, ts_micros)`, each key once.
    pub rows: Vec<Position>,
    /// For each row, the index of the payload it came from.
    row_origin: Vec<usize>,
    /// Per payload: `None` while it waits for the insert's answer, else its final outcome.
    outcomes: Vec<Option<Outcome>>,
}

impl BatchPlan {
    /// Decodes `payloads` (`None` is a SQL NULL) and checks them against `limits`.
    pub fn new<'a>(payloads: impl IntoIterator<Item = Option<&'a [u8]>>, limits: &Limits) -> BatchPlan {
        let mut decoded: Vec<(Position, usize)> = Vec::new();
        let mut outcomes = Vec::new();
        for (index, payload) in payloads.into_iter().enumerate() {
            let outcome = match payload {
                None => Some(Outcome::Invalid(null_payload())),
                Some(bytes) => match checked(bytes, limits) {
                    Ok(position) => {
                        decoded.push((position, index));
                        None
                    }
                    Err(error) => Some(Outcome::Invalid(error)),
                },
            };
            outcomes.push(outcome);
        }
        // Stable sort: of two payloads with one key, the earlier one is stored and the later one is a duplicate.
        decoded.sort_by(|(a, _), (b, _)| (&a.device_id, a.ts_micros).cmp(&(&b.device_id, b.ts_micros)));
        let mut rows = Vec::with_capacity(decoded.len());
        let mut row_origin = Vec::with_capacity(decoded.len());
        for (position, index) in decoded {
            let repeat = rows.last().is_some_and(|last: &Position| {
                last.device_id == position.device_id && last.ts_micros == position.ts_micros
            });
            if repeat {
                outcomes[index] = Some(Outcome::Duplicate);
            } else {
                rows.push(position);
                row_origin.push(index);
            }
        }
        BatchPlan { rows, row_origin, outcomes }
    }

    /// The outcome of every payload, in input order, given the keys the insert reported as new.
    pub fn finish<'k>(self, inserted: impl IntoIterator<Item = (&'k str, i64)>) -> Vec<Outcome> {
        let rows: Vec<usize> =
            inserted.into_iter().filter_map(|(device_id, ts_micros)| self.row_index(device_id, ts_micros)).collect();
        self.finish_rows(rows)
    }

    /// The index in [`rows`](Self::rows) of the row with key `(device_id, ts_micros)`, if planned.
    pub fn row_index(&self, device_id: &str, ts_micros: i64) -> Option<usize> {
        self.rows.binary_search_by(|row| (row.device_id.as_str(), row.ts_micros).cmp(&(device_id, ts_micros))).ok()
    }

    /// Indexes in [`rows`](Self::rows) of the newest row of each device (the greatest `ts_micros`), in
    /// device order: the only rows of the batch that can become a device's latest position.
    pub fn newest_per_device(&self) -> impl Iterator<Item = usize> + '_ {
        let n = self.rows.len();
        (0..n).filter(move |&i| i + 1 == n || self.rows[i + 1].device_id != self.rows[i].device_id)
    }

    /// The outcome of every payload, in input order, given the indexes in [`rows`](Self::rows) of the rows
    /// the insert reported as new (out-of-range indexes are ignored).
    pub fn finish_rows(mut self, inserted: impl IntoIterator<Item = usize>) -> Vec<Outcome> {
        for row in inserted {
            if let Some(&index) = self.row_origin.get(row) {
                self.outcomes[index] = Some(Outcome::Inserted);
            }
        }
        self.outcomes.into_iter().map(|o| o.unwrap_or(Outcome::Duplicate)).collect()
    }
}

/// Decodes one payload and applies the limits that are not part of the format.
pub fn checked(bytes: &[u8], limits: &Limits) -> Result<Position, DecodeError> {
    let position = decode(bytes, limits.max_payload_bytes)?;
    if let Some(future) = &limits.future {
        future.check(position.ts_micros)?;
    }
    Ok(position)
}

fn null_payload() -> DecodeError {
    DecodeError { path: String::new(), kind: ErrorKind::Missing, message: "payload is NULL".to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FutureLimit;

    fn payload(device: &str, second: u32) -> String {
        format!(
            r#"{{"deviceId":"{device}","timestamp":"2026-11-27T08:00:{second:02}.000Z","latitude":54.1,"longitude":25.2}}"#
        )
    }

    #[test]
    fn plans_sorted_unique_rows_and_reports_every_payload() {
        let texts = [payload("b", 1), payload("a", 2), "nope".to_owned(), payload("b", 1), payload("a", 1)];
        let mut with_null: Vec<Option<&[u8]>> = texts.iter().map(|t| Some(t.as_bytes())).collect();
        with_null.push(None);
        let plan = BatchPlan::new(with_null, &Limits::default());
        let keys: Vec<(&str, i64)> = plan.rows.iter().map(|r| (r.device_id.as_str(), r.ts_micros)).collect();
        assert_eq!(keys.len(), 3);
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted by key: {keys:?}");
        // The database says ("a", 1s) and ("b", 1s) are new; ("a", 2s) existed already.
        let new: Vec<(String, i64)> = vec![(keys[0].0.to_owned(), keys[0].1), (keys[2].0.to_owned(), keys[2].1)];
        let outcomes = plan.finish(new.iter().map(|(d, t)| (d.as_str(), *t)));
        let statuses: Vec<&str> = outcomes.iter().map(Outcome::status).collect();
        assert_eq!(statuses, ["inserted", "duplicate", "invalid", "duplicate", "inserted", "invalid"]);
        match &outcomes[5] {
            Outcome::Invalid(e) => assert_eq!(e.to_string(), "payload is NULL"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn newest_per_device_picks_the_last_row_of_each_device() {
        let texts = [payload("b", 1), payload("a", 3), payload("a", 1), payload("c", 2), payload("a", 2)];
        let plan = BatchPlan::new(texts.iter().map(|t| Some(t.as_bytes())), &Limits::default());
        let newest: Vec<(&str, i64)> =
            plan.newest_per_device().map(|i| (plan.rows[i].device_id.as_str(), plan.rows[i].ts_micros)).collect();
        let second = |s: i64| plan.rows[0].ts_micros - plan.rows[0].ts_micros % 60_000_000 + s * 1_000_000;
        assert_eq!(newest, [("a", second(3)), ("b", second(1)), ("c", second(2))]);
        assert_eq!(plan.row_index("a", second(2)), Some(1));
        assert_eq!(plan.row_index("a", second(4)), None);
        let empty = BatchPlan::new(std::iter::empty(), &Limits::default());
        assert_eq!(empty.newest_per_device().count(), 0);
    }

    #[test]
    fn the_first_of_two_equal_keys_is_the_one_stored() {
        let first = payload("a", 1);
        let second = first.replace("54.1", "54.9");
        let plan = BatchPlan::new([Some(first.as_bytes()), Some(second.as_bytes())], &Limits::default());
        assert_eq!(plan.rows.len(), 1);
        assert_eq!(plan.rows[0].latitude, 54.1);
    }

    #[test]
    fn a_time_too_far_ahead_is_invalid_and_stores_nothing() {
        let texts = [payload("a", 1), payload("b", 1).replace("2026-11-27", "2099-01-01")];
        let now_micros = 1_795_766_400_000_000; // 2026-11-27T08:00:00Z
        let limits =
            Limits { future: Some(FutureLimit { now_micros, tolerance_seconds: 86_400 }), ..Limits::default() };
        let plan = BatchPlan::new(texts.iter().map(|t| Some(t.as_bytes())), &limits);
        assert_eq!(plan.rows.len(), 1);
        let outcomes = plan.finish([("a", now_micros + 1_000_000)]);
        match &outcomes[1] {
            Outcome::Invalid(e) => {
                assert!(e.to_string().starts_with("timestamp: must not be more than 1 day ahead"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }
}
