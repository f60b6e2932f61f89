"""The one answer validator: strict for PUT, lenient (then strict) for the agent and
extraction, and the extraction schema that carries the same types."""

from __future__ import annotations

import math
from typing import Any

import pytest

from autopilot_api.discovery.answers import (
    EXTRACTION_SCHEMA,
    expected_form,
    parse_answer,
    parse_roi_input,
    plausible_confidence,
    validate_answer,
    validate_roi_input,
)
from autopilot_api.discovery.catalogue import (
    DISCOVERY_QUESTIONS,
    QUESTION_BY_KEY,
    QUESTION_KEYS_IN_ORDER,
    ROI_INPUT_KEYS,
    ROI_INPUTS,
    DiscoveryQuestion,
)
from autopilot_api.discovery.kinds import MAX_SAFE_INTEGER, MAX_TEXT_ANSWER_CHARS, InvalidAnswer


class TestCatalogueBounds:
    def test_every_number_question_is_non_negative_and_bounded_and_only_numbers_have_bounds(
        self,
    ) -> None:
        for question in DISCOVERY_QUESTIONS:
            if question.kind == "number":
                assert question.minimum is not None, question.key
                assert question.minimum >= 0, question.key
                assert question.maximum is not None, question.key
                assert question.minimum < question.maximum <= MAX_SAFE_INTEGER, question.key
            else:
                assert question.minimum is None, question.key
                assert question.maximum is None, question.key
                assert question.integer is False, question.key
        for spec in ROI_INPUTS:
            assert spec.minimum < spec.maximum <= MAX_SAFE_INTEGER, spec.key

    def test_natural_bounds_are_stated(self) -> None:
        assert QUESTION_BY_KEY["operating_hours_per_day"].maximum == 24
        assert QUESTION_BY_KEY["operating_days_per_week"].maximum == 7
        assert QUESTION_BY_KEY["error_damage_rate"].maximum == 100
        # Turnover above 100 % a year is common in warehousing: bounded well above it.
        assert QUESTION_BY_KEY["labor_turnover_rate"].maximum == 500

    def test_counts_are_whole_numbers_and_measures_are_not(self) -> None:
        integers = {q.key for q in DISCOVERY_QUESTIONS if q.integer}
        assert integers == {
            "number_of_sites",
            "daily_throughput_units",
            "sku_count",
            "floor_headcount",
            "shifts_per_day",
        }

    def test_a_number_question_without_a_maximum_is_refused(self) -> None:
        with pytest.raises(ValueError, match="plausible maximum"):
            DiscoveryQuestion(id=99, key="x", label="X?", group="goals", kind="number", minimum=0)

    def test_bounds_on_a_non_number_are_refused(self) -> None:
        with pytest.raises(ValueError, match="bounds"):
            DiscoveryQuestion(id=99, key="x", label="X?", group="goals", kind="text", maximum=3)


class TestPlausibleValues:
    """What issue 20 saw stored: each is refused now, by PUT, the offline agent and
    extraction alike (they share these functions)."""

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("facility_size_sqft", 1e300),
            ("floor_headcount", 9_007_199_254_740_993),
            ("floor_headcount", 100_001),
            ("floor_headcount", 12.5),
            ("number_of_sites", 10**400),
            ("average_hourly_wage", 501),
            ("labor_turnover_rate", 501),
        ],
    )
    def test_implausible_answers_are_refused(self, key: str, value: Any) -> None:
        with pytest.raises(InvalidAnswer):
            validate_answer(key, value)
        with pytest.raises(InvalidAnswer):
            parse_answer(key, value)

    @pytest.mark.parametrize(
        ("key", "value"),
        [("laborRate", 1e9), ("manualMonthlyHours", 1e6), ("manualMonthlySpend", 2e9)],
    )
    def test_implausible_roi_inputs_are_refused(self, key: str, value: float) -> None:
        with pytest.raises(InvalidAnswer):
            validate_roi_input(key, value)
        with pytest.raises(InvalidAnswer):
            parse_roi_input(key, str(value))

    def test_a_count_past_the_safe_range_is_refused_exactly_not_rounded(self) -> None:
        """2**53 + 1 as a float is 2**53: compared through float() it would pass a bound of
        2**53 and be stored rounded. Compared as the int it is, it is refused."""
        question = DiscoveryQuestion(
            id=99,
            key="x",
            label="X?",
            group="goals",
            kind="number",
            minimum=0,
            maximum=float(MAX_SAFE_INTEGER),
            integer=True,
        )
        assert question.validate(MAX_SAFE_INTEGER) == MAX_SAFE_INTEGER
        for beyond in (MAX_SAFE_INTEGER + 2, float(2**53)):
            with pytest.raises(InvalidAnswer):
                question.validate(beyond)
        with pytest.raises(InvalidAnswer):
            question.parse("9007199254740993")
        assert question.parse("9007199254740991") == MAX_SAFE_INTEGER

    def test_a_whole_float_count_is_stored_as_an_int(self) -> None:
        assert validate_answer("floor_headcount", 25.0) == 25
        assert isinstance(parse_answer("floor_headcount", 25.0), int)
        assert parse_answer("daily_throughput_units", "1.5 million") == 1_500_000
        assert parse_answer("floor_headcount", "2.5k people") == 2_500

    def test_the_expected_form_says_whole_number(self) -> None:
        assert expected_form("floor_headcount") == "a whole number from 0 to 100,000 (people)"

    @pytest.mark.parametrize(
        ("given", "kept"), [(0.0, 0.0), (0.7, 0.7), (1.0, 1.0), (None, None), (1e9, None)]
    )
    def test_confidence_is_a_probability_or_dropped(
        self, given: float | None, kept: float | None
    ) -> None:
        assert plausible_confidence(given) == kept
        for nonsense in (-3.0, 1.0000001, math.inf, math.nan):
            assert plausible_confidence(nonsense) is None


