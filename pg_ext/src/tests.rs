//! `#[pg_test]`s: SQL behaviour inside PostgreSQL. Each test runs in a transaction that is rolled back, so
//! NOTIFY delivery is tested from outside, in `tests/extension.rs`.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn payload(device: &str, ts: &str, lat: f64) -> String {
        format!(
            r#"{{"deviceId":"{device}","timestamp":"{ts}","latitude":{lat},"longitude":25.25,"altitude":112,"attributes":{{"11":{{"__bigint":"18446744073709551615"}},"256":{{"__buffer_b64":"V1ZX"}},"66":12873}}}}"#
        )
    }

    fn count(sql: &str) -> i64 {
        Spi::get_one::<i64>(sql).expect("query runs").expect("a count")
    }

    fn ingest(p: &str) -> String {
        Spi::get_one_with_args::<String>("SELECT trackway.ingest($1)", &[p.into()])
            .expect("ingest runs")
            .expect("a status")
    }

    #[pg_test]
    fn ingest_is_idempotent() {
        let p = payload("dev-1", "2026-11-27T08:00:00.000Z", 54.5);
        assert_eq!(ingest(&p), "inserted");
        assert_eq!(ingest(&p), "duplicate");
        assert_eq!(count("SELECT count(*) FROM trackway.positions WHERE device_id = 'dev-1'"), 1);
    }

    #[pg_test]
    fn ingest_batch_reports_every_item() {
        let a = payload("dev-2", "2026-11-27T08:00:00.000Z", 54.5);
        let b = payload("dev-2", "2026-11-27T08:00:10.000Z", 54.6);
        let bad = payload("dev-2", "2026-11-27T08:00:20.000Z", 91.0);
        let rows = Spi::connect(|c| {
            let table = c.select(
                "SELECT ord, status, error FROM trackway.ingest_batch($1) ORDER BY ord",
                None,
                &[vec![a.clone(), b, a, bad, "{".to_owned()].into()],
            )?;
            let mut rows = Vec::new();
            for row in table {
                rows.push((
                    row.get::<i32>(1)?.expect("ord"),
                    row.get::<String>(2)?.expect("status"),
                    row.get::<String>(3)?,
                ));
            }
            Ok::<_, pgrx::spi::Error>(rows)
        })
        .expect("batch runs");
        let statuses: Vec<(i32, &str)> = rows.iter().map(|(o, s, _)| (*o, s.as_str())).collect();
        assert_eq!(statuses, [(1, "inserted"), (2, "inserted"), (3, "duplicate"), (4, "invalid"), (5, "invalid")]);
        let error = rows[3].2.as_deref().expect("an error for the invalid item");
        assert!(error.starts_with("latitude: "), "{error}");
        assert_eq!(count("SELECT count(*) FROM trackway.positions WHERE device_id = 'dev-2'"), 2);
    }

    #[pg_test(error = "latitude: must be between -90 and 90, got 91")]
    fn ingest_raises_with_the_field_path() {
        ingest(&payload("dev-3", "2026-11-27T08:00:00.000Z", 91.0));
    }

    #[pg_test]
    fn invalid_input_raises_a_data_exception_sqlstate() {
        Spi::run(
            r#"DO $$ BEGIN PERFORM trackway.ingest('{"deviceId": 5}');
               RAISE EXCEPTION 'no error raised';
               EXCEPTION WHEN data_exception THEN NULL; END $$"#,
        )
        .expect("the error is a data exception (class 22)");
    }

    #[pg_test]
    fn latest_position_ignores_late_data() {
        ingest(&payload("dev-4", "2026-11-27T08:00:10.000Z", 54.1));
        ingest(&payload("dev-4", "2026-11-27T08:00:20.000Z", 54.2));
        ingest(&payload("dev-4", "2026-11-27T08:00:05.000Z", 54.3)); // late
        let lat = Spi::get_one::<f64>("SELECT latitude FROM trackway.latest_positions WHERE device_id = 'dev-4'")
            .expect("query")
            .expect("a latest row");
        assert_eq!(lat, 54.2);
        assert_eq!(count("SELECT count(*) FROM trackway.latest_positions WHERE device_id = 'dev-4'"), 1);
    }

    #[pg_test]
    fn plain_insert_also_updates_latest() {
        Spi::run(
            "INSERT INTO trackway.positions (device_id, ts, latitude, longitude)
             VALUES ('dev-5', '2026-11-27T08:00:00Z', 1, 2), ('dev-5', '2026-11-27T09:00:00Z', 3, 4)",
        )
        .expect("insert");
        let lat = Spi::get_one::<f64>("SELECT latitude FROM trackway.latest_positions WHERE device_id = 'dev-5'")
            .expect("query")
            .expect("a latest row");
        assert_eq!(lat, 3.0);
    }

    #[pg_test]
    fn attributes_are_exact_and_typed_helpers_read_them() {
        ingest(&payload("dev-6", "2026-11-27T08:00:00.000Z", 54.5));
        let big = Spi::get_one::<String>(
            "SELECT trackway.attribute_numeric(attributes, '11')::text FROM trackway.positions WHERE device_id = 'dev-6'",
        )
        .expect("query")
        .expect("a number");
        assert_eq!(big, "18446744073709551615");
        let bytes = Spi::get_one::<Vec<u8>>(
            "SELECT trackway.attribute_bytea(attributes, '256') FROM trackway.positions WHERE device_id = 'dev-6'",
        )
        .expect("query")
        .expect("bytes");
        assert_eq!(bytes, b"WVW");
    }

    #[pg_test]
    fn to_wire_gives_back_the_wire_document() {
        let p = payload("dev-7", "2026-11-27T08:00:00.123Z", 54.5);
        ingest(&p);
        let wire = Spi::get_one::<pgrx::JsonB>(
            "SELECT trackway.to_wire(p) FROM trackway.positions p WHERE device_id = 'dev-7'",
        )
        .expect("query")
        .expect("a document");
        let expected: serde_json::Value = serde_json::from_str(&p).expect("json");
        assert_eq!(wire.0, expected);
    }

    #[pg_test]
    fn decode_shows_the_normalised_position() {
        let decoded = Spi::get_one_with_args::<pgrx::JsonB>(
            "SELECT trackway.decode($1)",
            &[payload("dev-8", "2026-11-27T10:15:30.5+02:00", 1.0).into()],
        )
        .expect("query")
        .expect("a document");
        assert_eq!(decoded.0["timestamp"], "2026-11-27T08:15:30.500Z");
        assert_eq!(decoded.0["attributes"]["11"].to_string(), "18446744073709551615");
    }

    #[pg_test]
    fn positions_since_resumes_after_a_cursor() {
        let start = Spi::get_one::<String>("SELECT trackway.current_cursor()").expect("query").expect("cursor");
        // Rows of the current (test) transaction are not yet visible to other snapshots, but they are to ours.
        ingest(&payload("dev-9", "2026-11-27T08:00:00.000Z", 1.0));
        ingest(&payload("dev-9", "2026-11-27T08:00:01.000Z", 2.0));
        let rows: Vec<(String, f64)> = Spi::connect(|c| {
            let table = c.select(
                "SELECT cursor, (position->>'latitude')::float8 FROM trackway.positions_since($1, ARRAY['dev-9'])",
                None,
                &[start.clone().into()],
            )?;
            let mut rows = Vec::new();
            for row in table {
                rows.push((row.get::<String>(1)?.expect("cursor"), row.get::<f64>(2)?.expect("lat")));
            }
            Ok::<_, pgrx::spi::Error>(rows)
        })
        .expect("since runs");
        assert_eq!(rows.iter().map(|r| r.1).collect::<Vec<_>>(), [1.0, 2.0]);
        let after_first = Spi::get_one_with_args::<i64>(
            "SELECT count(*) FROM trackway.positions_since($1, ARRAY['dev-9'])",
            &[rows[0].0.clone().into()],
        )
        .expect("query")
        .expect("count");
        assert_eq!(after_first, 1);
    }

    #[pg_test(error = "cursor: sequence is not a non-negative integer")]
    fn a_bad_cursor_is_a_clear_error() {
        Spi::run("SELECT * FROM trackway.positions_since('12:x')").expect("raises");
    }

    #[pg_test]
    fn make_hypertable_explains_when_timescaledb_is_missing() {
        let result = Spi::run(
            "DO $$ BEGIN PERFORM trackway.make_hypertable(); RAISE EXCEPTION 'no error';
             EXCEPTION WHEN feature_not_supported THEN NULL; END $$",
        );
        assert!(result.is_ok(), "{result:?}");
    }
}
