//! SQL text sent by more than one crate: the latest-position rule, which the extension runs for every
//! route into `trackway.positions` (`ingest_batch` embeds it, the insert trigger calls it through
//! `trackway._keep_latest`) and the benchmark's same-work route runs on its copies of the tables.

/// The latest-position rule as one statement, an upsert into `$latest` (`trackway.latest_positions`, or
/// a copy of it) from `$source`, an SQL row source whose rows have the columns of `trackway.positions`.
/// Both are string literals, for `concat!`.
///
/// Of the rows given, the newest of each device becomes its latest position when it is newer than the
/// one kept; a row of the *same* time is the kept row itself (the key `(device_id, ts)` is unique: it was
/// deleted and stored again, or restored), whose cursor columns are taken over. Rows are taken in device
/// order, so concurrent writers lock latest rows in the same order.
#[macro_export]
macro_rules! keep_latest_sql {
    ($latest:literal, $source:literal) => {
        concat!(
            "INSERT INTO ",
            $latest,
            " AS l
    (device_id, ts, latitude, longitude, altitude, angle, speed, satellites, priority, attributes,
     ingested_at, ingest_xid, ingest_seq)
SELECT DISTINCT ON (n.device_id)
       n.device_id, n.ts, n.latitude, n.longitude, n.altitude, n.angle, n.speed, n.satellites, n.priority,
       n.attributes, n.ingested_at, n.ingest_xid, n.ingest_seq
FROM ",
            $source,
            " AS n
ORDER BY n.device_id, n.ts DESC
ON CONFLICT (device_id) DO UPDATE
    SET ts = excluded.ts, latitude = excluded.latitude, longitude = excluded.longitude,
        altitude = excluded.altitude, angle = excluded.angle, speed = excluded.speed,
        satellites = excluded.satellites, priority = excluded.priority, attributes = excluded.attributes,
        ingested_at = excluded.ingested_at, ingest_xid = excluded.ingest_xid, ingest_seq = excluded.ingest_seq
    WHERE l.ts < excluded.ts
       OR (l.ts = excluded.ts AND (l.ingest_xid, l.ingest_seq) <> (excluded.ingest_xid, excluded.ingest_seq))"
        )
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_rule_names_its_table_and_source_and_takes_over_equal_times() {
        let sql = keep_latest_sql!("trackway.latest_positions", "unnest($1::trackway.positions[])");
        assert!(sql.starts_with("INSERT INTO trackway.latest_positions AS l"));
        assert!(sql.contains("FROM unnest($1::trackway.positions[]) AS n"));
        assert!(sql.contains("l.ts = excluded.ts AND (l.ingest_xid, l.ingest_seq) <>"));
    }
}
