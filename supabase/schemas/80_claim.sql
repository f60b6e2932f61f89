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
