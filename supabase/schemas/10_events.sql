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
