-- Retries after a timeout. A 503 can hide a committed write (the HTTP client gave up,
-- the transaction did not), so:
-- 1. the search-session calls that are not naturally idempotent (next-batch, fetched)
--    take an Idempotency-Key; the outcome is stored in the transaction that has the
--    effect, and a retry with the same key gets that outcome back;
-- 2. the role PostgREST runs the service's queries as gets a statement_timeout below the
--    service's HTTP timeout, so a query the client abandoned does not run on.

------------------------------------------------------------------------------------------
-- Idempotency keys
------------------------------------------------------------------------------------------
-- One row per (caller, operation, key). Only successes are stored: a failed call rolls
-- back with everything it did, this row included, so its retry simply runs again.
-- A key means nothing to another caller; deleting the caller (an expired or deleted
-- session, a deleted user) deletes its keys and the outcomes they hold.
create table autopilot.idempotency_keys (
  user_id uuid references autopilot.profiles (id) on delete cascade,
  session_id uuid references autopilot.sessions (id) on delete cascade,
  scope text generated always as (
    coalesce('user:' || user_id::text, 'session:' || session_id::text)) stored,
  operation text not null check (char_length(operation) <= 100),
  key text not null check (char_length(key) between 1 and 200),
  -- SHA-256 of the request's parameters: the same key with another request is refused.
  fingerprint text not null check (char_length(fingerprint) = 64),
  -- The result returned the first time; null only inside the transaction that stores it.
  response jsonb,
  created_at timestamptz not null default now(),
  expires_at timestamptz not null,
  primary key (scope, operation, key),
  constraint idempotency_keys_owner_check check ((user_id is null) <> (session_id is null))
);
create index idempotency_keys_expires_at_idx on autopilot.idempotency_keys (expires_at);
create index idempotency_keys_session_idx on autopilot.idempotency_keys (session_id)
  where session_id is not null;
create index idempotency_keys_user_idx on autopilot.idempotency_keys (user_id)
  where user_id is not null;

create or replace function autopilot_private.request_fingerprint(p_request jsonb)
returns text
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
  select encode(sha256(convert_to(p_request::text, 'UTF8')), 'hex')
$$;

-- Reserve the key for this call, or return the stored outcome of the call that used it.
-- Null: go ahead (then idempotency_finish in the same transaction). A concurrent call
-- with the same key waits here until the first commits (and gets its outcome) or rolls
-- back (and goes ahead itself). An expired key is taken over as if it were new.
-- The caller is a user, else a session (as the search-session functions resolve it).
create or replace function autopilot_private.idempotency_begin(
  p_user_id uuid, p_session_id uuid, p_operation text, p_key text, p_request jsonb,
  p_ttl_seconds integer
) returns jsonb
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  request_print text := autopilot_private.request_fingerprint(p_request);
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
    return null;
  end if;

  select * into stored from autopilot.idempotency_keys
   where scope = coalesce('user:' || p_user_id::text, 'session:' || p_session_id::text)
     and operation = p_operation and key = p_key;
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

create or replace function autopilot_private.idempotency_finish(
  p_user_id uuid, p_session_id uuid, p_operation text, p_key text, p_response jsonb
) returns void
language sql
set search_path = pg_catalog, pg_temp
as $$
  update autopilot.idempotency_keys set response = p_response
   where scope = coalesce('user:' || p_user_id::text, 'session:' || p_session_id::text)
     and operation = p_operation and key = p_key
$$;

-- One batch of expired keys (the caller loops, as for sessions); never waits on a live call.
create or replace function autopilot.cleanup_expired_idempotency_keys(
  p_batch_size integer default 500
) returns integer
language sql
as $$
  with doomed as (
    select scope, operation, key from autopilot.idempotency_keys
     where expires_at < now()
     order by expires_at
     limit greatest(p_batch_size, 1)
     for update skip locked
  ), gone as (
    delete from autopilot.idempotency_keys k using doomed
     where (k.scope, k.operation, k.key) = (doomed.scope, doomed.operation, doomed.key)
    returning 1
  )
  select count(*)::integer from gone
$$;

------------------------------------------------------------------------------------------
-- next-batch and fetched with a key. The new signatures replace the old ones (an overload
-- next to them would make PostgREST's choice ambiguous). The result carries `replayed`.
------------------------------------------------------------------------------------------
drop function autopilot.next_search_batch(text, uuid, uuid);
drop function autopilot.mark_profiles_fetched(text, uuid, uuid, bigint[], integer);

create or replace function autopilot.next_search_batch(
  p_id text, p_user_id uuid, p_session_id uuid,
  p_idempotency_key text default null, p_idempotency_ttl_seconds integer default 86400
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
      p_idempotency_key, jsonb_build_object('id', p_id), p_idempotency_ttl_seconds);
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
create or replace function autopilot.mark_profiles_fetched(
  p_id text, p_user_id uuid, p_session_id uuid, p_ids bigint[], p_cache_hits integer,
  p_idempotency_key text default null, p_idempotency_ttl_seconds integer default 86400
) returns jsonb
language plpgsql
as $$
declare
  operation constant text := 'search_sessions.fetched';
  s autopilot.search_sessions := autopilot_private.owned_search_session(
    p_id, p_user_id, p_session_id, false);
  replay jsonb;
  unknown bigint[];
  fresh bigint[];
  result jsonb;
begin
  if p_idempotency_key is not null then
    replay := autopilot_private.idempotency_begin(p_user_id, p_session_id, operation,
      p_idempotency_key,
      jsonb_build_object('id', p_id, 'ids', to_jsonb(p_ids), 'cache_hits', p_cache_hits),
      p_idempotency_ttl_seconds);
    if replay is not null then
      return replay || '{"replayed": true}';
    end if;
  end if;

  if not s.is_active then
    perform autopilot_private.fail(409, 'session_inactive', 'This search session was cleared.');
  end if;
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
  result := jsonb_build_object('marked', cardinality(fresh),
                               'profiles_fetched', cardinality(s.profiles_fetched));

  if p_idempotency_key is not null then
    perform autopilot_private.idempotency_finish(p_user_id, p_session_id, operation,
      p_idempotency_key, result);
  end if;
  return result || '{"replayed": false}';
end
$$;

------------------------------------------------------------------------------------------
-- Statement timeout
------------------------------------------------------------------------------------------
-- Below DATA_PLANE_TIMEOUT_SECONDS (10 s by default): a query the service gave up on (and
-- answered 503 for) is cancelled instead of running on. Set on service_role, the role
-- PostgREST switches to for the service's key, never on the database or `postgres`,
-- where migrations and long maintenance run. A `SET` inside a function would not do: the
-- timer of the statement already running was armed when it started. PostgREST applies a
-- role's settings when it switches to the role, and reads them when it (re)loads its
-- configuration (hence the notify below).
alter role service_role set statement_timeout = '8s';

-- What a query run through PostgREST gets, in milliseconds (0: none): the service checks
-- at start-up that its HTTP client waits longer than this.
create or replace function autopilot.statement_timeout_ms()
returns integer
language sql
stable
as $$
  select setting::integer from pg_catalog.pg_settings where name = 'statement_timeout'
$$;

select autopilot_private.secure_schema();

notify pgrst, 'reload config';
notify pgrst, 'reload schema';
