-- trackway.authorize reading a Directus collection, when Directus keeps its data in the same database as
-- trackway. The collection `vehicle_access` (created in Directus's data studio) has the fields
--   user      many-to-one → directus_users (uuid)
--   role      many-to-one → directus_roles (uuid)
--   device_id string, group_id string (one of them set)
-- so that operators grant live access in Directus itself. Administrators (admin_access) see everything.
-- Run it as the extension's owner after CREATE EXTENSION trackway (and again after ALTER EXTENSION …
-- UPDATE, which restores the default). tests/live.rs runs this very file.
CREATE OR REPLACE FUNCTION trackway.authorize(claims jsonb, kind text, id text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce($1 -> 'admin_access' = 'true'::jsonb, false)
        OR EXISTS (
            SELECT FROM public.vehicle_access a
            WHERE (a."user"::text = $1 ->> 'id' OR a.role::text = $1 ->> 'role')
              AND CASE $2
                      WHEN 'group' THEN a.group_id = $3
                      WHEN 'device' THEN a.device_id = $3
                          OR a.group_id IN (SELECT g.group_id FROM trackway.device_groups g WHERE g.device_id = $3)
                      ELSE false
                  END)
$$;
-- The relay's role (a member of trackway_reader) calls it with its own rights.
GRANT SELECT ON public.vehicle_access TO trackway_reader;
