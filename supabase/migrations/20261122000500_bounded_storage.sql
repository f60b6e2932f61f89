-- Storage per visitor is bounded (issue 15, item 4):
-- 1. a session's metadata has a total size cap, checked where the PUT merges it;
-- 2. a search session's discovered ids live in rows of their own, capped per session, so
--    an append and an unfetched page cost in proportion to the batch, not to the total;
-- 3. audit events older than a retention period are deleted in batches by the cleanup,
--    which alone is exempt from the append-only rule; a watermark says how far history
--    was pruned, so a stream resuming below it is told to reload instead of a silent gap.

------------------------------------------------------------------------------------------
-- 1. Metadata: a total cap, checked in the merge
------------------------------------------------------------------------------------------
-- Key by key, as before; a key set to null is removed (the way back under the cap).
create or replace function autopilot_private.merge_metadata(p_base jsonb, p_incoming jsonb)
returns jsonb
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
  select (p_base || p_incoming) - coalesce(
    (select array_agg(e.key) from jsonb_each(p_incoming) as e
      where jsonb_typeof(e.value) = 'null'),
    '{}'::text[])
$$;

-- New signatures replace the old ones (an overload next to them would make PostgREST's
-- choice ambiguous).
drop function autopilot.update_session_by_token(text, integer, jsonb, integer);
drop function autopilot.update_session_progress(uuid, jsonb, integer);

-- A PUT: lock, check the version (If-Match), apply the patch, bump version. The merged
-- metadata is measured (as JSON text, what a client sends and reads back) before anything
-- is written: over p_metadata_max_bytes the whole PUT is refused and nothing changes.
create or replace function autopilot.update_session_progress(
  p_session_id uuid, p_patch jsonb, p_expected_version integer default null,
  p_metadata_max_bytes integer default 65536
) returns autopilot.sessions
language plpgsql
as $$
declare
  s autopilot.sessions;
  next autopilot_private.progress;
  old_phase autopilot.session_phase;
  merged jsonb;
  merged_bytes integer;
begin
  select * into s from autopilot.sessions
   where id = p_session_id and claimed_by_profile_id is null and expires_at > now()
   for update;
  if not found then
    perform autopilot_private.fail(404, 'session_not_found', 'No active session.');
  end if;
  old_phase := s.phase;
  if p_expected_version is not null and s.version <> p_expected_version then
    perform autopilot_private.fail(412, 'precondition_failed',
      'The session changed since you read it.', jsonb_build_object('version', s.version));
  end if;
  merged := s.metadata;
  if p_patch ? 'metadata' then
    merged := autopilot_private.merge_metadata(s.metadata, p_patch -> 'metadata');
    merged_bytes := octet_length(merged::text);
    if merged_bytes > p_metadata_max_bytes then
      perform autopilot_private.fail(422, 'metadata_too_large',
        format('Session metadata is limited to %s bytes (as JSON); with this update it would '
               'hold %s. Nothing was stored: send less, or remove keys by setting them to null.',
               p_metadata_max_bytes, merged_bytes),
        jsonb_build_object('field', 'metadata', 'limitBytes', p_metadata_max_bytes,
                           'resultingBytes', merged_bytes,
                           'storedBytes', octet_length(s.metadata::text)));
    end if;
  end if;
  next := autopilot_private.apply_patch(
    row(s.answers, s.roi_inputs, s.phase, s.current_question_index,
        s.selected_product_ids, s.timeframe)::autopilot_private.progress, p_patch);
  update autopilot.sessions set
    answers = next.answers,
    roi_inputs = next.roi_inputs,
    phase = next.phase,
    current_question_index = next.current_question_index,
    selected_product_ids = next.selected_product_ids,
    timeframe = next.timeframe,
    metadata = merged,
    version = version + 1,
    last_seen_at = now(),
    updated_at = now()
  where id = p_session_id
  returning * into s;
  if p_patch ? 'phase' then
    update autopilot.conversations set phase = s.phase
     where session_id = p_session_id and phase <> s.phase;
  end if;
  perform autopilot_private.record_update(s.id, null, 'session', s.id::text, p_patch,
    s.version, old_phase, s.phase);
  return s;
end
$$;

