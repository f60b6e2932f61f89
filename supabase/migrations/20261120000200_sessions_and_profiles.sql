-- Anonymous sessions, user profiles, discovery profiles, and the minimal conversations
-- table the claim moves. Every state change that must be atomic is one function here.

create type autopilot.session_phase as enum ('discovery', 'roi', 'greenlight');

-- A Supabase user, by id. No foreign key to auth.users: a valid token is enough to start one.
create table autopilot.profiles (
  id uuid primary key,
  email text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create table autopilot.sessions (
  id uuid primary key default gen_random_uuid(),
  -- SHA-256 (hex) of the cookie token; the token itself is never stored.
  token_hash text not null unique check (token_hash ~ '^[0-9a-f]{64}$'),
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
  updated_at timestamptz not null default now()
);
create index sessions_conversation_id_idx on autopilot.sessions (conversation_id);
-- Cleanup scans only what it may delete.
create index sessions_expires_at_idx on autopilot.sessions (expires_at)
  where claimed_by_profile_id is null;
create index sessions_claimed_by_idx on autopilot.sessions (claimed_by_profile_id)
  where claimed_by_profile_id is not null;

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
  updated_at timestamptz not null default now()
);

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

alter table autopilot.sessions
  add constraint sessions_conversation_id_fkey foreign key (conversation_id)
  references autopilot.conversations (id) on delete set null;

-- Owners may read their own rows through the API with their own token (SELECT only).
alter table autopilot.profiles enable row level security;
alter table autopilot.discovery_profiles enable row level security;
alter table autopilot.conversations enable row level security;
alter table autopilot.sessions enable row level security;
create policy profiles_owner_select on autopilot.profiles
  for select to authenticated using (id = auth.uid());
create policy discovery_profiles_owner_select on autopilot.discovery_profiles
  for select to authenticated using (profile_id = auth.uid());
create policy conversations_owner_select on autopilot.conversations
  for select to authenticated using (user_id = auth.uid());
-- sessions: no policy at all; only the service (service_role) reads them.

