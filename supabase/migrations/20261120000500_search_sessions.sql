-- Progressive-loading search sessions: a long result list loaded batch by batch. Every
-- change of the cursor or the id lists is one UPDATE under the row lock: no
-- read-modify-write from Python, so concurrent calls cannot lose each other's work.

create table autopilot.search_sessions (
  id text primary key check (id ~ '^search_[0-9]+_[0-9a-f]{8}$'),
  owner_user_id uuid references autopilot.profiles (id) on delete cascade,
  owner_session_id uuid references autopilot.sessions (id) on delete cascade,
  search_query jsonb not null check (jsonb_typeof(search_query) = 'object'),
  company_batches jsonb not null check (jsonb_typeof(company_batches) = 'array'),
  discovered_ids bigint[] not null default '{}',
  profiles_fetched bigint[] not null default '{}',
  total_discovered integer not null default 0,
  batch_index integer not null default 0,
  is_active boolean not null default true,
  cache_hits integer not null default 0,
  cache_misses integer not null default 0,
  last_accessed timestamptz not null default now(),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint search_sessions_owner_check check (
    (owner_user_id is null) <> (owner_session_id is null))
);
-- Out of line but uncompressed: compressing a 100,000-id list on every append costs
-- ~70 ms; storing it raw costs ~2 ms and 8 bytes an id.
alter table autopilot.search_sessions alter column discovered_ids set storage external;
alter table autopilot.search_sessions alter column profiles_fetched set storage external;

create index search_sessions_owner_user_idx on autopilot.search_sessions (owner_user_id)
  where owner_user_id is not null;
create index search_sessions_owner_session_idx on autopilot.search_sessions (owner_session_id)
  where owner_session_id is not null;
create index search_sessions_active_idx on autopilot.search_sessions (is_active);
create index search_sessions_last_accessed_idx on autopilot.search_sessions (last_accessed desc);

create policy search_sessions_owner_select on autopilot.search_sessions
  for select to authenticated using (owner_user_id = auth.uid());

-- The claim moves search sessions too.
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
  update autopilot.search_sessions
     set owner_user_id = p_user_id, owner_session_id = null, updated_at = now()
   where owner_session_id = p_session_id;
  return moved;
end
$$;

-- Lock the caller's search session without handing its (large) arrays back, or fail:
-- 404 when it is not theirs (no existence leak), 409 when it was cleared and
-- p_require_active.
create or replace function autopilot_private.lock_search_session(
  p_id text, p_user_id uuid, p_session_id uuid, p_require_active boolean
) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
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

-- Lock and return the caller's search session, or fail as lock_search_session does.
create or replace function autopilot_private.owned_search_session(
  p_id text, p_user_id uuid, p_session_id uuid, p_require_active boolean
) returns autopilot.search_sessions
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  s autopilot.search_sessions;
begin
  perform autopilot_private.lock_search_session(p_id, p_user_id, p_session_id, p_require_active);
  select * into s from autopilot.search_sessions where id = p_id;
  return s;
end
$$;

