-- Trackway storage: positions, the latest position per device, device groups.
-- Runs first during CREATE EXTENSION (before the Rust functions are created).
-- The extension lives in the fixed schema `trackway` (see trackway.control).

DO $$
BEGIN
    -- pgrx and the wire codec work on UTF-8 text; refuse clearly instead of mangling data later.
    IF current_setting('server_encoding') <> 'UTF8' THEN
        RAISE EXCEPTION 'trackway requires a UTF8 database (this one is %)', current_setting('server_encoding');
    END IF;
END
$$;

-- Orders rows by time of insert inside one transaction; part of every row's cursor.
CREATE SEQUENCE trackway.ingest_seq AS bigint;

CREATE TABLE trackway.positions (
    device_id   text             NOT NULL CHECK (device_id <> '' AND octet_length(device_id) <= 256),
    ts          timestamptz      NOT NULL,
    latitude    double precision NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude   double precision NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    altitude    double precision,
    angle       double precision CHECK (angle BETWEEN 0 AND 360),
    speed       double precision CHECK (speed >= 0),
    satellites  smallint         CHECK (satellites >= 0),
    priority    smallint         CHECK (priority >= 0),
    -- Integers are exact jsonb numbers; a JavaScript double that is integral or beyond 2^53 keeps a
    -- ".0" so it is told apart from an exact integer; byte strings are {"__buffer_b64": "<base64>"}.
    attributes  jsonb,
    -- When and by which transaction the row arrived: the live cursor is built from these.
    ingested_at timestamptz      NOT NULL DEFAULT now(),
    ingest_xid  xid8             NOT NULL DEFAULT pg_current_xact_id(),
    ingest_seq  bigint           NOT NULL DEFAULT nextval('trackway.ingest_seq'),
    CONSTRAINT positions_device_ts_key UNIQUE (device_id, ts)
);
COMMENT ON TABLE trackway.positions IS
    'One row per (device_id, ts). Every newly inserted row is announced on channel trackway_positions.';

CREATE INDEX positions_ts_idx ON trackway.positions (ts DESC);
-- Serves trackway.positions_since(cursor): rows ordered by (transaction, sequence).
CREATE INDEX positions_cursor_idx ON trackway.positions (ingest_xid, ingest_seq);

CREATE TABLE trackway.latest_positions (
    device_id   text             PRIMARY KEY,
    ts          timestamptz      NOT NULL,
    latitude    double precision NOT NULL,
    longitude   double precision NOT NULL,
    altitude    double precision,
    angle       double precision,
    speed       double precision,
    satellites  smallint,
    priority    smallint,
    attributes  jsonb,
    ingested_at timestamptz      NOT NULL,
    ingest_xid  xid8             NOT NULL,
    ingest_seq  bigint           NOT NULL
)
-- Every batch rewrites the latest row of most of its devices: free space on each page keeps those
-- updates HOT (no new index entries, no table bloat), which halves the cost of the upsert.
WITH (fillfactor = 30, autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 0);
COMMENT ON TABLE trackway.latest_positions IS
    'The position with the greatest ts per device, kept by the insert trigger on trackway.positions; older (late) rows never replace it.';

CREATE TABLE trackway.device_groups (
    group_id  text NOT NULL CHECK (group_id <> ''),
    device_id text NOT NULL CHECK (device_id <> ''),
    PRIMARY KEY (group_id, device_id)
);
CREATE INDEX device_groups_device_idx ON trackway.device_groups (device_id);
COMMENT ON TABLE trackway.device_groups IS
    'Group membership (a fleet, an event, a customer) used by live group subscriptions.';

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

-- pg_dump keeps the rows of extension tables only when asked to.
SELECT pg_catalog.pg_extension_config_dump('trackway.positions', '');
SELECT pg_catalog.pg_extension_config_dump('trackway.latest_positions', '');
SELECT pg_catalog.pg_extension_config_dump('trackway.device_groups', '');
SELECT pg_catalog.pg_extension_config_dump('trackway.ingest_seq', '');
SELECT pg_catalog.pg_extension_config_dump('trackway.live_grants', '');
