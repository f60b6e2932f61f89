-- Phases advance in SQL (issue 22), whoever stores what completes one: PUT /sessions/me,
-- PUT /discovery, extraction, the offline agent (which writes through the PUT functions).
--
-- The keys of each phase come from the service's catalogue as data, p_phase_keys:
--   {"discovery": [question keys], "roi": [ROI input keys]}
-- looked up in answers || roi_inputs (question keys are snake_case, ROI keys camelCase, so
-- the union is unambiguous). A phase with no keys there (greenlight) is never complete.
-- Null p_phase_keys: nothing advances.
--
-- The rule, in the transaction of the write:
--   a write COMPLETES a phase when, after it, every key of the phase is stored and, before
--   it, one was missing (it filled the last missing key);
--   the owner then moves on when the phase it is in is the one completed, and on through
--   any phase already complete (every ROI input given before the last question: straight
--   to greenlight);
--   a patch that moves the phase itself (to another phase than the one it is in) is taken
--   as it is: no advance on top of it. Restating the current phase is no move.
-- So a visitor who went back stays there until a write completes a phase anew. The move is
-- audited as phase_changed, and the owner's conversations follow.

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
  phases autopilot.session_phase[] := pg_catalog.enum_range(null::autopilot.session_phase);
  pos integer := pg_catalog.array_position(phases, p_phase);
begin
  if p_phase_keys is null
     or pos >= pg_catalog.cardinality(phases)
     or not autopilot_private.phase_keys_complete(p_phase_keys -> p_phase::text, p_after)
     or autopilot_private.phase_keys_complete(p_phase_keys -> p_phase::text, p_before) then
    return p_phase;
  end if;
  pos := pos + 1;
  while pos < pg_catalog.cardinality(phases)
        and autopilot_private.phase_keys_complete(p_phase_keys -> phases[pos]::text, p_after)
  loop
    pos := pos + 1;
  end loop;
  return phases[pos];
end
$$;

-- A conversation's phase is its owner's.
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

-- New signatures replace the old ones (an overload next to them would make PostgREST's
-- choice ambiguous). The bodies are those of 20261122000500_bounded_storage.sql and
-- 20261120000200_sessions_and_profiles.sql / 20261122000300_typed_answers.sql, with the
-- advance and the conversations following it.
drop function autopilot.update_session_by_token(text, integer, jsonb, integer, integer);
drop function autopilot.update_session_progress(uuid, jsonb, integer, integer);
drop function autopilot.update_discovery_profile(uuid, jsonb, integer, text);
drop function autopilot.merge_extracted_progress(uuid, uuid, jsonb, jsonb);

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
   where id = p_session_id and claimed_by_profile_id is null and expires_at > pg_catalog.now()
   for update;
  if not found then
    perform autopilot_private.fail(404, 'session_not_found', 'No active session.');
  end if;
  old_phase := s.phase;
  if p_expected_version is not null and s.version <> p_expected_version then
    perform autopilot_private.fail(412, 'precondition_failed',
      'The session changed since you read it.', pg_catalog.jsonb_build_object('version', s.version));
  end if;
  merged := s.metadata;
  if p_patch ? 'metadata' then
    merged := autopilot_private.merge_metadata(s.metadata, p_patch -> 'metadata');
    merged_bytes := pg_catalog.octet_length(merged::text);
    if merged_bytes > p_metadata_max_bytes then
      perform autopilot_private.fail(422, 'metadata_too_large',
        pg_catalog.format('Session metadata is limited to %s bytes (as JSON); with this update it would '
               'hold %s. Nothing was stored: send less, or remove keys by setting them to null.',
               p_metadata_max_bytes, merged_bytes),
        pg_catalog.jsonb_build_object('field', 'metadata', 'limitBytes', p_metadata_max_bytes,
                           'resultingBytes', merged_bytes,
                           'storedBytes', pg_catalog.octet_length(s.metadata::text)));
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
    last_seen_at = pg_catalog.now(),
    updated_at = pg_catalog.now()
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
  lifetime interval := pg_catalog.make_interval(secs => p_lifetime_seconds);
  extend boolean;
