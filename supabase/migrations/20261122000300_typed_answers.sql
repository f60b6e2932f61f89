-- Typed answers (issue 13): the catalogue's kind, options and bounds are enforced by one
-- validator in the service (services/answer_validation.py) wherever an answer enters. Values
-- stored before that may not fit; they are kept as they are, and the merges must neither fail
-- on them nor prefer them. So the merges judge each stored value by the same rules, kept here
-- as data: a test holds answer_rules() equal to the service's catalogue_rules(), and a
-- change to the catalogue ships a migration that replaces this function.

-- Per key, what a stored value must be (question keys are snake_case, ROI inputs camelCase).
create or replace function autopilot_private.answer_rules()
returns jsonb
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
  select '{
    "facility_type": {"kind": "choice", "options": ["warehouse / distribution center", "manufacturing plant", "fulfillment center", "cold storage", "retail back-of-house", "other"]},
    "facility_size_sqft": {"kind": "number", "minimum": 0, "maximum": null},
    "facility_location": {"kind": "text", "maxChars": 2000},
    "number_of_sites": {"kind": "number", "minimum": 0, "maximum": null},
    "operating_hours_per_day": {"kind": "number", "minimum": 0, "maximum": 24},
    "operating_days_per_week": {"kind": "number", "minimum": 0, "maximum": 7},
    "primary_processes": {"kind": "text", "maxChars": 2000},
    "daily_throughput_units": {"kind": "number", "minimum": 0, "maximum": null},
    "sku_count": {"kind": "number", "minimum": 0, "maximum": null},
    "current_automation_level": {"kind": "choice", "options": ["fully manual", "some automation", "mostly automated"]},
    "biggest_bottleneck": {"kind": "text", "maxChars": 2000},
    "error_damage_rate": {"kind": "number", "minimum": 0, "maximum": 100},
    "floor_headcount": {"kind": "number", "minimum": 0, "maximum": null},
    "shifts_per_day": {"kind": "number", "minimum": 0, "maximum": 24},
    "labor_turnover_rate": {"kind": "number", "minimum": 0, "maximum": null},
    "hard_to_fill_roles": {"kind": "text", "maxChars": 2000},
    "average_hourly_wage": {"kind": "number", "minimum": 0, "maximum": null},
    "primary_goal": {"kind": "choice", "options": ["reduce labor cost", "increase throughput", "improve accuracy", "improve safety", "cover labor shortages", "other"]},
    "success_metric": {"kind": "text", "maxChars": 2000},
    "other_goals": {"kind": "text", "maxChars": 2000},
    "budget_range": {"kind": "choice", "options": ["under $100k", "$100k-$250k", "$250k-$500k", "$500k-$1M", "over $1M", "not sure yet"]},
    "budget_approved": {"kind": "boolean"},
    "desired_timeline": {"kind": "choice", "options": ["within 3 months", "3-6 months", "6-12 months", "more than 12 months", "just exploring"]},
    "decision_makers": {"kind": "text", "maxChars": 2000},
    "financing_preference": {"kind": "choice", "options": ["outright purchase", "lease", "robots-as-a-service subscription", "financing", "not sure yet"]},
    "laborRate": {"kind": "number", "minimum": 0, "maximum": null},
    "utilization": {"kind": "number", "minimum": 0, "maximum": 1},
    "maintenanceFactor": {"kind": "number", "minimum": 0, "maximum": 1},
    "manualMonthlySpend": {"kind": "number", "minimum": 0, "maximum": null},
    "manualMonthlyHours": {"kind": "number", "minimum": 0, "maximum": null}
  }'::jsonb
$$;

-- Whether a stored entry's value fits its key's rule. A key without a rule is not judged.
-- Every cast sits behind a CASE on the JSON type, so no stored value can make it fail.
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

-- The claim's merge, per key: a value that fits beats one that does not, whatever their
-- source or age (an unfit value on one side only is kept as it is); then, as before, an
-- answer the person gave beats one the LLM extracted, and otherwise the newer wins (a tie
-- goes to the incoming side).
create or replace function autopilot_private.merge_entries(p_base jsonb, p_incoming jsonb)
returns jsonb
language sql
immutable
set search_path = pg_catalog, pg_temp
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
           autopilot_private.entry_is_valid(keys.k, p_base -> keys.k) as b_valid,
           autopilot_private.entry_is_valid(keys.k, p_incoming -> keys.k) as i_valid
    from (select jsonb_object_keys(p_base) as k
          union select jsonb_object_keys(p_incoming)) as keys
  ) as pairs
$$;

-- Extraction's merge, per key: an answer the person gave is never overwritten, unless it
-- does not fit its question (a value stored before typed answers); an identical value is
-- not rewritten; anything else takes the extracted entry (validated by the service).
create or replace function autopilot_private.merge_extracted_entries(p_base jsonb, p_incoming jsonb)
returns jsonb
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
  select p_base || coalesce(jsonb_object_agg(i.key, i.value), '{}'::jsonb)
  from jsonb_each(coalesce(p_incoming, '{}'::jsonb)) as i
  where (coalesce(p_base -> i.key ->> 'source', '') <> 'user'
         or not autopilot_private.entry_is_valid(i.key, p_base -> i.key))
    and (p_base -> i.key -> 'value') is distinct from (i.value -> 'value')
$$;

select autopilot_private.secure_schema();