class TestStrictValidation:
    def test_choice_matches_case_insensitively_and_stores_the_options_spelling(self) -> None:
        assert validate_answer("facility_type", "  COLD Storage ") == "cold storage"
        with pytest.raises(InvalidAnswer) as caught:
            validate_answer("facility_type", "spaceship")
        assert caught.value.key == "facility_type"
        assert caught.value.expected.startswith("one of: warehouse / distribution center")

    def test_a_choice_is_strict_about_partial_matches(self) -> None:
        with pytest.raises(InvalidAnswer):
            validate_answer("facility_type", "warehouse")

    @pytest.mark.parametrize("value", ["big", "12", True, -1, math.inf, math.nan, 24.5])
    def test_number_refuses_text_booleans_negatives_non_finite_and_out_of_bounds(
        self, value: Any
    ) -> None:
        with pytest.raises(InvalidAnswer) as caught:
            validate_answer("operating_hours_per_day", value)
        assert caught.value.expected == "a number from 0 to 24 (hours/day)"

    def test_number_within_bounds_keeps_its_value(self) -> None:
        assert validate_answer("operating_hours_per_day", 24) == 24
        assert validate_answer("sku_count", 0) == 0
        assert validate_answer("facility_size_sqft", 1.5e6) == 1.5e6

    def test_boolean_takes_only_a_boolean(self) -> None:
        assert validate_answer("budget_approved", False) is False
        for value in ("yes", 1, "true"):
            with pytest.raises(InvalidAnswer) as caught:
                validate_answer("budget_approved", value)
            assert caught.value.expected == "true or false"

    def test_text_is_capped_like_put_and_stripped(self) -> None:
        assert validate_answer("facility_location", "  Ohio ") == "Ohio"
        assert validate_answer("facility_location", "x" * MAX_TEXT_ANSWER_CHARS)
        for value in ("x" * (MAX_TEXT_ANSWER_CHARS + 1), "   ", 5):
            with pytest.raises(InvalidAnswer) as caught:
                validate_answer("facility_location", value)
            assert str(MAX_TEXT_ANSWER_CHARS) in caught.value.expected

    def test_roi_inputs_use_their_own_catalogue(self) -> None:
        assert validate_roi_input("utilization", 0.8) == 0.8
        for value in (1.5, -0.1, math.nan, True):
            with pytest.raises(InvalidAnswer):
                validate_roi_input("utilization", value)
        assert expected_form("utilization") == "a number from 0 to 1 (fraction)"


