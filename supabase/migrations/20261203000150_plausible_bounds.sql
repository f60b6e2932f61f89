-- The SQL copy of the catalogue's rules (issue 20, item 6: plausible values), kept equal to
-- services/answer_validation.catalogue_rules() by tests/integration/test_typed_answers.py.
-- Every number now has an upper bound a real facility can have, and counts are whole
-- numbers ("integer": true, judged by autopilot_private.entry_is_valid as of
-- 20261203000100). The reasons for each bound are next to it in
-- services/extraction_constants.py and in README "Plausible values".
-- On its own, so that this file can be dropped when the rules are passed as data instead.
create or replace function autopilot_private.answer_rules()
returns jsonb
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
  select '{
    "facility_type": {"kind": "choice", "options": ["warehouse / distribution center", "manufacturing plant", "fulfillment center", "cold storage", "retail back-of-house", "other"]},
    "facility_size_sqft": {"kind": "number", "minimum": 0, "maximum": 50000000, "integer": false},
    "facility_location": {"kind": "text", "maxChars": 2000},
    "number_of_sites": {"kind": "number", "minimum": 0, "maximum": 100000, "integer": true},
    "operating_hours_per_day": {"kind": "number", "minimum": 0, "maximum": 24, "integer": false},
    "operating_days_per_week": {"kind": "number", "minimum": 0, "maximum": 7, "integer": false},
    "primary_processes": {"kind": "text", "maxChars": 2000},
    "daily_throughput_units": {"kind": "number", "minimum": 0, "maximum": 100000000, "integer": true},
    "sku_count": {"kind": "number", "minimum": 0, "maximum": 100000000, "integer": true},
    "current_automation_level": {"kind": "choice", "options": ["fully manual", "some automation", "mostly automated"]},
    "biggest_bottleneck": {"kind": "text", "maxChars": 2000},
    "error_damage_rate": {"kind": "number", "minimum": 0, "maximum": 100, "integer": false},
    "floor_headcount": {"kind": "number", "minimum": 0, "maximum": 100000, "integer": true},
    "shifts_per_day": {"kind": "number", "minimum": 0, "maximum": 24, "integer": true},
    "labor_turnover_rate": {"kind": "number", "minimum": 0, "maximum": 500, "integer": false},
    "hard_to_fill_roles": {"kind": "text", "maxChars": 2000},
    "average_hourly_wage": {"kind": "number", "minimum": 0, "maximum": 500, "integer": false},
    "primary_goal": {"kind": "choice", "options": ["reduce labor cost", "increase throughput", "improve accuracy", "improve safety", "cover labor shortages", "other"]},
    "success_metric": {"kind": "text", "maxChars": 2000},
    "other_goals": {"kind": "text", "maxChars": 2000},
    "budget_range": {"kind": "choice", "options": ["under $100k", "$100k-$250k", "$250k-$500k", "$500k-$1M", "over $1M", "not sure yet"]},
    "budget_approved": {"kind": "boolean"},
    "desired_timeline": {"kind": "choice", "options": ["within 3 months", "3-6 months", "6-12 months", "more than 12 months", "just exploring"]},
    "decision_makers": {"kind": "text", "maxChars": 2000},
    "financing_preference": {"kind": "choice", "options": ["outright purchase", "lease", "robots-as-a-service subscription", "financing", "not sure yet"]},
    "laborRate": {"kind": "number", "minimum": 0, "maximum": 1000, "integer": false},
    "utilization": {"kind": "number", "minimum": 0, "maximum": 1, "integer": false},
    "maintenanceFactor": {"kind": "number", "minimum": 0, "maximum": 1, "integer": false},
    "manualMonthlySpend": {"kind": "number", "minimum": 0, "maximum": 1000000000, "integer": false},
    "manualMonthlyHours": {"kind": "number", "minimum": 0, "maximum": 500000, "integer": false}
  }'::jsonb
$$;
