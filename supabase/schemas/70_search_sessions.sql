-- Progressive-loading search sessions: a long result list loaded batch by batch. Every
-- change of the cursor or the ids is one statement under the row lock: no read-modify-write
-- from Python, so concurrent calls cannot lose each other's work.
create table autopilot.search_sessions (
  id text primary key check (id ~ '^search_[0-9]+_[0-9a-f]{8}$'),
  owner_user_id uuid references autopilot.profiles (id) on delete cascade,
  owner_session_id uuid references autopilot.sessions (id) on delete cascade,
  search_query jsonb not null check (jsonb_typeof(search_query) = 'object'),
  company_batches jsonb not null check (jsonb_typeof(company_batches) = 'array'),
  total_discovered integer not null default 0,
  batch_index integer not null default 0,
  is_active boolean not null default true,
  cache_hits integer not null default 0,
  cache_misses integer not null default 0,
  last_accessed timestamptz not null default now(),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  fetched_count integer not null default 0,
  -- The highest position handed out (see add_discovered_ids); positions may have gaps.
  last_position integer not null default 0,
  constraint search_sessions_owner_check check (
    (owner_user_id is null) <> (owner_session_id is null))
);
create index search_sessions_owner_user_idx on autopilot.search_sessions (owner_user_id)
  where owner_user_id is not null;
create index search_sessions_owner_session_idx on autopilot.search_sessions (owner_session_id)
  where owner_session_id is not null;
create index search_sessions_active_idx on autopilot.search_sessions (is_active);
create index search_sessions_last_accessed_idx on autopilot.search_sessions (last_accessed desc);
alter table autopilot.search_sessions enable row level security;
revoke all on autopilot.search_sessions from public, anon, authenticated;
grant all on autopilot.search_sessions to service_role;
grant select on autopilot.search_sessions to authenticated;
create policy search_sessions_owner_select on autopilot.search_sessions
  for select to authenticated using (owner_user_id = (select auth.uid()));

-- A search session's discovered ids, one row each, keyed by (search session, id): an
-- append probes and inserts its batch, an unfetched page reads the first rows of a partial
-- index, so both cost in proportion to the batch, not to the total (measured in
-- bench/storage_bounds.py against two bigint[] columns, which both grew with the total).
create table autopilot.search_session_ids (
  search_session_id text not null references autopilot.search_sessions (id) on delete cascade,
  id bigint not null,
  -- Order of first discovery, 1-based and dense within a search session.
  position integer not null,
  fetched boolean not null default false,
  primary key (search_session_id, id)
);
create index search_session_ids_unfetched_idx
  on autopilot.search_session_ids (search_session_id, position) where not fetched;
alter table autopilot.search_session_ids enable row level security;
revoke all on autopilot.search_session_ids from public, anon, authenticated;
grant all on autopilot.search_session_ids to service_role;
grant select on autopilot.search_session_ids to authenticated;

-- Lock the caller's search session without handing its row back, or fail: 404 when it is
-- not theirs (no existence leak), 409 when it was cleared and p_require_active.
create or replace function autopilot_private.lock_search_session(
  p_id text, p_user_id uuid, p_session_id uuid, p_require_active boolean
) returns void
language plpgsql
set search_path = ''
as $$
declare
  active boolean;
begin
  select is_active into active from autopilot.search_sessions
   where id = p_id
     and (owner_user_id = p_user_id or owner_session_id = p_session_id)
   for update;
  if not found then
    perform autopilot_private.fail(404, 'search_session_not_found', 'No such search session.');
  end if;
  if p_require_active and not active then
    perform autopilot_private.fail(409, 'session_inactive', 'This search session was cleared.');
  end if;
end
$$;
revoke all on function autopilot_private.lock_search_session(text, uuid, uuid, boolean)
  from public, anon, authenticated;
grant execute on function autopilot_private.lock_search_session(text, uuid, uuid, boolean)
  to service_role;

