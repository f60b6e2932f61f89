-- Statement timeout, below DATA_PLANE_TIMEOUT_SECONDS (10 s by default): a query the
-- service gave up on (and answered 503 for) is cancelled instead of running on. Set on
-- service_role, the role PostgREST switches to for the service's key, never on the
-- database or `postgres`, where migrations and long maintenance run. A `SET` inside a
-- function would not do: the timer of the statement already running was armed when it
-- started. PostgREST applies a role's settings when it switches to the role, and reads
-- them when it (re)loads its configuration (hence the notify below).
alter role service_role set statement_timeout = '8s';

-- What a query run through PostgREST gets, in milliseconds (0: none): the service checks
-- at start-up that its HTTP client waits longer than this.
create or replace function autopilot.statement_timeout_ms()
returns integer
language sql
stable
set search_path = ''
as $$
  select setting::integer from pg_catalog.pg_settings where name = 'statement_timeout'
$$;
revoke all on function autopilot.statement_timeout_ms() from public, anon, authenticated;
grant execute on function autopilot.statement_timeout_ms() to service_role;

-- PostgREST reloads its schema cache and role settings.
notify pgrst, 'reload config';
notify pgrst, 'reload schema';
