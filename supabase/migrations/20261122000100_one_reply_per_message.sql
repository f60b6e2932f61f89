-- One user message has at most one assistant reply, enforced here: a stream the client left
-- right before its end was stored twice (the completion write, cut short by the disconnect,
-- committed anyway, and the disconnect's own write added a second row).
--
-- Precedence when two writers meet on one reply:
--   complete beats aborted (an aborted row is upgraded to complete, with the full content);
--   a complete reply is never downgraded;
--   error (a model outage) stands: it is never replaced, and an error write never replaces
--   a complete or aborted reply.
-- So whatever comes first stands, except that complete upgrades aborted.

-- Writers wait until the duplicates are gone and the index exists (inserts conflict).
lock table autopilot.messages in share row exclusive mode;

-- Resolve duplicates a live database may already hold, as the precedence would have: an
-- error that came first stands, else a complete reply, else an aborted one; then the newest.
with replies as (
  select id, reply_to, status, created_at,
         first_value(status) over (partition by reply_to order by created_at, id) as first_status
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

select autopilot_private.secure_schema();