-- Lock and return the caller's search session, or fail as lock_search_session does.
create or replace function autopilot_private.owned_search_session(
  p_id text, p_user_id uuid, p_session_id uuid, p_require_active boolean
) returns autopilot.search_sessions
language plpgsql
set search_path = ''
as $$
declare
  s autopilot.search_sessions;
begin
  perform autopilot_private.lock_search_session(p_id, p_user_id, p_session_id, p_require_active);
  select * into s from autopilot.search_sessions where id = p_id;
  return s;
end
$$;
revoke all on function autopilot_private.owned_search_session(text, uuid, uuid, boolean)
  from public, anon, authenticated;
grant execute on function autopilot_private.owned_search_session(text, uuid, uuid, boolean)
  to service_role;

create or replace function autopilot_private.search_stats(s autopilot.search_sessions)
returns jsonb
language sql
immutable
set search_path = ''
as $$
  select jsonb_build_object(
    'session_id', s.id,
    'is_active', s.is_active,
    'total_discovered', s.total_discovered,
    'profiles_fetched', s.fetched_count,
    'unfetched', s.total_discovered - s.fetched_count,
    'batch_index', s.batch_index,
    'total_batches', jsonb_array_length(s.company_batches),
    'batches_remaining', greatest(jsonb_array_length(s.company_batches) - s.batch_index - 1, 0),
    'cache_hits', s.cache_hits,
    'cache_misses', s.cache_misses,
    'cache_hit_rate', case when s.cache_hits + s.cache_misses = 0 then 0
                           else round(s.cache_hits::numeric / (s.cache_hits + s.cache_misses), 4)
                      end,
    'search_query', s.search_query,
    'last_accessed', s.last_accessed,
    'created_at', s.created_at)
$$;
revoke all on function autopilot_private.search_stats(autopilot.search_sessions)
  from public, anon, authenticated;
grant execute on function autopilot_private.search_stats(autopilot.search_sessions)
  to service_role;

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
set search_path = ''
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
revoke all on function autopilot.create_search_session(text, uuid, uuid, jsonb, jsonb, integer, integer)
  from public, anon, authenticated;
grant execute on function autopilot.create_search_session(text, uuid, uuid, jsonb, jsonb, integer, integer)
  to service_role;

-- Hand out the next batch exactly once, whatever the concurrency. With an Idempotency-Key,
-- a retry gets the batch the first call got. The result carries `replayed`.
create or replace function autopilot.next_search_batch(
  p_id text, p_user_id uuid, p_session_id uuid,
  p_idempotency_key text default null, p_idempotency_ttl_seconds integer default 86400,
  p_idempotency_max_keys integer default 100
) returns jsonb
language plpgsql
set search_path = ''
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
revoke all on function autopilot.next_search_batch(text, uuid, uuid, text, integer, integer)
  from public, anon, authenticated;
grant execute on function autopilot.next_search_batch(text, uuid, uuid, text, integer, integer)
  to service_role;

-- Append ids not seen before (in this call or any earlier one), keeping the order of
-- first discovery. Past p_max_ids in total the whole call is refused and nothing is added.
-- Through the primary key only (INSERT ... ON CONFLICT), so the plan does not depend on the
-- table's statistics: an anti-join the planner chose after an analyse that had not seen
-- this search session compared every incoming id with every stored one (the second call of
-- 10,000 ids took 4.3 s, the third ran into the statement timeout). Positions keep the
-- order of first discovery: each call numbers its distinct ids after last_position, so
-- positions may have gaps.
create or replace function autopilot.add_discovered_ids(
  p_id text, p_user_id uuid, p_session_id uuid, p_ids bigint[],
  p_max_ids integer default 100000
) returns jsonb
language plpgsql
set search_path = ''
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
revoke all on function autopilot.add_discovered_ids(text, uuid, uuid, bigint[], integer)
  from public, anon, authenticated;
grant execute on function autopilot.add_discovered_ids(text, uuid, uuid, bigint[], integer)
  to service_role;