create or replace function autopilot_private.search_stats(s autopilot.search_sessions)
returns jsonb
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
  select jsonb_build_object(
    'session_id', s.id,
    'is_active', s.is_active,
    'total_discovered', s.total_discovered,
    'profiles_fetched', cardinality(s.profiles_fetched),
    'unfetched', s.total_discovered - cardinality(s.profiles_fetched),
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

-- The ids of p_ids not in p_known, once each, in order of first appearance. A hash
-- anti-join (a correlated NOT EXISTS would rescan p_known per id): 1,000 ids against
-- 100,000 stays cheap.
create or replace function autopilot_private.ids_not_in(p_ids bigint[], p_known bigint[])
returns bigint[]
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
  select coalesce(array_agg(incoming.id order by incoming.first_seen), '{}')
  from (
    select t.id, min(t.ord) as first_seen
    from unnest(p_ids) with ordinality as t(id, ord)
    group by t.id
  ) as incoming
  left join unnest(p_known) as known(id) on known.id = incoming.id
  where known.id is null
$$;

create or replace function autopilot.create_search_session(
  p_id text, p_user_id uuid, p_session_id uuid, p_search_query jsonb, p_batches jsonb
) returns jsonb
language plpgsql
as $$
declare
  s autopilot.search_sessions;
begin
  if p_user_id is not null then
    perform autopilot_private.ensure_profile(p_user_id, null);
  end if;
  insert into autopilot.search_sessions
    (id, owner_user_id, owner_session_id, search_query, company_batches)
  values (p_id, p_user_id, case when p_user_id is null then p_session_id end,
          p_search_query, p_batches)
  returning * into s;
  return jsonb_build_object('session_id', s.id, 'first_batch', s.company_batches -> 0,
    'total_batches', jsonb_array_length(s.company_batches));
end
$$;

-- Hand out the next batch exactly once, whatever the concurrency.
create or replace function autopilot.next_search_batch(
  p_id text, p_user_id uuid, p_session_id uuid
) returns jsonb
language plpgsql
as $$
declare
  s autopilot.search_sessions := autopilot_private.owned_search_session(
    p_id, p_user_id, p_session_id, true);
begin
  if s.batch_index + 1 >= jsonb_array_length(s.company_batches) then
    update autopilot.search_sessions set last_accessed = now() where id = p_id;
    perform autopilot_private.fail(404, 'batch_exhausted', 'Every batch was handed out.',
      jsonb_build_object('totalBatches', jsonb_array_length(s.company_batches)));
  end if;
  update autopilot.search_sessions
     set batch_index = batch_index + 1, last_accessed = now(), updated_at = now()
   where id = p_id
  returning * into s;
  return jsonb_build_object('batch', s.company_batches -> s.batch_index,
    'batch_index', s.batch_index, 'total_batches', jsonb_array_length(s.company_batches));
end
$$;

-- Append ids not seen before (in this call or any earlier one), keeping the order of
-- first discovery. The row is locked first without loading its arrays into the function.
create or replace function autopilot.add_discovered_ids(
  p_id text, p_user_id uuid, p_session_id uuid, p_ids bigint[]
) returns jsonb
language plpgsql
as $$
declare
  fresh bigint[];
  total integer;
begin
  perform autopilot_private.lock_search_session(p_id, p_user_id, p_session_id, true);
  fresh := autopilot_private.ids_not_in(
    p_ids, (select discovered_ids from autopilot.search_sessions where id = p_id));
  update autopilot.search_sessions
     set discovered_ids = discovered_ids || fresh,
         total_discovered = total_discovered + cardinality(fresh),
         last_accessed = now(), updated_at = now()
   where id = p_id
  returning total_discovered into total;
  return jsonb_build_object('added', cardinality(fresh), 'total_discovered', total);
end
$$;

-- Mark ids fetched in full; ids never discovered are refused (422) and nothing changes.
create or replace function autopilot.mark_profiles_fetched(
  p_id text, p_user_id uuid, p_session_id uuid, p_ids bigint[], p_cache_hits integer
) returns jsonb
language plpgsql
as $$
declare
  s autopilot.search_sessions := autopilot_private.owned_search_session(
    p_id, p_user_id, p_session_id, true);
  unknown bigint[];
  fresh bigint[];
begin
  unknown := autopilot_private.ids_not_in(p_ids, s.discovered_ids);
  if cardinality(unknown) > 0 then
    perform autopilot_private.fail(422, 'ids_not_discovered',
      'Some ids were never discovered in this search session.',
      jsonb_build_object('ids', to_jsonb(unknown[1:50])));
  end if;
  fresh := autopilot_private.ids_not_in(p_ids, s.profiles_fetched);

  update autopilot.search_sessions
     set profiles_fetched = profiles_fetched || fresh,
         cache_hits = cache_hits + least(p_cache_hits, cardinality(p_ids)),
         cache_misses = cache_misses + greatest(cardinality(p_ids) - p_cache_hits, 0),
         last_accessed = now(), updated_at = now()
   where id = p_id
  returning * into s;
  return jsonb_build_object('marked', cardinality(fresh),
                            'profiles_fetched', cardinality(s.profiles_fetched));
end
$$;

-- Discovered but not yet fetched, in discovery order (a read that counts as access).
create or replace function autopilot.unfetched_ids(
  p_id text, p_user_id uuid, p_session_id uuid, p_count integer
) returns jsonb
language plpgsql
as $$
declare
  s autopilot.search_sessions := autopilot_private.owned_search_session(
    p_id, p_user_id, p_session_id, false);
  pending bigint[];
begin
  update autopilot.search_sessions set last_accessed = now() where id = p_id;
  pending := (autopilot_private.ids_not_in(s.discovered_ids, s.profiles_fetched))
             [1:greatest(p_count, 0)];
  return jsonb_build_object('ids', to_jsonb(pending),
    'remaining', s.total_discovered - cardinality(s.profiles_fetched));
end
$$;

create or replace function autopilot.search_session_stats(
  p_id text, p_user_id uuid, p_session_id uuid
) returns jsonb
language plpgsql
as $$
declare
  s autopilot.search_sessions := autopilot_private.owned_search_session(
    p_id, p_user_id, p_session_id, false);
begin
  update autopilot.search_sessions set last_accessed = now() where id = p_id returning * into s;
  return autopilot_private.search_stats(s);
end
$$;

-- The caller's active search sessions, most recently accessed first.
create or replace function autopilot.list_search_sessions(
  p_user_id uuid, p_session_id uuid, p_limit integer
) returns jsonb
language sql
stable
as $$
  select coalesce(jsonb_agg(autopilot_private.search_stats(s) order by s.last_accessed desc), '[]')
  from (
    select * from autopilot.search_sessions
     where (owner_user_id = p_user_id or owner_session_id = p_session_id) and is_active
     order by last_accessed desc
     limit least(greatest(p_limit, 1), 50)
  ) as s
$$;

-- Soft clear: one (404 when not the caller's) or all of the caller's; returns the count.
create or replace function autopilot.clear_search_sessions(
  p_user_id uuid, p_session_id uuid, p_id text default null
) returns integer
language plpgsql
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

select autopilot_private.secure_schema();
