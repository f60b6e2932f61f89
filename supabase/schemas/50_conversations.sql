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