-- Mark ids fetched in full; ids never discovered are refused (422) and nothing changes.
-- With an Idempotency-Key, a retry gets the first call's outcome. The result carries
-- `replayed`.
create or replace function autopilot.mark_profiles_fetched(
  p_id text, p_user_id uuid, p_session_id uuid, p_ids bigint[], p_cache_hits integer,
  p_idempotency_key text default null, p_idempotency_ttl_seconds integer default 86400,
  p_idempotency_max_keys integer default 100
) returns jsonb
language plpgsql
set search_path = ''
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
revoke all on function autopilot.mark_profiles_fetched(
  text, uuid, uuid, bigint[], integer, text, integer, integer) from public, anon, authenticated;
grant execute on function autopilot.mark_profiles_fetched(
  text, uuid, uuid, bigint[], integer, text, integer, integer) to service_role;

-- Discovered but not yet fetched, in discovery order (a read that counts as access).
create or replace function autopilot.unfetched_ids(
  p_id text, p_user_id uuid, p_session_id uuid, p_count integer
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  s autopilot.search_sessions := autopilot_private.owned_search_session(
    p_id, p_user_id, p_session_id, false);
  page jsonb;
begin
  update autopilot.search_sessions set last_accessed = now() where id = p_id;
  select coalesce(jsonb_agg(pending.id order by pending.position), '[]') into page
    from (select k.id, k.position from autopilot.search_session_ids k
           where k.search_session_id = p_id and not k.fetched
           order by k.position
           limit greatest(p_count, 0)) as pending;
  return jsonb_build_object('ids', page, 'remaining', s.total_discovered - s.fetched_count);
end
$$;
revoke all on function autopilot.unfetched_ids(text, uuid, uuid, integer)
  from public, anon, authenticated;
grant execute on function autopilot.unfetched_ids(text, uuid, uuid, integer) to service_role;

create or replace function autopilot.search_session_stats(
  p_id text, p_user_id uuid, p_session_id uuid
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  s autopilot.search_sessions := autopilot_private.owned_search_session(
    p_id, p_user_id, p_session_id, false);
begin
  update autopilot.search_sessions set last_accessed = now() where id = p_id returning * into s;
  return autopilot_private.search_stats(s);
end
$$;
revoke all on function autopilot.search_session_stats(text, uuid, uuid)
  from public, anon, authenticated;
grant execute on function autopilot.search_session_stats(text, uuid, uuid) to service_role;

-- The caller's active search sessions, most recently accessed first.
create or replace function autopilot.list_search_sessions(
  p_user_id uuid, p_session_id uuid, p_limit integer
) returns jsonb
language sql
stable
set search_path = ''
as $$
  select coalesce(jsonb_agg(autopilot_private.search_stats(s) order by s.last_accessed desc), '[]')
  from (
    select * from autopilot.search_sessions
     where (owner_user_id = p_user_id or owner_session_id = p_session_id) and is_active
     order by last_accessed desc
     limit least(greatest(p_limit, 1), 50)
  ) as s
$$;
revoke all on function autopilot.list_search_sessions(uuid, uuid, integer)
  from public, anon, authenticated;
grant execute on function autopilot.list_search_sessions(uuid, uuid, integer) to service_role;

-- Soft clear: one (404 when not the caller's) or all of the caller's; returns the count.
create or replace function autopilot.clear_search_sessions(
  p_user_id uuid, p_session_id uuid, p_id text default null
) returns integer
language plpgsql
set search_path = ''
as $$
declare
  cleared integer;
begin
  if p_id is not null then
    perform autopilot_private.owned_search_session(p_id, p_user_id, p_session_id, false);
  end if;
  update autopilot.search_sessions
     set is_active = false, last_accessed = now(), updated_at = now()
   where (owner_user_id = p_user_id or owner_session_id = p_session_id)
     and is_active
     and (p_id is null or id = p_id);
  get diagnostics cleared = row_count;
  return cleared;
end
$$;
revoke all on function autopilot.clear_search_sessions(uuid, uuid, text)
  from public, anon, authenticated;
grant execute on function autopilot.clear_search_sessions(uuid, uuid, text) to service_role;
