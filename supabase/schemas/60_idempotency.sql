-- Retries after a timeout. A 503 can hide a committed write (the HTTP client gave up, the
-- transaction did not), so the calls that are not naturally idempotent take an
-- Idempotency-Key: the outcome is stored in the transaction that has the effect, and a
-- retry with the same key gets that outcome back.
--
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
alter table autopilot.idempotency_keys enable row level security;
revoke all on autopilot.idempotency_keys from public, anon, authenticated;
grant all on autopilot.idempotency_keys to service_role;
grant select on autopilot.idempotency_keys to authenticated;

create or replace function autopilot_private.request_fingerprint(p_request jsonb)
returns text
language sql
immutable
set search_path = ''
as $$
  select encode(sha256(convert_to(p_request::text, 'UTF8')), 'hex')
$$;
revoke all on function autopilot_private.request_fingerprint(jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.request_fingerprint(jsonb) to service_role;

-- Reserve the key for this call, or return the stored outcome of the call that used it.
-- Null: go ahead (then idempotency_finish in the same transaction). A concurrent call
-- with the same key waits here until the first commits (and gets its outcome) or rolls
-- back (and goes ahead itself). An expired key is taken over as if it were new.
-- The caller is a user, else a session (as the search-session functions resolve it).
-- A caller holds at most p_max_keys keys: a new key past the cap drops the caller's oldest
-- outcomes. A retry comes within seconds of its first try, not after the caller's next
-- p_max_keys keyed calls, so the guarantee holds where it matters while what one caller
-- can make us store stays bounded.
create or replace function autopilot_private.idempotency_begin(
  p_user_id uuid, p_session_id uuid, p_operation text, p_key text, p_request jsonb,
  p_ttl_seconds integer, p_max_keys integer
) returns jsonb
language plpgsql
set search_path = ''
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
revoke all on function autopilot_private.idempotency_begin(uuid, uuid, text, text, jsonb, integer, integer)
  from public, anon, authenticated;
grant execute on function autopilot_private.idempotency_begin(uuid, uuid, text, text, jsonb, integer, integer)
  to service_role;

create or replace function autopilot_private.idempotency_finish(
  p_user_id uuid, p_session_id uuid, p_operation text, p_key text, p_response jsonb
) returns void
language sql
set search_path = ''
as $$
  update autopilot.idempotency_keys set response = p_response
   where scope = coalesce('user:' || p_user_id::text, 'session:' || p_session_id::text)
     and operation = p_operation and key = p_key
$$;
revoke all on function autopilot_private.idempotency_finish(uuid, uuid, text, text, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.idempotency_finish(uuid, uuid, text, text, jsonb)
  to service_role;

-- One batch of expired keys (the caller loops, as for sessions); never waits on a live call.
create or replace function autopilot.cleanup_expired_idempotency_keys(
  p_batch_size integer default 500
) returns integer
language sql
set search_path = ''
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
revoke all on function autopilot.cleanup_expired_idempotency_keys(integer)
  from public, anon, authenticated;
grant execute on function autopilot.cleanup_expired_idempotency_keys(integer) to service_role;
