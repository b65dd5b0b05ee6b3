-- trackway 0.4.0 → 0.5.0 (ALTER EXTENSION trackway UPDATE TO '0.5.0').
--
-- 0.5.0 keeps the plans of the reads after a cursor for the session. trackway._positions_since_text (under
-- positions_since, the live feed and replays) is planned once per session (plan_cache_mode =
-- force_generic_plan): PostgreSQL re-planned it on every call, which on a TimescaleDB hypertable costs about
-- 0.1 ms per chunk (a one-row read of the live feed: 6 ms at 54 chunks, now 0.9 ms). positions_since,
-- live_rows_since and live_replay are PL/pgSQL instead of SQL with SET clauses (which PostgreSQL parses and
-- plans again on every call). The functions called once per row read (_wire_text, _cursor_after) and the
-- other cursor functions (_cursor, _cursor_parts) no longer pin search_path: they name no SQL object, and
-- a pinned one is a configuration change on every call. live_rows_since finds each row's groups by index
-- whatever the statistics say. positions_since's device filter is a hashed set instead of an array
-- searched per row (a 1,000-device group's replay: 7.9 s → 72 ms). New: trackway.rows_since_estimate(cursor),
-- about how many rows were stored after a cursor (the relay refuses a replay past a budget of them), and
-- trackway_reader may read the sequence ingest_seq for it. No table, column or Rust function signature
-- changes.
-- Update in a new session (psql -X); see README "Upgrades and releases".
-- tests/upgrade.rs checks that an updated database has exactly the objects, definitions and privileges of
-- a fresh 0.5.0 install: keep this file in step with sql/schema.sql and sql/api.sql.

-- The library: every C function pointed at this version's file (trackway-0.5.0.so), first, as
-- `cargo pgrx schema` writes them for a fresh install, with OR REPLACE.

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
	"rows" anyarray /* pgrx :: AnyArray */
) RETURNS SETOF TEXT /* String */
STRICT STABLE PARALLEL SAFE 
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

-- The reads after a cursor keep their plans for the session (as in sql/api.sql).
CREATE OR REPLACE FUNCTION trackway._positions_since_text(
    after text,
    device_ids text[] DEFAULT NULL,
    max_rows integer DEFAULT 1000
) RETURNS TABLE (cursor text, device_id text, ts timestamptz, "position" text)
-- STABLE so that the rows and the cursors come from one snapshot (see _snapshot): every statement of a
-- STABLE function runs on its caller's snapshot. PARALLEL UNSAFE like _snapshot.
-- PL/pgSQL, not SQL, so the cursor's parts are plain values when the query is planned: the row comparisons
-- then become ranges of positions_cursor_idx (a SQL body joined them from a CTE and read the whole table on
-- every call), and the plan is cached for the session. jit off: these are short index scans.
-- No sequential or parallel scans, whatever the statistics say: the live feed calls this on every wake-up,
-- and on a table never analyzed (a fresh restore, a bulk load, a new chunk) the planner chose a parallel
-- sequential scan of the whole table each time. The cursor's bounds are always ranges of an index.
-- One plan per session, never re-planned per call (plan_cache_mode): PostgreSQL's default re-plans a query
-- with parameters whenever its generic plan looks dearer than the custom ones, which for these ranges is
-- always, and planning a read of a TimescaleDB hypertable costs about 0.1 ms per chunk: a one-row read of
-- the live feed took 6 ms at 54 chunks (0.9 ms with the kept plan) and 1.3 ms at 7 (0.3). Every branch
-- of the query is index-driven with any parameters, and a new chunk invalidates the kept plan.
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, trackway, pg_temp
SET jit = off
SET enable_seqscan = off
SET max_parallel_workers_per_gather = 0
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    c_xid xid8; c_seq bigint; c_behind_xids bigint[]; c_behind_after bigint[];
    c_range_xid xid8; c_range_seq bigint;
    s_xmax bigint; s_in_progress bigint[];
