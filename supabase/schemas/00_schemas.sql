-- The declarative schema: the current state of every object the service owns, read in file
-- order (the Supabase CLI's default for supabase/schemas: every .sql file, sorted by name).
-- supabase/migrations is how a database gets here; a test applies both to fresh databases
-- and compares their catalogues (tests/integration/test_schema_files.py).
--
-- Privileges, written beside each object. Postgres grants EXECUTE on every new function to
-- PUBLIC, Supabase's default privileges add anon and authenticated to every table and
-- function, and `/rest/v1/rpc/*` is public. So:
-- - every table: RLS on; all to service_role; SELECT to authenticated, with RLS deciding
--   which rows (an owner policy, or none: no row); nothing to anon or PUBLIC;
-- - every function: EXECUTE to service_role only, and `set search_path = ''` on its
--   definition (names are fully qualified). A function with a SET clause is never inlined:
--   an inlined SQL function in a plan cached under service_role would be reused for anon
--   without Postgres checking EXECUTE again;
-- - nothing `security definer` in `autopilot`, the schema PostgREST exposes.

-- The service's own schema, so nothing here collides with a project's `public` tables.
-- PostgREST needs USAGE to serve it; what a role may do inside is decided per object.
create schema if not exists autopilot;
grant usage on schema autopilot to anon, authenticated, service_role;

-- Helpers and types the API must never expose (not in PostgREST's db-schemas). The
-- service's functions call them as service_role.
create schema if not exists autopilot_private;
revoke all on schema autopilot_private from public, anon, authenticated;
grant usage on schema autopilot_private to service_role;

create type autopilot.session_phase as enum ('discovery', 'roi', 'greenlight');

-- Raise a PostgREST-visible error: SQLSTATE PTxyz becomes HTTP xyz, the hint carries our
-- error code, the detail optional JSON.
create or replace function autopilot_private.fail(
  p_status integer, p_code text, p_message text, p_detail jsonb default null
) returns void
language plpgsql
set search_path = ''
as $$
begin
  raise exception using
    errcode = 'PT' || p_status::text,
    message = p_message,
    hint = p_code,
    detail = coalesce(p_detail::text, '');
end
$$;
revoke all on function autopilot_private.fail(integer, text, text, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.fail(integer, text, text, jsonb) to service_role;

-- Serialise the creations of one owner (a user, else a session) of one kind, until the
-- transaction ends: a count and the insert it allows cannot interleave with another's.
-- An advisory lock, not the owner's row: PUT /sessions/me must not wait for it.
create or replace function autopilot_private.lock_owner(
  p_kind text, p_user_id uuid, p_session_id uuid
) returns void
language sql
set search_path = ''
as $$
  select pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(
    p_kind || ':' || coalesce('user:' || p_user_id::text, 'session:' || p_session_id::text), 0))
$$;
revoke all on function autopilot_private.lock_owner(text, uuid, uuid)
  from public, anon, authenticated;
grant execute on function autopilot_private.lock_owner(text, uuid, uuid) to service_role;

-- A round trip through PostgREST to Postgres for /readyz.
create or replace function autopilot.ping()
returns text
language sql
stable
set search_path = ''
as $$ select 'ok'::text $$;
revoke all on function autopilot.ping() from public, anon, authenticated;
grant execute on function autopilot.ping() to service_role;
