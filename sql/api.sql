-- Trackway SQL API written in SQL: wire documents, typed attribute helpers, cursors and replay,
-- the insert trigger (latest positions + NOTIFY), TimescaleDB hookup, roles and grants.
-- Runs last during CREATE EXTENSION, after the Rust functions exist.

-- The wire document (DESIGN §1) of a stored row: what a live client receives for it.
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
CREATE FUNCTION trackway._snapshot(OUT xmax bigint, OUT in_progress bigint[])
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, trackway, pg_temp
AS $$
    WITH s AS (
        SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax,
               pg_current_snapshot() AS snap,
               pg_current_xact_id_if_assigned()::text::bigint AS own
    ), gap AS (
        SELECT s.own AS upto FROM s WHERE s.own - s.xmax BETWEEN 1 AND 64
    )
    SELECT coalesce((SELECT upto FROM gap), s.xmax),
           ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(s.snap) AS x)
           || ARRAY(SELECT g FROM gap, generate_series(s.xmax, gap.upto - 1) AS g
                    WHERE pg_xact_status(g::text::xid8) = 'in progress')
    FROM s
$$;

-- A cursor for "now": resuming from it returns exactly the rows that are not visible to this snapshot.
CREATE FUNCTION trackway.current_cursor() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, trackway, pg_temp
AS $$
    -- Rows with xid >= xmax are after (xmax, 0) (sequences start at 1); the in-progress ones are uncertain.
    SELECT trackway._cursor(s.xmax, 0, s.xmax, s.in_progress) FROM trackway._snapshot() AS s
$$;
COMMENT ON FUNCTION trackway.current_cursor() IS
    'A cursor standing at the current snapshot: trackway.positions_since(current_cursor()) returns only rows committed later.';

-- Every committed row after a cursor, in (transaction, sequence) order, each with its own cursor.
-- Never misses a row; may repeat a few rows of transactions that committed while the cursor's
-- snapshot saw them running (deduplicate by cursor or by (deviceId, timestamp)).
CREATE FUNCTION trackway.positions_since(
    after text,
    device_ids text[] DEFAULT NULL,
    max_rows integer DEFAULT 1000
) RETURNS TABLE (cursor text, device_id text, ts timestamptz, "position" jsonb)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, trackway, pg_temp
AS $$
    WITH c AS (
        SELECT k.xid::text::xid8 AS xid, k.seq,
               ARRAY(SELECT u::text::xid8 FROM unnest(k.uncertain) AS u) AS uncertain,
               k.uncertain_from::text::xid8 AS uncertain_from
        FROM trackway._cursor_parts(after) AS k
    ), hits AS (
        SELECT p.* FROM trackway.positions p, c
        WHERE (p.ingest_xid, p.ingest_seq) > (c.xid, c.seq)
        UNION ALL
        SELECT p.* FROM trackway.positions p, c
        WHERE p.ingest_xid = ANY (c.uncertain)
        UNION ALL
        SELECT p.* FROM trackway.positions p, c
        WHERE p.ingest_xid >= c.uncertain_from AND p.ingest_xid < c.xid
    ), page AS (
        -- One row more than asked for tells whether the last row's transaction continues.
        SELECT h.*, lead(h.ingest_xid) OVER w AS next_xid, row_number() OVER w AS n
        FROM (SELECT * FROM hits h
              WHERE device_ids IS NULL OR h.device_id = ANY (device_ids)
              ORDER BY h.ingest_xid, h.ingest_seq
              LIMIT greatest(max_rows, 0) + 1) AS h
        WINDOW w AS (ORDER BY h.ingest_xid, h.ingest_seq)
    )
    SELECT trackway._cursor_after(after, p.ingest_xid::text::bigint, p.ingest_seq,
                                  coalesce(p.next_xid = p.ingest_xid, false), s.xmax, s.in_progress),
           p.device_id, p.ts,
           trackway._wire_text(p.device_id, p.ts, p.latitude, p.longitude, p.altitude, p.angle, p.speed,
                               p.satellites, p.priority, p.attributes::text)::jsonb
    FROM page p, trackway._snapshot() AS s
    WHERE p.n <= max_rows
    ORDER BY p.ingest_xid, p.ingest_seq
$$;
COMMENT ON FUNCTION trackway.positions_since(text, text[], integer) IS
    'Rows inserted after a cursor (from a notification, a previous call or current_cursor()), oldest first, optionally only for some devices.';

