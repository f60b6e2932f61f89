-- One visitor, one fair share of storage (issue 20, item 2 and the idempotency keys of
-- item 5). Every cap is checked in the function that would store past it, under a lock that
-- two concurrent calls of the same owner cannot both pass, and the numbers come from the
-- service's settings as parameters:
-- 1. conversations per owner, and user messages per conversation;
-- 2. search sessions per owner (cleared ones are deleted when room is needed), and the size
--    of a search query as JSON;
-- 3. discovered ids are added and marked fetched through the primary key alone, so the
--    plan does not depend on the table's statistics (it did: see add_discovered_ids);
-- 4. Idempotency-Keys per caller: past the cap the caller's oldest outcomes are dropped;
-- 5. (item 6) a number rule may say `"integer": true`: the stored value must then be a whole
--    number JavaScript holds exactly. The rules themselves are data (answer_rules(), in
--    20261203000150_plausible_bounds.sql), so this part does not depend on them.

------------------------------------------------------------------------------------------
-- Owners
------------------------------------------------------------------------------------------
-- Serialise the creations of one owner (a user, else a session) of one kind, until the
-- transaction ends: a count and the insert it allows cannot interleave with another's.
-- An advisory lock, not the owner's row: PUT /sessions/me must not wait for it.
create or replace function autopilot_private.lock_owner(
  p_kind text, p_user_id uuid, p_session_id uuid
) returns void
language sql
set search_path = pg_catalog, pg_temp
as $$
  select pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(
    p_kind || ':' || coalesce('user:' || p_user_id::text, 'session:' || p_session_id::text), 0))
$$;
revoke all on function autopilot_private.lock_owner(text, uuid, uuid)
  from public, anon, authenticated;
grant execute on function autopilot_private.lock_owner(text, uuid, uuid) to service_role;

------------------------------------------------------------------------------------------
-- 1. Conversations per owner, user messages per conversation
------------------------------------------------------------------------------------------
-- A new signature replaces the old one (an overload next to it would make PostgREST's
-- choice ambiguous). Same as 20261122000400 but for the cap: at p_max_per_owner
-- conversations the owner is refused (422 too_many_conversations) and nothing is stored.
-- A claim may move a session's conversations to a user past the cap: the cap governs
-- creation, a claim never fails on it.
drop function autopilot.create_conversation(uuid, uuid, text, jsonb);