BEGIN
    SELECT k.xid::text::xid8, k.seq, k.behind_xids, k.behind_after, k.range_xid::text::xid8, k.range_seq
      INTO c_xid, c_seq, c_behind_xids, c_behind_after, c_range_xid, c_range_seq
      FROM trackway._cursor_parts(after) AS k;
    SELECT sn.xmax, sn.in_progress INTO s_xmax, s_in_progress FROM trackway._snapshot() AS sn;
    RETURN QUERY
    -- Each of the three ranges is read in cursor order and stops after one page (plus one row): the work
    -- is one page whatever lies after the cursor. Ordered and limited only as a whole, the planner read
    -- every row after the cursor (a bitmap scan of the range, then a top-N sort): a feed or a replay
    -- behind by 200,000 rows spent 150 ms per page of 2,000 instead of 12, and fell further behind.
    -- The transactions behind the cursor are read one by one (LATERAL), each in sequence order: joined
    -- as a whole and ordered, the session's cached (generic) plan walked the whole index in order to
    -- meet them, 32 ms for a read of 5 new rows.
    WITH hits AS (
        (SELECT f.* FROM (SELECT p.* FROM trackway.positions p
                          WHERE (p.ingest_xid, p.ingest_seq) > (c_xid, c_seq)
                          ORDER BY p.ingest_xid, p.ingest_seq OFFSET 0) AS f
         WHERE device_ids IS NULL OR f.device_id IN (SELECT unnest(device_ids))
         LIMIT greatest(max_rows, 0)::bigint + 1)
        UNION ALL
        (SELECT q.* FROM unnest(c_behind_xids, c_behind_after) AS b(x, s)
         CROSS JOIN LATERAL (
             SELECT f.* FROM (SELECT p.* FROM trackway.positions p
                              WHERE p.ingest_xid = b.x::text::xid8 AND p.ingest_seq > b.s
                              ORDER BY p.ingest_seq OFFSET 0) AS f
             WHERE device_ids IS NULL OR f.device_id IN (SELECT unnest(device_ids))
             LIMIT greatest(max_rows, 0)::bigint + 1) AS q
         ORDER BY q.ingest_xid, q.ingest_seq
         LIMIT greatest(max_rows, 0)::bigint + 1)
        UNION ALL
        (SELECT f.* FROM (SELECT p.* FROM trackway.positions p
                          WHERE c_range_xid IS NOT NULL
                            AND (p.ingest_xid, p.ingest_seq) > (c_range_xid, c_range_seq) AND p.ingest_xid < c_xid
                          ORDER BY p.ingest_xid, p.ingest_seq OFFSET 0) AS f
         WHERE device_ids IS NULL OR f.device_id IN (SELECT unnest(device_ids))
         LIMIT greatest(max_rows, 0)::bigint + 1)
    ), page AS (
        -- One row more than asked for tells whether the last row's transaction continues.
        SELECT h.*, lead(h.ingest_xid) OVER w AS next_xid, row_number() OVER w AS n
        FROM (SELECT * FROM hits h
              ORDER BY h.ingest_xid, h.ingest_seq
              LIMIT greatest(max_rows, 0)::bigint + 1) AS h
        WINDOW w AS (ORDER BY h.ingest_xid, h.ingest_seq)
    )
    SELECT trackway._cursor_after(after, pg.ingest_xid::text::bigint, pg.ingest_seq,
                                  coalesce(pg.next_xid = pg.ingest_xid, false), s_xmax, s_in_progress),
           pg.device_id, pg.ts,
           trackway._wire_text(pg.device_id, pg.ts, pg.latitude, pg.longitude, pg.altitude, pg.angle, pg.speed,
                               pg.satellites, pg.priority, pg.attributes::text)
    FROM page pg
    WHERE pg.n <= max_rows
    ORDER BY pg.ingest_xid, pg.ingest_seq;
END
$$;

CREATE OR REPLACE FUNCTION trackway.positions_since(
    after text,
    device_ids text[] DEFAULT NULL,
    max_rows integer DEFAULT 1000
) RETURNS TABLE (cursor text, device_id text, ts timestamptz, "position" jsonb)
-- PL/pgSQL, like the live_* readers below: a SQL function with SET clauses is never inlined, and
-- PostgreSQL parses and plans its body again on every call; PL/pgSQL keeps the plan for the session.
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, trackway, pg_temp
SET jit = off
AS $$
BEGIN
    RETURN QUERY
    SELECT t.cursor, t.device_id, t.ts, t.position::jsonb
    FROM trackway._positions_since_text(after, device_ids, max_rows)
         WITH ORDINALITY AS t(cursor, device_id, ts, "position", n)
    ORDER BY t.n;
END
$$;

