-- Creates TimescaleDB and then trackway in the image's default database (POSTGRES_DB).
--
-- Copied into /docker-entrypoint-initdb.d/ by Dockerfile.timescale. The official entrypoint runs it once,
-- on the first start with an empty data directory, as POSTGRES_USER with
-- `psql -v ON_ERROR_STOP=1 --dbname "$POSTGRES_DB" -f 10-trackway.sql`, after TimescaleDB's own
-- 000_install_timescaledb.sh (which already creates timescaledb there: hence IF NOT EXISTS).
-- The order matters: with timescaledb present at CREATE EXTENSION trackway, trackway.positions becomes a
-- hypertable on ts (otherwise a plain table until trackway.make_hypertable()).
-- Checked by scripts/check-images against a throw-away database.

CREATE EXTENSION IF NOT EXISTS timescaledb;
CREATE EXTENSION IF NOT EXISTS trackway;