-- The statement-level insert trigger: keeps latest_positions and announces the new rows.
-- Transition tables hold only the rows actually inserted (not ON CONFLICT duplicates) and are filled by
-- INSERT and COPY alike, so every route into the table is announced, once per row, at commit.
-- trackway.ingest/ingest_batch do both jobs themselves for their own INSERT (they hold the decoded rows);
-- _ingest_batch_statement() is true only for that one statement, so it is skipped here.
CREATE FUNCTION trackway._positions_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, trackway, pg_temp
AS $$
DECLARE
    xids bigint[]; seqs bigint[]; devs text[]; tss timestamptz[];
    lats float8[]; lons float8[]; alts float8[]; angs float8[]; spds float8[];
    sats int2[]; pris int2[]; atts text[];
BEGIN
    IF trackway._ingest_batch_statement() THEN
        RETURN NULL;
    END IF;

    -- Rows are taken in device order so concurrent writers lock latest rows in the same order.
    INSERT INTO trackway.latest_positions AS l
        (device_id, ts, latitude, longitude, altitude, angle, speed, satellites, priority, attributes,
         ingested_at, ingest_xid, ingest_seq)
    SELECT DISTINCT ON (n.device_id)
           n.device_id, n.ts, n.latitude, n.longitude, n.altitude, n.angle, n.speed, n.satellites, n.priority,
           n.attributes, n.ingested_at, n.ingest_xid, n.ingest_seq
    FROM new_rows n
    ORDER BY n.device_id, n.ts DESC
    ON CONFLICT (device_id) DO UPDATE
        SET ts = excluded.ts, latitude = excluded.latitude, longitude = excluded.longitude,
            altitude = excluded.altitude, angle = excluded.angle, speed = excluded.speed,
            satellites = excluded.satellites, priority = excluded.priority, attributes = excluded.attributes,
            ingested_at = excluded.ingested_at, ingest_xid = excluded.ingest_xid, ingest_seq = excluded.ingest_seq
        WHERE l.ts < excluded.ts;

    SELECT array_agg(n.ingest_xid::text::bigint), array_agg(n.ingest_seq), array_agg(n.device_id),
           array_agg(n.ts), array_agg(n.latitude), array_agg(n.longitude), array_agg(n.altitude),
           array_agg(n.angle), array_agg(n.speed), array_agg(n.satellites), array_agg(n.priority),
           array_agg(n.attributes::text)
    INTO xids, seqs, devs, tss, lats, lons, alts, angs, spds, sats, pris, atts
    FROM new_rows n;

    IF xids IS NOT NULL THEN
        PERFORM pg_notify('trackway_positions', a.payload)
        FROM trackway._snapshot() AS s,
             trackway._announcements(s.xmax, s.in_progress, xids, seqs, devs, tss, lats, lons, alts, angs,
                                     spds, sats, pris, atts) AS a(payload);
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
CREATE FUNCTION trackway.make_hypertable(chunk_interval interval DEFAULT interval '1 day') RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, trackway, pg_temp
AS $$
DECLARE
    ts_schema name;
BEGIN
    SELECT n.nspname INTO ts_schema
    FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = 'timescaledb';
    IF ts_schema IS NULL THEN
        RAISE EXCEPTION 'TimescaleDB is not installed in this database'
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Run CREATE EXTENSION timescaledb, then SELECT trackway.make_hypertable().';
    END IF;
    -- Only the schema name is interpolated (quoted with %I); values are passed as parameters.
    EXECUTE format('SELECT %I.create_hypertable($1, $2, chunk_time_interval => $3, '
                   'if_not_exists => true, migrate_data => true)', ts_schema)
        USING 'trackway.positions'::regclass, 'ts'::name, chunk_interval;
END
$$;
COMMENT ON FUNCTION trackway.make_hypertable(interval) IS
    'Makes trackway.positions a TimescaleDB hypertable on ts (idempotent; migrates existing rows).';

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM trackway.make_hypertable();
    END IF;
END
$$;

-- Least privilege: trackway_ingest may only call the ingest functions; trackway_reader may only read.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'trackway_ingest') THEN
        CREATE ROLE trackway_ingest NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'trackway_reader') THEN
        CREATE ROLE trackway_reader NOLOGIN;
    END IF;
END
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA trackway FROM PUBLIC;
GRANT USAGE ON SCHEMA trackway TO trackway_ingest, trackway_reader;
GRANT EXECUTE ON FUNCTION trackway.ingest(text), trackway.ingest_batch(text[]) TO trackway_ingest;
GRANT SELECT ON trackway.positions, trackway.latest_positions, trackway.device_groups TO trackway_reader;
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
    trackway.positions_since(text, text[], integer)
TO trackway_reader;
