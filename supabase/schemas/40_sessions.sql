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
