-- trackway 0.1.0 → 0.2.0 (ALTER EXTENSION trackway UPDATE TO '0.2.0').
--
-- 0.2.0 adds the live side's objects and makes cursor reads an index range:
-- - trackway.live_grants and trackway.authorize(claims, kind, id): who may watch what on /live;
-- - trackway._positions_since_text: positions_since with compact wire text, in PL/pgSQL (the 0.1.0 SQL body
--   read the whole table on every call); trackway.positions_since now wraps it (same signature, jit off);
-- - trackway.after_restore(): cursor columns of this database for rows restored into a hypertable.
-- The shared library is the same for both versions (no Rust function changed), so a database still at
-- 0.1.0 keeps working with the new library until it is updated.
-- tests/upgrade.rs checks that an updated database has exactly the objects, definitions and privileges of
-- a fresh 0.2.0 install: keep this file in step with sql/schema.sql and sql/api.sql.

-- Who may watch what live (read by the default trackway.authorize): a grantee is a user id or a role id
-- as the live endpoint's tokens carry them (Directus `id` and `role` claims).
CREATE TABLE trackway.live_grants (
    grantee text NOT NULL CHECK (grantee <> ''),
    kind    text NOT NULL CHECK (kind IN ('device', 'group')),
    target  text NOT NULL CHECK (target <> ''),
    PRIMARY KEY (grantee, kind, target)
);
COMMENT ON TABLE trackway.live_grants IS
    'Live subscriptions a user or role (grantee: token claim id or role) may make; a group grant also covers its devices.';

SELECT pg_catalog.pg_extension_config_dump('trackway.live_grants', '');

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
    WITH hits AS (
        SELECT p.* FROM trackway.positions p
        WHERE (p.ingest_xid, p.ingest_seq) > (c_xid, c_seq)
        UNION ALL
        SELECT p.* FROM unnest(c_behind_xids, c_behind_after) AS b(x, s)
        JOIN trackway.positions p ON p.ingest_xid = b.x::text::xid8 AND p.ingest_seq > b.s
        UNION ALL
        SELECT p.* FROM trackway.positions p
        WHERE c_range_xid IS NOT NULL
          AND (p.ingest_xid, p.ingest_seq) > (c_range_xid, c_range_seq) AND p.ingest_xid < c_xid
    ), page AS (
        -- One row more than asked for tells whether the last row's transaction continues.
        SELECT h.*, lead(h.ingest_xid) OVER w AS next_xid, row_number() OVER w AS n
        FROM (SELECT * FROM hits h
              WHERE device_ids IS NULL OR h.device_id = ANY (device_ids)
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
LANGUAGE sql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, trackway, pg_temp
SET jit = off
AS $$
    SELECT t.cursor, t.device_id, t.ts, t.position::jsonb
    FROM trackway._positions_since_text(after, device_ids, max_rows)
         WITH ORDINALITY AS t(cursor, device_id, ts, "position", n)
    ORDER BY t.n
$$;
COMMENT ON FUNCTION trackway.positions_since(text, text[], integer) IS
    'Rows inserted after a cursor (from a notification, a previous call or current_cursor()), oldest first, optionally only for some devices.';

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

-- Privileges as a fresh install sets them (it revokes PUBLIC's EXECUTE on every function of the schema).
REVOKE ALL ON FUNCTION trackway._positions_since_text(text, text[], integer), trackway.authorize(jsonb, text, text)
    FROM PUBLIC;
GRANT SELECT ON trackway.live_grants TO trackway_reader;
GRANT EXECUTE ON FUNCTION
    trackway._positions_since_text(text, text[], integer),
    trackway.authorize(jsonb, text, text)
TO trackway_reader;

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