-- The PUT hot path in one round trip (as before, with the metadata cap passed through).
create or replace function autopilot.update_session_by_token(
  p_token_hash text, p_lifetime_seconds integer, p_patch jsonb,
  p_expected_version integer default null, p_metadata_max_bytes integer default 65536
) returns jsonb
language plpgsql
as $$
declare
  sid uuid;
  s autopilot.sessions;
  lifetime interval := make_interval(secs => p_lifetime_seconds);
  extend boolean;
begin
  select id into sid from autopilot.sessions
   where token_hash = p_token_hash and claimed_by_profile_id is null and expires_at > now();
  if not found then
    return null;
  end if;
  s := autopilot.update_session_progress(sid, p_patch, p_expected_version,
                                         p_metadata_max_bytes);
  extend := s.expires_at < now() + lifetime - interval '1 day';
  if extend then
    update autopilot.sessions set expires_at = now() + lifetime where id = sid
    returning * into s;
  end if;
  return to_jsonb(s) || jsonb_build_object('expiry_extended', extend);
end
$$;

------------------------------------------------------------------------------------------
-- 2. Search-session ids in rows of their own
------------------------------------------------------------------------------------------
-- Measured (bench/storage_bounds.py): with the ids in two bigint[] columns every append
-- rewrote the whole array and every unfetched page anti-joined both arrays, so both grew
-- with the total. One row per id, keyed by (search session, id): an append probes and
-- inserts its batch, an unfetched page reads the first rows of a partial index.
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

alter table autopilot.search_sessions add column fetched_count integer not null default 0;

-- Existing arrays move into rows (discovered_ids holds each id once, in discovery order).
with discovered as (
  select s.id as sid, d.id, d.ord
    from autopilot.search_sessions s,
         unnest(s.discovered_ids) with ordinality as d(id, ord)
), fetched as (
  select distinct s.id as sid, f.id
    from autopilot.search_sessions s, unnest(s.profiles_fetched) as f(id)
)
insert into autopilot.search_session_ids (search_session_id, id, position, fetched)
select discovered.sid, discovered.id, discovered.ord::integer, fetched.id is not null
  from discovered
  left join fetched on fetched.sid = discovered.sid and fetched.id = discovered.id;

update autopilot.search_sessions s
   set fetched_count = (select count(*) from autopilot.search_session_ids k
                         where k.search_session_id = s.id and k.fetched),
       total_discovered = (select count(*) from autopilot.search_session_ids k
                            where k.search_session_id = s.id);

alter table autopilot.search_sessions drop column discovered_ids;
alter table autopilot.search_sessions drop column profiles_fetched;

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

-- The ids of p_ids this search session never discovered, once each, in order of first
-- appearance: one primary-key probe per id of the call.
create or replace function autopilot_private.undiscovered_ids(p_id text, p_ids bigint[])
returns bigint[]
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
  select coalesce(array_agg(incoming.id order by incoming.first_seen), '{}')
  from (
    select t.id, min(t.ord) as first_seen
    from unnest(p_ids) with ordinality as t(id, ord)
    group by t.id
  ) as incoming
  where not exists (select 1 from autopilot.search_session_ids k
                     where k.search_session_id = p_id and k.id = incoming.id)
$$;

drop function autopilot.add_discovered_ids(text, uuid, uuid, bigint[]);

-- Append ids not seen before (in this call or any earlier one), keeping the order of
-- first discovery. Past p_max_ids in total the whole call is refused and nothing is added.
create or replace function autopilot.add_discovered_ids(
  p_id text, p_user_id uuid, p_session_id uuid, p_ids bigint[],
  p_max_ids integer default 100000
) returns jsonb
language plpgsql
as $$
declare
  total integer;
  added integer;
begin
  perform autopilot_private.lock_search_session(p_id, p_user_id, p_session_id, true);
  select total_discovered into total from autopilot.search_sessions where id = p_id;
  -- Under the row lock no other call appends to this search session: positions stay dense.
  insert into autopilot.search_session_ids (search_session_id, id, position)
  select p_id, fresh.id, (total + row_number() over (order by fresh.first_seen))::integer
    from (
      select t.id, min(t.ord) as first_seen
        from unnest(p_ids) with ordinality as t(id, ord)
       group by t.id
    ) as fresh
   where not exists (select 1 from autopilot.search_session_ids k
                      where k.search_session_id = p_id and k.id = fresh.id);
  get diagnostics added = row_count;
  if total + added > p_max_ids then
    perform autopilot_private.fail(422, 'search_session_full',
      format('A search session holds at most %s discovered ids; it holds %s and this call '
             'would add %s. Nothing was added: start a new search session.',
             p_max_ids, total, added),
      jsonb_build_object('limit', p_max_ids, 'totalDiscovered', total, 'wouldAdd', added));
  end if;
  update autopilot.search_sessions
     set total_discovered = total + added, last_accessed = now(), updated_at = now()
   where id = p_id;
  return jsonb_build_object('added', added, 'total_discovered', total + added);
