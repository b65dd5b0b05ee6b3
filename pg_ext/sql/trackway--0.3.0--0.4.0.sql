-- trackway 0.3.0 → 0.4.0 (ALTER EXTENSION trackway UPDATE TO '0.4.0').
--
-- 0.4.0 gives the insert trigger's announcements the row-typed form: trackway._announcements takes the new
-- rows as one array of trackway.positions rows (the array the trigger already hands to _keep_latest), not
-- twelve column arrays the trigger aggregated one by one. The columns an announcement needs are read in
-- one statement inside the function (pg_ext/src/announce.rs). trackway._positions_since_text reads one
-- page per range, not every row after the cursor (the live feed's and replays' reads).
-- Update in a new session (psql -X); see README "Upgrades and releases".
-- tests/upgrade.rs checks that an updated database has exactly the objects, definitions and privileges of
-- a fresh 0.4.0 install: keep this file in step with sql/schema.sql and sql/api.sql.

-- The library: every C function pointed at this version's file (trackway-0.4.0.so), first, as
-- `cargo pgrx schema` writes them for a fresh install, with OR REPLACE. _announcements changes its
-- arguments: the old one goes (nothing but the trigger, replaced below, calls it).
DROP FUNCTION trackway._announcements(text, bigint, bigint[], bigint[], bigint[], text[],
                                      timestamptz[], float8[], float8[], float8[], float8[], float8[],
                                      int2[], int2[], text[]);

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
    -- The new rows, as rows: both the rule and the announcements take them whole.
    new_positions trackway.positions[];
BEGIN
    IF trackway._ingest_batch_statement() THEN
        RETURN NULL;
    END IF;
    new_positions := ARRAY(SELECT ROW(r.*)::trackway.positions FROM new_rows r);

    -- latest_positions: the one statement of the rule (pg_ext/src/latest.rs).
    PERFORM trackway._keep_latest(new_positions);

    n := cardinality(new_positions);
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
        PERFORM pg_notify('trackway_positions', a.payload)
        FROM trackway._snapshot() AS s,
             trackway._announcements(plan, s.xmax, s.in_progress, new_positions) AS a(payload);
    END IF;
    RETURN NULL;
END
$$;

REVOKE ALL ON FUNCTION trackway._announcements(text, bigint, bigint[], anyarray) FROM PUBLIC;

-- Every read after a cursor (positions_since, the live feed, replays) reads one page of each of its three
-- ranges, in cursor order, rather than every row after the cursor and a sort (as in sql/api.sql).
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
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, trackway, pg_temp
SET jit = off
SET enable_seqscan = off
SET max_parallel_workers_per_gather = 0
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
        (SELECT p.* FROM trackway.positions p
         WHERE (p.ingest_xid, p.ingest_seq) > (c_xid, c_seq)
           AND (device_ids IS NULL OR p.device_id = ANY (device_ids))
         ORDER BY p.ingest_xid, p.ingest_seq
         LIMIT greatest(max_rows, 0)::bigint + 1)
        UNION ALL
        (SELECT q.* FROM unnest(c_behind_xids, c_behind_after) AS b(x, s)
         CROSS JOIN LATERAL (
             SELECT p.* FROM trackway.positions p
             WHERE p.ingest_xid = b.x::text::xid8 AND p.ingest_seq > b.s
               AND (device_ids IS NULL OR p.device_id = ANY (device_ids))
             ORDER BY p.ingest_seq
             LIMIT greatest(max_rows, 0)::bigint + 1) AS q
         ORDER BY q.ingest_xid, q.ingest_seq
         LIMIT greatest(max_rows, 0)::bigint + 1)
        UNION ALL
        (SELECT p.* FROM trackway.positions p
         WHERE c_range_xid IS NOT NULL
           AND (p.ingest_xid, p.ingest_seq) > (c_range_xid, c_range_seq) AND p.ingest_xid < c_xid
           AND (device_ids IS NULL OR p.device_id = ANY (device_ids))
         ORDER BY p.ingest_xid, p.ingest_seq
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
