-- Progress: the fields a session and a discovery profile share, and how patches and merges
-- change them. One definition, used by both tables.
create type autopilot_private.progress as (
  answers jsonb,
  roi_inputs jsonb,
  phase autopilot.session_phase,
  current_question_index integer,
  selected_product_ids uuid[],
  timeframe text
);

-- Forward one step, or back to any earlier phase; staying put is no transition.
create or replace function autopilot_private.check_phase_transition(
  p_from autopilot.session_phase, p_to autopilot.session_phase
) returns void
language plpgsql
set search_path = ''
as $$
declare
  phases autopilot.session_phase[] := enum_range(null::autopilot.session_phase);
  from_pos integer := array_position(phases, p_from);
  to_pos integer := array_position(phases, p_to);
  allowed autopilot.session_phase[];
begin
  if to_pos <= from_pos + 1 then
    return;
  end if;
  allowed := phases[1:least(from_pos + 1, array_length(phases, 1))];
  perform autopilot_private.fail(
    409, 'invalid_phase_transition',
    format('Cannot move from %s to %s.', p_from, p_to),
    jsonb_build_object('from', p_from, 'to', p_to, 'allowed', to_jsonb(allowed))
  );
end
$$;
revoke all on function autopilot_private.check_phase_transition(
  autopilot.session_phase, autopilot.session_phase) from public, anon, authenticated;
grant execute on function autopilot_private.check_phase_transition(
  autopilot.session_phase, autopilot.session_phase) to service_role;

-- Phases advance when a write completes one, whoever stores it (PUT /sessions/me,
-- PUT /discovery, extraction, the offline agent, which writes through the PUT functions).
-- The keys of each phase come from the service's catalogue as data, p_phase_keys
-- (src/autopilot_api/discovery/catalogue.py PHASE_KEYS):
--   {"discovery": [question keys], "roi": [ROI input keys]}
-- looked up in answers || roi_inputs (question keys are snake_case, ROI keys camelCase, so
-- the union is unambiguous). A phase with no keys there (greenlight) is never complete;
-- null p_phase_keys: nothing advances.
-- A write COMPLETES a phase when, after it, every key of the phase is stored and, before it,
-- one was missing (it filled the last missing key). The owner then moves on when the phase
-- it is in is the one completed, and on through any phase already complete. A patch that
-- moves the phase itself is taken as it is (the callers skip the advance then), so a
-- visitor who went back stays there until a write completes a phase anew.
create or replace function autopilot_private.phase_keys_complete(p_keys jsonb, p_stored jsonb)
returns boolean
language sql
immutable
set search_path = ''
as $$
  select coalesce(pg_catalog.jsonb_typeof(p_keys) = 'array', false)
     and pg_catalog.jsonb_array_length(p_keys) > 0
     and not exists (
       select 1 from pg_catalog.jsonb_array_elements_text(p_keys) as k(key)
        where not (coalesce(p_stored, '{}'::jsonb) ? k.key))