class TestLenientParse:
    @pytest.mark.parametrize(
        ("key", "text", "value"),
        [
            ("facility_size_sqft", "50k", 50_000),
            ("facility_size_sqft", "1,200 sq ft", 1200),
            ("facility_size_sqft", "about 1.5M", 1_500_000),
            ("error_damage_rate", "80%", 80),
            ("error_damage_rate", "0.5 %", 0.5),
            ("average_hourly_wage", "$22.50/hour", 22.5),
            ("budget_approved", "yes", True),
            ("budget_approved", "No.", False),
            ("facility_type", "Cold storage", "cold storage"),
            ("facility_type", "warehouse", "warehouse / distribution center"),
            ("facility_type", "we are a cold storage site", "cold storage"),
            ("budget_range", "not sure", "not sure yet"),
            ("facility_location", " Columbus, Ohio ", "Columbus, Ohio"),
        ],
    )
    def test_what_people_type_is_read(self, key: str, text: str, value: Any) -> None:
        parsed = parse_answer(key, text)
        assert parsed == value
        assert type(parsed) is type(value)

    @pytest.mark.parametrize(
        ("key", "text"),
        [
            ("facility_size_sqft", "big"),
            ("facility_size_sqft", "between 10 and 20"),
            ("operating_days_per_week", "12"),
            ("sku_count", "-5"),
            ("budget_approved", "maybe"),
            ("facility_type", "spaceship"),
            ("primary_goal", "improve"),  # two options fit: ambiguous
        ],
    )
    def test_what_does_not_fit_is_refused(self, key: str, text: str) -> None:
        with pytest.raises(InvalidAnswer) as caught:
            parse_answer(key, text)
        assert caught.value.key == key

    def test_typed_values_from_the_model_pass_through_the_strict_check(self) -> None:
        assert parse_answer("sku_count", 4500) == 4500
        assert parse_answer("budget_approved", True) is True
        with pytest.raises(InvalidAnswer):
            parse_answer("budget_range", "not-an-option")
        with pytest.raises(InvalidAnswer):
            parse_answer("facility_location", "x" * 50_000)

    @pytest.mark.parametrize(
        ("key", "text", "value"),
        [
            ("laborRate", "35", 35),
            ("laborRate", "$35/hour", 35),
            ("utilization", "80%", 0.8),
            ("utilization", "80", 0.8),
            ("utilization", "0.8", 0.8),
            ("manualMonthlySpend", "12k", 12_000),
        ],
    )
    def test_roi_inputs_are_read_leniently(self, key: str, text: str, value: float) -> None:
        assert parse_roi_input(key, text) == pytest.approx(value)

    def test_roi_input_out_of_bounds_is_refused(self) -> None:
        with pytest.raises(InvalidAnswer):
            parse_roi_input("utilization", "150")
        with pytest.raises(InvalidAnswer):
            parse_roi_input("laborRate", "a lot")


def _walk(schema: Any, path: str = "$") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(schema, dict):
        found.append((path, schema))
        for name, child in schema.get("properties", {}).items():
            found += _walk(child, f"{path}.{name}")
        for index, child in enumerate(schema.get("anyOf", [])):
            found += _walk(child, f"{path}|{index}")
        if "items" in schema:
            found += _walk(schema["items"], f"{path}[]")
    return found


# What OpenAI's strict mode accepts (structured outputs, "supported schemas").
STRICT_KEYWORDS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "anyOf",
    "description",
    "minimum",
    "maximum",
}


class TestExtractionSchema:
    def test_is_valid_for_strict_mode(self) -> None:
        for path, node in _walk(EXTRACTION_SCHEMA):
            assert set(node) <= STRICT_KEYWORDS, (path, set(node) - STRICT_KEYWORDS)
            if node.get("type") == "object":
                assert node["additionalProperties"] is False, path
                assert sorted(node["required"]) == sorted(node["properties"]), path

    def test_each_answer_is_typed_by_its_question(self) -> None:
        answers = EXTRACTION_SCHEMA["properties"]["answers"]  # type: ignore[index]
        assert list(answers["properties"]) == list(QUESTION_KEYS_IN_ORDER)
        for question in DISCOVERY_QUESTIONS:
            entry, null = answers["properties"][question.key]["anyOf"]
            assert null == {"type": "null"}
            value = entry["properties"]["value"]
            if question.kind == "choice":
                assert value == {"type": "string", "enum": list(question.options)}
            elif question.kind == "number":
                assert value["type"] == ("integer" if question.integer else "number")
                assert value["minimum"] == question.minimum
                assert value["maximum"] == question.maximum
            elif question.kind == "boolean":
                assert value == {"type": "boolean"}
            else:
                assert value["type"] == "string"

    def test_roi_inputs_carry_their_bounds(self) -> None:
        roi = EXTRACTION_SCHEMA["properties"]["roi_inputs"]  # type: ignore[index]
        assert list(roi["properties"]) == list(ROI_INPUT_KEYS)
        utilization = roi["properties"]["utilization"]
        assert utilization == {"type": ["number", "null"], "minimum": 0.0, "maximum": 1.0}
        assert roi["properties"]["laborRate"]["maximum"] == 1_000.0