begin
  select id into sid from autopilot.sessions
   where token_hash = p_token_hash and claimed_by_profile_id is null
     and expires_at > pg_catalog.now();
  if not found then
    return null;
  end if;
  s := autopilot.update_session_progress(sid, p_patch, p_expected_version,
                                         p_metadata_max_bytes, p_phase_keys);
  extend := s.expires_at < pg_catalog.now() + lifetime - interval '1 day';
  if extend then
    update autopilot.sessions set expires_at = pg_catalog.now() + lifetime where id = sid
    returning * into s;
  end if;
  return pg_catalog.to_jsonb(s) || pg_catalog.jsonb_build_object('expiry_extended', extend);
end
$$;

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
      'The discovery profile changed since you read it.',
      pg_catalog.jsonb_build_object('version', dp.version));
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
    updated_at = pg_catalog.now()
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

-- Merge what the model extracted into the session (if given) or the profile. Bumps the
-- version only when something changed; advances the phase when that completes one.
-- Returns the changed keys, the new version and the phase.
create or replace function autopilot.merge_extracted_progress(
  p_session_id uuid, p_profile_id uuid, p_answers jsonb, p_roi_inputs jsonb,
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
    return pg_catalog.jsonb_build_object('changed_keys', '[]'::jsonb,
      'changed_roi_keys', '[]'::jsonb, 'version', null, 'phase', null);
  end if;

  after_answers := autopilot_private.merge_extracted_entries(before_answers, p_answers);
  after_roi := autopilot_private.merge_extracted_entries(before_roi, p_roi_inputs);
  changed := autopilot_private.changed_keys(before_answers, after_answers);
  changed_roi := autopilot_private.changed_keys(before_roi, after_roi);
  after_phase := autopilot_private.advance_phase(before_phase, before_answers || before_roi,
    after_answers || after_roi, p_phase_keys);

  if pg_catalog.cardinality(changed) + pg_catalog.cardinality(changed_roi) > 0 then
    if p_session_id is not null then
      update autopilot.sessions
         set answers = after_answers, roi_inputs = after_roi, phase = after_phase,
             version = version + 1, updated_at = pg_catalog.now()
       where id = p_session_id returning version into new_version;
    else
      update autopilot.discovery_profiles
         set answers = after_answers, roi_inputs = after_roi, phase = after_phase,
             version = version + 1, updated_at = pg_catalog.now()
       where profile_id = p_profile_id returning version into new_version;
    end if;
    perform autopilot_private.record_event(p_session_id, subject_profile, 'extracted', 'system',
      'extraction', pg_catalog.jsonb_build_object('keys', pg_catalog.to_jsonb(changed),
        'roiKeys', pg_catalog.to_jsonb(changed_roi), 'version', new_version));
    if after_phase <> before_phase then
      perform autopilot_private.follow_phase(p_session_id, p_profile_id, after_phase);
      perform autopilot_private.record_event(p_session_id, subject_profile, 'phase_changed',
        'system', 'extraction',
        pg_catalog.jsonb_build_object('from', before_phase, 'to', after_phase));
    end if;
  end if;
  return pg_catalog.jsonb_build_object('changed_keys', pg_catalog.to_jsonb(changed),
    'changed_roi_keys', pg_catalog.to_jsonb(changed_roi), 'version', new_version,
    'phase', after_phase);
end
$$;

revoke execute on function autopilot_private.phase_keys_complete(jsonb, jsonb)
  from public, anon, authenticated;
revoke execute on function autopilot_private.advance_phase(
  autopilot.session_phase, jsonb, jsonb, jsonb) from public, anon, authenticated;
revoke execute on function autopilot_private.follow_phase(uuid, uuid, autopilot.session_phase)
  from public, anon, authenticated;
grant execute on function autopilot_private.phase_keys_complete(jsonb, jsonb) to service_role;
grant execute on function autopilot_private.advance_phase(
  autopilot.session_phase, jsonb, jsonb, jsonb) to service_role;
grant execute on function autopilot_private.follow_phase(uuid, uuid, autopilot.session_phase)
  to service_role;

select autopilot_private.secure_schema();
