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

    fn latest_latitude(device: &str) -> f64 {
        Spi::get_one_with_args::<f64>(
            "SELECT latitude FROM trackway.latest_positions WHERE device_id = $1",
            &[device.into()],
        )
        .expect("query")
        .expect("a latest row")
    }

    fn ingest_batch_statuses(payloads: Vec<String>) -> Vec<String> {
        Spi::connect(|c| {
            let table =
                c.select("SELECT status FROM trackway.ingest_batch($1) ORDER BY ord", None, &[payloads.into()])?;
            let mut statuses = Vec::new();
            for row in table {
                statuses.push(row.get::<String>(1)?.expect("status"));
            }
            Ok::<_, pgrx::spi::Error>(statuses)
        })
        .expect("batch runs")
    }

    #[pg_test]
    fn a_batch_moves_latest_forward_only() {
        let at = |s: u32, lat: f64| payload("dev-10", &format!("2026-11-27T08:00:{s:02}.000Z"), lat);
        assert_eq!(ingest_batch_statuses(vec![at(20, 54.2), at(10, 54.1)]), ["inserted", "inserted"]);
        assert_eq!(latest_latitude("dev-10"), 54.2);
        // The newest row of this batch is a repeat; the new, older row must not become the latest.
        assert_eq!(ingest_batch_statuses(vec![at(15, 54.15), at(20, 54.9)]), ["inserted", "duplicate"]);
        assert_eq!(latest_latitude("dev-10"), 54.2);
        // Late data alone does not move it either; newer data does.
        assert_eq!(ingest_batch_statuses(vec![at(5, 54.05)]), ["inserted"]);
        assert_eq!(latest_latitude("dev-10"), 54.2);
        assert_eq!(ingest_batch_statuses(vec![at(30, 54.3), at(25, 54.25)]), ["inserted", "inserted"]);
        assert_eq!(latest_latitude("dev-10"), 54.3);
        assert_eq!(count("SELECT count(*) FROM trackway.positions WHERE device_id = 'dev-10'"), 6);
    }

    /// A BEFORE INSERT trigger on `positions` that raises `boom` for rows matching `condition` (SQL over NEW).
    fn boom_trigger(condition: &str) {
        Spi::run(&format!(
            "CREATE FUNCTION public.tw_boom() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF {condition} THEN RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$;
             CREATE TRIGGER tw_boom BEFORE INSERT ON trackway.positions
                 FOR EACH ROW EXECUTE FUNCTION public.tw_boom()"
        ))
        .expect("test trigger");
    }

    /// Runs `PERFORM {call}` in a PL/pgSQL block that requires it to raise `boom` (and catches it).
    fn expect_boom(call: &str) {
        Spi::run(&format!(
            "DO $$ BEGIN PERFORM {call};
                   RAISE EXCEPTION 'no error raised';
               EXCEPTION WHEN raise_exception THEN
                   IF SQLERRM <> 'boom' THEN RAISE; END IF;
               END $$"
        ))
        .unwrap_or_else(|e| panic!("{call} did not raise boom: {e}"));
    }

    #[pg_test]
    fn after_an_error_inside_ingest_the_trigger_handles_plain_inserts_again() {
        boom_trigger("NEW.device_id = 'boom'");
        // `DO` takes no parameters: the payload is handed over in a transaction-local setting.
        let boom = payload("boom", "2026-11-27T08:00:00.000Z", 1.0);
        Spi::run_with_args("SELECT set_config('tw.boom', $1, true)", &[boom.into()]).expect("set_config");
        expect_boom("trackway.ingest(current_setting('tw.boom'))");
        Spi::run("INSERT INTO trackway.positions (device_id, ts, latitude, longitude) VALUES ('after-error', '2026-11-27T08:00:00Z', 7, 8)")
            .expect("plain insert");
        assert_eq!(latest_latitude("after-error"), 7.0);
        assert_eq!(count("SELECT count(*) FROM trackway.positions WHERE device_id = 'boom'"), 0);
    }

    /// `n` rows of `device`, one second apart from 08:00:01, each with latitude 50 + second/100.
    fn rows_of(device: &str, n: u32) -> Vec<String> {
        (1..=n)
            .map(|s| {
                payload(device, &format!("2026-11-27T08:{:02}:{:02}.000Z", s / 60, s % 60), 50.0 + f64::from(s) / 100.0)
            })
            .collect()
    }

    #[pg_test]
    fn a_large_batch_with_a_stored_key_is_stored_again_with_on_conflict() {
        // Batches of 32 rows and more are first inserted without ON CONFLICT, in a subtransaction.
        let mut batch = rows_of("dev-20", 40);
        assert_eq!(ingest(&batch[39]), "inserted");
        batch.swap(0, 39);
        let statuses = ingest_batch_statuses(batch);
        assert_eq!(statuses[0], "duplicate");
        assert!(statuses[1..].iter().all(|s| s == "inserted"), "{statuses:?}");
        assert_eq!(count("SELECT count(*) FROM trackway.positions WHERE device_id = 'dev-20'"), 40);
        assert_eq!(latest_latitude("dev-20"), 50.4);
        // The next large batch, all new, is stored as well (optimistically or not, the answer is the same).
        assert!(ingest_batch_statuses(rows_of("dev-21", 40)).iter().all(|s| s == "inserted"));
        assert_eq!(latest_latitude("dev-21"), 50.4);
    }

    #[pg_test]
    fn optimistic_inserts_are_capped_per_transaction() {
        // Each optimistic insert takes a subtransaction id; a transaction gets at most a few of them.
        for round in 0..12u32 {
            let batch: Vec<String> = (0..50)
                .map(|i| payload(&format!("dev-cap-{i}"), &format!("2026-11-27T09:00:{round:02}.000Z"), 50.0))
                .collect();
            assert!(ingest_batch_statuses(batch).iter().all(|s| s == "inserted"));
        }
        let own_xid = Spi::get_one::<i64>("SELECT pg_current_xact_id_if_assigned()::text::int8")
            .expect("query runs")
            .expect("the batches assigned a transaction id");
        assert_eq!(crate::statement::top_transaction_id(), own_xid as u64);
        assert_eq!(
            crate::ingest::optimistic_attempts_in_this_transaction(),
            trackway_wire::MAX_OPTIMISTIC_PER_TRANSACTION
        );
        assert_eq!(count("SELECT count(*) FROM trackway.positions WHERE device_id LIKE 'dev-cap-%'"), 600);
    }

    #[pg_test]
    fn an_error_inside_a_large_batch_rolls_it_back_and_is_raised() {
        boom_trigger("NEW.ts = '2026-11-27T08:00:30Z'");
        let batch =
            format!("{{{}}}", rows_of("dev-22", 40).iter().map(|p| format!("{:?}", p)).collect::<Vec<_>>().join(","));
        Spi::run_with_args("SELECT set_config('tw.batch', $1, true)", &[batch.into()]).expect("set_config");
        expect_boom("trackway.ingest_batch(current_setting('tw.batch')::text[])");
        assert_eq!(count("SELECT count(*) FROM trackway.positions WHERE device_id = 'dev-22'"), 0);
        assert_eq!(count("SELECT count(*) FROM trackway.latest_positions WHERE device_id = 'dev-22'"), 0);
        Spi::run("DROP TRIGGER tw_boom ON trackway.positions").expect("drop trigger");
        assert!(ingest_batch_statuses(rows_of("dev-22", 40)).iter().all(|s| s == "inserted"));
    }

    #[pg_test]
    fn rows_a_trigger_inserts_during_ingest_are_still_handled_by_the_insert_trigger() {
        Spi::run(
            "CREATE FUNCTION public.tw_mirror() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.device_id = 'mirror' THEN
                     INSERT INTO trackway.positions (device_id, ts, latitude, longitude)
                     VALUES ('mirror-copy', NEW.ts, NEW.latitude + 1, NEW.longitude);
                 END IF;
                 RETURN NULL;
             END $$;
             CREATE TRIGGER tw_mirror AFTER INSERT ON trackway.positions
                 FOR EACH ROW EXECUTE FUNCTION public.tw_mirror()",
        )
        .expect("test trigger");
        assert_eq!(ingest(&payload("mirror", "2026-11-27T08:00:00.000Z", 10.0)), "inserted");
        assert_eq!(latest_latitude("mirror"), 10.0);
        assert_eq!(latest_latitude("mirror-copy"), 11.0);
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

    /// Pages through `positions_since(cursor, NULL, page)` until it returns nothing; the latitudes seen.
    fn page_through(cursor: &str, page: i32) -> Vec<f64> {
        let mut cursor = cursor.to_owned();
        let mut seen = Vec::new();
        for _ in 0..1000 {
            let rows: Vec<(String, f64)> = Spi::connect(|c| {
                let table = c.select(
                    "SELECT cursor, (position->>'latitude')::float8 FROM trackway.positions_since($1, NULL, $2)",
                    None,
                    &[cursor.clone().into(), page.into()],
                )?;
                let mut rows = Vec::new();
                for row in table {
                    rows.push((row.get::<String>(1)?.expect("cursor"), row.get::<f64>(2)?.expect("lat")));
                }
                Ok::<_, pgrx::spi::Error>(rows)
            })
            .expect("since runs");
            let Some((last, _)) = rows.last() else { return seen };
            cursor = last.clone();
            seen.extend(rows.iter().map(|r| r.1));
        }
        panic!("paging from {cursor} did not end");
    }

    #[pg_test]
    fn paging_moves_through_a_transaction_behind_the_cursor() {
        for i in 0..25 {
            ingest(&payload("dev-p", &format!("2026-11-27T08:00:{i:02}.000Z"), f64::from(i)));
        }
        let own = Spi::get_one::<i64>("SELECT pg_current_xact_id()::text::int8").expect("query").expect("xid");
        let expected: Vec<f64> = (0..25).map(f64::from).collect();
        // This transaction listed as behind a later position, and as the start of an uncertain range.
        for cursor in [format!("{}:0:{own}", own + 1), format!("{}:0:{own}-", own + 1)] {
            for page in [1, 7, 10, 25, 100] {
                assert_eq!(page_through(&cursor, page), expected, "cursor {cursor}, page {page}");
            }
        }
    }

    #[pg_test]
    fn max_rows_at_the_integer_limit_does_not_overflow() {
        ingest(&payload("dev-m", "2026-11-27T08:00:00.000Z", 1.0));
        let n = count("SELECT count(*) FROM trackway.positions_since('0:0', NULL, 2147483647)");
        assert_eq!(n, 1);
        assert_eq!(count("SELECT count(*) FROM trackway.positions_since('0:0', NULL, 0)"), 0);
    }

    #[pg_test]
    fn a_time_too_far_in_the_future_is_invalid_on_every_route() {
        let future = payload("dev-f", "2099-01-01T00:00:00.000Z", 1.0);
        let error = Spi::get_one_with_args::<String>(
            "SELECT error FROM trackway.ingest_batch(ARRAY[$1])",
            &[future.clone().into()],
        )
        .expect("query")
        .expect("an error");
        assert!(error.starts_with("timestamp: must not be more than 1 day ahead of the server's clock"), "{error}");
        // Within the tolerance, and with the check turned off.
        let tomorrow = Spi::get_one::<String>(
            "SELECT to_char(now() AT TIME ZONE 'UTC' + interval '23 hours', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
        )
        .expect("query")
        .expect("time");
        assert_eq!(ingest(&payload("dev-f", &tomorrow, 1.0)), "inserted");
        Spi::run("SET LOCAL trackway.future_tolerance = -1").expect("set");
        assert_eq!(ingest(&future), "inserted");
        Spi::run("SET LOCAL trackway.future_tolerance = '1d'").expect("set");
        // A plain INSERT follows the same rule (no row, a class-22 error naming the field).
        let refused = Spi::run(
            "DO $$ BEGIN
                INSERT INTO trackway.positions (device_id, ts, latitude, longitude) VALUES ('dev-g', 'infinity', 1, 1);
                RAISE EXCEPTION 'no error';
             EXCEPTION WHEN numeric_value_out_of_range THEN
                IF SQLERRM NOT LIKE 'timestamp: must be a finite time%' THEN RAISE; END IF;
             END $$",
        );
        assert!(refused.is_ok(), "{refused:?}");
        let refused = Spi::run(
            "DO $$ BEGIN
                INSERT INTO trackway.positions (device_id, ts, latitude, longitude) VALUES ('dev-g', now() + interval '2 days', 1, 1);
                RAISE EXCEPTION 'no error';
             EXCEPTION WHEN numeric_value_out_of_range THEN
                IF SQLERRM NOT LIKE 'timestamp: must not be more than 1 day ahead%' THEN RAISE; END IF;
             END $$",
        );
        assert!(refused.is_ok(), "{refused:?}");
        assert_eq!(count("SELECT count(*) FROM trackway.positions WHERE device_id = 'dev-g'"), 0);
    }

    /// A row deleted and ingested again is a new row (new cursor columns): its device's latest position,
    /// of the same time, must take them over, as the insert trigger does for every other route. The
    /// ingest functions kept the old ones (their upsert only moved forward in time), so the latest
    /// position named a cursor no row had.
    #[pg_test]
    fn a_row_ingested_again_after_a_delete_renews_the_latest_position() {
        let same_as_positions = || {
            Spi::get_one::<bool>(
                "SELECT l.ingest_xid = p.ingest_xid AND l.ingest_seq = p.ingest_seq
                 FROM trackway.latest_positions l JOIN trackway.positions p USING (device_id, ts)
                 WHERE device_id = 'dev-again'",
            )
            .expect("query")
            .expect("a row")
        };
        let p = payload("dev-again", "2026-11-27T08:00:00.000Z", 54.5);
        assert_eq!(ingest_batch_statuses(vec![p.clone()]), ["inserted"]);
        assert!(same_as_positions());
        Spi::run("DELETE FROM trackway.positions WHERE device_id = 'dev-again'").expect("delete");
        assert_eq!(ingest_batch_statuses(vec![p.clone()]), ["inserted"]);
        assert!(same_as_positions(), "ingest_batch: the latest position kept the deleted row's cursor");
        Spi::run("DELETE FROM trackway.positions WHERE device_id = 'dev-again'").expect("delete");
        assert_eq!(ingest(&p), "inserted");
        assert!(same_as_positions(), "ingest: the latest position kept the deleted row's cursor");
    }

    #[pg_test]
    fn the_database_assigns_the_cursor_columns() {
        Spi::run(
            "INSERT INTO trackway.positions (device_id, ts, latitude, longitude, ingest_xid, ingest_seq, ingested_at)
             VALUES ('dev-c', '2026-11-27T08:00:00Z', 1, 1, '3', 1, '2000-01-01')",
        )
        .expect("insert");
        let ok = Spi::get_one::<bool>(
            "SELECT ingest_xid = pg_current_xact_id() AND ingest_seq > 1 AND ingested_at = now()
             FROM trackway.positions WHERE device_id = 'dev-c'",
        )
        .expect("query")
        .expect("a row");
        assert!(ok, "cursor columns taken from the INSERT");
        let latest = Spi::get_one::<bool>(
            "SELECT l.ingest_xid = p.ingest_xid AND l.ingest_seq = p.ingest_seq
             FROM trackway.latest_positions l JOIN trackway.positions p USING (device_id, ts) WHERE device_id = 'dev-c'",
        )
        .expect("query")
        .expect("a row");
        assert!(latest);
    }

    #[pg_test]
    fn announcements_follow_the_settings() {
        let plan = |n: i64| {
            Spi::get_one_with_args::<String>("SELECT trackway._announce_plan($1)", &[n.into()])
                .expect("query")
                .expect("a plan")
        };
        assert_eq!(plan(1000), "full");
        Spi::run("SET LOCAL trackway.announce_max_rows = 10").expect("set");
        assert_eq!(plan(10), "full");
        assert_eq!(plan(11), "bulk");
        Spi::run("SET LOCAL trackway.announce = 'reference'").expect("set");
        assert_eq!(plan(10), "reference");
        Spi::run("SET LOCAL trackway.announce_queue_limit = 0").expect("set");
        assert_eq!(plan(1), "queue");
        Spi::run("SET LOCAL trackway.announce = 'off'").expect("set");
        assert_eq!(plan(1), "off");
    }

    #[pg_test]
    fn cursor_functions_declare_their_real_volatility_and_parallel_safety() {
        // STABLE: they must run on the caller's snapshot; PARALLEL UNSAFE: they ask for the own xid.
        let marks = Spi::get_one::<String>(
            "SELECT string_agg(proname || ':' || provolatile::text || proparallel::text, ',' ORDER BY proname)
             FROM pg_proc WHERE pronamespace = 'trackway'::regnamespace
               AND proname IN ('_snapshot', 'current_cursor', 'positions_since')",
        )
        .expect("query")
        .expect("marks");
        assert_eq!(marks, "_snapshot:su,current_cursor:su,positions_since:su");
    }
}