create or replace function autopilot.create_conversation(
  p_user_id uuid default null, p_session_id uuid default null, p_title text default null,
  p_opening jsonb default null, p_max_per_owner integer default 10
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

drop function autopilot.append_user_message(uuid, text, text);

-- Store a user message (as 20261120000300), or refuse it at p_max_messages user messages
-- in the conversation (422 conversation_full; each has at most one reply, so the
-- conversation holds at most 2 * p_max_messages + 1 messages with its opening). A retry
-- with a used Idempotency-Key is answered before the cap: it stores nothing.
create or replace function autopilot.append_user_message(
  p_conversation_id uuid, p_content text, p_idempotency_key text default null,
  p_max_messages integer default 100
) returns jsonb
language plpgsql
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

------------------------------------------------------------------------------------------
-- 2. Search sessions per owner; the size of a search query
------------------------------------------------------------------------------------------
drop function autopilot.create_search_session(text, uuid, uuid, jsonb, jsonb);

-- The query is measured as JSON text (what a client sends and reads back), before
-- anything is written: over p_query_max_bytes → 422 search_query_too_large. An owner holds
-- at most p_max_per_owner search sessions, cleared ones included (they keep their ids);
-- at the cap the oldest cleared ones are deleted to make room, and with none cleared the
-- call is refused (422 too_many_search_sessions).
create or replace function autopilot.create_search_session(
  p_id text, p_user_id uuid, p_session_id uuid, p_search_query jsonb, p_batches jsonb,
  p_max_per_owner integer default 3, p_query_max_bytes integer default 8192
) returns jsonb
language plpgsql
as $$
declare
  s autopilot.search_sessions;
  query_bytes integer := octet_length(p_search_query::text);
  owner_session uuid := case when p_user_id is null then p_session_id end;
  held integer;
  active integer;
begin
  if query_bytes > p_query_max_bytes then
    perform autopilot_private.fail(422, 'search_query_too_large',
      format('A search query is limited to %s bytes (as JSON); this one has %s. '
             'Nothing was stored.', p_query_max_bytes, query_bytes),
      jsonb_build_object('field', 'searchQuery', 'limitBytes', p_query_max_bytes,
                         'bytes', query_bytes));
  end if;
  if p_user_id is not null then
    perform autopilot_private.ensure_profile(p_user_id, null);
  end if;

  perform autopilot_private.lock_owner('search_sessions', p_user_id, owner_session);
  select count(*), count(*) filter (where is_active) into held, active
    from autopilot.search_sessions
   where owner_user_id = p_user_id or owner_session_id = owner_session;
  if held >= p_max_per_owner then
    delete from autopilot.search_sessions
     where id in (select id from autopilot.search_sessions
                   where (owner_user_id = p_user_id or owner_session_id = owner_session)
                     and not is_active
                   order by last_accessed
                   limit held - p_max_per_owner + 1);
    if active >= p_max_per_owner then
      perform autopilot_private.fail(422, 'too_many_search_sessions',
        format('You have %s active search sessions, as many as one visitor may have; clear '
               'one (DELETE /api/v1/search-sessions/{id}) to start another.', active),
        jsonb_build_object('limit', p_max_per_owner, 'active', active));
    end if;
  end if;

  insert into autopilot.search_sessions
    (id, owner_user_id, owner_session_id, search_query, company_batches)
  values (p_id, p_user_id, owner_session, p_search_query, p_batches)
  returning * into s;
  return jsonb_build_object('session_id', s.id, 'first_batch', s.company_batches -> 0,
    'total_batches', jsonb_array_length(s.company_batches));
end
$$;

------------------------------------------------------------------------------------------
-- 3. Discovered ids through the primary key only
------------------------------------------------------------------------------------------
-- Measured (EXPLAIN ANALYZE through psql, PostgreSQL 16): once the table had been analysed
-- while a search session had no rows in the sample, the planner estimated that session's
-- ids at 1 row and appended with a Nested Loop Anti Join over a Materialize of all of
-- them, filtering each incoming id against each stored one: the second call of 10,000 ids
-- took 4.3 s (200,000,000 comparisons), the third ran into the statement timeout (503),
-- and so on until autovacuum analysed the table again. An INSERT ... ON CONFLICT against
-- the primary key, and the same for the fetched marks, probe that unique index once per id
-- whatever the statistics say: no join is left for the planner to choose.
--
-- Positions keep the order of first discovery: each call numbers its distinct ids after the
-- highest number handed out before (last_position); ids already known skip theirs, so
-- positions may have gaps.
alter table autopilot.search_sessions add column last_position integer not null default 0;
update autopilot.search_sessions s
   set last_position = coalesce((select max(k.position) from autopilot.search_session_ids k
                                  where k.search_session_id = s.id), 0);

-- Same signature and behaviour as 20261122000500 (a call past p_max_ids adds nothing).
create or replace function autopilot.add_discovered_ids(
  p_id text, p_user_id uuid, p_session_id uuid, p_ids bigint[],
  p_max_ids integer default 100000
) returns jsonb
language plpgsql
as $$
declare
  total integer;
  base integer;
  distinct_ids integer;
  added integer;
begin
  perform autopilot_private.lock_search_session(p_id, p_user_id, p_session_id, true);
  select total_discovered, last_position into total, base
    from autopilot.search_sessions where id = p_id;
  -- Under the row lock no other call appends to this search session.
  insert into autopilot.search_session_ids (search_session_id, id, position)
  select p_id, incoming.id, (base + row_number() over (order by incoming.first_seen))::integer
    from (
      select t.id, min(t.ord) as first_seen
        from unnest(p_ids) with ordinality as t(id, ord)
       group by t.id
    ) as incoming
  on conflict (search_session_id, id) do nothing;
  get diagnostics added = row_count;
  if total + added > p_max_ids then
    perform autopilot_private.fail(422, 'search_session_full',
      format('A search session holds at most %s discovered ids; it holds %s and this call '
             'would add %s. Nothing was added: start a new search session.',
             p_max_ids, total, added),
      jsonb_build_object('limit', p_max_ids, 'totalDiscovered', total, 'wouldAdd', added));
  end if;
  select count(distinct t.id) into distinct_ids from unnest(p_ids) as t(id);
  update autopilot.search_sessions
     set total_discovered = total + added, last_position = base + distinct_ids,
         last_accessed = now(), updated_at = now()
   where id = p_id;
  return jsonb_build_object('added', added, 'total_discovered', total + added);
end
$$;

------------------------------------------------------------------------------------------
-- 4. Idempotency-Keys per caller
------------------------------------------------------------------------------------------
-- As 20261122000200, and a caller (a user, else a session) holds at most p_max_keys keys:
-- a new key past the cap drops the caller's oldest outcomes. A retry comes within seconds
-- of its first try, not after the caller's next p_max_keys keyed calls, so the guarantee
-- holds where it matters while what one caller can make us store stays bounded.
drop function autopilot_private.idempotency_begin(uuid, uuid, text, text, jsonb, integer);

create or replace function autopilot_private.idempotency_begin(
  p_user_id uuid, p_session_id uuid, p_operation text, p_key text, p_request jsonb,
  p_ttl_seconds integer, p_max_keys integer
) returns jsonb
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  request_print text := autopilot_private.request_fingerprint(p_request);
  caller_scope text := coalesce('user:' || p_user_id::text, 'session:' || p_session_id::text);
  stored autopilot.idempotency_keys;
begin
  insert into autopilot.idempotency_keys as k
    (user_id, session_id, operation, key, fingerprint, response, expires_at)
  values (p_user_id, case when p_user_id is null then p_session_id end, p_operation, p_key,
          request_print, null, now() + make_interval(secs => greatest(p_ttl_seconds, 1)))
  on conflict (scope, operation, key) do update
    set fingerprint = excluded.fingerprint, response = null, created_at = now(),
        expires_at = excluded.expires_at
    where k.expires_at <= now()
  returning * into stored;
  if found then
    -- A new key: one caller's new keys one at a time, and the oldest past the cap go.
    perform autopilot_private.lock_owner('idempotency_keys', p_user_id, p_session_id);
    delete from autopilot.idempotency_keys
     where (scope, operation, key) in (
       select old.scope, old.operation, old.key from autopilot.idempotency_keys old
        where old.scope = caller_scope and old.response is not null
        order by old.created_at desc
        offset greatest(p_max_keys - 1, 0));
    return null;
  end if;

  select * into stored from autopilot.idempotency_keys
   where scope = caller_scope and operation = p_operation and key = p_key;
  if stored.fingerprint <> request_print then
    perform autopilot_private.fail(422, 'idempotency_key_reused',
      'This Idempotency-Key was used with a different request; send a new key with a new request.');
  end if;
  if stored.response is null then
    -- Only this transaction could have left it so (used the key twice): never a replay.
    perform autopilot_private.fail(409, 'idempotency_key_in_use',
      'A request with this Idempotency-Key is still being answered; retry shortly.');
  end if;
  return stored.response;
end
$$;
revoke all on function autopilot_private.idempotency_begin(
  uuid, uuid, text, text, jsonb, integer, integer) from public, anon, authenticated;
grant execute on function autopilot_private.idempotency_begin(
  uuid, uuid, text, text, jsonb, integer, integer) to service_role;

drop function autopilot.next_search_batch(text, uuid, uuid, text, integer);
drop function autopilot.mark_profiles_fetched(text, uuid, uuid, bigint[], integer, text, integer);

-- As 20261122000200, with the key cap passed through.
create or replace function autopilot.next_search_batch(
  p_id text, p_user_id uuid, p_session_id uuid,
  p_idempotency_key text default null, p_idempotency_ttl_seconds integer default 86400,
  p_idempotency_max_keys integer default 100
) returns jsonb
language plpgsql
as $$
declare
  operation constant text := 'search_sessions.next_batch';
  -- 404 unless the caller's; the 409 for a cleared one comes after the replay, which
  -- answers as the first call did.
  s autopilot.search_sessions := autopilot_private.owned_search_session(
    p_id, p_user_id, p_session_id, false);
  replay jsonb;
  result jsonb;
begin
  if p_idempotency_key is not null then
    replay := autopilot_private.idempotency_begin(p_user_id, p_session_id, operation,
      p_idempotency_key, jsonb_build_object('id', p_id), p_idempotency_ttl_seconds,
      p_idempotency_max_keys);
    if replay is not null then
      return replay || '{"replayed": true}';
    end if;
  end if;

  if not s.is_active then
    perform autopilot_private.fail(409, 'session_inactive', 'This search session was cleared.');
  end if;
  if s.batch_index + 1 >= jsonb_array_length(s.company_batches) then
    -- Not stored under the key (the failure rolls it back): a retry is exhausted too.
    perform autopilot_private.fail(404, 'batch_exhausted', 'Every batch was handed out.',
      jsonb_build_object('totalBatches', jsonb_array_length(s.company_batches)));
  end if;
  update autopilot.search_sessions
     set batch_index = batch_index + 1, last_accessed = now(), updated_at = now()
   where id = p_id
  returning * into s;
  result := jsonb_build_object('batch', s.company_batches -> s.batch_index,
    'batch_index', s.batch_index, 'total_batches', jsonb_array_length(s.company_batches));

  if p_idempotency_key is not null then
    perform autopilot_private.idempotency_finish(p_user_id, p_session_id, operation,
      p_idempotency_key, result);
  end if;
  return result || '{"replayed": false}';
end
$$;

-- Mark ids fetched in full; ids never discovered are refused (422) and nothing changes.
-- One INSERT ... ON CONFLICT DO UPDATE through the primary key (see section 3): a known id
-- is marked (when not marked yet), an unknown one is inserted, which tells it apart
-- (xmax = 0 on a row the statement inserted), and then refused, rolling all of it back.
create or replace function autopilot.mark_profiles_fetched(
  p_id text, p_user_id uuid, p_session_id uuid, p_ids bigint[], p_cache_hits integer,
  p_idempotency_key text default null, p_idempotency_ttl_seconds integer default 86400,
  p_idempotency_max_keys integer default 100
) returns jsonb
language plpgsql
as $$
declare
  operation constant text := 'search_sessions.fetched';
  s autopilot.search_sessions := autopilot_private.owned_search_session(
    p_id, p_user_id, p_session_id, false);
  replay jsonb;
  unknown bigint[];
  marked integer;
  result jsonb;
begin
  if p_idempotency_key is not null then
    replay := autopilot_private.idempotency_begin(p_user_id, p_session_id, operation,
      p_idempotency_key,
      jsonb_build_object('id', p_id, 'ids', to_jsonb(p_ids), 'cache_hits', p_cache_hits),
      p_idempotency_ttl_seconds, p_idempotency_max_keys);
    if replay is not null then
      return replay || '{"replayed": true}';
    end if;
  end if;

  if not s.is_active then
    perform autopilot_private.fail(409, 'session_inactive', 'This search session was cleared.');
  end if;
  with incoming as (
    select t.id, min(t.ord) as first_seen
      from unnest(p_ids) with ordinality as t(id, ord)
     group by t.id
  ), touched as (
    insert into autopilot.search_session_ids as k (search_session_id, id, position, fetched)
    select p_id, incoming.id, 0, true from incoming
    on conflict (search_session_id, id) do update set fetched = true where not k.fetched
    returning k.id, k.xmax = 0 as inserted
  )
  select count(*) filter (where not touched.inserted),
         array_agg(touched.id order by incoming.first_seen) filter (where touched.inserted)
    into marked, unknown
    from touched join incoming on incoming.id = touched.id;
  if cardinality(unknown) > 0 then
    perform autopilot_private.fail(422, 'ids_not_discovered',
      'Some ids were never discovered in this search session.',
      jsonb_build_object('ids', to_jsonb(unknown[1:50])));
  end if;

  update autopilot.search_sessions
     set fetched_count = fetched_count + marked,
         cache_hits = cache_hits + least(p_cache_hits, cardinality(p_ids)),
         cache_misses = cache_misses + greatest(cardinality(p_ids) - p_cache_hits, 0),
         last_accessed = now(), updated_at = now()
   where id = p_id
  returning * into s;
  result := jsonb_build_object('marked', marked, 'profiles_fetched', s.fetched_count);

  if p_idempotency_key is not null then
    perform autopilot_private.idempotency_finish(p_user_id, p_session_id, operation,
      p_idempotency_key, result);
  end if;
  return result || '{"replayed": false}';
end
$$;

------------------------------------------------------------------------------------------
-- 5. Whole numbers
------------------------------------------------------------------------------------------
-- As 20261122000300, and a number rule with "integer": true takes only a whole number
-- within JavaScript's safe range (2^53 - 1). jsonb keeps numbers exact, so the comparison
-- sees 9007199254740993 as it was sent.
create or replace function autopilot_private.entry_is_valid(p_key text, p_entry jsonb)
returns boolean
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
  select case
    when r is null then true
    when r ->> 'kind' = 'boolean' then coalesce(jsonb_typeof(v) = 'boolean', false)
    when r ->> 'kind' = 'number' then case
      when jsonb_typeof(v) is distinct from 'number' then false
      else (v #>> '{}')::numeric >= coalesce((r ->> 'minimum')::numeric, 0)
        and ((r ->> 'maximum') is null or (v #>> '{}')::numeric <= (r ->> 'maximum')::numeric)
        and (coalesce((r ->> 'integer')::boolean, false) is false
             or ((v #>> '{}')::numeric = trunc((v #>> '{}')::numeric)
                 and abs((v #>> '{}')::numeric) <= 9007199254740991))
    end
    when r ->> 'kind' = 'choice' then case
      when jsonb_typeof(v) is distinct from 'string' then false
      else exists (select 1 from jsonb_array_elements_text(r -> 'options') as o(option)
                   where lower(o.option) = lower(btrim(v #>> '{}')))
    end
    when r ->> 'kind' = 'text' then case
      when jsonb_typeof(v) is distinct from 'string' then false
      else length(btrim(v #>> '{}')) between 1 and (r ->> 'maxChars')::integer
    end
    else true
  end
  from (select autopilot_private.answer_rules() -> p_key as r,
               case when jsonb_typeof(p_entry) = 'object' then p_entry -> 'value' end as v) as x
$$;

select autopilot_private.secure_schema();

notify pgrst, 'reload schema';
