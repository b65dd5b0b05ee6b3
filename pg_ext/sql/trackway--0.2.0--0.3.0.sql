-- trackway 0.2.0 → 0.3.0 (ALTER EXTENSION trackway UPDATE TO '0.3.0').
--
-- 0.3.0 states the latest-position rule once and gives the live relay functions of its own:
-- - trackway._keep_latest(rows): the one statement that keeps latest_positions (pg_ext/src/latest.rs), for
--   the insert trigger; trackway.ingest/ingest_batch embed the same statement (0.2.0 wrote the rule twice);
-- - trackway.live_rows_since, live_replay, live_latest, live_latest_of_groups: what the live relay reads
--   (it read internal functions and latest_positions' columns itself).
-- The 0.3.0 library is a file of its own (trackway-0.3.0.so): a database still at 0.2.0 keeps using
-- trackway.so until it is updated. Update in a new session (psql -X): one that has used trackway 0.2.0 is
-- refused, and a session that used 0.2.0 when another one updated its database is closed at its next call
-- of a trackway function (it reconnects).
-- tests/upgrade.rs checks that an updated database has exactly the objects, definitions and privileges of
-- a fresh 0.3.0 install: keep this file in step with sql/schema.sql and sql/api.sql.

-- The library: from 0.3.0 on its file is versioned (trackway-<version>.so; the control file has no
-- module_pathname), so installing a version never replaces the file that running sessions have loaded.
-- Every C function is pointed at this version's file, first, before anything calls one. New in 0.3.0:
-- trackway._keep_latest, the insert trigger's call of the one latest-position statement
-- (pg_ext/src/latest.rs; ingest/ingest_batch embed the same statement, 0.2.0 wrote the rule in the trigger
-- a second time). As `cargo pgrx schema` writes them for a fresh install, with OR REPLACE; every later
-- update script must do the same for its own version (tests/upgrade.rs compares the definitions).
-- _ingest_batch_row and _check_time, called once per row, no longer pin search_path (they name no SQL
-- object, and a pinned one costs a configuration change per call).
-- trackway::announce::_announce_plan
CREATE OR REPLACE FUNCTION trackway."_announce_plan"(
	"rows" bigint /* i64 */
) RETURNS TEXT /* & '_ str */
STRICT VOLATILE PARALLEL RESTRICTED 
SET search_path TO pg_catalog, @extschema@, pg_temp
LANGUAGE c /* Rust */
AS 'trackway-@CARGO_VERSION@', 'announce_plan_wrapper';

-- trackway::announce::_announce_summary
CREATE OR REPLACE FUNCTION trackway."_announce_summary"(
	"rows" bigint, /* i64 */
	"reason" TEXT, /* & str */
	"snapshot_xmax" bigint, /* i64 */
	"in_progress" bigint[], /* Vec < i64 > */
	"first_xid" bigint, /* i64 */
	"first_seq" bigint /* i64 */
) RETURNS TEXT /* String */
IMMUTABLE STRICT PARALLEL SAFE 
SET search_path TO pg_catalog, @extschema@, pg_temp
LANGUAGE c /* Rust */
AS 'trackway-@CARGO_VERSION@', 'announce_summary_wrapper';

-- trackway::announce::_announcements
CREATE OR REPLACE FUNCTION trackway."_announcements"(
	"detail" TEXT, /* & str */
	"snapshot_xmax" bigint, /* i64 */
	"in_progress" bigint[], /* Vec < i64 > */
	"xids" bigint[], /* Vec < i64 > */
	"seqs" bigint[], /* Vec < i64 > */
	"device_ids" TEXT[], /* Vec < String > */
	"ts" timestamp with time zone[], /* Vec < TimestampWithTimeZone > */
	"latitude" double precision[], /* Vec < f64 > */
	"longitude" double precision[], /* Vec < f64 > */
	"altitude" double precision[], /* Vec < Option < f64 > > */
	"angle" double precision[], /* Vec < Option < f64 > > */
	"speed" double precision[], /* Vec < Option < f64 > > */
	"satellites" smallint[], /* Vec < Option < i16 > > */
	"priority" smallint[], /* Vec < Option < i16 > > */
	"attributes" TEXT[] /* Vec < Option < String > > */
) RETURNS SETOF TEXT /* String */
IMMUTABLE STRICT PARALLEL SAFE 
SET search_path TO pg_catalog, @extschema@, pg_temp
LANGUAGE c /* Rust */
AS 'trackway-@CARGO_VERSION@', 'announcement_payloads_wrapper';

-- trackway::ingest::_check_time
CREATE OR REPLACE FUNCTION trackway."_check_time"(
	"ts" timestamp with time zone /* TimestampWithTimeZone */
) RETURNS void
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'trackway-@CARGO_VERSION@', 'check_time_wrapper';

-- trackway::inspect::_cursor
CREATE OR REPLACE FUNCTION trackway."_cursor"(
	"xid" bigint, /* i64 */
	"seq" bigint, /* i64 */
	"snapshot_xmax" bigint, /* i64 */
	"in_progress" bigint[] /* Vec < i64 > */
) RETURNS TEXT /* String */
IMMUTABLE STRICT PARALLEL SAFE 
SET search_path TO pg_catalog, @extschema@, pg_temp
LANGUAGE c /* Rust */
AS 'trackway-@CARGO_VERSION@', 'cursor_wrapper';

-- trackway::inspect::_cursor_after
CREATE OR REPLACE FUNCTION trackway."_cursor_after"(
	"after" TEXT, /* & str */
	"xid" bigint, /* i64 */
	"seq" bigint, /* i64 */
	"more_in_txn" bool, /* bool */
	"snapshot_xmax" bigint, /* i64 */
	"in_progress" bigint[] /* Vec < i64 > */
) RETURNS TEXT /* String */
IMMUTABLE STRICT PARALLEL SAFE 
SET search_path TO pg_catalog, @extschema@, pg_temp
LANGUAGE c /* Rust */
AS 'trackway-@CARGO_VERSION@', 'cursor_after_wrapper';

-- trackway::inspect::_cursor_parts
CREATE OR REPLACE FUNCTION trackway."_cursor_parts"(
	"cursor" TEXT /* & str */
) RETURNS TABLE (
	"xid" bigint,  /* i64 */
	"seq" bigint,  /* i64 */
	"behind_xids" bigint[],  /* Vec < i64 > */
	"behind_after" bigint[],  /* Vec < i64 > */
	"range_xid" bigint,  /* Option < i64 > */
	"range_seq" bigint  /* Option < i64 > */
)
IMMUTABLE STRICT PARALLEL SAFE 
SET search_path TO pg_catalog, @extschema@, pg_temp
LANGUAGE c /* Rust */
AS 'trackway-@CARGO_VERSION@', 'cursor_parts_wrapper';

-- trackway::statement::_ingest_batch_row
CREATE OR REPLACE FUNCTION trackway."_ingest_batch_row"() RETURNS bool /* bool */
STRICT VOLATILE PARALLEL RESTRICTED 
LANGUAGE c /* Rust */
AS 'trackway-@CARGO_VERSION@', 'row_of_ingest_batch_wrapper';

-- trackway::statement::_ingest_batch_statement
CREATE OR REPLACE FUNCTION trackway."_ingest_batch_statement"() RETURNS bool /* bool */
STRICT VOLATILE PARALLEL RESTRICTED 
SET search_path TO pg_catalog, @extschema@, pg_temp
LANGUAGE c /* Rust */
AS 'trackway-@CARGO_VERSION@', 'owned_by_ingest_batch_wrapper';

-- trackway::latest::_keep_latest
CREATE OR REPLACE FUNCTION trackway."_keep_latest"(
	"rows" anyarray /* AnyArray */
) RETURNS VOID /* Result < (), pgrx :: spi :: Error > */
STRICT VOLATILE PARALLEL UNSAFE 
SET search_path TO pg_catalog, @extschema@, pg_temp
LANGUAGE c /* Rust */
AS 'trackway-@CARGO_VERSION@', 'keep_latest_of_wrapper';

-- trackway::inspect::_wire_text
CREATE OR REPLACE FUNCTION trackway."_wire_text"(
	"device_id" TEXT, /* & str */
	"ts" timestamp with time zone, /* TimestampWithTimeZone */
	"latitude" double precision, /* f64 */
	"longitude" double precision, /* f64 */
	"altitude" double precision, /* Option < f64 > */
	"angle" double precision, /* Option < f64 > */
	"speed" double precision, /* Option < f64 > */
	"satellites" smallint, /* Option < i16 > */
	"priority" smallint, /* Option < i16 > */
	"attributes" TEXT /* Option < & str > */
) RETURNS TEXT /* String */
IMMUTABLE PARALLEL SAFE 
SET search_path TO pg_catalog, @extschema@, pg_temp
LANGUAGE c /* Rust */
AS 'trackway-@CARGO_VERSION@', 'wire_text_wrapper';

-- trackway::inspect::decode
CREATE OR REPLACE FUNCTION trackway."decode"(
	"payload" TEXT /* & str */
) RETURNS jsonb /* pgrx :: JsonB */
STRICT STABLE PARALLEL SAFE
SET search_path TO pg_catalog, @extschema@, pg_temp
LANGUAGE c /* Rust */
AS 'trackway-@CARGO_VERSION@', 'decode_wrapper';

-- trackway::ingest::ingest
CREATE OR REPLACE FUNCTION trackway."ingest"(
	"payload" TEXT /* Option < & str > */
) RETURNS TEXT /* & '_ str */
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, @extschema@, pg_temp
LANGUAGE c /* Rust */
AS 'trackway-@CARGO_VERSION@', 'ingest_wrapper';

-- trackway::ingest::ingest_batch
CREATE OR REPLACE FUNCTION trackway."ingest_batch"(
	"payloads" TEXT[] /* :: std :: option :: Option < Array < & str > > */
) RETURNS TABLE (
	"ord" INT,  /* i32 */
	"status" TEXT,  /* & '_ str */
	"error" TEXT  /* Option < String > */
)
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, @extschema@, pg_temp
LANGUAGE c /* Rust */
AS 'trackway-@CARGO_VERSION@', 'ingest_batch_wrapper';

-- The statement-level insert trigger: keeps latest_positions and announces the new rows.
-- Transition tables hold only the rows actually inserted (not ON CONFLICT duplicates) and are filled by
-- INSERT and COPY alike, so every route into the table is announced, once per row, at commit.
-- trackway.ingest/ingest_batch do both jobs themselves for their own INSERT (they hold the decoded rows);
-- _ingest_batch_statement() is true only for that one statement, so it is skipped here.
-- A statement with more than trackway.announce_max_rows rows (a bulk load, a restore), or one that runs
-- while the NOTIFY queue is filling up, sends one summary instead of an entry per row.
CREATE OR REPLACE FUNCTION trackway._positions_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, trackway, pg_temp
AS $$
DECLARE
    n bigint; plan text;
    xids bigint[]; seqs bigint[]; devs text[]; tss timestamptz[];
    lats float8[]; lons float8[]; alts float8[]; angs float8[]; spds float8[];
    sats int2[]; pris int2[]; atts text[];
BEGIN
    IF trackway._ingest_batch_statement() THEN
        RETURN NULL;
    END IF;

    -- latest_positions: the one statement of the rule (pg_ext/src/latest.rs).
    PERFORM trackway._keep_latest(ARRAY(SELECT ROW(n.*)::trackway.positions FROM new_rows n));

    SELECT count(*) INTO n FROM new_rows;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    plan := trackway._announce_plan(n);
    IF plan IN ('bulk', 'queue') THEN
        PERFORM pg_notify('trackway_positions',
                          trackway._announce_summary(n, plan, s.xmax, s.in_progress, f.xid, f.seq))
        FROM trackway._snapshot() AS s,
             (SELECT r.ingest_xid::text::bigint AS xid, r.ingest_seq AS seq FROM new_rows r
              ORDER BY r.ingest_xid, r.ingest_seq LIMIT 1) AS f;
    ELSIF plan IN ('full', 'reference') THEN
        SELECT array_agg(n.ingest_xid::text::bigint), array_agg(n.ingest_seq), array_agg(n.device_id),
               array_agg(n.ts), array_agg(n.latitude), array_agg(n.longitude), array_agg(n.altitude),
               array_agg(n.angle), array_agg(n.speed), array_agg(n.satellites), array_agg(n.priority),
               array_agg(n.attributes::text)
        INTO xids, seqs, devs, tss, lats, lons, alts, angs, spds, sats, pris, atts
        FROM new_rows n;
        PERFORM pg_notify('trackway_positions', a.payload)
        FROM trackway._snapshot() AS s,
             trackway._announcements(plan, s.xmax, s.in_progress, xids, seqs, devs, tss, lats, lons, alts,
                                     angs, spds, sats, pris, atts) AS a(payload);
    END IF;
    RETURN NULL;
END
$$;

-- What the live relay reads, as functions it may rely on (the relay calls nothing else of the extension
-- but ingest_batch, current_cursor and authorize, and reads no table's columns): each row's wire document
-- comes as compact text, which the relay sends on without parsing it again. All STABLE: they read on the
-- caller's snapshot, which the relay's feed and answer connections share (no gap, nothing twice).

-- Every row after a cursor, oldest first (positions_since's order and cursors), with the groups its
-- device belongs to and its time in microseconds since 1970 (the row's key with device_id).
CREATE FUNCTION trackway.live_rows_since(after text, max_rows integer DEFAULT 1000)
RETURNS TABLE (cursor text, device_id text, "position" text, group_ids text[], ts_us bigint)
LANGUAGE sql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, trackway, pg_temp
AS $$
    SELECT s.cursor, s.device_id, s.position,
           ARRAY(SELECT g.group_id FROM trackway.device_groups g WHERE g.device_id = s.device_id),
           (extract(epoch FROM s.ts) * 1000000)::bigint
    FROM trackway._positions_since_text(after, NULL, max_rows) WITH ORDINALITY AS s(cursor, device_id, ts, position, n)
    ORDER BY s.n
$$;
COMMENT ON FUNCTION trackway.live_rows_since(text, integer) IS
    'Live relay: rows after a cursor, oldest first, each with its wire text, its device''s groups and its time in µs.';

-- The rows of one device, or of a group's devices as its membership stands now, after a cursor (a resume).
CREATE FUNCTION trackway.live_replay(after text, kind text, id text, max_rows integer DEFAULT 1000)
RETURNS TABLE (cursor text, device_id text, "position" text, ts_us bigint)
LANGUAGE sql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, trackway, pg_temp
AS $$
    SELECT s.cursor, s.device_id, s.position, (extract(epoch FROM s.ts) * 1000000)::bigint
    FROM trackway._positions_since_text(after,
           CASE WHEN kind = 'device' THEN ARRAY[id]
                ELSE ARRAY(SELECT d.device_id FROM trackway.device_groups d WHERE d.group_id = id) END,
           max_rows) WITH ORDINALITY AS s(cursor, device_id, ts, position, n)
    ORDER BY s.n
$$;
COMMENT ON FUNCTION trackway.live_replay(text, text, text, integer) IS
    'Live relay: the rows of a device (kind ''device'') or of a group''s devices after a cursor, oldest first.';

-- The latest position of each of some devices, as wire text.
CREATE FUNCTION trackway.live_latest(device_ids text[])
RETURNS TABLE (device_id text, "position" text)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, trackway, pg_temp
AS $$
    SELECT l.device_id, trackway._wire_text(l.device_id, l.ts, l.latitude, l.longitude, l.altitude, l.angle,
                                            l.speed, l.satellites, l.priority, l.attributes::text)
    FROM trackway.latest_positions l WHERE l.device_id = ANY(device_ids)
$$;
COMMENT ON FUNCTION trackway.live_latest(text[]) IS
    'Live relay: the latest position of each of some devices, as wire text.';

-- The latest position of each device of some groups, as wire text, by group then device (each device's
-- document made once, by live_latest, however many of the groups it is in).
CREATE FUNCTION trackway.live_latest_of_groups(group_ids text[])
RETURNS TABLE (group_id text, "position" text)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, trackway, pg_temp
AS $$
    SELECT g.group_id, l.position
    FROM trackway.device_groups g
    JOIN trackway.live_latest(ARRAY(SELECT DISTINCT d.device_id FROM trackway.device_groups d
                                    WHERE d.group_id = ANY(group_ids))) AS l ON l.device_id = g.device_id
    WHERE g.group_id = ANY(group_ids) ORDER BY g.group_id, l.device_id
$$;
COMMENT ON FUNCTION trackway.live_latest_of_groups(text[]) IS
    'Live relay: the latest position of each device of some groups, as wire text, by group then device.';


REVOKE ALL ON FUNCTION
    trackway._keep_latest(anyarray),
    trackway.live_rows_since(text, integer),
    trackway.live_replay(text, text, text, integer),
    trackway.live_latest(text[]),
    trackway.live_latest_of_groups(text[])
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    trackway.live_rows_since(text, integer),
    trackway.live_replay(text, text, text, integer),
    trackway.live_latest(text[]),
    trackway.live_latest_of_groups(text[])
TO trackway_reader;
