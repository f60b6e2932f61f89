-- Baseline: the declarative schema (supabase/schemas/*.sql, in file order) as one migration.
-- It replaces the eleven migrations of 2026-11-20..22, squashed before anything was deployed.
-- Like every migration it is never edited once applied anywhere: a later change is a new
-- file here, and the same change made in supabase/schemas (test_schema_files.py compares).

-- ===== supabase/schemas/00_schemas.sql
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

-- ===== supabase/schemas/10_events.sql
-- The audit trail, and the source of the live event stream. Append-only. Written only by
-- the functions that change state, inside their transaction, while they hold the row lock
-- of the session or profile the event belongs to: so for one subject, ids are handed out
-- in commit order and a reader resuming after id N never misses an event below it.
-- No foreign keys: the trail outlives what it describes.
create table autopilot.session_events (
  id bigserial primary key,
  session_id uuid,
  profile_id uuid,
  event_type text not null check (event_type in (
    'created', 'updated', 'phase_changed', 'completed', 'claimed', 'extracted', 'deleted',
    'expired', 'token_rotated')),
  actor_type text not null check (actor_type in ('user', 'session', 'system')),
  actor_id text,
  payload jsonb not null default '{}'::jsonb check (jsonb_typeof(payload) = 'object'),
  created_at timestamptz not null default now(),
  constraint session_events_subject_check check (session_id is not null or profile_id is not null)
);
create index session_events_session_idx on autopilot.session_events (session_id, id)
  where session_id is not null;
create index session_events_profile_idx on autopilot.session_events (profile_id, id)
  where profile_id is not null;
-- Retention reads events by age: one batch is a range of this index, never a table scan
-- (ids are not strictly in created_at order: created_at is the transaction's start).
create index session_events_created_at_idx on autopilot.session_events (created_at);
alter table autopilot.session_events enable row level security;
revoke all on autopilot.session_events from public, anon, authenticated;
grant all on autopilot.session_events to service_role;
grant select on autopilot.session_events to authenticated;
revoke all on sequence autopilot.session_events_id_seq from public, anon, authenticated;
grant usage, select on sequence autopilot.session_events_id_seq to service_role;

-- Append-only for everyone, except the retention cleanup's own DELETE: it sets a
-- transaction-local flag, and runs as the table's owner (autopilot_private.prune_session_events,
-- SECURITY DEFINER). The flag alone is not enough, since any SQL session may set a custom
-- setting: the current role must be the owner too, which no API role is. (A role that can
-- act as the owner could drop this trigger anyway.)
create or replace function autopilot_private.refuse_event_change()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if tg_op = 'DELETE'
     and current_setting('autopilot.retention_cleanup', true) = 'on'
     and current_user = (select pg_get_userbyid(c.relowner) from pg_class c
                          where c.oid = tg_relid) then
    return old;
  end if;
  raise exception 'session_events is append-only';
end
$$;
revoke all on function autopilot_private.refuse_event_change() from public, anon, authenticated;

create trigger session_events_append_only
  before update or delete on autopilot.session_events
  for each row execute function autopilot_private.refuse_event_change();

create or replace function autopilot_private.record_event(
  p_session_id uuid, p_profile_id uuid, p_type text, p_actor_type text, p_actor_id text,
  p_payload jsonb default '{}'::jsonb
) returns void
language sql
set search_path = ''
as $$
  insert into autopilot.session_events
    (session_id, profile_id, event_type, actor_type, actor_id, payload)
  values (p_session_id, p_profile_id, p_type, p_actor_type, p_actor_id,
          coalesce(p_payload, '{}'::jsonb))
$$;
revoke all on function autopilot_private.record_event(uuid, uuid, text, text, text, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.record_event(uuid, uuid, text, text, text, jsonb)
  to service_role;

-- What a patch touched, for the audit trail (keys only, never answer values).
create or replace function autopilot_private.patch_summary(p_patch jsonb, p_version integer)
returns jsonb
language sql
immutable
set search_path = ''
as $$
  select jsonb_build_object(
    'version', p_version,
    'fields', coalesce((select jsonb_agg(k order by k) from jsonb_object_keys(p_patch) as k
                        where k not in ('answers_set', 'answers_remove', 'roi_set', 'roi_remove')),
                       '[]'::jsonb),
    'answerKeys', coalesce((select jsonb_agg(k order by k) from (
        select jsonb_object_keys(coalesce(p_patch -> 'answers_set', '{}'::jsonb)) as k
        union select jsonb_array_elements_text(coalesce(p_patch -> 'answers_remove', '[]'::jsonb))
      ) as keys), '[]'::jsonb),
    'roiKeys', coalesce((select jsonb_agg(k order by k) from (
        select jsonb_object_keys(coalesce(p_patch -> 'roi_set', '{}'::jsonb)) as k
        union select jsonb_array_elements_text(coalesce(p_patch -> 'roi_remove', '[]'::jsonb))
      ) as keys), '[]'::jsonb))
$$;
revoke all on function autopilot_private.patch_summary(jsonb, integer)
  from public, anon, authenticated;
grant execute on function autopilot_private.patch_summary(jsonb, integer) to service_role;

-- updated, and phase_changed when the phase moved.
create or replace function autopilot_private.record_update(
  p_session_id uuid, p_profile_id uuid, p_actor_type text, p_actor_id text, p_patch jsonb,
  p_version integer, p_from autopilot.session_phase, p_to autopilot.session_phase
) returns void
language plpgsql
set search_path = ''
as $$
begin
  perform autopilot_private.record_event(p_session_id, p_profile_id, 'updated', p_actor_type,
    p_actor_id, autopilot_private.patch_summary(p_patch, p_version));
  if p_from is distinct from p_to then
    perform autopilot_private.record_event(p_session_id, p_profile_id, 'phase_changed',
      p_actor_type, p_actor_id, jsonb_build_object('from', p_from, 'to', p_to));
  end if;
end
$$;
revoke all on function autopilot_private.record_update(
  uuid, uuid, text, text, jsonb, integer, autopilot.session_phase, autopilot.session_phase)
  from public, anon, authenticated;
grant execute on function autopilot_private.record_update(
  uuid, uuid, text, text, jsonb, integer, autopilot.session_phase, autopilot.session_phase)
  to service_role;

------------------------------------------------------------------------------------------
-- Retention: events older than a retention period are deleted in batches by the cleanup,
-- which alone is exempt from the append-only rule; a watermark says how far history was
-- pruned, so a stream resuming below it is told to reload instead of a silent gap.
------------------------------------------------------------------------------------------
-- How far the retention cleanup pruned: every event with an id at or below
-- pruned_through_id may be gone. One row, inserted here (data: a declarative diff does
-- not carry it, the baseline migration does).
create table autopilot.event_retention (
  singleton boolean primary key default true check (singleton),
  pruned_through_id bigint not null default 0,
  pruned_at timestamptz
);
alter table autopilot.event_retention enable row level security;
revoke all on autopilot.event_retention from public, anon, authenticated;
grant all on autopilot.event_retention to service_role;
grant select on autopilot.event_retention to authenticated;
insert into autopilot.event_retention default values;

-- One batch of events older than p_retention_days; returns how many went. The one place
-- that deletes events: SECURITY DEFINER (so the trigger above sees the owner), and private,
-- so PostgREST never exposes it; autopilot.cleanup_old_session_events calls it.
create or replace function autopilot_private.prune_session_events(
  p_retention_days integer, p_batch_size integer
) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  deleted integer;
  last_id bigint;
begin
  perform pg_catalog.set_config('autopilot.retention_cleanup', 'on', true);
  with doomed as (
    select e.id from autopilot.session_events e
     where e.created_at < now() - make_interval(days => greatest(p_retention_days, 1))
     order by e.created_at
     limit greatest(p_batch_size, 1)
  ), gone as (
    delete from autopilot.session_events e using doomed where e.id = doomed.id
    returning e.id
  )
  select count(*)::integer, max(gone.id) into deleted, last_id from gone;
  perform pg_catalog.set_config('autopilot.retention_cleanup', 'off', true);
  if last_id is not null then
    update autopilot.event_retention
       set pruned_through_id = greatest(pruned_through_id, last_id), pruned_at = now();
  end if;
  return deleted;
end
$$;
revoke all on function autopilot_private.prune_session_events(integer, integer)
  from public, anon, authenticated;
grant execute on function autopilot_private.prune_session_events(integer, integer)
  to service_role;

-- One batch of events older than p_retention_days (the caller loops, as for sessions).
create or replace function autopilot.cleanup_old_session_events(
  p_retention_days integer, p_batch_size integer default 500
) returns integer
language sql
set search_path = ''
as $$
  select autopilot_private.prune_session_events(p_retention_days, p_batch_size)
$$;
revoke all on function autopilot.cleanup_old_session_events(integer, integer)
  from public, anon, authenticated;
grant execute on function autopilot.cleanup_old_session_events(integer, integer)
  to service_role;

-- Events with an id at or below this may have been pruned (0: none was).
create or replace function autopilot.event_history_floor()
returns bigint
language sql
stable
set search_path = ''
as $$
  select coalesce((select pruned_through_id from autopilot.event_retention), 0)
$$;
revoke all on function autopilot.event_history_floor() from public, anon, authenticated;
grant execute on function autopilot.event_history_floor() to service_role;

-- ===== supabase/schemas/15_event_streams.sql
-- Who may open the live event stream without an Authorization header. EventSource cannot
-- send one, so a signed-in browser trades its bearer token for a short-lived, single-use
-- ticket (stored hashed) to put in the stream's URL. A native EventSource reconnects to the
-- very URL it was opened with (the ticket, now spent, included), sending only Last-Event-ID
-- and its cookies. So the first use of a ticket also hands out a stream credential, set as
-- an HttpOnly cookie scoped to the events path; a reconnect is accepted with the spent
-- ticket AND a live credential of the same user, never with the ticket alone (someone who
-- saw the URL later has no cookie). Both live no longer than the access token that bought
-- the ticket (`not_after`, its exp).
create table autopilot.event_tickets (
  ticket_hash text primary key check (ticket_hash ~ '^[0-9a-f]{64}$'),
  profile_id uuid not null,
  expires_at timestamptz not null,
  created_at timestamptz not null default now(),
  used_at timestamptz,
  not_after timestamptz
);
create index event_tickets_expires_idx on autopilot.event_tickets (expires_at);
alter table autopilot.event_tickets enable row level security;
revoke all on autopilot.event_tickets from public, anon, authenticated;
grant all on autopilot.event_tickets to service_role;
grant select on autopilot.event_tickets to authenticated;

create table autopilot.event_stream_credentials (
  credential_hash text primary key check (credential_hash ~ '^[0-9a-f]{64}$'),
  profile_id uuid not null,
  -- Short, and pushed forward by every accepted (re)connect, never past not_after.
  expires_at timestamptz not null,
  not_after timestamptz not null,
  created_at timestamptz not null default now(),
  check (expires_at <= not_after)
);
create index event_stream_credentials_expires_idx
  on autopilot.event_stream_credentials (expires_at);
alter table autopilot.event_stream_credentials enable row level security;
revoke all on autopilot.event_stream_credentials from public, anon, authenticated;
grant all on autopilot.event_stream_credentials to service_role;
grant select on autopilot.event_stream_credentials to authenticated;

create or replace function autopilot.issue_event_ticket(
  p_ticket_hash text, p_profile_id uuid, p_ttl_seconds integer, p_not_after timestamptz
) returns timestamptz
language plpgsql
set search_path = ''
as $$
declare
  expiry timestamptz := least(now() + make_interval(secs => p_ttl_seconds), p_not_after);
begin
  if p_not_after is null or p_not_after <= now() then
    perform autopilot_private.fail(401, 'invalid_token', 'The access token has expired.', null);
  end if;
  -- Spent tickets stay until their token expires: reconnects present them.
  delete from autopilot.event_tickets
   where coalesce(not_after, expires_at) < now() - interval '1 hour';
  delete from autopilot.event_stream_credentials where expires_at < now() - interval '1 hour';
  insert into autopilot.event_tickets (ticket_hash, profile_id, expires_at, not_after)
  values (p_ticket_hash, p_profile_id, expiry, p_not_after);
  return expiry;
end
$$;
revoke all on function autopilot.issue_event_ticket(text, uuid, integer, timestamptz)
  from public, anon, authenticated;
grant execute on function autopilot.issue_event_ticket(text, uuid, integer, timestamptz)
  to service_role;

-- Opens (or re-opens) a stream with a ticket. Returns null when refused, else
-- {profileId, notAfter, credentialExpiresAt, issued}: `issued` when this was the ticket's
-- first use and p_new_credential_hash was stored; otherwise p_credential_hash was renewed.
create or replace function autopilot.open_event_stream(
  p_ticket_hash text,
  p_credential_hash text,
  p_new_credential_hash text,
  p_credential_ttl_seconds integer
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  t autopilot.event_tickets;
  c autopilot.event_stream_credentials;
  ttl interval := make_interval(secs => p_credential_ttl_seconds);
  ticket_not_after timestamptz;
begin
  select * into t from autopilot.event_tickets where ticket_hash = p_ticket_hash for update;
  if not found then
    return null;
  end if;
  ticket_not_after := coalesce(t.not_after, t.expires_at);
  if ticket_not_after <= now() then
    return null;
  end if;

  if t.used_at is null then
    if t.expires_at <= now() then
      return null;
    end if;
    update autopilot.event_tickets set used_at = now() where ticket_hash = p_ticket_hash;
    insert into autopilot.event_stream_credentials (credential_hash, profile_id, expires_at, not_after)
    values (p_new_credential_hash, t.profile_id, least(now() + ttl, ticket_not_after),
            ticket_not_after)
    returning * into c;
    return jsonb_build_object('profileId', t.profile_id, 'notAfter', ticket_not_after,
                              'credentialExpiresAt', c.expires_at, 'issued', true);
  end if;

  -- A spent ticket: a reconnect, accepted only with a live credential of the same user.
  if p_credential_hash is null then
    return null;
  end if;
  update autopilot.event_stream_credentials
     set expires_at = least(now() + ttl, not_after)
   where credential_hash = p_credential_hash
     and profile_id = t.profile_id
     and expires_at > now()
  returning * into c;
  if not found then
    return null;
  end if;
  return jsonb_build_object('profileId', t.profile_id, 'notAfter', ticket_not_after,
                            'credentialExpiresAt', c.expires_at, 'issued', false);
end
$$;
revoke all on function autopilot.open_event_stream(text, text, text, integer)
  from public, anon, authenticated;
grant execute on function autopilot.open_event_stream(text, text, text, integer)
  to service_role;

-- ===== supabase/schemas/20_progress.sql
-- Progress: the fields a session and a discovery profile share, and how patches and merges
-- change them. One definition, used by both tables.
create type autopilot_private.progress as (
  answers jsonb,
  roi_inputs jsonb,
  phase autopilot.session_phase,
  current_question_index integer,
  selected_product_ids uuid[],
  timeframe text
);

-- Forward one step, or back to any earlier phase; staying put is no transition.
create or replace function autopilot_private.check_phase_transition(
  p_from autopilot.session_phase, p_to autopilot.session_phase
) returns void
language plpgsql
set search_path = ''
as $$
declare
  phases autopilot.session_phase[] := enum_range(null::autopilot.session_phase);
  from_pos integer := array_position(phases, p_from);
  to_pos integer := array_position(phases, p_to);
  allowed autopilot.session_phase[];
begin
  if to_pos <= from_pos + 1 then
    return;
  end if;
  allowed := phases[1:least(from_pos + 1, array_length(phases, 1))];
  perform autopilot_private.fail(
    409, 'invalid_phase_transition',
    format('Cannot move from %s to %s.', p_from, p_to),
    jsonb_build_object('from', p_from, 'to', p_to, 'allowed', to_jsonb(allowed))
  );
end
$$;
revoke all on function autopilot_private.check_phase_transition(
  autopilot.session_phase, autopilot.session_phase) from public, anon, authenticated;
grant execute on function autopilot_private.check_phase_transition(
  autopilot.session_phase, autopilot.session_phase) to service_role;

-- Phases advance when a write completes one, whoever stores it (PUT /sessions/me,
-- PUT /discovery, extraction, the offline agent, which writes through the PUT functions).
-- The keys of each phase come from the service's catalogue as data, p_phase_keys
-- (src/autopilot_api/discovery/catalogue.py PHASE_KEYS):
--   {"discovery": [question keys], "roi": [ROI input keys]}
-- looked up in answers || roi_inputs (question keys are snake_case, ROI keys camelCase, so
-- the union is unambiguous). A phase with no keys there (greenlight) is never complete;
-- null p_phase_keys: nothing advances.
-- A write COMPLETES a phase when, after it, every key of the phase is stored and, before it,
-- one was missing (it filled the last missing key). The owner then moves on when the phase
-- it is in is the one completed, and on through any phase already complete. A patch that
-- moves the phase itself is taken as it is (the callers skip the advance then), so a
-- visitor who went back stays there until a write completes a phase anew.
create or replace function autopilot_private.phase_keys_complete(p_keys jsonb, p_stored jsonb)
returns boolean
language sql
immutable
set search_path = ''
as $$
  select coalesce(pg_catalog.jsonb_typeof(p_keys) = 'array', false)
     and pg_catalog.jsonb_array_length(p_keys) > 0
     and not exists (
       select 1 from pg_catalog.jsonb_array_elements_text(p_keys) as k(key)
        where not (coalesce(p_stored, '{}'::jsonb) ? k.key))
$$;
revoke all on function autopilot_private.phase_keys_complete(jsonb, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.phase_keys_complete(jsonb, jsonb) to service_role;

-- The phase after a write: p_phase (the phase after the patch), p_before / p_after the
-- stored keys (answers || roi_inputs) before and after it.
create or replace function autopilot_private.advance_phase(
  p_phase autopilot.session_phase, p_before jsonb, p_after jsonb, p_phase_keys jsonb
) returns autopilot.session_phase
language plpgsql
stable
set search_path = ''
as $$
declare
  phases autopilot.session_phase[] := enum_range(null::autopilot.session_phase);
  pos integer := array_position(phases, p_phase);
begin
  if p_phase_keys is null
     or pos >= cardinality(phases)
     or not autopilot_private.phase_keys_complete(p_phase_keys -> p_phase::text, p_after)
     or autopilot_private.phase_keys_complete(p_phase_keys -> p_phase::text, p_before) then
    return p_phase;
  end if;
  pos := pos + 1;
  while pos < cardinality(phases)
        and autopilot_private.phase_keys_complete(p_phase_keys -> phases[pos]::text, p_after)
  loop
    pos := pos + 1;
  end loop;
  return phases[pos];
end
$$;
revoke all on function autopilot_private.advance_phase(
  autopilot.session_phase, jsonb, jsonb, jsonb) from public, anon, authenticated;
grant execute on function autopilot_private.advance_phase(
  autopilot.session_phase, jsonb, jsonb, jsonb) to service_role;

-- Apply a patch built by the service: answers/roi entries set or removed per key (never
-- replaced wholesale), scalar fields only when present in the patch.
create or replace function autopilot_private.apply_patch(
  p_current autopilot_private.progress, p_patch jsonb
) returns autopilot_private.progress
language plpgsql
stable
set search_path = ''
as $$
declare
  result autopilot_private.progress := p_current;
begin
  result.answers := (p_current.answers || coalesce(p_patch -> 'answers_set', '{}'::jsonb))
    - coalesce(array(select jsonb_array_elements_text(p_patch -> 'answers_remove')), '{}');
  result.roi_inputs := (p_current.roi_inputs || coalesce(p_patch -> 'roi_set', '{}'::jsonb))
    - coalesce(array(select jsonb_array_elements_text(p_patch -> 'roi_remove')), '{}');
  if p_patch ? 'phase' then
    perform autopilot_private.check_phase_transition(
      p_current.phase, (p_patch ->> 'phase')::autopilot.session_phase);
    result.phase := (p_patch ->> 'phase')::autopilot.session_phase;
  end if;
  if p_patch ? 'current_question_index' then
    result.current_question_index := (p_patch ->> 'current_question_index')::integer;
  end if;
  if p_patch ? 'selected_product_ids' then
    result.selected_product_ids :=
      array(select distinct_ids.id from (
        select min(ord) as first_seen, value::uuid as id
        from jsonb_array_elements_text(p_patch -> 'selected_product_ids') with ordinality as t(value, ord)
        group by value::uuid
      ) as distinct_ids order by distinct_ids.first_seen);
  end if;
  if p_patch ? 'timeframe' then
    result.timeframe := p_patch ->> 'timeframe';
  end if;
  return result;
end
$$;
revoke all on function autopilot_private.apply_patch(autopilot_private.progress, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.apply_patch(autopilot_private.progress, jsonb)
  to service_role;

------------------------------------------------------------------------------------------
-- Typed answers: the catalogue's kinds (text, number, choice, boolean, ...) are enforced by
-- one validator in the service wherever an answer enters. Values stored before that may not
-- fit; they are kept as they are, and the merges must neither fail on them nor prefer them.
-- So the merges judge each stored value by the catalogue's rules, which the service passes in
-- as data (p_rules: src/autopilot_api/discovery/answers.py catalogue_rules(), per key one
-- rule in a generic shape every kind maps onto, kinds.py):
--   {"type": "string" | "number" | "integer" | "boolean",
--    "enum", "minLength", "maxLength", "pattern"   strings, judged trimmed (enum in any case)
--    "minimum", "maximum"}                          numbers ("integer": whole, |n| <= 2^53 - 1)
-- A new question needs no migration, nor does a new kind made of these primitives.
------------------------------------------------------------------------------------------
-- Whether a stored entry's value fits its key's rule. No rule (a key the catalogue does not
-- have), or a type this function does not know, judges nothing. Every cast sits behind a
-- CASE on the JSON type, so no stored value can make it fail.
create or replace function autopilot_private.entry_is_valid(p_rule jsonb, p_entry jsonb)
returns boolean
language sql
immutable
set search_path = ''
as $$
  select case
    when r is null then true
    when r ->> 'type' = 'boolean' then jsonb_typeof(v) is not distinct from 'boolean'
    when r ->> 'type' in ('number', 'integer') then case
      when jsonb_typeof(v) is distinct from 'number' then false
      else ((r ->> 'minimum') is null or (v #>> '{}')::numeric >= (r ->> 'minimum')::numeric)
        and ((r ->> 'maximum') is null or (v #>> '{}')::numeric <= (r ->> 'maximum')::numeric)
        -- an integer is a whole number JavaScript holds exactly (2^53 - 1); jsonb keeps
        -- numbers exact, so 9007199254740993 is seen as it was sent.
        and (r ->> 'type' = 'number'
             or ((v #>> '{}')::numeric = trunc((v #>> '{}')::numeric)
                 and abs((v #>> '{}')::numeric) <= 9007199254740991))
    end
    when r ->> 'type' = 'string' then case
      when jsonb_typeof(v) is distinct from 'string' then false
      else (jsonb_typeof(r -> 'enum') is distinct from 'array'
            or exists (select 1 from jsonb_array_elements_text(r -> 'enum') as o(option)
                       where lower(o.option) = lower(btrim(v #>> '{}'))))
        and length(btrim(v #>> '{}')) >= coalesce((r ->> 'minLength')::integer, 0)
        and ((r ->> 'maxLength') is null
             or length(btrim(v #>> '{}')) <= (r ->> 'maxLength')::integer)
        and ((r ->> 'pattern') is null or btrim(v #>> '{}') ~ (r ->> 'pattern'))
    end
    else true
  end
  from (select p_rule as r,
               case when jsonb_typeof(p_entry) = 'object' then p_entry -> 'value' end as v) as x
$$;
revoke all on function autopilot_private.entry_is_valid(jsonb, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.entry_is_valid(jsonb, jsonb) to service_role;

-- The claim's merge, per key: a value that fits beats one that does not, whatever their
-- source or age (an unfit value on one side only is kept as it is); then an answer the
-- person gave beats one the LLM extracted, and otherwise the newer wins (a tie goes to the
-- incoming side).
create or replace function autopilot_private.merge_entries(
  p_base jsonb, p_incoming jsonb, p_rules jsonb
) returns jsonb
language sql
immutable
set search_path = ''
as $$
  select coalesce(jsonb_object_agg(k, case
      when b is null then i
      when i is null then b
      when i_valid and not b_valid then i
      when b_valid and not i_valid then b
      when coalesce(i ->> 'source', '') = 'user' and coalesce(b ->> 'source', '') <> 'user' then i
      when coalesce(b ->> 'source', '') = 'user' and coalesce(i ->> 'source', '') <> 'user' then b
      when coalesce((i ->> 'updatedAt')::timestamptz, '-infinity')
           >= coalesce((b ->> 'updatedAt')::timestamptz, '-infinity') then i
      else b
    end), '{}'::jsonb)
  from (
    select keys.k, p_base -> keys.k as b, p_incoming -> keys.k as i,
           autopilot_private.entry_is_valid(p_rules -> keys.k, p_base -> keys.k) as b_valid,
           autopilot_private.entry_is_valid(p_rules -> keys.k, p_incoming -> keys.k) as i_valid
    from (select jsonb_object_keys(p_base) as k
          union select jsonb_object_keys(p_incoming)) as keys
  ) as pairs
$$;
revoke all on function autopilot_private.merge_entries(jsonb, jsonb, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.merge_entries(jsonb, jsonb, jsonb) to service_role;

-- The claim's merge of a session into a profile: answers and ROI inputs per key as above,
-- phase the furthest, question index the max, product ids the union.
create or replace function autopilot_private.merge_progress(
  p_profile autopilot_private.progress, p_session autopilot_private.progress, p_rules jsonb
) returns autopilot_private.progress
language plpgsql
immutable
set search_path = ''
as $$
declare
  result autopilot_private.progress;
begin
  result.answers := autopilot_private.merge_entries(
    p_profile.answers, p_session.answers, p_rules);
  result.roi_inputs := autopilot_private.merge_entries(
    p_profile.roi_inputs, p_session.roi_inputs, p_rules);
  result.phase := greatest(p_profile.phase, p_session.phase);
  result.current_question_index :=
    greatest(p_profile.current_question_index, p_session.current_question_index);
  result.selected_product_ids := array(
    select id from (
      select id, min(ord) as first_seen
      from unnest(p_profile.selected_product_ids || p_session.selected_product_ids)
           with ordinality as t(id, ord)
      group by id
    ) as ids order by first_seen);
  result.timeframe := coalesce(p_session.timeframe, p_profile.timeframe);
  return result;
end
$$;
revoke all on function autopilot_private.merge_progress(
  autopilot_private.progress, autopilot_private.progress, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.merge_progress(
  autopilot_private.progress, autopilot_private.progress, jsonb) to service_role;

-- Extraction's merge, per key: an answer the person gave is never overwritten, unless it
-- does not fit its question (a value stored before typed answers); an identical value is
-- not rewritten; anything else takes the extracted entry (validated by the service).
create or replace function autopilot_private.merge_extracted_entries(
  p_base jsonb, p_incoming jsonb, p_rules jsonb
) returns jsonb
language sql
immutable
set search_path = ''
as $$
  select p_base || coalesce(jsonb_object_agg(i.key, i.value), '{}'::jsonb)
  from jsonb_each(coalesce(p_incoming, '{}'::jsonb)) as i
  where (coalesce(p_base -> i.key ->> 'source', '') <> 'user'
         or not autopilot_private.entry_is_valid(p_rules -> i.key, p_base -> i.key))
    and (p_base -> i.key -> 'value') is distinct from (i.value -> 'value')
$$;
revoke all on function autopilot_private.merge_extracted_entries(jsonb, jsonb, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.merge_extracted_entries(jsonb, jsonb, jsonb)
  to service_role;

create or replace function autopilot_private.changed_keys(p_before jsonb, p_after jsonb)
returns text[]
language sql
immutable
set search_path = ''
as $$
  select coalesce(array_agg(a.key order by a.key), '{}')
  from jsonb_each(p_after) as a
  where (p_before -> a.key) is distinct from a.value
$$;
revoke all on function autopilot_private.changed_keys(jsonb, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.changed_keys(jsonb, jsonb) to service_role;

-- Session metadata, key by key; a key set to null is removed (the way back under the cap).
create or replace function autopilot_private.merge_metadata(p_base jsonb, p_incoming jsonb)
returns jsonb
language sql
immutable
set search_path = ''
as $$
  select (p_base || p_incoming) - coalesce(
    (select array_agg(e.key) from jsonb_each(p_incoming) as e
      where jsonb_typeof(e.value) = 'null'),
    '{}'::text[])
$$;
revoke all on function autopilot_private.merge_metadata(jsonb, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.merge_metadata(jsonb, jsonb) to service_role;

-- ===== supabase/schemas/30_profiles.sql
-- A Supabase user, by id. No foreign key to auth.users: a valid token is enough to start one.
create table autopilot.profiles (
  id uuid primary key,
  email text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
alter table autopilot.profiles enable row level security;
revoke all on autopilot.profiles from public, anon, authenticated;
grant all on autopilot.profiles to service_role;
grant select on autopilot.profiles to authenticated;
-- Owners may read their own rows through the API with their own token (SELECT only).
-- `(select auth.uid())`: evaluated once per query, not once per row.
create policy profiles_owner_select on autopilot.profiles
  for select to authenticated using (id = (select auth.uid()));

-- A user's progress through discovery, ROI and greenlight: what a claimed session merges into.
create table autopilot.discovery_profiles (
  id uuid primary key default gen_random_uuid(),
  profile_id uuid not null unique references autopilot.profiles (id) on delete cascade,
  current_question_index integer not null default 0 check (current_question_index >= 0),
  phase autopilot.session_phase not null default 'discovery',
  answers jsonb not null default '{}'::jsonb check (jsonb_typeof(answers) = 'object'),
  roi_inputs jsonb not null default '{}'::jsonb check (jsonb_typeof(roi_inputs) = 'object'),
  selected_product_ids uuid[] not null default '{}',
  timeframe text,
  version integer not null default 1,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  completed_at timestamptz
);
alter table autopilot.discovery_profiles enable row level security;
revoke all on autopilot.discovery_profiles from public, anon, authenticated;
grant all on autopilot.discovery_profiles to service_role;
grant select on autopilot.discovery_profiles to authenticated;
create policy discovery_profiles_owner_select on autopilot.discovery_profiles
  for select to authenticated using (profile_id = (select auth.uid()));

create or replace function autopilot_private.ensure_profile(p_user_id uuid, p_email text)
returns void
language plpgsql
set search_path = ''
as $$
begin
  insert into autopilot.profiles (id, email) values (p_user_id, p_email)
  on conflict (id) do update
    set email = coalesce(excluded.email, autopilot.profiles.email), updated_at = now()
    where autopilot.profiles.email is distinct from coalesce(excluded.email, autopilot.profiles.email);
  insert into autopilot.discovery_profiles (profile_id) values (p_user_id)
  on conflict (profile_id) do nothing;
  if found then
    perform autopilot_private.record_event(null, p_user_id, 'created', 'user', p_user_id::text);
  end if;
end
$$;
revoke all on function autopilot_private.ensure_profile(uuid, text)
  from public, anon, authenticated;
grant execute on function autopilot_private.ensure_profile(uuid, text) to service_role;

create or replace function autopilot.get_or_create_discovery_profile(
  p_user_id uuid, p_email text default null
) returns autopilot.discovery_profiles
language plpgsql
set search_path = ''
as $$
declare
  dp autopilot.discovery_profiles;
begin
  select * into dp from autopilot.discovery_profiles where profile_id = p_user_id;
  if found then
    return dp;
  end if;
  perform autopilot_private.ensure_profile(p_user_id, p_email);
  select * into dp from autopilot.discovery_profiles where profile_id = p_user_id;
  return dp;
end
$$;
revoke all on function autopilot.get_or_create_discovery_profile(uuid, text)
  from public, anon, authenticated;
grant execute on function autopilot.get_or_create_discovery_profile(uuid, text) to service_role;

-- A PUT of a signed-in user's progress: lock, check the version (If-Match), apply the
-- patch, bump the version.
create or replace function autopilot.update_discovery_profile(
  p_user_id uuid, p_patch jsonb, p_expected_version integer default null,
  p_email text default null, p_phase_keys jsonb default null
) returns autopilot.discovery_profiles
language plpgsql
set search_path = ''
as $$
declare
  dp autopilot.discovery_profiles;
  next autopilot_private.progress;
  old_phase autopilot.session_phase;
begin
  perform autopilot_private.ensure_profile(p_user_id, p_email);
  select * into dp from autopilot.discovery_profiles where profile_id = p_user_id for update;
  old_phase := dp.phase;
  if p_expected_version is not null and dp.version <> p_expected_version then
    perform autopilot_private.fail(412, 'precondition_failed',
      'The discovery profile changed since you read it.', jsonb_build_object('version', dp.version));
  end if;
  next := autopilot_private.apply_patch(
    row(dp.answers, dp.roi_inputs, dp.phase, dp.current_question_index,
        dp.selected_product_ids, dp.timeframe)::autopilot_private.progress, p_patch);
  if next.phase = dp.phase then
    next.phase := autopilot_private.advance_phase(next.phase, dp.answers || dp.roi_inputs,
      next.answers || next.roi_inputs, p_phase_keys);
  end if;
  update autopilot.discovery_profiles set
    answers = next.answers,
    roi_inputs = next.roi_inputs,
    phase = next.phase,
    current_question_index = next.current_question_index,
    selected_product_ids = next.selected_product_ids,
    timeframe = next.timeframe,
    version = version + 1,
    updated_at = now()
  where profile_id = p_user_id
  returning * into dp;
  if p_patch ? 'phase' or dp.phase <> old_phase then
    perform autopilot_private.follow_phase(null, p_user_id, dp.phase);
  end if;
  perform autopilot_private.record_update(null, p_user_id, 'user', p_user_id::text, p_patch,
    dp.version, old_phase, dp.phase);
  return dp;
end
$$;
revoke all on function autopilot.update_discovery_profile(uuid, jsonb, integer, text, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot.update_discovery_profile(uuid, jsonb, integer, text, jsonb)
  to service_role;

-- Completion is allowed from greenlight only; completing twice changes nothing.
create or replace function autopilot.complete_discovery_profile(p_user_id uuid)
returns autopilot.discovery_profiles
language plpgsql
set search_path = ''
as $$
declare
  dp autopilot.discovery_profiles;
begin
  perform autopilot_private.ensure_profile(p_user_id, null);
  select * into dp from autopilot.discovery_profiles where profile_id = p_user_id for update;
  if dp.completed_at is not null then
    return dp;
  end if;
  if dp.phase <> 'greenlight' then
    perform autopilot_private.fail(409, 'completion_not_allowed',
      'Only a profile in the greenlight phase can be completed.',
      jsonb_build_object('phase', dp.phase, 'requiredPhase', 'greenlight'));
  end if;
  update autopilot.discovery_profiles
     set completed_at = now(), version = version + 1, updated_at = now()
   where profile_id = p_user_id returning * into dp;
  perform autopilot_private.record_event(null, p_user_id, 'completed', 'user', p_user_id::text,
    jsonb_build_object('version', dp.version));
  return dp;
end
$$;
revoke all on function autopilot.complete_discovery_profile(uuid)
  from public, anon, authenticated;
grant execute on function autopilot.complete_discovery_profile(uuid) to service_role;

-- ===== supabase/schemas/40_sessions.sql
-- Anonymous sessions. The cookie's token is never stored, only its SHA-256; a claimed
-- session stays as a record pointing at the profile it went to, and its token no longer
-- resolves.
create table autopilot.sessions (
  id uuid primary key default gen_random_uuid(),
  -- SHA-256 (hex) of the cookie token; the token itself is never stored.
  token_hash text not null unique check (token_hash ~ '^[0-9a-f]{64}$'),
  -- The token this one replaced (POST /sessions with a live cookie), still accepted until
  -- previous_token_expires_at: requests already under way with it, or a second tab, keep
  -- the session. It never slides the expiry or re-issues the cookie.
  previous_token_hash text unique check (previous_token_hash ~ '^[0-9a-f]{64}$'),
  previous_token_expires_at timestamptz,
  -- The newest conversation (foreign key in 50_conversations.sql).
  conversation_id uuid,
  current_question_index integer not null default 0 check (current_question_index >= 0),
  phase autopilot.session_phase not null default 'discovery',
  answers jsonb not null default '{}'::jsonb check (jsonb_typeof(answers) = 'object'),
  roi_inputs jsonb not null default '{}'::jsonb check (jsonb_typeof(roi_inputs) = 'object'),
  selected_product_ids uuid[] not null default '{}',
  timeframe text,
  metadata jsonb not null default '{}'::jsonb check (jsonb_typeof(metadata) = 'object'),
  claimed_by_profile_id uuid references autopilot.profiles (id) on delete set null,
  claimed_at timestamptz,
  expires_at timestamptz not null,
  last_seen_at timestamptz not null default now(),
  version integer not null default 1,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  completed_at timestamptz
);
create index sessions_conversation_id_idx on autopilot.sessions (conversation_id);
-- Cleanup scans only what it may delete.
create index sessions_expires_at_idx on autopilot.sessions (expires_at)
  where claimed_by_profile_id is null;
create index sessions_claimed_by_idx on autopilot.sessions (claimed_by_profile_id)
  where claimed_by_profile_id is not null;
-- The admin's page of sessions, newest activity first.
create index sessions_last_seen_idx on autopilot.sessions (last_seen_at desc, id desc);
-- No policy at all: only the service (service_role) reads sessions.
alter table autopilot.sessions enable row level security;
revoke all on autopilot.sessions from public, anon, authenticated;
grant all on autopilot.sessions to service_role;
grant select on autopilot.sessions to authenticated;

-- active | completed | claimed | expired, one rule for every reader.
create or replace function autopilot_private.session_status(
  p_claimed_by uuid, p_completed_at timestamptz, p_expires_at timestamptz
) returns text
language sql
stable
set search_path = ''
as $$
  select case
    when p_claimed_by is not null then 'claimed'
    when p_completed_at is not null then 'completed'
    when p_expires_at <= now() then 'expired'
    else 'active'
  end
$$;
revoke all on function autopilot_private.session_status(uuid, timestamptz, timestamptz)
  from public, anon, authenticated;
grant execute on function autopilot_private.session_status(uuid, timestamptz, timestamptz)
  to service_role;

create or replace function autopilot.create_session(
  p_token_hash text, p_lifetime_seconds integer, p_metadata jsonb default '{}'::jsonb
) returns autopilot.sessions
language plpgsql
set search_path = ''
as $$
declare
  s autopilot.sessions;
begin
  insert into autopilot.sessions (token_hash, expires_at, metadata)
  values (p_token_hash, now() + make_interval(secs => p_lifetime_seconds),
          coalesce(p_metadata, '{}'::jsonb))
  returning * into s;
  perform autopilot_private.record_event(s.id, null, 'created', 'session', s.id::text);
  return s;
end
$$;
revoke all on function autopilot.create_session(text, integer, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot.create_session(text, integer, jsonb) to service_role;

-- The live session a cookie token names: by its current token, or by the one that token
-- replaced while that one's grace lasts. One rule for every reader of a cookie.
create or replace function autopilot_private.session_for_token(p_token_hash text)
returns uuid
language sql
stable
set search_path = ''
as $$
  select id from (
    select id from autopilot.sessions
     where token_hash = p_token_hash
    union all
    select id from autopilot.sessions
     where previous_token_hash = p_token_hash and previous_token_expires_at > now()
  ) named
  limit 1
$$;
revoke all on function autopilot_private.session_for_token(text)
  from public, anon, authenticated;
grant execute on function autopilot_private.session_for_token(text) to service_role;

-- The hot path: find a live session by token hash and slide it. last_seen_at moves at
-- most once a minute; expires_at at most once a day, so the cookie (re-issued when the
-- expiry moves, flagged by expiry_extended) is re-issued at most once a day. Claimed or
-- expired sessions are not found (null). A replaced token still in its grace finds the
-- session and moves nothing: the cookie it came with is not re-issued.
create or replace function autopilot.resolve_session(
  p_token_hash text, p_lifetime_seconds integer
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  s autopilot.sessions;
  lifetime interval := make_interval(secs => p_lifetime_seconds);
  extend boolean := false;
begin
  select * into s from autopilot.sessions
   where id = autopilot_private.session_for_token(p_token_hash)
     and claimed_by_profile_id is null and expires_at > now();
  if not found then
    return null;
  end if;
  if s.token_hash = p_token_hash and s.last_seen_at < now() - interval '1 minute' then
    extend := s.expires_at < now() + lifetime - interval '1 day';
    update autopilot.sessions
       set last_seen_at = now(),
           expires_at = case when extend then now() + lifetime else expires_at end
     where id = s.id
    returning * into s;
  end if;
  return to_jsonb(s) || jsonb_build_object('expiry_extended', extend);
end
$$;
revoke all on function autopilot.resolve_session(text, integer)
  from public, anon, authenticated;
grant execute on function autopilot.resolve_session(text, integer) to service_role;

-- POST /sessions with a live cookie: the same session under a new token (no session
-- fixation); the replaced one is accepted p_grace_seconds more. Sent with a token already
-- replaced (a second tab, a retry), nothing changes and rotated is false: the token issued
-- first stands. Null when the token names no live session.
create or replace function autopilot.rotate_session_token(
  p_token_hash text, p_new_token_hash text, p_grace_seconds integer
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  s autopilot.sessions;
begin
  select * into s from autopilot.sessions
   where token_hash = p_token_hash and claimed_by_profile_id is null and expires_at > now()
  for update;
  if not found then
    select * into s from autopilot.sessions
     where id = autopilot_private.session_for_token(p_token_hash)
       and claimed_by_profile_id is null and expires_at > now();
    if not found then
      return null;
    end if;
    return to_jsonb(s) || jsonb_build_object('rotated', false);
  end if;
  update autopilot.sessions
     set previous_token_hash = token_hash,
         previous_token_expires_at = now() + make_interval(secs => p_grace_seconds),
         token_hash = p_new_token_hash,
         last_seen_at = now()
   where id = s.id
  returning * into s;
  perform autopilot_private.record_event(s.id, null, 'token_rotated', 'session', s.id::text);
  return to_jsonb(s) || jsonb_build_object('rotated', true);
end
$$;
revoke all on function autopilot.rotate_session_token(text, text, integer)
  from public, anon, authenticated;
grant execute on function autopilot.rotate_session_token(text, text, integer) to service_role;

-- A PUT: lock, check the version (If-Match), apply the patch, bump version. One statement
-- per call, so concurrent PUTs on different keys never lose each other. The merged
-- metadata is measured (as JSON text, what a client sends and reads back) before anything
-- is written: over p_metadata_max_bytes the whole PUT is refused and nothing changes.
create or replace function autopilot.update_session_progress(
  p_session_id uuid, p_patch jsonb, p_expected_version integer default null,
  p_metadata_max_bytes integer default 65536, p_phase_keys jsonb default null
) returns autopilot.sessions
language plpgsql
set search_path = ''
as $$
declare
  s autopilot.sessions;
  next autopilot_private.progress;
  old_phase autopilot.session_phase;
  merged jsonb;
  merged_bytes integer;
begin
  select * into s from autopilot.sessions
   where id = p_session_id and claimed_by_profile_id is null and expires_at > now()
   for update;
  if not found then
    perform autopilot_private.fail(404, 'session_not_found', 'No active session.');
  end if;
  old_phase := s.phase;
  if p_expected_version is not null and s.version <> p_expected_version then
    perform autopilot_private.fail(412, 'precondition_failed',
      'The session changed since you read it.', jsonb_build_object('version', s.version));
  end if;
  merged := s.metadata;
  if p_patch ? 'metadata' then
    merged := autopilot_private.merge_metadata(s.metadata, p_patch -> 'metadata');
    merged_bytes := octet_length(merged::text);
    if merged_bytes > p_metadata_max_bytes then
      perform autopilot_private.fail(422, 'metadata_too_large',
        format('Session metadata is limited to %s bytes (as JSON); with this update it would '
               'hold %s. Nothing was stored: send less, or remove keys by setting them to null.',
               p_metadata_max_bytes, merged_bytes),
        jsonb_build_object('field', 'metadata', 'limitBytes', p_metadata_max_bytes,
                           'resultingBytes', merged_bytes,
                           'storedBytes', octet_length(s.metadata::text)));
    end if;
  end if;
  next := autopilot_private.apply_patch(
    row(s.answers, s.roi_inputs, s.phase, s.current_question_index,
        s.selected_product_ids, s.timeframe)::autopilot_private.progress, p_patch);
  if next.phase = s.phase then
    next.phase := autopilot_private.advance_phase(next.phase, s.answers || s.roi_inputs,
      next.answers || next.roi_inputs, p_phase_keys);
  end if;
  update autopilot.sessions set
    answers = next.answers,
    roi_inputs = next.roi_inputs,
    phase = next.phase,
    current_question_index = next.current_question_index,
    selected_product_ids = next.selected_product_ids,
    timeframe = next.timeframe,
    metadata = merged,
    version = version + 1,
    last_seen_at = now(),
    updated_at = now()
  where id = p_session_id
  returning * into s;
  if p_patch ? 'phase' or s.phase <> old_phase then
    perform autopilot_private.follow_phase(s.id, null, s.phase);
  end if;
  perform autopilot_private.record_update(s.id, null, 'session', s.id::text, p_patch,
    s.version, old_phase, s.phase);
  return s;
end
$$;
revoke all on function autopilot.update_session_progress(uuid, jsonb, integer, integer, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot.update_session_progress(uuid, jsonb, integer, integer, jsonb)
  to service_role;

-- The PUT hot path in one round trip: resolve the cookie's live session, apply the patch
-- (as above), and slide the expiry, flagged so the cookie is re-issued. Null when the
-- token names no live session.
create or replace function autopilot.update_session_by_token(
  p_token_hash text, p_lifetime_seconds integer, p_patch jsonb,
  p_expected_version integer default null, p_metadata_max_bytes integer default 65536,
  p_phase_keys jsonb default null
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  sid uuid;
  s autopilot.sessions;
  lifetime interval := make_interval(secs => p_lifetime_seconds);
  extend boolean;
begin
  select id into sid from autopilot.sessions
   where id = autopilot_private.session_for_token(p_token_hash)
     and claimed_by_profile_id is null and expires_at > now();
  if not found then
    return null;
  end if;
  s := autopilot.update_session_progress(sid, p_patch, p_expected_version,
                                         p_metadata_max_bytes, p_phase_keys);
  extend := s.token_hash = p_token_hash
            and s.expires_at < now() + lifetime - interval '1 day';
  if extend then
    update autopilot.sessions set expires_at = now() + lifetime where id = sid
    returning * into s;
  end if;
  return to_jsonb(s) || jsonb_build_object('expiry_extended', extend);
end
$$;
revoke all on function autopilot.update_session_by_token(text, integer, jsonb, integer, integer, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot.update_session_by_token(text, integer, jsonb, integer, integer, jsonb)
  to service_role;

-- DELETE /sessions/me: the session and what only it owns (its conversations cascade).
create or replace function autopilot.delete_session(p_session_id uuid)
returns boolean
language plpgsql
set search_path = ''
as $$
begin
  delete from autopilot.sessions where id = p_session_id and claimed_by_profile_id is null;
  if not found then
    return false;
  end if;
  perform autopilot_private.record_event(p_session_id, null, 'deleted', 'session',
    p_session_id::text);
  return true;
end
$$;
revoke all on function autopilot.delete_session(uuid) from public, anon, authenticated;
grant execute on function autopilot.delete_session(uuid) to service_role;

-- Completion is allowed from greenlight only; completing twice changes nothing.
create or replace function autopilot.complete_session(p_session_id uuid)
returns autopilot.sessions
language plpgsql
set search_path = ''
as $$
declare
  s autopilot.sessions;
begin
  select * into s from autopilot.sessions
   where id = p_session_id and claimed_by_profile_id is null and expires_at > now()
   for update;
  if not found then
    perform autopilot_private.fail(404, 'session_not_found', 'No active session.');
  end if;
  if s.completed_at is not null then
    return s;
  end if;
  if s.phase <> 'greenlight' then
    perform autopilot_private.fail(409, 'completion_not_allowed',
      'Only a session in the greenlight phase can be completed.',
      jsonb_build_object('phase', s.phase, 'requiredPhase', 'greenlight'));
  end if;
  update autopilot.sessions
     set completed_at = now(), version = version + 1, updated_at = now(), last_seen_at = now()
   where id = p_session_id returning * into s;
  perform autopilot_private.record_event(s.id, null, 'completed', 'session', s.id::text,
    jsonb_build_object('version', s.version));
  return s;
end
$$;
revoke all on function autopilot.complete_session(uuid) from public, anon, authenticated;
grant execute on function autopilot.complete_session(uuid) to service_role;

-- One batch of expired, unclaimed sessions (a function cannot commit between batches;
-- the caller loops). SKIP LOCKED: never waits on, or blocks, a live request.
create or replace function autopilot.cleanup_expired_sessions(p_batch_size integer default 500)
returns integer
language sql
set search_path = ''
as $$
  with doomed as (
    select id from autopilot.sessions
     where expires_at < now() and claimed_by_profile_id is null
     order by expires_at
     limit greatest(p_batch_size, 1)
     for update skip locked
  ), gone as (
    delete from autopilot.sessions s using doomed where s.id = doomed.id returning s.id
  ), logged as (
    insert into autopilot.session_events (session_id, event_type, actor_type, actor_id)
    select id, 'expired', 'system', 'cleanup' from gone
    returning 1
  )
  select count(*)::integer from logged
$$;
revoke all on function autopilot.cleanup_expired_sessions(integer)
  from public, anon, authenticated;
grant execute on function autopilot.cleanup_expired_sessions(integer) to service_role;

------------------------------------------------------------------------------------------
-- Admin
------------------------------------------------------------------------------------------
create or replace function autopilot.admin_session_overview(p_active_minutes integer default 15)
returns jsonb
language sql
stable
set search_path = ''
as $$
  with classified as (
    select phase,
           autopilot_private.session_status(claimed_by_profile_id, completed_at, expires_at) as status,
           last_seen_at
      from autopilot.sessions
  )
  select jsonb_build_object(
    'total', (select count(*) from classified),
    'byPhase', coalesce((select jsonb_object_agg(phase, n) from (
        select phase, count(*) as n from classified group by phase) as p), '{}'::jsonb),
    'byStatus', coalesce((select jsonb_object_agg(status, n) from (
        select status, count(*) as n from classified group by status) as st), '{}'::jsonb),
    'activeRecently', (select count(*) from classified
                        where status = 'active'
                          and last_seen_at > now() - make_interval(mins => p_active_minutes)),
    'activeWindowMinutes', p_active_minutes)
$$;
revoke all on function autopilot.admin_session_overview(integer)
  from public, anon, authenticated;
grant execute on function autopilot.admin_session_overview(integer) to service_role;

-- A page of sessions, newest activity first, keyset-paginated on (last_seen_at, id).
-- No token hashes and no answers: counts only.
create or replace function autopilot.admin_list_sessions(
  p_limit integer default 50, p_before_seen timestamptz default null, p_before_id uuid default null
) returns jsonb
language sql
stable
set search_path = ''
as $$
  select coalesce(jsonb_agg(row_data order by last_seen_at desc, id desc), '[]'::jsonb)
  from (
    select s.last_seen_at, s.id, jsonb_build_object(
      'id', s.id,
      'phase', s.phase,
      'status', autopilot_private.session_status(s.claimed_by_profile_id, s.completed_at, s.expires_at),
      'currentQuestionIndex', s.current_question_index,
      'answerCount', (select count(*) from jsonb_object_keys(s.answers)),
      'roiInputCount', (select count(*) from jsonb_object_keys(s.roi_inputs)),
      'claimedByProfileId', s.claimed_by_profile_id,
      'version', s.version,
      'createdAt', s.created_at,
      'lastSeenAt', s.last_seen_at,
      'expiresAt', s.expires_at) as row_data
    from autopilot.sessions s
    where p_before_seen is null
       or (s.last_seen_at, s.id) < (p_before_seen, coalesce(p_before_id, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid))
    order by s.last_seen_at desc, s.id desc
    limit least(greatest(p_limit, 1), 200)
  ) as page
$$;
revoke all on function autopilot.admin_list_sessions(integer, timestamptz, uuid)
  from public, anon, authenticated;
grant execute on function autopilot.admin_list_sessions(integer, timestamptz, uuid)
  to service_role;

-- ===== supabase/schemas/50_conversations.sql
-- Conversations with the agent: messages, idempotent message posts, one reply per message,
-- the extraction lease, and the merge of LLM-extracted answers (which never overwrites
-- what a person said).

-- Owned by a user or by a session; a session's newest conversation is its current one.
create table autopilot.conversations (
  id uuid primary key default gen_random_uuid(),
  user_id uuid references autopilot.profiles (id) on delete cascade,
  session_id uuid references autopilot.sessions (id) on delete cascade,
  phase autopilot.session_phase not null default 'discovery',
  title text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint conversations_owner_check check (user_id is not null or session_id is not null)
);
create index conversations_session_id_idx on autopilot.conversations (session_id)
  where session_id is not null;
create index conversations_user_id_idx on autopilot.conversations (user_id, updated_at desc)
  where user_id is not null;
alter table autopilot.conversations enable row level security;
revoke all on autopilot.conversations from public, anon, authenticated;
grant all on autopilot.conversations to service_role;
grant select on autopilot.conversations to authenticated;
create policy conversations_owner_select on autopilot.conversations
  for select to authenticated using (user_id = (select auth.uid()));

alter table autopilot.sessions
  add constraint sessions_conversation_id_fkey foreign key (conversation_id)
  references autopilot.conversations (id) on delete set null;

-- One user message has at most one assistant reply (messages_one_reply_idx). Precedence
-- when two writers meet on one reply (save_assistant_message):
--   complete beats aborted (an aborted row is upgraded to complete, with the full content);
--   a complete reply is never downgraded;
--   error (a model outage) stands: it is never replaced, and an error write never replaces
--   a complete or aborted reply.
-- So whatever comes first stands, except that complete upgrades aborted.
create table autopilot.messages (
  id uuid primary key default gen_random_uuid(),
  conversation_id uuid not null references autopilot.conversations (id) on delete cascade,
  role text not null check (role in ('user', 'assistant', 'system')),
  content text not null,
  status text not null default 'complete'
    check (status in ('complete', 'streaming', 'aborted', 'error')),
  reply_to uuid references autopilot.messages (id) on delete set null,
  -- Idempotency-Key of the POST that created a user message (a retry finds its reply).
  idempotency_key text check (char_length(idempotency_key) <= 200),
  prompt_tokens integer,
  completion_tokens integer,
  total_tokens integer,
  model text,
  -- What the offline agent asked in this message (a question or ROI input key).
  metadata jsonb not null default '{}'::jsonb check (jsonb_typeof(metadata) = 'object'),
  created_at timestamptz not null default clock_timestamp()
);
create index messages_conversation_created_idx on autopilot.messages (conversation_id, created_at);
create unique index messages_idempotency_idx on autopilot.messages (conversation_id, idempotency_key)
  where idempotency_key is not null;
create index messages_reply_to_idx on autopilot.messages (reply_to) where reply_to is not null;
create unique index messages_one_reply_idx on autopilot.messages (reply_to)
  where role = 'assistant';
alter table autopilot.messages enable row level security;
revoke all on autopilot.messages from public, anon, authenticated;
grant all on autopilot.messages to service_role;
grant select on autopilot.messages to authenticated;

-- One extraction per conversation at a time, across instances: a lease with an expiry
-- (a crashed holder cannot block forever) and the newest message asked for meanwhile.
create table autopilot.extraction_leases (
  conversation_id uuid primary key references autopilot.conversations (id) on delete cascade,
  holder text,
  lease_until timestamptz not null default '-infinity',
  requested_message_id uuid,
  updated_at timestamptz not null default now()
);
alter table autopilot.extraction_leases enable row level security;
revoke all on autopilot.extraction_leases from public, anon, authenticated;
grant all on autopilot.extraction_leases to service_role;
grant select on autopilot.extraction_leases to authenticated;

-- A conversation's phase is its owner's: after a write that moved the owner's phase.
create or replace function autopilot_private.follow_phase(
  p_session_id uuid, p_user_id uuid, p_phase autopilot.session_phase
) returns void
language sql
set search_path = ''
as $$
  update autopilot.conversations set phase = p_phase
   where ((p_session_id is not null and session_id = p_session_id)
          or (p_session_id is null and user_id = p_user_id))
     and phase <> p_phase
$$;
revoke all on function autopilot_private.follow_phase(uuid, uuid, autopilot.session_phase)
  from public, anon, authenticated;
grant execute on function autopilot_private.follow_phase(uuid, uuid, autopilot.session_phase)
  to service_role;

------------------------------------------------------------------------------------------
-- Conversations
------------------------------------------------------------------------------------------
-- The first step of p_steps (in asking order) of phase p_phase or a later one whose key is
-- not in p_given, or null.
create or replace function autopilot_private.opening_step(
  p_steps jsonb, p_phase autopilot.session_phase, p_given jsonb
) returns jsonb
language sql
stable
set search_path = ''
as $$
  select s.step
    from jsonb_array_elements(coalesce(p_steps, '[]'::jsonb)) with ordinality as s(step, n)
   where (s.step ->> 'phase')::autopilot.session_phase >= p_phase
     and not (coalesce(p_given, '{}'::jsonb) ? (s.step ->> 'key'))
   order by s.n
   limit 1
$$;
revoke all on function autopilot_private.opening_step(jsonb, autopilot.session_phase, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.opening_step(
  jsonb, autopilot.session_phase, jsonb) to service_role;

-- Owned by a user or by a session; a session's newest conversation becomes its current
-- one. The phase starts as the owner's. A new conversation holds the agent's opening
-- message, written in the same transaction without a model call: a greeting and the first
-- question the owner has not answered, so the visitor's first message answers that
-- question (the offline agent records it against the key stored in the message's
-- metadata.asked). The catalogue lives in the service and comes in as p_opening:
--   {"greeting": text, "done": text, "steps": [{"phase", "key", "asked", "text"}, ...]}
-- in asking order (src/autopilot_api/services/opening.py); a step of the owner's phase or a
-- later one is open while its key is in neither answers nor roi_inputs. Without p_opening
-- nothing is written.
-- Returns {"conversation": row, "opening": message or null}.
-- An owner holds at most p_max_per_owner conversations: past it 422 too_many_conversations
-- and nothing is stored (counted under lock_owner, so two concurrent creations cannot both
-- pass). A claim may move a session's conversations to a user past the cap: the cap
-- governs creation, a claim never fails on it.
create or replace function autopilot.create_conversation(
  p_user_id uuid default null, p_session_id uuid default null, p_title text default null,
  p_opening jsonb default null, p_max_per_owner integer default 10
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  c autopilot.conversations;
  m autopilot.messages;
  owner_phase autopilot.session_phase := 'discovery';
  owner_answers jsonb;
  owner_roi jsonb;
  step jsonb;
  held integer;
begin
  if p_user_id is not null then
    perform autopilot_private.ensure_profile(p_user_id, null);
    select phase, answers, roi_inputs into owner_phase, owner_answers, owner_roi
      from autopilot.discovery_profiles where profile_id = p_user_id;
  elsif p_session_id is not null then
    select phase, answers, roi_inputs into owner_phase, owner_answers, owner_roi
      from autopilot.sessions
     where id = p_session_id and claimed_by_profile_id is null and expires_at > now();
    if not found then
      perform autopilot_private.fail(404, 'session_not_found', 'No active session.');
    end if;
  else
    perform autopilot_private.fail(422, 'validation_error', 'A conversation needs an owner.');
  end if;

  perform autopilot_private.lock_owner('conversations', p_user_id, p_session_id);
  if p_user_id is not null then
    select count(*) into held from autopilot.conversations where user_id = p_user_id;
  else
    select count(*) into held from autopilot.conversations where session_id = p_session_id;
  end if;
  if held >= p_max_per_owner then
    perform autopilot_private.fail(422, 'too_many_conversations',
      format('You have %s conversations, as many as one visitor may have; go on in one of '
             'them (GET /api/v1/conversations lists them).', held),
      jsonb_build_object('limit', p_max_per_owner, 'held', held));
  end if;

  insert into autopilot.conversations (user_id, session_id, phase, title)
  values (p_user_id, case when p_user_id is null then p_session_id end, owner_phase, p_title)
  returning * into c;

  if p_user_id is null then
    update autopilot.sessions set conversation_id = c.id, updated_at = now()
     where id = p_session_id;
  end if;

  if p_opening is not null then
    -- As the offline agent goes on: the first step not stored, from the owner's phase on.
    step := autopilot_private.opening_step(p_opening -> 'steps', owner_phase,
      coalesce(owner_answers, '{}'::jsonb) || coalesce(owner_roi, '{}'::jsonb));
    insert into autopilot.messages (conversation_id, role, content, status, metadata)
    values (
      c.id, 'assistant',
      concat_ws(' ', p_opening ->> 'greeting', coalesce(step ->> 'text', p_opening ->> 'done')),
      'complete',
      case when step ? 'asked' then jsonb_build_object('asked', step -> 'asked')
           else '{}'::jsonb end)
    returning * into m;
  end if;

  return jsonb_build_object('conversation', to_jsonb(c),
                            'opening', case when m.id is null then null else to_jsonb(m) end);
end
$$;
revoke all on function autopilot.create_conversation(uuid, uuid, text, jsonb, integer)
  from public, anon, authenticated;
grant execute on function autopilot.create_conversation(uuid, uuid, text, jsonb, integer) to service_role;

------------------------------------------------------------------------------------------
-- Messages
------------------------------------------------------------------------------------------
-- Store a user message. With an Idempotency-Key already used in this conversation,
-- nothing is stored: the first message and its reply (if any) come back instead, or 422
-- idempotency_key_reused when the key came with other text (the first turn stands). At
-- p_max_messages user messages the conversation is full (422 conversation_full; each has at
-- most one reply, so it holds at most 2 * p_max_messages + 1 messages with its opening).
-- A retry with a used key is answered before the cap: it stores nothing.
create or replace function autopilot.append_user_message(
  p_conversation_id uuid, p_content text, p_idempotency_key text default null,
  p_max_messages integer default 100
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  m autopilot.messages;
  reply autopilot.messages;
  held integer;
begin
  if p_idempotency_key is not null then
    select * into m from autopilot.messages
     where conversation_id = p_conversation_id and idempotency_key = p_idempotency_key;
    if found then
      if m.content <> p_content then
        perform autopilot_private.fail(422, 'idempotency_key_reused',
          'This Idempotency-Key was used with a different message; send a new key with a '
          'new message.');
      end if;
      select * into reply from autopilot.messages
       where reply_to = m.id and role = 'assistant' order by created_at desc limit 1;
      return jsonb_build_object('message', to_jsonb(m), 'replayed', true,
        'reply', case when reply.id is null then null else to_jsonb(reply) end);
    end if;
  end if;

  -- The conversation's row lock: concurrent posts to it count one after another.
  perform 1 from autopilot.conversations where id = p_conversation_id for update;
  select count(*) into held from autopilot.messages
   where conversation_id = p_conversation_id and role = 'user';
  if held >= p_max_messages then
    perform autopilot_private.fail(422, 'conversation_full',
      format('This conversation holds %s messages from you, as many as one may; start a new '
             'conversation (POST /api/v1/conversations) to go on.', held),
      jsonb_build_object('limit', p_max_messages, 'held', held));
  end if;

  insert into autopilot.messages (conversation_id, role, content, idempotency_key)
  values (p_conversation_id, 'user', p_content, p_idempotency_key)
  on conflict (conversation_id, idempotency_key) where idempotency_key is not null do nothing
  returning * into m;
  if m.id is null then
    -- a concurrent retry won the insert
    return autopilot.append_user_message(p_conversation_id, p_content, p_idempotency_key,
                                         p_max_messages);
  end if;
  update autopilot.conversations set updated_at = now() where id = p_conversation_id;
  return jsonb_build_object('message', to_jsonb(m), 'replayed', false, 'reply', null);
end
$$;
revoke all on function autopilot.append_user_message(uuid, text, text, integer)
  from public, anon, authenticated;
grant execute on function autopilot.append_user_message(uuid, text, text, integer) to service_role;

-- Store the reply to p_reply_to with the precedence above; returns the reply that stands
-- (the caller's, or the one already stored).
create or replace function autopilot.save_assistant_message(
  p_conversation_id uuid, p_reply_to uuid, p_content text, p_status text,
  p_model text default null, p_prompt_tokens integer default null,
  p_completion_tokens integer default null, p_metadata jsonb default '{}'::jsonb
) returns autopilot.messages
language plpgsql
set search_path = ''
as $$
declare
  m autopilot.messages;
begin
  if p_reply_to is null then
    perform autopilot_private.fail(422, 'validation_error', 'A reply needs the message it answers.');
  end if;

  insert into autopilot.messages as stored (
    conversation_id, role, content, status, reply_to, model,
    prompt_tokens, completion_tokens, total_tokens, metadata)
  values (
    p_conversation_id, 'assistant', coalesce(p_content, ''), p_status, p_reply_to, p_model,
    p_prompt_tokens, p_completion_tokens, p_prompt_tokens + p_completion_tokens,
    coalesce(p_metadata, '{}'::jsonb))
  on conflict (reply_to) where role = 'assistant' do update set
    content = excluded.content,
    status = excluded.status,
    model = excluded.model,
    prompt_tokens = excluded.prompt_tokens,
    completion_tokens = excluded.completion_tokens,
    total_tokens = excluded.total_tokens,
    metadata = excluded.metadata
  where stored.status in ('aborted', 'streaming') and excluded.status = 'complete'
  returning * into m;

  if m.id is null then
    -- The reply already stored stands (the conflicting row is committed and visible now).
    select * into m from autopilot.messages
     where reply_to = p_reply_to and role = 'assistant';
    return m;
  end if;
  update autopilot.conversations set updated_at = now() where id = p_conversation_id;
  return m;
end
$$;
revoke all on function autopilot.save_assistant_message(
  uuid, uuid, text, text, text, integer, integer, jsonb) from public, anon, authenticated;
grant execute on function autopilot.save_assistant_message(
  uuid, uuid, text, text, text, integer, integer, jsonb) to service_role;

------------------------------------------------------------------------------------------
-- Extraction: a lease per conversation, and the merge of what the model extracted
------------------------------------------------------------------------------------------
-- Ask for an extraction up to p_message_id. Returns true when the caller now holds the
-- lease and should run; false when another holder runs (it will see the newer request).
create or replace function autopilot.request_extraction(
  p_conversation_id uuid, p_message_id uuid, p_holder text, p_lease_seconds integer default 60
) returns boolean
language plpgsql
set search_path = ''
as $$
declare
  acquired boolean;
begin
  insert into autopilot.extraction_leases as l
    (conversation_id, holder, lease_until, requested_message_id, updated_at)
  values (p_conversation_id, p_holder, now() + make_interval(secs => p_lease_seconds),
          p_message_id, now())
  on conflict (conversation_id) do update set
    requested_message_id = excluded.requested_message_id,
    holder = case when l.lease_until < now() or l.holder = excluded.holder
                  then excluded.holder else l.holder end,
    lease_until = case when l.lease_until < now() or l.holder = excluded.holder
                       then excluded.lease_until else l.lease_until end,
    updated_at = now()
  returning l.holder = p_holder into acquired;
  return acquired;
end
$$;
revoke all on function autopilot.request_extraction(uuid, uuid, text, integer)
  from public, anon, authenticated;
grant execute on function autopilot.request_extraction(uuid, uuid, text, integer)
  to service_role;

-- Done with an extraction up to p_processed_message_id. When a newer message was asked
-- for meanwhile, the caller keeps the lease and returns that message id to run again
-- (superseding every request in between); otherwise the lease is released (null).
create or replace function autopilot.finish_extraction(
  p_conversation_id uuid, p_holder text, p_processed_message_id uuid,
  p_lease_seconds integer default 60
) returns uuid
language plpgsql
set search_path = ''
as $$
declare
  l autopilot.extraction_leases;
begin
  select * into l from autopilot.extraction_leases
   where conversation_id = p_conversation_id for update;
  if not found or l.holder is distinct from p_holder then
    return null;
  end if;
  if l.requested_message_id is not null
     and l.requested_message_id is distinct from p_processed_message_id then
    update autopilot.extraction_leases
       set lease_until = now() + make_interval(secs => p_lease_seconds), updated_at = now()
     where conversation_id = p_conversation_id;
    return l.requested_message_id;
  end if;
  update autopilot.extraction_leases
     set holder = null, lease_until = '-infinity', updated_at = now()
   where conversation_id = p_conversation_id;
  return null;
end
$$;
revoke all on function autopilot.finish_extraction(uuid, text, uuid, integer)
  from public, anon, authenticated;
grant execute on function autopilot.finish_extraction(uuid, text, uuid, integer)
  to service_role;

-- Merge what the model extracted into the session (if given) or the profile, judging
-- stored values by p_rules (the catalogue's, see 20_progress.sql). Bumps the version only
-- when something changed; advances the phase when that completes one (p_phase_keys, see
-- advance_phase). Returns the changed keys, the new version and the phase.
create or replace function autopilot.merge_extracted_progress(
  p_session_id uuid, p_profile_id uuid, p_answers jsonb, p_roi_inputs jsonb, p_rules jsonb,
  p_phase_keys jsonb default null
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  before_answers jsonb;
  before_roi jsonb;
  before_phase autopilot.session_phase;
  after_answers jsonb;
  after_roi jsonb;
  after_phase autopilot.session_phase;
  changed text[];
  changed_roi text[];
  new_version integer;
  subject_profile uuid := case when p_session_id is null then p_profile_id end;
begin
  if p_session_id is not null then
    select answers, roi_inputs, phase, version
      into before_answers, before_roi, before_phase, new_version
      from autopilot.sessions
     where id = p_session_id and claimed_by_profile_id is null for update;
  elsif p_profile_id is not null then
    select answers, roi_inputs, phase, version
      into before_answers, before_roi, before_phase, new_version
      from autopilot.discovery_profiles where profile_id = p_profile_id for update;
  end if;
  if before_answers is null then
    return jsonb_build_object('changed_keys', '[]'::jsonb, 'changed_roi_keys', '[]'::jsonb,
                              'version', null, 'phase', null);
  end if;

  after_answers := autopilot_private.merge_extracted_entries(before_answers, p_answers, p_rules);
  after_roi := autopilot_private.merge_extracted_entries(before_roi, p_roi_inputs, p_rules);
  changed := autopilot_private.changed_keys(before_answers, after_answers);
  changed_roi := autopilot_private.changed_keys(before_roi, after_roi);
  after_phase := autopilot_private.advance_phase(before_phase, before_answers || before_roi,
    after_answers || after_roi, p_phase_keys);

  if cardinality(changed) + cardinality(changed_roi) > 0 then
    if p_session_id is not null then
      update autopilot.sessions
         set answers = after_answers, roi_inputs = after_roi, phase = after_phase,
             version = version + 1, updated_at = now()
       where id = p_session_id returning version into new_version;
    else
      update autopilot.discovery_profiles
         set answers = after_answers, roi_inputs = after_roi, phase = after_phase,
             version = version + 1, updated_at = now()
       where profile_id = p_profile_id returning version into new_version;
    end if;
    perform autopilot_private.record_event(p_session_id, subject_profile, 'extracted', 'system',
      'extraction', jsonb_build_object('keys', to_jsonb(changed),
        'roiKeys', to_jsonb(changed_roi), 'version', new_version));
    if after_phase <> before_phase then
      perform autopilot_private.follow_phase(p_session_id, p_profile_id, after_phase);
      perform autopilot_private.record_event(p_session_id, subject_profile, 'phase_changed',
        'system', 'extraction', jsonb_build_object('from', before_phase, 'to', after_phase));
    end if;
  end if;
  return jsonb_build_object('changed_keys', to_jsonb(changed),
                            'changed_roi_keys', to_jsonb(changed_roi), 'version', new_version,
                            'phase', after_phase);
end
$$;
revoke all on function autopilot.merge_extracted_progress(uuid, uuid, jsonb, jsonb, jsonb, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot.merge_extracted_progress(uuid, uuid, jsonb, jsonb, jsonb, jsonb)
  to service_role;

-- ===== supabase/schemas/60_idempotency.sql
-- Retries after a timeout. A 503 can hide a committed write (the HTTP client gave up, the
-- transaction did not), so the calls that are not naturally idempotent take an
-- Idempotency-Key: the outcome is stored in the transaction that has the effect, and a
-- retry with the same key gets that outcome back.
--
-- One row per (caller, operation, key). Only successes are stored: a failed call rolls
-- back with everything it did, this row included, so its retry simply runs again.
-- A key means nothing to another caller; deleting the caller (an expired or deleted
-- session, a deleted user) deletes its keys and the outcomes they hold.
create table autopilot.idempotency_keys (
  user_id uuid references autopilot.profiles (id) on delete cascade,
  session_id uuid references autopilot.sessions (id) on delete cascade,
  scope text generated always as (
    coalesce('user:' || user_id::text, 'session:' || session_id::text)) stored,
  operation text not null check (char_length(operation) <= 100),
  key text not null check (char_length(key) between 1 and 200),
  -- SHA-256 of the request's parameters: the same key with another request is refused.
  fingerprint text not null check (char_length(fingerprint) = 64),
  -- The result returned the first time; null only inside the transaction that stores it.
  response jsonb,
  created_at timestamptz not null default now(),
  expires_at timestamptz not null,
  primary key (scope, operation, key),
  constraint idempotency_keys_owner_check check ((user_id is null) <> (session_id is null))
);
create index idempotency_keys_expires_at_idx on autopilot.idempotency_keys (expires_at);
create index idempotency_keys_session_idx on autopilot.idempotency_keys (session_id)
  where session_id is not null;
create index idempotency_keys_user_idx on autopilot.idempotency_keys (user_id)
  where user_id is not null;
alter table autopilot.idempotency_keys enable row level security;
revoke all on autopilot.idempotency_keys from public, anon, authenticated;
grant all on autopilot.idempotency_keys to service_role;
grant select on autopilot.idempotency_keys to authenticated;

create or replace function autopilot_private.request_fingerprint(p_request jsonb)
returns text
language sql
immutable
set search_path = ''
as $$
  select encode(sha256(convert_to(p_request::text, 'UTF8')), 'hex')
$$;
revoke all on function autopilot_private.request_fingerprint(jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.request_fingerprint(jsonb) to service_role;

-- Reserve the key for this call, or return the stored outcome of the call that used it.
-- Null: go ahead (then idempotency_finish in the same transaction). A concurrent call
-- with the same key waits here until the first commits (and gets its outcome) or rolls
-- back (and goes ahead itself). An expired key is taken over as if it were new.
-- The caller is a user, else a session (as the search-session functions resolve it).
-- A caller holds at most p_max_keys keys: a new key past the cap drops the caller's oldest
-- outcomes. A retry comes within seconds of its first try, not after the caller's next
-- p_max_keys keyed calls, so the guarantee holds where it matters while what one caller
-- can make us store stays bounded.
create or replace function autopilot_private.idempotency_begin(
  p_user_id uuid, p_session_id uuid, p_operation text, p_key text, p_request jsonb,
  p_ttl_seconds integer, p_max_keys integer
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  request_print text := autopilot_private.request_fingerprint(p_request);
  caller_scope text := coalesce('user:' || p_user_id::text, 'session:' || p_session_id::text);
  stored autopilot.idempotency_keys;
begin
  insert into autopilot.idempotency_keys as k
    (user_id, session_id, operation, key, fingerprint, response, expires_at)
  values (p_user_id, case when p_user_id is null then p_session_id end, p_operation, p_key,
          request_print, null, now() + make_interval(secs => greatest(p_ttl_seconds, 1)))
  on conflict (scope, operation, key) do update
    set fingerprint = excluded.fingerprint, response = null, created_at = now(),
        expires_at = excluded.expires_at
    where k.expires_at <= now()
  returning * into stored;
  if found then
    -- A new key: one caller's new keys one at a time, and the oldest past the cap go.
    perform autopilot_private.lock_owner('idempotency_keys', p_user_id, p_session_id);
    delete from autopilot.idempotency_keys
     where (scope, operation, key) in (
       select old.scope, old.operation, old.key from autopilot.idempotency_keys old
        where old.scope = caller_scope and old.response is not null
        order by old.created_at desc
        offset greatest(p_max_keys - 1, 0));
    return null;
  end if;

  select * into stored from autopilot.idempotency_keys
   where scope = caller_scope and operation = p_operation and key = p_key;
  if stored.fingerprint <> request_print then
    perform autopilot_private.fail(422, 'idempotency_key_reused',
      'This Idempotency-Key was used with a different request; send a new key with a new request.');
  end if;
  if stored.response is null then
    -- Only this transaction could have left it so (used the key twice): never a replay.
    perform autopilot_private.fail(409, 'idempotency_key_in_use',
      'A request with this Idempotency-Key is still being answered; retry shortly.');
  end if;
  return stored.response;
end
$$;
revoke all on function autopilot_private.idempotency_begin(uuid, uuid, text, text, jsonb, integer, integer)
  from public, anon, authenticated;
grant execute on function autopilot_private.idempotency_begin(uuid, uuid, text, text, jsonb, integer, integer)
  to service_role;

create or replace function autopilot_private.idempotency_finish(
  p_user_id uuid, p_session_id uuid, p_operation text, p_key text, p_response jsonb
) returns void
language sql
set search_path = ''
as $$
  update autopilot.idempotency_keys set response = p_response
   where scope = coalesce('user:' || p_user_id::text, 'session:' || p_session_id::text)
     and operation = p_operation and key = p_key
$$;
revoke all on function autopilot_private.idempotency_finish(uuid, uuid, text, text, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.idempotency_finish(uuid, uuid, text, text, jsonb)
  to service_role;

-- One batch of expired keys (the caller loops, as for sessions); never waits on a live call.
create or replace function autopilot.cleanup_expired_idempotency_keys(
  p_batch_size integer default 500
) returns integer
language sql
set search_path = ''
as $$
  with doomed as (
    select scope, operation, key from autopilot.idempotency_keys
     where expires_at < now()
     order by expires_at
     limit greatest(p_batch_size, 1)
     for update skip locked
  ), gone as (
    delete from autopilot.idempotency_keys k using doomed
     where (k.scope, k.operation, k.key) = (doomed.scope, doomed.operation, doomed.key)
    returning 1
  )
  select count(*)::integer from gone
$$;
revoke all on function autopilot.cleanup_expired_idempotency_keys(integer)
  from public, anon, authenticated;
grant execute on function autopilot.cleanup_expired_idempotency_keys(integer) to service_role;

-- ===== supabase/schemas/70_search_sessions.sql
-- Progressive-loading search sessions: a long result list loaded batch by batch. Every
-- change of the cursor or the ids is one statement under the row lock: no read-modify-write
-- from Python, so concurrent calls cannot lose each other's work.
create table autopilot.search_sessions (
  id text primary key check (id ~ '^search_[0-9]+_[0-9a-f]{8}$'),
  owner_user_id uuid references autopilot.profiles (id) on delete cascade,
  owner_session_id uuid references autopilot.sessions (id) on delete cascade,
  search_query jsonb not null check (jsonb_typeof(search_query) = 'object'),
  company_batches jsonb not null check (jsonb_typeof(company_batches) = 'array'),
  total_discovered integer not null default 0,
  batch_index integer not null default 0,
  is_active boolean not null default true,
  cache_hits integer not null default 0,
  cache_misses integer not null default 0,
  last_accessed timestamptz not null default now(),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  fetched_count integer not null default 0,
  -- The highest position handed out (see add_discovered_ids); positions may have gaps.
  last_position integer not null default 0,
  constraint search_sessions_owner_check check (
    (owner_user_id is null) <> (owner_session_id is null))
);
create index search_sessions_owner_user_idx on autopilot.search_sessions (owner_user_id)
  where owner_user_id is not null;
create index search_sessions_owner_session_idx on autopilot.search_sessions (owner_session_id)
  where owner_session_id is not null;
create index search_sessions_active_idx on autopilot.search_sessions (is_active);
create index search_sessions_last_accessed_idx on autopilot.search_sessions (last_accessed desc);
alter table autopilot.search_sessions enable row level security;
revoke all on autopilot.search_sessions from public, anon, authenticated;
grant all on autopilot.search_sessions to service_role;
grant select on autopilot.search_sessions to authenticated;
create policy search_sessions_owner_select on autopilot.search_sessions
  for select to authenticated using (owner_user_id = (select auth.uid()));

-- A search session's discovered ids, one row each, keyed by (search session, id): an
-- append probes and inserts its batch, an unfetched page reads the first rows of a partial
-- index, so both cost in proportion to the batch, not to the total (measured in
-- bench/storage_bounds.py against two bigint[] columns, which both grew with the total).
create table autopilot.search_session_ids (
  search_session_id text not null references autopilot.search_sessions (id) on delete cascade,
  id bigint not null,
  -- Order of first discovery, 1-based and dense within a search session.
  position integer not null,
  fetched boolean not null default false,
  primary key (search_session_id, id)
);
create index search_session_ids_unfetched_idx
  on autopilot.search_session_ids (search_session_id, position) where not fetched;
alter table autopilot.search_session_ids enable row level security;
revoke all on autopilot.search_session_ids from public, anon, authenticated;
grant all on autopilot.search_session_ids to service_role;
grant select on autopilot.search_session_ids to authenticated;

-- Lock the caller's search session without handing its row back, or fail: 404 when it is
-- not theirs (no existence leak), 409 when it was cleared and p_require_active.
create or replace function autopilot_private.lock_search_session(
  p_id text, p_user_id uuid, p_session_id uuid, p_require_active boolean
) returns void
language plpgsql
set search_path = ''
as $$
declare
  active boolean;
begin
  select is_active into active from autopilot.search_sessions
   where id = p_id
     and (owner_user_id = p_user_id or owner_session_id = p_session_id)
   for update;
  if not found then
    perform autopilot_private.fail(404, 'search_session_not_found', 'No such search session.');
  end if;
  if p_require_active and not active then
    perform autopilot_private.fail(409, 'session_inactive', 'This search session was cleared.');
  end if;
end
$$;
revoke all on function autopilot_private.lock_search_session(text, uuid, uuid, boolean)
  from public, anon, authenticated;
grant execute on function autopilot_private.lock_search_session(text, uuid, uuid, boolean)
  to service_role;

-- Lock and return the caller's search session, or fail as lock_search_session does.
create or replace function autopilot_private.owned_search_session(
  p_id text, p_user_id uuid, p_session_id uuid, p_require_active boolean
) returns autopilot.search_sessions
language plpgsql
set search_path = ''
as $$
declare
  s autopilot.search_sessions;
begin
  perform autopilot_private.lock_search_session(p_id, p_user_id, p_session_id, p_require_active);
  select * into s from autopilot.search_sessions where id = p_id;
  return s;
end
$$;
revoke all on function autopilot_private.owned_search_session(text, uuid, uuid, boolean)
  from public, anon, authenticated;
grant execute on function autopilot_private.owned_search_session(text, uuid, uuid, boolean)
  to service_role;

create or replace function autopilot_private.search_stats(s autopilot.search_sessions)
returns jsonb
language sql
immutable
set search_path = ''
as $$
  select jsonb_build_object(
    'session_id', s.id,
    'is_active', s.is_active,
    'total_discovered', s.total_discovered,
    'profiles_fetched', s.fetched_count,
    'unfetched', s.total_discovered - s.fetched_count,
    'batch_index', s.batch_index,
    'total_batches', jsonb_array_length(s.company_batches),
    'batches_remaining', greatest(jsonb_array_length(s.company_batches) - s.batch_index - 1, 0),
    'cache_hits', s.cache_hits,
    'cache_misses', s.cache_misses,
    'cache_hit_rate', case when s.cache_hits + s.cache_misses = 0 then 0
                           else round(s.cache_hits::numeric / (s.cache_hits + s.cache_misses), 4)
                      end,
    'search_query', s.search_query,
    'last_accessed', s.last_accessed,
    'created_at', s.created_at)
$$;
revoke all on function autopilot_private.search_stats(autopilot.search_sessions)
  from public, anon, authenticated;
grant execute on function autopilot_private.search_stats(autopilot.search_sessions)
  to service_role;

-- The query is measured as JSON text (what a client sends and reads back), before
-- anything is written: over p_query_max_bytes → 422 search_query_too_large. An owner holds
-- at most p_max_per_owner search sessions, cleared ones included (they keep their ids);
-- at the cap the oldest cleared ones are deleted to make room, and with none cleared the
-- call is refused (422 too_many_search_sessions).
create or replace function autopilot.create_search_session(
  p_id text, p_user_id uuid, p_session_id uuid, p_search_query jsonb, p_batches jsonb,
  p_max_per_owner integer default 3, p_query_max_bytes integer default 8192
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  s autopilot.search_sessions;
  query_bytes integer := octet_length(p_search_query::text);
  owner_session uuid := case when p_user_id is null then p_session_id end;
  held integer;
  active integer;
begin
  if query_bytes > p_query_max_bytes then
    perform autopilot_private.fail(422, 'search_query_too_large',
      format('A search query is limited to %s bytes (as JSON); this one has %s. '
             'Nothing was stored.', p_query_max_bytes, query_bytes),
      jsonb_build_object('field', 'searchQuery', 'limitBytes', p_query_max_bytes,
                         'bytes', query_bytes));
  end if;
  if p_user_id is not null then
    perform autopilot_private.ensure_profile(p_user_id, null);
  end if;

  perform autopilot_private.lock_owner('search_sessions', p_user_id, owner_session);
  select count(*), count(*) filter (where is_active) into held, active
    from autopilot.search_sessions
   where owner_user_id = p_user_id or owner_session_id = owner_session;
  if held >= p_max_per_owner then
    delete from autopilot.search_sessions
     where id in (select id from autopilot.search_sessions
                   where (owner_user_id = p_user_id or owner_session_id = owner_session)
                     and not is_active
                   order by last_accessed
                   limit held - p_max_per_owner + 1);
    if active >= p_max_per_owner then
      perform autopilot_private.fail(422, 'too_many_search_sessions',
        format('You have %s active search sessions, as many as one visitor may have; clear '
               'one (DELETE /api/v1/search-sessions/{id}) to start another.', active),
        jsonb_build_object('limit', p_max_per_owner, 'active', active));
    end if;
  end if;

  insert into autopilot.search_sessions
    (id, owner_user_id, owner_session_id, search_query, company_batches)
  values (p_id, p_user_id, owner_session, p_search_query, p_batches)
  returning * into s;
  return jsonb_build_object('session_id', s.id, 'first_batch', s.company_batches -> 0,
    'total_batches', jsonb_array_length(s.company_batches));
end
$$;
revoke all on function autopilot.create_search_session(text, uuid, uuid, jsonb, jsonb, integer, integer)
  from public, anon, authenticated;
grant execute on function autopilot.create_search_session(text, uuid, uuid, jsonb, jsonb, integer, integer)
  to service_role;

-- Hand out the next batch exactly once, whatever the concurrency. With an Idempotency-Key,
-- a retry gets the batch the first call got. The result carries `replayed`.
create or replace function autopilot.next_search_batch(
  p_id text, p_user_id uuid, p_session_id uuid,
  p_idempotency_key text default null, p_idempotency_ttl_seconds integer default 86400,
  p_idempotency_max_keys integer default 100
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  operation constant text := 'search_sessions.next_batch';
  -- 404 unless the caller's; the 409 for a cleared one comes after the replay, which
  -- answers as the first call did.
  s autopilot.search_sessions := autopilot_private.owned_search_session(
    p_id, p_user_id, p_session_id, false);
  replay jsonb;
  result jsonb;
begin
  if p_idempotency_key is not null then
    replay := autopilot_private.idempotency_begin(p_user_id, p_session_id, operation,
      p_idempotency_key, jsonb_build_object('id', p_id), p_idempotency_ttl_seconds,
      p_idempotency_max_keys);
    if replay is not null then
      return replay || '{"replayed": true}';
    end if;
  end if;

  if not s.is_active then
    perform autopilot_private.fail(409, 'session_inactive', 'This search session was cleared.');
  end if;
  if s.batch_index + 1 >= jsonb_array_length(s.company_batches) then
    -- Not stored under the key (the failure rolls it back): a retry is exhausted too.
    perform autopilot_private.fail(404, 'batch_exhausted', 'Every batch was handed out.',
      jsonb_build_object('totalBatches', jsonb_array_length(s.company_batches)));
  end if;
  update autopilot.search_sessions
     set batch_index = batch_index + 1, last_accessed = now(), updated_at = now()
   where id = p_id
  returning * into s;
  result := jsonb_build_object('batch', s.company_batches -> s.batch_index,
    'batch_index', s.batch_index, 'total_batches', jsonb_array_length(s.company_batches));

  if p_idempotency_key is not null then
    perform autopilot_private.idempotency_finish(p_user_id, p_session_id, operation,
      p_idempotency_key, result);
  end if;
  return result || '{"replayed": false}';
end
$$;
revoke all on function autopilot.next_search_batch(text, uuid, uuid, text, integer, integer)
  from public, anon, authenticated;
grant execute on function autopilot.next_search_batch(text, uuid, uuid, text, integer, integer)
  to service_role;

-- Append ids not seen before (in this call or any earlier one), keeping the order of
-- first discovery. Past p_max_ids in total the whole call is refused and nothing is added.
-- Through the primary key only (INSERT ... ON CONFLICT), so the plan does not depend on the
-- table's statistics: an anti-join the planner chose after an analyse that had not seen
-- this search session compared every incoming id with every stored one (the second call of
-- 10,000 ids took 4.3 s, the third ran into the statement timeout). Positions keep the
-- order of first discovery: each call numbers its distinct ids after last_position, so
-- positions may have gaps.
create or replace function autopilot.add_discovered_ids(
  p_id text, p_user_id uuid, p_session_id uuid, p_ids bigint[],
  p_max_ids integer default 100000
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  total integer;
  base integer;
  distinct_ids integer;
  added integer;
begin
  perform autopilot_private.lock_search_session(p_id, p_user_id, p_session_id, true);
  select total_discovered, last_position into total, base
    from autopilot.search_sessions where id = p_id;
  -- Under the row lock no other call appends to this search session.
  insert into autopilot.search_session_ids (search_session_id, id, position)
  select p_id, incoming.id, (base + row_number() over (order by incoming.first_seen))::integer
    from (
      select t.id, min(t.ord) as first_seen
        from unnest(p_ids) with ordinality as t(id, ord)
       group by t.id
    ) as incoming
  on conflict (search_session_id, id) do nothing;
  get diagnostics added = row_count;
  if total + added > p_max_ids then
    perform autopilot_private.fail(422, 'search_session_full',
      format('A search session holds at most %s discovered ids; it holds %s and this call '
             'would add %s. Nothing was added: start a new search session.',
             p_max_ids, total, added),
      jsonb_build_object('limit', p_max_ids, 'totalDiscovered', total, 'wouldAdd', added));
  end if;
  select count(distinct t.id) into distinct_ids from unnest(p_ids) as t(id);
  update autopilot.search_sessions
     set total_discovered = total + added, last_position = base + distinct_ids,
         last_accessed = now(), updated_at = now()
   where id = p_id;
  return jsonb_build_object('added', added, 'total_discovered', total + added);
end
$$;
revoke all on function autopilot.add_discovered_ids(text, uuid, uuid, bigint[], integer)
  from public, anon, authenticated;
grant execute on function autopilot.add_discovered_ids(text, uuid, uuid, bigint[], integer)
  to service_role;

-- Mark ids fetched in full; ids never discovered are refused (422) and nothing changes.
-- With an Idempotency-Key, a retry gets the first call's outcome. The result carries
-- `replayed`.
create or replace function autopilot.mark_profiles_fetched(
  p_id text, p_user_id uuid, p_session_id uuid, p_ids bigint[], p_cache_hits integer,
  p_idempotency_key text default null, p_idempotency_ttl_seconds integer default 86400,
  p_idempotency_max_keys integer default 100
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  operation constant text := 'search_sessions.fetched';
  s autopilot.search_sessions := autopilot_private.owned_search_session(
    p_id, p_user_id, p_session_id, false);
  replay jsonb;
  unknown bigint[];
  marked integer;
  result jsonb;
begin
  if p_idempotency_key is not null then
    replay := autopilot_private.idempotency_begin(p_user_id, p_session_id, operation,
      p_idempotency_key,
      jsonb_build_object('id', p_id, 'ids', to_jsonb(p_ids), 'cache_hits', p_cache_hits),
      p_idempotency_ttl_seconds, p_idempotency_max_keys);
    if replay is not null then
      return replay || '{"replayed": true}';
    end if;
  end if;

  if not s.is_active then
    perform autopilot_private.fail(409, 'session_inactive', 'This search session was cleared.');
  end if;
  with incoming as (
    select t.id, min(t.ord) as first_seen
      from unnest(p_ids) with ordinality as t(id, ord)
     group by t.id
  ), touched as (
    insert into autopilot.search_session_ids as k (search_session_id, id, position, fetched)
    select p_id, incoming.id, 0, true from incoming
    on conflict (search_session_id, id) do update set fetched = true where not k.fetched
    returning k.id, k.xmax = 0 as inserted
  )
  select count(*) filter (where not touched.inserted),
         array_agg(touched.id order by incoming.first_seen) filter (where touched.inserted)
    into marked, unknown
    from touched join incoming on incoming.id = touched.id;
  if cardinality(unknown) > 0 then
    perform autopilot_private.fail(422, 'ids_not_discovered',
      'Some ids were never discovered in this search session.',
      jsonb_build_object('ids', to_jsonb(unknown[1:50])));
  end if;

  update autopilot.search_sessions
     set fetched_count = fetched_count + marked,
         cache_hits = cache_hits + least(p_cache_hits, cardinality(p_ids)),
         cache_misses = cache_misses + greatest(cardinality(p_ids) - p_cache_hits, 0),
         last_accessed = now(), updated_at = now()
   where id = p_id
  returning * into s;
  result := jsonb_build_object('marked', marked, 'profiles_fetched', s.fetched_count);

  if p_idempotency_key is not null then
    perform autopilot_private.idempotency_finish(p_user_id, p_session_id, operation,
      p_idempotency_key, result);
  end if;
  return result || '{"replayed": false}';
end
$$;
revoke all on function autopilot.mark_profiles_fetched(
  text, uuid, uuid, bigint[], integer, text, integer, integer) from public, anon, authenticated;
grant execute on function autopilot.mark_profiles_fetched(
  text, uuid, uuid, bigint[], integer, text, integer, integer) to service_role;

-- Discovered but not yet fetched, in discovery order (a read that counts as access).
create or replace function autopilot.unfetched_ids(
  p_id text, p_user_id uuid, p_session_id uuid, p_count integer
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  s autopilot.search_sessions := autopilot_private.owned_search_session(
    p_id, p_user_id, p_session_id, false);
  page jsonb;
begin
  update autopilot.search_sessions set last_accessed = now() where id = p_id;
  select coalesce(jsonb_agg(pending.id order by pending.position), '[]') into page
    from (select k.id, k.position from autopilot.search_session_ids k
           where k.search_session_id = p_id and not k.fetched
           order by k.position
           limit greatest(p_count, 0)) as pending;
  return jsonb_build_object('ids', page, 'remaining', s.total_discovered - s.fetched_count);
end
$$;
revoke all on function autopilot.unfetched_ids(text, uuid, uuid, integer)
  from public, anon, authenticated;
grant execute on function autopilot.unfetched_ids(text, uuid, uuid, integer) to service_role;

create or replace function autopilot.search_session_stats(
  p_id text, p_user_id uuid, p_session_id uuid
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  s autopilot.search_sessions := autopilot_private.owned_search_session(
    p_id, p_user_id, p_session_id, false);
begin
  update autopilot.search_sessions set last_accessed = now() where id = p_id returning * into s;
  return autopilot_private.search_stats(s);
end
$$;
revoke all on function autopilot.search_session_stats(text, uuid, uuid)
  from public, anon, authenticated;
grant execute on function autopilot.search_session_stats(text, uuid, uuid) to service_role;

-- The caller's active search sessions, most recently accessed first.
create or replace function autopilot.list_search_sessions(
  p_user_id uuid, p_session_id uuid, p_limit integer
) returns jsonb
language sql
stable
set search_path = ''
as $$
  select coalesce(jsonb_agg(autopilot_private.search_stats(s) order by s.last_accessed desc), '[]')
  from (
    select * from autopilot.search_sessions
     where (owner_user_id = p_user_id or owner_session_id = p_session_id) and is_active
     order by last_accessed desc
     limit least(greatest(p_limit, 1), 50)
  ) as s
$$;
revoke all on function autopilot.list_search_sessions(uuid, uuid, integer)
  from public, anon, authenticated;
grant execute on function autopilot.list_search_sessions(uuid, uuid, integer) to service_role;

-- Soft clear: one (404 when not the caller's) or all of the caller's; returns the count.
create or replace function autopilot.clear_search_sessions(
  p_user_id uuid, p_session_id uuid, p_id text default null
) returns integer
language plpgsql
set search_path = ''
as $$
declare
  cleared integer;
begin
  if p_id is not null then
    perform autopilot_private.owned_search_session(p_id, p_user_id, p_session_id, false);
  end if;
  update autopilot.search_sessions
     set is_active = false, last_accessed = now(), updated_at = now()
   where (owner_user_id = p_user_id or owner_session_id = p_session_id)
     and is_active
     and (p_id is null or id = p_id);
  get diagnostics cleared = row_count;
  return cleared;
end
$$;
revoke all on function autopilot.clear_search_sessions(uuid, uuid, text)
  from public, anon, authenticated;
grant execute on function autopilot.clear_search_sessions(uuid, uuid, text) to service_role;

-- ===== supabase/schemas/80_claim.sql
-- The claim: a signed-up user takes over their anonymous session. One transaction: lock
-- the session, check it, merge it into the user's discovery profile, move what it owns,
-- mark it claimed (kept as a record; its token no longer resolves).

-- What a session owns moves to the user on claim (and through
-- ConversationService.transfer_to_profile): one definition, returns conversations moved.
create or replace function autopilot_private.move_session_belongings(
  p_session_id uuid, p_user_id uuid, p_phase autopilot.session_phase
) returns integer
language plpgsql
set search_path = ''
as $$
declare
  moved integer;
begin
  update autopilot.conversations
     set user_id = p_user_id, session_id = null, phase = p_phase, updated_at = now()
   where session_id = p_session_id;
  get diagnostics moved = row_count;
  update autopilot.search_sessions
     set owner_user_id = p_user_id, owner_session_id = null, updated_at = now()
   where owner_session_id = p_session_id;
  return moved;
end
$$;
revoke all on function autopilot_private.move_session_belongings(
  uuid, uuid, autopilot.session_phase) from public, anon, authenticated;
grant execute on function autopilot_private.move_session_belongings(
  uuid, uuid, autopilot.session_phase) to service_role;

-- Same user again: the same result (idempotent); another user: 409. The merge judges
-- stored answers by p_rules, the catalogue's (see 20_progress.sql). A dry run merges and
-- writes nothing.
create or replace function autopilot.claim_session(
  p_token_hash text, p_user_id uuid, p_rules jsonb, p_email text default null,
  p_dry_run boolean default false
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  s autopilot.sessions;
  dp autopilot.discovery_profiles;
  merged autopilot_private.progress;
  moved integer := 0;
begin
  -- A claimed session keeps its token hash: the same user claiming again finds it.
  select * into s from autopilot.sessions
   where id = autopilot_private.session_for_token(p_token_hash) for update;
  if not found or (s.claimed_by_profile_id is null and s.expires_at <= now()) then
    perform autopilot_private.fail(404, 'session_not_found', 'No session to claim.');
  end if;

  if s.claimed_by_profile_id is not null then
    if s.claimed_by_profile_id <> p_user_id then
      perform autopilot_private.fail(409, 'session_already_claimed',
        'This session was claimed by another account.');
    end if;
    select * into dp from autopilot.discovery_profiles where profile_id = p_user_id;
    return jsonb_build_object('profile', to_jsonb(dp), 'session_id', s.id,
      'already_claimed', true, 'conversations_moved', 0, 'dry_run', p_dry_run);
  end if;

  if not p_dry_run then
    perform autopilot_private.ensure_profile(p_user_id, p_email);
  end if;
  select * into dp from autopilot.discovery_profiles where profile_id = p_user_id for update;
  if not found then
    -- dry run for a user with no profile yet: merge into an empty one, write nothing
    dp.profile_id := p_user_id;
    dp.current_question_index := 0;
    dp.phase := 'discovery';
    dp.answers := '{}'::jsonb;
    dp.roi_inputs := '{}'::jsonb;
    dp.selected_product_ids := '{}'::uuid[];
    dp.version := 0;
    dp.created_at := now();
    dp.updated_at := now();
  end if;

  merged := autopilot_private.merge_progress(
    row(dp.answers, dp.roi_inputs, dp.phase, dp.current_question_index,
        dp.selected_product_ids, dp.timeframe)::autopilot_private.progress,
    row(s.answers, s.roi_inputs, s.phase, s.current_question_index,
        s.selected_product_ids, s.timeframe)::autopilot_private.progress,
    p_rules);

  dp.answers := merged.answers;
  dp.roi_inputs := merged.roi_inputs;
  dp.phase := merged.phase;
  dp.current_question_index := merged.current_question_index;
  dp.selected_product_ids := merged.selected_product_ids;
  dp.timeframe := merged.timeframe;

  if p_dry_run then
    select count(*) into moved from autopilot.conversations where session_id = s.id;
    return jsonb_build_object('profile', to_jsonb(dp), 'session_id', s.id,
      'already_claimed', false, 'conversations_moved', moved, 'dry_run', true);
  end if;

  update autopilot.discovery_profiles set
    answers = dp.answers,
    roi_inputs = dp.roi_inputs,
    phase = dp.phase,
    current_question_index = dp.current_question_index,
    selected_product_ids = dp.selected_product_ids,
    timeframe = dp.timeframe,
    version = version + 1,
    updated_at = now()
  where profile_id = p_user_id
  returning * into dp;

  moved := autopilot_private.move_session_belongings(s.id, p_user_id, dp.phase);

  update autopilot.sessions
     set claimed_by_profile_id = p_user_id, claimed_at = now(), updated_at = now(),
         version = version + 1
   where id = s.id;
  perform autopilot_private.record_event(s.id, p_user_id, 'claimed', 'user', p_user_id::text,
    jsonb_build_object('conversationsMoved', moved, 'profileVersion', dp.version));

  return jsonb_build_object('profile', to_jsonb(dp), 'session_id', s.id,
    'already_claimed', false, 'conversations_moved', moved, 'dry_run', false);
end
$$;
revoke all on function autopilot.claim_session(text, uuid, jsonb, text, boolean)
  from public, anon, authenticated;
grant execute on function autopilot.claim_session(text, uuid, jsonb, text, boolean)
  to service_role;

-- Conversations of a session already claimed by this user (e.g. one created by a request
-- that raced the claim) move to the user too.
create or replace function autopilot.transfer_conversations_to_profile(
  p_session_id uuid, p_user_id uuid
) returns integer
language plpgsql
set search_path = ''
as $$
declare
  owner_phase autopilot.session_phase;
begin
  if not exists (select 1 from autopilot.sessions
                  where id = p_session_id and claimed_by_profile_id = p_user_id) then
    perform autopilot_private.fail(404, 'session_not_found',
      'No session claimed by this user.');
  end if;
  select phase into owner_phase from autopilot.discovery_profiles where profile_id = p_user_id;
  return autopilot_private.move_session_belongings(p_session_id, p_user_id, owner_phase);
end
$$;
revoke all on function autopilot.transfer_conversations_to_profile(uuid, uuid)
  from public, anon, authenticated;
grant execute on function autopilot.transfer_conversations_to_profile(uuid, uuid)
  to service_role;

-- ===== supabase/schemas/85_auth_users.sql
-- A Supabase user deleted: their profile and everything that hangs off it go too, and so
-- do the session records they claimed (they hold copies of the answers). A user
-- soft-deleted by Supabase Auth's admin API (`should_soft_delete`: an UPDATE that sets
-- auth.users.deleted_at and scrambles the email, phone and metadata, keeping the row)
-- takes their data along exactly as a hard DELETE of the row does: one function (it reads
-- only old.id), fired by both triggers; only the first soft delete fires it.
--
-- SECURITY DEFINER: Supabase Auth deletes as its own role, which has no rights on our
-- tables. Private, so PostgREST never exposes it.
create or replace function autopilot_private.handle_auth_user_deleted()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  delete from autopilot.sessions where claimed_by_profile_id = old.id;
  delete from autopilot.profiles where id = old.id;
  return old;
end
$$;
revoke all on function autopilot_private.handle_auth_user_deleted()
  from public, anon, authenticated;

create trigger autopilot_on_auth_user_deleted
  after delete on auth.users
  for each row execute function autopilot_private.handle_auth_user_deleted();

create trigger autopilot_on_auth_user_soft_deleted
  after update of deleted_at on auth.users
  for each row
  when (new.deleted_at is not null and old.deleted_at is null)
  execute function autopilot_private.handle_auth_user_deleted();

-- ===== supabase/schemas/90_service_role.sql
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
