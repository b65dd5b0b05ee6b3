-- Trackway SQL API written in SQL: wire documents, typed attribute helpers, cursors and replay,
-- the insert trigger (latest positions + NOTIFY), TimescaleDB hookup, roles and grants.
-- Runs last during CREATE EXTENSION, after the Rust functions exist.

-- The wire document (docs/architecture.md §1) of a stored row: what a live client receives for it.
CREATE FUNCTION trackway.to_wire(p trackway.positions) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, trackway, pg_temp
AS $$
    SELECT trackway._wire_text(p.device_id, p.ts, p.latitude, p.longitude, p.altitude, p.angle, p.speed,
                               p.satellites, p.priority, p.attributes::text)::jsonb
$$;
COMMENT ON FUNCTION trackway.to_wire(trackway.positions) IS
    'Wire document of a stored row: integers beyond ±(2^53-1) as {"__bigint":...}, byte strings as {"__buffer_b64":...}.';

-- An attribute (at a path of keys / array indexes) as an exact numeric; NULL when absent.
CREATE FUNCTION trackway.attribute_numeric(attributes jsonb, VARIADIC path text[]) RETURNS numeric
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, trackway, pg_temp
AS $$ SELECT (attributes #> path)::numeric $$;
COMMENT ON FUNCTION trackway.attribute_numeric(jsonb, text[]) IS
    'Attribute at the given path as numeric (exact, also beyond 64 bits); NULL when absent, an error when not a number.';

-- A byte-string attribute ({"__buffer_b64": ...}) as bytea; NULL when absent or not a byte string.
CREATE FUNCTION trackway.attribute_bytea(attributes jsonb, VARIADIC path text[]) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, trackway, pg_temp
AS $$ SELECT decode((attributes #> path) ->> '__buffer_b64', 'base64') $$;
COMMENT ON FUNCTION trackway.attribute_bytea(jsonb, text[]) IS
    'Byte-string attribute at the given path as bytea; NULL when absent or not a byte string.';

-- The current snapshot's xmax and in-progress transactions, as bigints (cursors are built from them).
-- A snapshot's xmax is one past the latest *completed* transaction, so transactions that started after
-- it (and before ours, when we have an id) are not in its list: their status is asked one by one (the
-- gap is as wide as the number of concurrent writers), and xmax is then moved up to our own id.
-- STABLE on purpose: a non-volatile function runs on its caller's snapshot, and a cursor is only right
-- when it describes the very snapshot the caller read rows with (a VOLATILE function would take a fresh,
-- later one and could leave out a transaction that committed in between). Its one time-varying input,
-- pg_xact_status of transactions past xmax, can only add uncertain transactions, which is safe.
-- PARALLEL UNSAFE: it asks for the transaction's own id. Refused on a hot standby: its snapshots do not
-- list the primary's running transactions, so a cursor made there could skip rows that commit later.
CREATE FUNCTION trackway._snapshot(OUT xmax bigint, OUT in_progress bigint[])
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, trackway, pg_temp
AS $$
DECLARE
    snap pg_snapshot := pg_current_snapshot();
    own bigint := pg_current_xact_id_if_assigned()::text::bigint;
BEGIN
    IF pg_is_in_recovery() THEN
        RAISE EXCEPTION 'trackway: cursors cannot be made or resumed on a standby server'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'A standby''s snapshot does not list the transactions still running on the primary, '
                           'so a cursor made or resumed there could skip rows that commit later.',
                  HINT = 'Call trackway.current_cursor() and trackway.positions_since() on the primary.';
    END IF;
    xmax := pg_snapshot_xmax(snap)::text::bigint;
    in_progress := ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(snap) AS x);
    IF own - xmax BETWEEN 1 AND 64 THEN
        in_progress := in_progress || ARRAY(SELECT g FROM generate_series(xmax, own - 1) AS g
                                            WHERE pg_xact_status(g::text::xid8) = 'in progress');
        xmax := own;
    END IF;
END
$$;

-- A cursor for "now": resuming from it returns exactly the rows that are not visible to this snapshot.
CREATE FUNCTION trackway.current_cursor() RETURNS text
LANGUAGE sql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, trackway, pg_temp
AS $$
    -- Rows with xid >= xmax are after (xmax, 0) (sequences start at 1); the in-progress ones are uncertain.
    SELECT trackway._cursor(s.xmax, 0, s.xmax, s.in_progress) FROM trackway._snapshot() AS s
$$;
COMMENT ON FUNCTION trackway.current_cursor() IS
    'A cursor standing at the current snapshot: trackway.positions_since(current_cursor()) returns only rows committed later.';

-- Every committed row after a cursor, in (transaction, sequence) order, each with its own cursor.
-- Never misses a row; may repeat a few rows of transactions that committed while the cursor's
-- snapshot saw them running (deduplicate by cursor or by (deviceId, timestamp)). Paging always reaches
-- the end: a cursor can stand inside a transaction that is behind it (`x@seq`) and inside its range.
-- A cursor returned for a device filter is a position in that filtered stream: resume with the same filter.
-- `_positions_since_text` gives each row's wire document as compact text (what the live relay sends
-- on without parsing it again); `positions_since` is the public form with jsonb.
CREATE FUNCTION trackway._positions_since_text(
    after text,
    device_ids text[] DEFAULT NULL,
    max_rows integer DEFAULT 1000
) RETURNS TABLE (cursor text, device_id text, ts timestamptz, "position" text)
-- STABLE so that the rows and the cursors come from one snapshot (see _snapshot): every statement of a
-- STABLE function runs on its caller's snapshot. PARALLEL UNSAFE like _snapshot.
-- PL/pgSQL, not SQL, so the cursor's parts are plain values when the query is planned: the row comparisons
-- then become ranges of positions_cursor_idx (a SQL body joined them from a CTE and read the whole table on
-- every call), and the plan is cached for the session. jit off: these are short index scans.
-- The device filter is a hashed set (`IN (SELECT unnest(…))`, built once per call, and only when a filter is
-- given), not `= ANY (device_ids)`: an array parameter is searched element by element for every row, and a
-- group's replay walks every row after the cursor — a 1,000-device group 500,000 rows back took 7.9 s (past
-- the relay's 5 s statement timeout) and takes 72 ms as a hashed set. It filters each range's ordered rows
-- above the scan (`OFFSET 0` keeps the planner from pushing it into every chunk's scan): pushed down, the
-- set was set up once per chunk and range on every call, and the live feed's one-row read at 100 chunks
-- went from 1.6 to 2.9 ms (pgbench, alternating); above the scan it stays at 1.4.
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

CREATE FUNCTION trackway.positions_since(
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
COMMENT ON FUNCTION trackway.positions_since(text, text[], integer) IS
    'Rows inserted after a cursor (from a notification, a previous call or current_cursor()), oldest first, optionally only for some devices.';

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

-- What the live relay reads, as functions it may rely on (the relay calls nothing else of the extension
-- but ingest_batch, current_cursor, rows_since_estimate and authorize, and reads no table's columns): each
-- row's wire document comes as compact text, which the relay sends on without parsing it again. All
-- STABLE: they read on the caller's snapshot, which the relay's feed and answer connections share (no
-- gap, nothing twice).
-- PL/pgSQL, not SQL: a SQL function with SET clauses is never inlined and its body is parsed and planned
-- again on every call (the feed calls live_rows_since on every wake-up); PL/pgSQL keeps the plan.

-- Every row after a cursor, oldest first (positions_since's order and cursors), with the groups its
-- device belongs to and its time in microseconds since 1970 (the row's key with device_id).
CREATE FUNCTION trackway.live_rows_since(after text, max_rows integer DEFAULT 1000)
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
COMMENT ON FUNCTION trackway.live_rows_since(text, integer) IS
    'Live relay: rows after a cursor, oldest first, each with its wire text, its device''s groups and its time in µs.';

-- The rows of one device, or of a group's devices as its membership stands now, after a cursor (a resume).
CREATE FUNCTION trackway.live_replay(after text, kind text, id text, max_rows integer DEFAULT 1000)
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

-- The row-level insert trigger: the database, not the writer, assigns the cursor columns (a plain INSERT
-- or COPY that sets ingest_xid/ingest_seq/ingested_at by hand, or a restore that brings another cluster's
-- transaction ids, would otherwise break cursor order), and refuses times that are not finite or too far
-- in the future (trackway.future_tolerance), as ingest/ingest_batch do. ingest_batch's own rows take the
-- column defaults and are checked in Rust, so its INSERT skips this trigger (the WHEN clause).
-- It runs once per row: it does not pin search_path (that costs a configuration change per call) and
-- names everything schema-qualified instead; it runs as the inserting role, which already needs USAGE
-- on trackway.ingest_seq for the column default.
CREATE FUNCTION trackway._positions_assign() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM trackway._check_time(NEW.ts);
    NEW.ingest_xid := pg_catalog.pg_current_xact_id();
    NEW.ingest_seq := pg_catalog.nextval('trackway.ingest_seq'::pg_catalog.regclass);
    NEW.ingested_at := pg_catalog.now();
    RETURN NEW;
END
$$;

CREATE TRIGGER positions_assign
    BEFORE INSERT ON trackway.positions
    FOR EACH ROW WHEN (NOT trackway._ingest_batch_row())
    EXECUTE FUNCTION trackway._positions_assign();

-- The statement-level insert trigger: keeps latest_positions and announces the new rows.
-- Transition tables hold only the rows actually inserted (not ON CONFLICT duplicates) and are filled by
-- INSERT and COPY alike, so every route into the table is announced, once per row, at commit.
-- trackway.ingest/ingest_batch do both jobs themselves for their own INSERT (they hold the decoded rows);
-- _ingest_batch_statement() is true only for that one statement, so it is skipped here.
-- A statement with more than trackway.announce_max_rows rows (a bulk load, a restore), or one that runs
-- while the NOTIFY queue is filling up, sends one summary instead of an entry per row.
CREATE FUNCTION trackway._positions_inserted() RETURNS trigger
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

CREATE TRIGGER positions_inserted
    AFTER INSERT ON trackway.positions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION trackway._positions_inserted();

-- Turns trackway.positions into a TimescaleDB hypertable (existing rows are migrated). Called by
-- CREATE EXTENSION when TimescaleDB is installed; call it yourself after adding TimescaleDB later.
-- TimescaleDB often lives in a schema others can write to (public): every argument is typed exactly, the
-- call uses TimescaleDB's non-polymorphic signature create_hypertable(regclass, dimension_info, boolean,
-- boolean), and it refuses to run while a function of that name that TimescaleDB does not own exists in
-- its schema, so no planted overload can be picked instead.
CREATE FUNCTION trackway.make_hypertable(chunk_interval interval DEFAULT interval '1 day') RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, trackway, pg_temp
AS $$
DECLARE
    ts_schema name;
    ts_oid oid;
    planted text;
BEGIN
    SELECT n.nspname, e.oid INTO ts_schema, ts_oid
    FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = 'timescaledb';
    IF ts_schema IS NULL THEN
        RAISE EXCEPTION 'TimescaleDB is not installed in this database'
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Run CREATE EXTENSION timescaledb, then SELECT trackway.make_hypertable().';
    END IF;
    SELECT string_agg(p.oid::regprocedure::text, ', ') INTO planted
    FROM pg_proc p
    WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = ts_schema)
      AND p.proname IN ('create_hypertable', 'by_range')
      AND NOT EXISTS (SELECT FROM pg_depend d
                      WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                        AND d.refclassid = 'pg_extension'::regclass AND d.refobjid = ts_oid AND d.deptype = 'e');
    IF planted IS NOT NULL THEN
        RAISE EXCEPTION 'refusing to call TimescaleDB: schema % has functions of the same name that TimescaleDB does not own: %',
                        ts_schema, planted
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Drop them (they could be picked instead of TimescaleDB''s), then run trackway.make_hypertable().';
    END IF;
    -- Only the schema name is interpolated (quoted with %I); values are passed as typed parameters.
    EXECUTE format('SELECT %1$I.create_hypertable($1::pg_catalog.regclass, '
                   '%1$I.by_range($2::pg_catalog.name, $3::pg_catalog.interval), '
                   'if_not_exists => $4::pg_catalog.bool, migrate_data => $5::pg_catalog.bool)', ts_schema)
        USING 'trackway.positions'::regclass, 'ts'::name, chunk_interval, true, true;
END
$$;
COMMENT ON FUNCTION trackway.make_hypertable(interval) IS
    'Makes trackway.positions a TimescaleDB hypertable on ts (idempotent; migrates existing rows).';

-- A hypertable from the start when TimescaleDB is there; not while a dump is restored
-- (timescaledb_pre_restore() sets timescaledb.restoring): the dump brings TimescaleDB's catalog, where
-- positions already is a hypertable, and its chunks.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb')
       AND coalesce(current_setting('timescaledb.restoring', true), 'off') <> 'on' THEN
        PERFORM trackway.make_hypertable();
    END IF;
END
$$;

-- After pg_restore into a database where trackway.positions is a TimescaleDB hypertable. The dump holds
-- the chunks as tables of their own, filled before their triggers exist, so the rows come back with the
-- cursor columns of the cluster they were dumped from; transaction ids from another cluster may be ahead
-- of this one's, and rows stored after the restore would then sort before them (readers past them would
-- miss the new rows). This gives every row this transaction's id and a new sequence, in the rows' old
-- order, as the row trigger does for a restore into a plain table; keeps latest_positions in step; and
-- announces the rows with one summary (none with trackway.announce = off). Writers wait meanwhile; readers
-- go on. It rewrites every row (a full-table UPDATE): run it once, right after timescaledb_post_restore(),
-- before the relays start. Returns the number of rows.
CREATE FUNCTION trackway.after_restore() RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, trackway, pg_temp
AS $$
DECLARE
    n bigint;
    first_seq bigint;
    plan text;
BEGIN
    LOCK TABLE trackway.positions IN EXCLUSIVE MODE;
    WITH renumbered AS (
        SELECT o.device_id, o.ts, nextval('trackway.ingest_seq') AS seq
        FROM (SELECT device_id, ts FROM trackway.positions ORDER BY ingest_xid, ingest_seq) AS o
    )
    UPDATE trackway.positions AS p
    SET ingest_xid = pg_current_xact_id(), ingest_seq = r.seq
    FROM renumbered AS r
    WHERE (p.device_id, p.ts) = (r.device_id, r.ts);
    GET DIAGNOSTICS n = ROW_COUNT;
    UPDATE trackway.latest_positions AS l
    SET ingest_xid = p.ingest_xid, ingest_seq = p.ingest_seq, ingested_at = p.ingested_at
    FROM trackway.positions AS p
    WHERE (p.device_id, p.ts) = (l.device_id, l.ts);
    IF n = 0 THEN
        RETURN 0;
    END IF;
    plan := trackway._announce_plan(n);
    IF plan <> 'off' THEN
        SELECT min(ingest_seq) INTO first_seq FROM trackway.positions WHERE ingest_xid = pg_current_xact_id();
        PERFORM pg_notify('trackway_positions',
                          trackway._announce_summary(n, CASE plan WHEN 'queue' THEN 'queue' ELSE 'bulk' END,
                                                     s.xmax, s.in_progress,
                                                     pg_current_xact_id()::text::bigint, first_seq))
        FROM trackway._snapshot() AS s;
    END IF;
    RETURN n;
END
$$;
COMMENT ON FUNCTION trackway.after_restore() IS
    'After pg_restore into a TimescaleDB database: gives every row this database''s cursor columns (see README, "Backup and restore").';
REVOKE ALL ON FUNCTION trackway.after_restore() FROM PUBLIC;

-- May the holder of a live token with these claims subscribe to a device or a group? The relay asks once
-- per subscription (and again when the token is refreshed) and caches the answer for the connection.
-- Default: tokens with admin_access see everything; others what trackway.live_grants gives their user id or
-- role id, where a group grant also covers each device currently in the group. Operators may replace it
-- (CREATE OR REPLACE FUNCTION, same signature; see README) with rules of their own.
CREATE FUNCTION trackway.authorize(claims jsonb, kind text, id text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, trackway, pg_temp
AS $$
    SELECT coalesce($1 -> 'admin_access' = 'true'::jsonb, false)
        OR EXISTS (
            SELECT FROM trackway.live_grants g
            WHERE g.grantee IN ($1 ->> 'id', $1 ->> 'role')
              AND ((g.kind = $2 AND g.target = $3)
                   OR ($2 = 'device' AND g.kind = 'group'
                       AND EXISTS (SELECT FROM trackway.device_groups d
                                   WHERE d.group_id = g.target AND d.device_id = $3)))
        )
$$;
COMMENT ON FUNCTION trackway.authorize(jsonb, text, text) IS
    'Live authorization: may a token with these claims subscribe to kind (device or group) id? Replaceable.';

-- Least privilege: trackway_ingest may only call the ingest functions; trackway_reader may only read.
-- Roles are cluster-wide: two databases creating the extension at once may both find a role missing; the
-- loser of that race gets duplicate_object or a unique violation on pg_authid, which is fine.
DO $$
BEGIN
    BEGIN
        CREATE ROLE trackway_ingest NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
    BEGIN
        CREATE ROLE trackway_reader NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
END
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA trackway FROM PUBLIC;
GRANT USAGE ON SCHEMA trackway TO trackway_ingest, trackway_reader;
GRANT EXECUTE ON FUNCTION trackway.ingest(text), trackway.ingest_batch(text[]) TO trackway_ingest;
GRANT SELECT ON trackway.positions, trackway.latest_positions, trackway.device_groups, trackway.live_grants
    TO trackway_reader;
-- How far behind a cursor stands (trackway.rows_since_estimate) is read from the sequence.
GRANT SELECT ON SEQUENCE trackway.ingest_seq TO trackway_reader;
-- Called by the row trigger as whatever role inserts: both only check and answer, nothing else.
GRANT EXECUTE ON FUNCTION trackway._ingest_batch_row(), trackway._check_time(timestamptz) TO PUBLIC;
GRANT EXECUTE ON FUNCTION
    trackway.decode(text),
    trackway.to_wire(trackway.positions),
    trackway._wire_text(text, timestamptz, float8, float8, float8, float8, float8, int2, int2, text),
    trackway.attribute_numeric(jsonb, text[]),
    trackway.attribute_bytea(jsonb, text[]),
    trackway.current_cursor(),
    trackway._snapshot(),
    trackway._cursor(bigint, bigint, bigint, bigint[]),
    trackway._cursor_parts(text),
    trackway._cursor_after(text, bigint, bigint, boolean, bigint, bigint[]),
    trackway.positions_since(text, text[], integer),
    trackway.rows_since_estimate(text),
    trackway._positions_since_text(text, text[], integer),
    trackway.live_rows_since(text, integer),
    trackway.live_replay(text, text, text, integer),
    trackway.live_latest(text[]),
    trackway.live_latest_of_groups(text[]),
    trackway.authorize(jsonb, text, text)
TO trackway_reader;
