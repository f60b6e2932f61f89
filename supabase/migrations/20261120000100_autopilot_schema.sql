-- The service's own schema, so nothing here collides with a project's `public` tables.
create schema if not exists autopilot;
-- Helpers the API must never expose (not in PostgREST's db-schemas).
create schema if not exists autopilot_private;

-- PostgREST needs USAGE to serve the schema; what a role may do inside is decided per
-- object by autopilot_private.secure_schema() below.
grant usage on schema autopilot to anon, authenticated, service_role;
revoke all on schema autopilot_private from public, anon, authenticated;
-- The service's functions call private helpers and use private types.
grant usage on schema autopilot_private to service_role;

-- Postgres grants EXECUTE on every new function to PUBLIC, Supabase adds anon and
-- authenticated to tables and functions, and `/rest/v1/rpc/*` is public. Per-schema
-- default privileges cannot revoke global ones, so every migration ends by calling this:
-- it locks down every object of the schema as it stands.
create or replace function autopilot_private.secure_schema()
returns void
language plpgsql
as $$
declare
  fn regprocedure;
  tbl regclass;
begin
  for fn in
    select p.oid::regprocedure
    from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'autopilot'
  loop
    execute format('revoke all on function %s from public, anon, authenticated', fn);
    execute format('grant execute on function %s to service_role', fn);
    -- A pinned search_path is safer, and a function with a SET clause is never inlined:
    -- an inlined SQL function in a plan cached under service_role would be reused for
    -- anon without Postgres checking EXECUTE again.
    execute format('alter function %s set search_path = pg_catalog, pg_temp', fn);
  end loop;

  for tbl in
    select c.oid::regclass
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = 'autopilot' and c.relkind in ('r', 'p', 'v', 'm')
  loop
    execute format('revoke all on %s from public, anon, authenticated', tbl);
    execute format('grant all on %s to service_role', tbl);
  end loop;

  for tbl in
    select c.oid::regclass
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = 'autopilot' and c.relkind in ('r', 'p')
  loop
    execute format('alter table %s enable row level security', tbl);
    -- Owner policies are SELECT-only and RLS decides which rows. Views get no such
    -- grant: they run as their owner and would bypass RLS.
    execute format('grant select on %s to authenticated', tbl);
  end loop;

  execute 'revoke all on all sequences in schema autopilot from public, anon, authenticated';
  execute 'grant usage, select on all sequences in schema autopilot to service_role';
end
$$;
revoke all on function autopilot_private.secure_schema() from public, anon, authenticated;

-- A round trip through PostgREST to Postgres for /readyz.
create or replace function autopilot.ping()
returns text
language sql
stable
as $$ select 'ok'::text $$;

select autopilot_private.secure_schema();