------------------------------------------------------------------------------------------
-- The audit trail, and the source of the live event stream. Append-only. Written only by
-- the functions that change state, inside their transaction, while they hold the row lock
-- of the session or profile the event belongs to: so for one subject, ids are handed out
-- in commit order and a reader resuming after id N never misses an event below it.
-- No foreign keys: the trail outlives what it describes.
------------------------------------------------------------------------------------------
create table autopilot.session_events (
  id bigserial primary key,
  session_id uuid,
  profile_id uuid,
  event_type text not null check (event_type in (
    'created', 'updated', 'phase_changed', 'completed', 'claimed', 'extracted', 'deleted',
    'expired')),
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

create or replace function autopilot_private.refuse_event_change()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  raise exception 'session_events is append-only';
end
$$;

create trigger session_events_append_only
  before update or delete on autopilot.session_events
  for each row execute function autopilot_private.refuse_event_change();

create or replace function autopilot_private.record_event(
  p_session_id uuid, p_profile_id uuid, p_type text, p_actor_type text, p_actor_id text,
  p_payload jsonb default '{}'::jsonb
) returns void
language sql
set search_path = pg_catalog, pg_temp
as $$
  insert into autopilot.session_events
    (session_id, profile_id, event_type, actor_type, actor_id, payload)
  values (p_session_id, p_profile_id, p_type, p_actor_type, p_actor_id,
          coalesce(p_payload, '{}'::jsonb))
$$;

-- What a patch touched, for the audit trail (keys only, never answer values).
create or replace function autopilot_private.patch_summary(p_patch jsonb, p_version integer)
returns jsonb
language sql
immutable
set search_path = pg_catalog, pg_temp
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

-- updated, and phase_changed when the phase moved.
create or replace function autopilot_private.record_update(
  p_session_id uuid, p_profile_id uuid, p_actor_type text, p_actor_id text, p_patch jsonb,
  p_version integer, p_from autopilot.session_phase, p_to autopilot.session_phase
) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
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

------------------------------------------------------------------------------------------
-- Progress: the fields a session and a discovery profile share, and how patches and
-- merges change them. One definition, used by both tables.
------------------------------------------------------------------------------------------
create type autopilot_private.progress as (
  answers jsonb,
  roi_inputs jsonb,
  phase autopilot.session_phase,
  current_question_index integer,
  selected_product_ids uuid[],
  timeframe text
);

-- Raise a PostgREST-visible error: SQLSTATE PTxyz becomes HTTP xyz, the hint carries our
-- error code, the detail optional JSON.
create or replace function autopilot_private.fail(
  p_status integer, p_code text, p_message text, p_detail jsonb default null
) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  raise exception using
    errcode = 'PT' || p_status::text,
    message = p_message,
    hint = p_code,
    detail = coalesce(p_detail::text, '');
end
$$;

-- Forward one step, or back to any earlier phase; staying put is no transition.
create or replace function autopilot_private.check_phase_transition(
  p_from autopilot.session_phase, p_to autopilot.session_phase
) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
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

-- Apply a patch built by the service: answers/roi entries set or removed per key (never
-- replaced wholesale), scalar fields only when present in the patch.
create or replace function autopilot_private.apply_patch(
  p_current autopilot_private.progress, p_patch jsonb
) returns autopilot_private.progress
language plpgsql
stable
set search_path = pg_catalog, pg_temp
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

-- Per key: an answer the person gave beats one the LLM extracted; otherwise the newer
-- wins (a tie goes to the incoming side).
create or replace function autopilot_private.merge_entries(p_base jsonb, p_incoming jsonb)
returns jsonb
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
  select coalesce(jsonb_object_agg(k, case
      when b is null then i
      when i is null then b
      when coalesce(i ->> 'source', '') = 'user' and coalesce(b ->> 'source', '') <> 'user' then i
      when coalesce(b ->> 'source', '') = 'user' and coalesce(i ->> 'source', '') <> 'user' then b
      when coalesce((i ->> 'updatedAt')::timestamptz, '-infinity')
           >= coalesce((b ->> 'updatedAt')::timestamptz, '-infinity') then i
      else b
    end), '{}'::jsonb)
  from (
    select keys.k, p_base -> keys.k as b, p_incoming -> keys.k as i
    from (select jsonb_object_keys(p_base) as k
          union select jsonb_object_keys(p_incoming)) as keys
  ) as pairs
$$;

-- The claim's merge of a session into a profile: answers and ROI inputs per key as above,
-- phase the furthest, question index the max, product ids the union.
create or replace function autopilot_private.merge_progress(
  p_profile autopilot_private.progress, p_session autopilot_private.progress
) returns autopilot_private.progress
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  result autopilot_private.progress;
begin
  result.answers := autopilot_private.merge_entries(p_profile.answers, p_session.answers);
  result.roi_inputs := autopilot_private.merge_entries(p_profile.roi_inputs, p_session.roi_inputs);
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

------------------------------------------------------------------------------------------
-- Sessions
------------------------------------------------------------------------------------------
create or replace function autopilot.create_session(
  p_token_hash text, p_lifetime_seconds integer, p_metadata jsonb default '{}'::jsonb
) returns autopilot.sessions
language plpgsql
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

-- The hot path: find a live session by token hash and slide it. last_seen_at moves at
-- most once a minute; expires_at at most once a day, so the cookie (re-issued when the
-- expiry moves, flagged by expiry_extended) is re-issued at most once a day. Claimed or
-- expired sessions are not found (null).
create or replace function autopilot.resolve_session(
  p_token_hash text, p_lifetime_seconds integer
) returns jsonb
language plpgsql
as $$
declare
  s autopilot.sessions;
  lifetime interval := make_interval(secs => p_lifetime_seconds);
  extend boolean := false;
begin
  select * into s from autopilot.sessions
   where token_hash = p_token_hash and claimed_by_profile_id is null and expires_at > now();
  if not found then
    return null;
  end if;
  if s.last_seen_at < now() - interval '1 minute' then
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

-- A PUT: lock, check the version (If-Match), apply the patch, bump version. One statement
-- per call, so concurrent PUTs on different keys never lose each other.
create or replace function autopilot.update_session_progress(
  p_session_id uuid, p_patch jsonb, p_expected_version integer default null
) returns autopilot.sessions
language plpgsql
as $$
declare
  s autopilot.sessions;
  next autopilot_private.progress;
  old_phase autopilot.session_phase;
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
  next := autopilot_private.apply_patch(
    row(s.answers, s.roi_inputs, s.phase, s.current_question_index,
        s.selected_product_ids, s.timeframe)::autopilot_private.progress, p_patch);
  update autopilot.sessions set
    answers = next.answers,
    roi_inputs = next.roi_inputs,
    phase = next.phase,
    current_question_index = next.current_question_index,
    selected_product_ids = next.selected_product_ids,
    timeframe = next.timeframe,
    metadata = case when p_patch ? 'metadata' then metadata || (p_patch -> 'metadata')
                    else metadata end,
    version = version + 1,
    last_seen_at = now(),
    updated_at = now()
  where id = p_session_id
  returning * into s;
  if p_patch ? 'phase' then
    update autopilot.conversations set phase = s.phase
     where session_id = p_session_id and phase <> s.phase;
  end if;
  perform autopilot_private.record_update(s.id, null, 'session', s.id::text, p_patch,
    s.version, old_phase, s.phase);
  return s;
end
$$;

-- The PUT hot path in one round trip: resolve the cookie's live session, apply the patch
-- (as above), and slide the expiry, flagged so the cookie is re-issued. Null when the
-- token names no live session.
create or replace function autopilot.update_session_by_token(
  p_token_hash text, p_lifetime_seconds integer, p_patch jsonb,
  p_expected_version integer default null
) returns jsonb
language plpgsql
as $$
declare
  sid uuid;
  s autopilot.sessions;
  lifetime interval := make_interval(secs => p_lifetime_seconds);
  extend boolean;
begin
  select id into sid from autopilot.sessions
   where token_hash = p_token_hash and claimed_by_profile_id is null and expires_at > now();
  if not found then
    return null;
  end if;
  s := autopilot.update_session_progress(sid, p_patch, p_expected_version);
  extend := s.expires_at < now() + lifetime - interval '1 day';
  if extend then
    update autopilot.sessions set expires_at = now() + lifetime where id = sid
    returning * into s;
  end if;
  return to_jsonb(s) || jsonb_build_object('expiry_extended', extend);
end
$$;

-- DELETE /sessions/me: the session and what only it owns (its conversations cascade).
create or replace function autopilot.delete_session(p_session_id uuid)
returns boolean
language plpgsql
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

-- One batch of expired, unclaimed sessions (a function cannot commit between batches;
-- the caller loops). SKIP LOCKED: never waits on, or blocks, a live request.
create or replace function autopilot.cleanup_expired_sessions(p_batch_size integer default 500)
returns integer
language sql
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
------------------------------------------------------------------------------------------
-- Profiles and discovery profiles
------------------------------------------------------------------------------------------
create or replace function autopilot_private.ensure_profile(p_user_id uuid, p_email text)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
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

create or replace function autopilot.get_or_create_discovery_profile(
  p_user_id uuid, p_email text default null
) returns autopilot.discovery_profiles
language plpgsql
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

create or replace function autopilot.update_discovery_profile(
  p_user_id uuid, p_patch jsonb, p_expected_version integer default null,
  p_email text default null
) returns autopilot.discovery_profiles
language plpgsql
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
  if p_patch ? 'phase' then
    update autopilot.conversations set phase = dp.phase
     where user_id = p_user_id and phase <> dp.phase;
  end if;
  perform autopilot_private.record_update(null, p_user_id, 'user', p_user_id::text, p_patch,
    dp.version, old_phase, dp.phase);
  return dp;
end
$$;

-- What a session owns moves to the user on claim (and through
-- ConversationService.transfer_to_profile): one definition, returns conversations moved.
-- Later migrations add what else a session owns.
create or replace function autopilot_private.move_session_belongings(
  p_session_id uuid, p_user_id uuid, p_phase autopilot.session_phase
) returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  moved integer;
begin
  update autopilot.conversations
     set user_id = p_user_id, session_id = null, phase = p_phase, updated_at = now()
   where session_id = p_session_id;
  get diagnostics moved = row_count;
  return moved;
end
$$;

------------------------------------------------------------------------------------------
-- The claim: one transaction. Lock the session, check it, merge into the profile, move
-- its conversations, mark it claimed (kept as a record; its token no longer resolves).
------------------------------------------------------------------------------------------
create or replace function autopilot.claim_session(
  p_token_hash text, p_user_id uuid, p_email text default null, p_dry_run boolean default false
) returns jsonb
language plpgsql
as $$
declare
  s autopilot.sessions;
  dp autopilot.discovery_profiles;
  merged autopilot_private.progress;
  moved integer := 0;
begin
  select * into s from autopilot.sessions where token_hash = p_token_hash for update;
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
        s.selected_product_ids, s.timeframe)::autopilot_private.progress);

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

------------------------------------------------------------------------------------------
-- A Supabase user deleted: their profile and everything that hangs off it go too, and so
-- do the session records they claimed (they hold copies of the answers).
------------------------------------------------------------------------------------------
create or replace function autopilot_private.handle_auth_user_deleted()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  delete from autopilot.sessions where claimed_by_profile_id = old.id;
  delete from autopilot.profiles where id = old.id;
  return old;
end
$$;

drop trigger if exists autopilot_on_auth_user_deleted on auth.users;
create trigger autopilot_on_auth_user_deleted
  after delete on auth.users
  for each row execute function autopilot_private.handle_auth_user_deleted();

select autopilot_private.secure_schema();
