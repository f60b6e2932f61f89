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
