-- 1. One user message has at most one assistant reply, enforced here: a stream the client left
-- right before its end was stored twice (the completion write, cut short by the disconnect,
-- committed anyway, and the disconnect's own write added a second row).
--
-- Precedence when two writers meet on one reply:
--   complete beats aborted (an aborted row is upgraded to complete, with the full content);
--   a complete reply is never downgraded;
--   error (a model outage) stands: it is never replaced, and an error write never replaces
--   a complete or aborted reply.
-- So whatever comes first stands, except that complete upgrades aborted.

-- Resolve the duplicates a live database may already hold, as the precedence would have
-- (an error that came first stands, else a complete reply, else an aborted one; then the
-- newest), and create the index. One statement: the Supabase CLI runs a migration without
-- a transaction, and a reply written between the delete and the index would fail it. The
-- lock keeps writers waiting until the index exists.
do $$
begin
  lock table autopilot.messages in share row exclusive mode;

  with replies as (
    select id, reply_to, status, created_at,
           first_value(status) over (partition by reply_to order by created_at, id)
             as first_status
      from autopilot.messages
     where role = 'assistant' and reply_to is not null
  ),
  ranked as (
    select id,
           row_number() over (
             partition by reply_to
             order by case
                        when first_status = 'error' and status = 'error' then 0
                        when status = 'complete' then 1
                        when status in ('aborted', 'streaming') then 2
                        else 3
                      end,
                      created_at desc, id desc
           ) as rank
      from replies
  )
  delete from autopilot.messages m
   using ranked r
   where m.id = r.id and r.rank > 1;

  create unique index if not exists messages_one_reply_idx
    on autopilot.messages (reply_to) where role = 'assistant';
end
$$;

-- Store the reply to p_reply_to with the precedence above; returns the reply that stands
-- (the caller's, or the one already stored).
create or replace function autopilot.save_assistant_message(
  p_conversation_id uuid, p_reply_to uuid, p_content text, p_status text,
  p_model text default null, p_prompt_tokens integer default null,
  p_completion_tokens integer default null, p_metadata jsonb default '{}'::jsonb
) returns autopilot.messages
language plpgsql
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

------------------------------------------------------------------------------------------
-- 2. A conversation opens with the agent's question
------------------------------------------------------------------------------------------
-- A new conversation holds the agent's opening message, written in the same transaction
-- without a model call: a greeting and the first question the owner has not answered, so
-- the visitor's first message answers that question (the offline agent records it against
-- the key stored in the message's metadata.asked). The catalogue lives in the service and
-- comes in as p_opening:
--   {"greeting": text, "done": text,
--    "discovery": [{"key", "asked", "text"}, ...], "roi": [{"key", "asked", "text"}, ...]}
-- in asking order; a discovery step is open while its key is not in the owner's answers,
-- an ROI step while its key is not in roi_inputs. Without p_opening nothing is written.
-- Returns {"conversation": row, "opening": message or null}.
drop function if exists autopilot.create_conversation(uuid, uuid, text);

create or replace function autopilot_private.opening_step(
  p_steps jsonb, p_given jsonb
) returns jsonb
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
  select s.step
    from jsonb_array_elements(coalesce(p_steps, '[]'::jsonb)) with ordinality as s(step, n)
   where not (coalesce(p_given, '{}'::jsonb) ? (s.step ->> 'key'))
   order by s.n
   limit 1
$$;

create or replace function autopilot.create_conversation(
  p_user_id uuid default null, p_session_id uuid default null, p_title text default null,
  p_opening jsonb default null
) returns jsonb
language plpgsql
as $$
declare
  c autopilot.conversations;
  m autopilot.messages;
  owner_phase autopilot.session_phase := 'discovery';
  owner_answers jsonb;
  owner_roi jsonb;
  step jsonb;
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

  insert into autopilot.conversations (user_id, session_id, phase, title)
  values (p_user_id, case when p_user_id is null then p_session_id end, owner_phase, p_title)
  returning * into c;

  if p_user_id is null then
    update autopilot.sessions set conversation_id = c.id, updated_at = now()
     where id = p_session_id;
  end if;

  if p_opening is not null then
    -- As the offline agent goes on: discovery, then ROI once every question is answered.
    if owner_phase = 'discovery' then
      step := autopilot_private.opening_step(p_opening -> 'discovery', owner_answers);
    end if;
    if step is null and owner_phase in ('discovery', 'roi') then
      step := autopilot_private.opening_step(p_opening -> 'roi', owner_roi);
    end if;
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

select autopilot_private.secure_schema();