-- About how many rows were stored after a cursor, without reading them: how far behind a reader stands,
-- and what positions_since(after, device_ids) walks to find one device's rows (every row after the cursor,
-- about 0.3 µs each: the live relay refuses a replay past a budget of these instead of running into its
-- statement timeout). The sequence's last value less the sequence number of the first row after each of
-- the cursor's parts: one index probe per part, so a made-up cursor is measured by the rows, not by the
-- numbers it claims. It errs high by the numbers not held by a row (rows deleted, duplicates refused by
-- ON CONFLICT, transactions rolled back) and low by at most the rows of transactions that ran beside the
-- first one after the cursor. 0 when no row stands after the cursor.
CREATE FUNCTION trackway.rows_since_estimate(after text) RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, trackway, pg_temp
SET jit = off
SET enable_seqscan = off
SET max_parallel_workers_per_gather = 0
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    c_xid xid8; c_seq bigint; c_behind_xids bigint[]; c_behind_after bigint[];
    c_range_xid xid8; c_range_seq bigint;
    first_seq bigint; last_seq bigint;
BEGIN
    SELECT k.xid::text::xid8, k.seq, k.behind_xids, k.behind_after, k.range_xid::text::xid8, k.range_seq
      INTO c_xid, c_seq, c_behind_xids, c_behind_after, c_range_xid, c_range_seq
      FROM trackway._cursor_parts(after) AS k;
    -- The same three parts as _positions_since_text, each probed for its first row only.
    SELECT least(
        (SELECT p.ingest_seq FROM trackway.positions p
         WHERE (p.ingest_xid, p.ingest_seq) > (c_xid, c_seq)
         ORDER BY p.ingest_xid, p.ingest_seq LIMIT 1),
        (SELECT min(q.ingest_seq) FROM unnest(c_behind_xids, c_behind_after) AS b(x, s)
         CROSS JOIN LATERAL (
             SELECT p.ingest_seq FROM trackway.positions p
             WHERE p.ingest_xid = b.x::text::xid8 AND p.ingest_seq > b.s
             ORDER BY p.ingest_seq LIMIT 1) AS q),
        (SELECT p.ingest_seq FROM trackway.positions p
         WHERE c_range_xid IS NOT NULL
           AND (p.ingest_xid, p.ingest_seq) > (c_range_xid, c_range_seq) AND p.ingest_xid < c_xid
         ORDER BY p.ingest_xid, p.ingest_seq LIMIT 1))
      INTO first_seq;
    IF first_seq IS NULL THEN
        RETURN 0;
    END IF;
    SELECT s.last_value INTO last_seq FROM trackway.ingest_seq AS s;
    RETURN greatest(last_seq - first_seq + 1, 1);
END
$$;
COMMENT ON FUNCTION trackway.rows_since_estimate(text) IS
    'About how many rows were stored after a cursor (all devices), from the sequence, without reading them; 0 when none.';

CREATE OR REPLACE FUNCTION trackway.live_rows_since(after text, max_rows integer DEFAULT 1000)
RETURNS TABLE (cursor text, device_id text, "position" text, group_ids text[], ts_us bigint)
-- Each row's groups come from device_groups_device_idx, never from a sequential scan: with a few hundred
-- memberships the planner's statistics pick a scan of the whole table for every row read (10 µs a row at
-- 200 memberships, twice the rest of the row's cost; the index costs 2 µs).
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, trackway, pg_temp
SET enable_seqscan = off
AS $$
BEGIN
    RETURN QUERY
    SELECT s.cursor, s.device_id, s.position,
           ARRAY(SELECT g.group_id FROM trackway.device_groups g WHERE g.device_id = s.device_id),
           (extract(epoch FROM s.ts) * 1000000)::bigint
    FROM trackway._positions_since_text(after, NULL, max_rows) WITH ORDINALITY AS s(cursor, device_id, ts, position, n)
    ORDER BY s.n;
END
$$;

CREATE OR REPLACE FUNCTION trackway.live_replay(after text, kind text, id text, max_rows integer DEFAULT 1000)
RETURNS TABLE (cursor text, device_id text, "position" text, ts_us bigint)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, trackway, pg_temp
AS $$
BEGIN
    RETURN QUERY
    SELECT s.cursor, s.device_id, s.position, (extract(epoch FROM s.ts) * 1000000)::bigint
    FROM trackway._positions_since_text(after,
           CASE WHEN kind = 'device' THEN ARRAY[id]
                ELSE ARRAY(SELECT d.device_id FROM trackway.device_groups d WHERE d.group_id = id) END,
           max_rows) WITH ORDINALITY AS s(cursor, device_id, ts, position, n)
    ORDER BY s.n;
END
$$;

REVOKE ALL ON FUNCTION trackway.rows_since_estimate(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION trackway.rows_since_estimate(text) TO trackway_reader;
GRANT SELECT ON SEQUENCE trackway.ingest_seq TO trackway_reader;