end
$$;

-- Mark ids fetched in full; ids never discovered are refused (422) and nothing changes.
-- Same signature and Idempotency-Key handling as 20261122000200; only the storage changed.
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
  marked integer;
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
  unknown := autopilot_private.undiscovered_ids(p_id, p_ids);
  if cardinality(unknown) > 0 then
    perform autopilot_private.fail(422, 'ids_not_discovered',
      'Some ids were never discovered in this search session.',
      jsonb_build_object('ids', to_jsonb(unknown[1:50])));
  end if;
  update autopilot.search_session_ids set fetched = true
   where search_session_id = p_id and id = any(p_ids) and not fetched;
  get diagnostics marked = row_count;

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

-- Discovered but not yet fetched, in discovery order (a read that counts as access).
create or replace function autopilot.unfetched_ids(
  p_id text, p_user_id uuid, p_session_id uuid, p_count integer
) returns jsonb
language plpgsql
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

------------------------------------------------------------------------------------------
-- 3. Audit-event retention
------------------------------------------------------------------------------------------
-- How far the retention cleanup pruned: every event with an id at or below
-- pruned_through_id may be gone. One row.
create table autopilot.event_retention (
  singleton boolean primary key default true check (singleton),
  pruned_through_id bigint not null default 0,
  pruned_at timestamptz
);
insert into autopilot.event_retention default values;

-- Append-only for everyone, except the retention cleanup's own DELETE: it sets a
-- transaction-local flag, and runs as the table's owner (SECURITY DEFINER). The flag alone
-- is not enough, since any SQL session may set a custom setting: the current role must be
-- the owner too, which no API role is. (A role that can act as the owner could drop this
-- trigger anyway.)
create or replace function autopilot_private.refuse_event_change()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_op = 'DELETE'
     and current_setting('autopilot.retention_cleanup', true) = 'on'
     and current_user = (select pg_get_userbyid(c.relowner) from pg_class c
                          where c.oid = tg_relid) then
    return old;
  end if;
  raise exception 'session_events is append-only';
end
$$;

-- Retention reads events by age: one batch is a range of this index, never a table scan
-- (ids are not strictly in created_at order: created_at is the transaction's start).
create index session_events_created_at_idx on autopilot.session_events (created_at);

-- One batch of events older than p_retention_days (the caller loops, as for sessions).
-- SECURITY DEFINER so the trigger above sees the owner; executable by service_role only
-- (secure_schema revokes it from public, anon and authenticated).
create or replace function autopilot.cleanup_old_session_events(
  p_retention_days integer, p_batch_size integer default 500
) returns integer
language plpgsql
security definer
as $$
declare
  deleted integer;
  last_id bigint;
begin
  perform pg_catalog.set_config('autopilot.retention_cleanup', 'on', true);
  with doomed as (
    select e.id from autopilot.session_events e
     where e.created_at < now() - make_interval(days => greatest(p_retention_days, 1))
     order by e.created_at
     limit greatest(p_batch_size, 1)
  ), gone as (
    delete from autopilot.session_events e using doomed where e.id = doomed.id
    returning e.id
  )
  select count(*)::integer, max(gone.id) into deleted, last_id from gone;
  perform pg_catalog.set_config('autopilot.retention_cleanup', 'off', true);
  if last_id is not null then
    update autopilot.event_retention
       set pruned_through_id = greatest(pruned_through_id, last_id), pruned_at = now();
  end if;
  return deleted;
end
$$;

-- Events with an id at or below this may have been pruned (0: none was).
create or replace function autopilot.event_history_floor()
returns bigint
language sql
stable
as $$
  select coalesce((select pruned_through_id from autopilot.event_retention), 0)
$$;

select autopilot_private.secure_schema();

notify pgrst, 'reload schema';
