-- Lifecycle (completion, status), single-use tickets for the live event stream, and the
-- admin overview of sessions.

alter table autopilot.sessions add column if not exists completed_at timestamptz;
alter table autopilot.discovery_profiles add column if not exists completed_at timestamptz;
create index if not exists sessions_last_seen_idx on autopilot.sessions (last_seen_at desc, id desc);

-- active | completed | claimed | expired, one rule for every reader.
create or replace function autopilot_private.session_status(
  p_claimed_by uuid, p_completed_at timestamptz, p_expires_at timestamptz
) returns text
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
  select case
    when p_claimed_by is not null then 'claimed'
    when p_completed_at is not null then 'completed'
    when p_expires_at <= now() then 'expired'
    else 'active'
  end
$$;

-- Completion is allowed from greenlight only; completing twice changes nothing.
create or replace function autopilot.complete_session(p_session_id uuid)
returns autopilot.sessions
language plpgsql
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

create or replace function autopilot.complete_discovery_profile(p_user_id uuid)
returns autopilot.discovery_profiles
language plpgsql
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

------------------------------------------------------------------------------------------
-- Tickets: EventSource cannot send Authorization, so a signed-in browser trades its bearer
-- token for a short-lived, single-use ticket (stored hashed) to put in the stream's URL.
------------------------------------------------------------------------------------------
create table autopilot.event_tickets (
  ticket_hash text primary key check (ticket_hash ~ '^[0-9a-f]{64}$'),
  profile_id uuid not null,
  expires_at timestamptz not null,
  created_at timestamptz not null default now()
);
create index event_tickets_expires_idx on autopilot.event_tickets (expires_at);

create or replace function autopilot.issue_event_ticket(
  p_ticket_hash text, p_profile_id uuid, p_ttl_seconds integer
) returns timestamptz
language plpgsql
as $$
declare
  expiry timestamptz := now() + make_interval(secs => p_ttl_seconds);
begin
  delete from autopilot.event_tickets where expires_at < now() - interval '1 hour';
  insert into autopilot.event_tickets (ticket_hash, profile_id, expires_at)
  values (p_ticket_hash, p_profile_id, expiry);
  return expiry;
end
$$;

-- Single use: the ticket is deleted as it is read.
create or replace function autopilot.consume_event_ticket(p_ticket_hash text)
returns uuid
language sql
as $$
  delete from autopilot.event_tickets
   where ticket_hash = p_ticket_hash and expires_at > now()
  returning profile_id
$$;

------------------------------------------------------------------------------------------
-- Admin
------------------------------------------------------------------------------------------
create or replace function autopilot.admin_session_overview(p_active_minutes integer default 15)
returns jsonb
language sql
stable
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

-- A page of sessions, newest activity first, keyset-paginated on (last_seen_at, id).
-- No token hashes and no answers: counts only.
create or replace function autopilot.admin_list_sessions(
  p_limit integer default 50, p_before_seen timestamptz default null, p_before_id uuid default null
) returns jsonb
language sql
stable
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

select autopilot_private.secure_schema();