$$;
revoke all on function autopilot_private.phase_keys_complete(jsonb, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.phase_keys_complete(jsonb, jsonb) to service_role;

-- The phase after a write: p_phase (the phase after the patch), p_before / p_after the
-- stored keys (answers || roi_inputs) before and after it.
create or replace function autopilot_private.advance_phase(
  p_phase autopilot.session_phase, p_before jsonb, p_after jsonb, p_phase_keys jsonb
) returns autopilot.session_phase
language plpgsql
stable
set search_path = ''
as $$
declare
  phases autopilot.session_phase[] := enum_range(null::autopilot.session_phase);
  pos integer := array_position(phases, p_phase);
begin
  if p_phase_keys is null
     or pos >= cardinality(phases)
     or not autopilot_private.phase_keys_complete(p_phase_keys -> p_phase::text, p_after)
     or autopilot_private.phase_keys_complete(p_phase_keys -> p_phase::text, p_before) then
    return p_phase;
  end if;
  pos := pos + 1;
  while pos < cardinality(phases)
        and autopilot_private.phase_keys_complete(p_phase_keys -> phases[pos]::text, p_after)
  loop
    pos := pos + 1;
  end loop;
  return phases[pos];
end
$$;
revoke all on function autopilot_private.advance_phase(
  autopilot.session_phase, jsonb, jsonb, jsonb) from public, anon, authenticated;
grant execute on function autopilot_private.advance_phase(
  autopilot.session_phase, jsonb, jsonb, jsonb) to service_role;

-- Apply a patch built by the service: answers/roi entries set or removed per key (never
-- replaced wholesale), scalar fields only when present in the patch.
create or replace function autopilot_private.apply_patch(
  p_current autopilot_private.progress, p_patch jsonb
) returns autopilot_private.progress
language plpgsql
stable
set search_path = ''
as $$
declare
  result autopilot_private.progress := p_current;
begin
  result.answers := (p_current.answers || coalesce(p_patch -> 'answers_set', '{}'::jsonb))
    - coalesce(array(select jsonb_array_elements_text(p_patch -> 'answers_remove')), '{}');
  result.roi_inputs := (p_current.roi_inputs || coalesce(p_patch -> 'roi_set', '{}'::jsonb))
    - coalesce(array(select jsonb_array_elements_text(p_patch -> 'roi_remove')), '{}');
  if p_patch ? 'phase' then
    perform autopilot_private.check_phase_transition(
      p_current.phase, (p_patch ->> 'phase')::autopilot.session_phase);
    result.phase := (p_patch ->> 'phase')::autopilot.session_phase;
  end if;
  if p_patch ? 'current_question_index' then
    result.current_question_index := (p_patch ->> 'current_question_index')::integer;
  end if;
  if p_patch ? 'selected_product_ids' then
    result.selected_product_ids :=
      array(select distinct_ids.id from (
        select min(ord) as first_seen, value::uuid as id
        from jsonb_array_elements_text(p_patch -> 'selected_product_ids') with ordinality as t(value, ord)
        group by value::uuid
      ) as distinct_ids order by distinct_ids.first_seen);
  end if;
  if p_patch ? 'timeframe' then
    result.timeframe := p_patch ->> 'timeframe';
  end if;
  return result;
end
$$;
revoke all on function autopilot_private.apply_patch(autopilot_private.progress, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.apply_patch(autopilot_private.progress, jsonb)
  to service_role;

------------------------------------------------------------------------------------------
-- Typed answers: the catalogue's kinds (text, number, choice, boolean, ...) are enforced by
-- one validator in the service wherever an answer enters. Values stored before that may not
-- fit; they are kept as they are, and the merges must neither fail on them nor prefer them.
-- So the merges judge each stored value by the catalogue's rules, which the service passes in
-- as data (p_rules: src/autopilot_api/discovery/answers.py catalogue_rules(), per key one
-- rule in a generic shape every kind maps onto, kinds.py):
--   {"type": "string" | "number" | "integer" | "boolean",
--    "enum", "minLength", "maxLength", "pattern"   strings, judged trimmed (enum in any case)
--    "minimum", "maximum"}                          numbers ("integer": whole, |n| <= 2^53 - 1)
-- A new question needs no migration, nor does a new kind made of these primitives.
------------------------------------------------------------------------------------------
-- Whether a stored entry's value fits its key's rule. No rule (a key the catalogue does not
-- have), or a type this function does not know, judges nothing. Every cast sits behind a
-- CASE on the JSON type, so no stored value can make it fail.
create or replace function autopilot_private.entry_is_valid(p_rule jsonb, p_entry jsonb)
returns boolean
language sql
immutable
set search_path = ''
as $$
  select case
    when r is null then true
    when r ->> 'type' = 'boolean' then jsonb_typeof(v) is not distinct from 'boolean'
    when r ->> 'type' in ('number', 'integer') then case
      when jsonb_typeof(v) is distinct from 'number' then false
      else ((r ->> 'minimum') is null or (v #>> '{}')::numeric >= (r ->> 'minimum')::numeric)
        and ((r ->> 'maximum') is null or (v #>> '{}')::numeric <= (r ->> 'maximum')::numeric)
        -- an integer is a whole number JavaScript holds exactly (2^53 - 1); jsonb keeps
        -- numbers exact, so 9007199254740993 is seen as it was sent.
        and (r ->> 'type' = 'number'
             or ((v #>> '{}')::numeric = trunc((v #>> '{}')::numeric)
                 and abs((v #>> '{}')::numeric) <= 9007199254740991))
    end
    when r ->> 'type' = 'string' then case
      when jsonb_typeof(v) is distinct from 'string' then false
      else (jsonb_typeof(r -> 'enum') is distinct from 'array'
            or exists (select 1 from jsonb_array_elements_text(r -> 'enum') as o(option)
                       where lower(o.option) = lower(btrim(v #>> '{}'))))
        and length(btrim(v #>> '{}')) >= coalesce((r ->> 'minLength')::integer, 0)
        and ((r ->> 'maxLength') is null
             or length(btrim(v #>> '{}')) <= (r ->> 'maxLength')::integer)
        and ((r ->> 'pattern') is null or btrim(v #>> '{}') ~ (r ->> 'pattern'))
    end
    else true
  end
  from (select p_rule as r,
               case when jsonb_typeof(p_entry) = 'object' then p_entry -> 'value' end as v) as x
$$;
revoke all on function autopilot_private.entry_is_valid(jsonb, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.entry_is_valid(jsonb, jsonb) to service_role;

-- The claim's merge, per key: a value that fits beats one that does not, whatever their
-- source or age (an unfit value on one side only is kept as it is); then an answer the
-- person gave beats one the LLM extracted, and otherwise the newer wins (a tie goes to the
-- incoming side).
create or replace function autopilot_private.merge_entries(
  p_base jsonb, p_incoming jsonb, p_rules jsonb
) returns jsonb
language sql
immutable
set search_path = ''
as $$
  select coalesce(jsonb_object_agg(k, case
      when b is null then i
      when i is null then b
      when i_valid and not b_valid then i
      when b_valid and not i_valid then b
      when coalesce(i ->> 'source', '') = 'user' and coalesce(b ->> 'source', '') <> 'user' then i
      when coalesce(b ->> 'source', '') = 'user' and coalesce(i ->> 'source', '') <> 'user' then b
      when coalesce((i ->> 'updatedAt')::timestamptz, '-infinity')
           >= coalesce((b ->> 'updatedAt')::timestamptz, '-infinity') then i
      else b
    end), '{}'::jsonb)
  from (
    select keys.k, p_base -> keys.k as b, p_incoming -> keys.k as i,
           autopilot_private.entry_is_valid(p_rules -> keys.k, p_base -> keys.k) as b_valid,
           autopilot_private.entry_is_valid(p_rules -> keys.k, p_incoming -> keys.k) as i_valid
    from (select jsonb_object_keys(p_base) as k
          union select jsonb_object_keys(p_incoming)) as keys
  ) as pairs
$$;
revoke all on function autopilot_private.merge_entries(jsonb, jsonb, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.merge_entries(jsonb, jsonb, jsonb) to service_role;

-- The claim's merge of a session into a profile: answers and ROI inputs per key as above,
-- phase the furthest, question index the max, product ids the union.
create or replace function autopilot_private.merge_progress(
  p_profile autopilot_private.progress, p_session autopilot_private.progress, p_rules jsonb
) returns autopilot_private.progress
language plpgsql
immutable
set search_path = ''
as $$
declare
  result autopilot_private.progress;
begin
  result.answers := autopilot_private.merge_entries(
    p_profile.answers, p_session.answers, p_rules);
  result.roi_inputs := autopilot_private.merge_entries(
    p_profile.roi_inputs, p_session.roi_inputs, p_rules);
  result.phase := greatest(p_profile.phase, p_session.phase);
  result.current_question_index :=
    greatest(p_profile.current_question_index, p_session.current_question_index);
  result.selected_product_ids := array(
    select id from (
      select id, min(ord) as first_seen
      from unnest(p_profile.selected_product_ids || p_session.selected_product_ids)
           with ordinality as t(id, ord)
      group by id
    ) as ids order by first_seen);
  result.timeframe := coalesce(p_session.timeframe, p_profile.timeframe);
  return result;
end
$$;
revoke all on function autopilot_private.merge_progress(
  autopilot_private.progress, autopilot_private.progress, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.merge_progress(
  autopilot_private.progress, autopilot_private.progress, jsonb) to service_role;

-- Extraction's merge, per key: an answer the person gave is never overwritten, unless it
-- does not fit its question (a value stored before typed answers); an identical value is
-- not rewritten; anything else takes the extracted entry (validated by the service).
create or replace function autopilot_private.merge_extracted_entries(
  p_base jsonb, p_incoming jsonb, p_rules jsonb
) returns jsonb
language sql
immutable
set search_path = ''
as $$
  select p_base || coalesce(jsonb_object_agg(i.key, i.value), '{}'::jsonb)
  from jsonb_each(coalesce(p_incoming, '{}'::jsonb)) as i
  where (coalesce(p_base -> i.key ->> 'source', '') <> 'user'
         or not autopilot_private.entry_is_valid(p_rules -> i.key, p_base -> i.key))
    and (p_base -> i.key -> 'value') is distinct from (i.value -> 'value')
$$;
revoke all on function autopilot_private.merge_extracted_entries(jsonb, jsonb, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.merge_extracted_entries(jsonb, jsonb, jsonb)
  to service_role;

create or replace function autopilot_private.changed_keys(p_before jsonb, p_after jsonb)
returns text[]
language sql
immutable
set search_path = ''
as $$
  select coalesce(array_agg(a.key order by a.key), '{}')
  from jsonb_each(p_after) as a
  where (p_before -> a.key) is distinct from a.value
$$;
revoke all on function autopilot_private.changed_keys(jsonb, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.changed_keys(jsonb, jsonb) to service_role;

-- Session metadata, key by key; a key set to null is removed (the way back under the cap).
create or replace function autopilot_private.merge_metadata(p_base jsonb, p_incoming jsonb)
returns jsonb
language sql
immutable
set search_path = ''
as $$
  select (p_base || p_incoming) - coalesce(
    (select array_agg(e.key) from jsonb_each(p_incoming) as e
      where jsonb_typeof(e.value) = 'null'),
    '{}'::text[])
$$;
revoke all on function autopilot_private.merge_metadata(jsonb, jsonb)
  from public, anon, authenticated;
grant execute on function autopilot_private.merge_metadata(jsonb, jsonb) to service_role;
