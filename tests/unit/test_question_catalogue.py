import dataclasses
import re
from typing import get_args

import pytest

from autopilot_api.discovery.catalogue import (
    DISCOVERY_QUESTIONS,
    PHASE_DISPLAY_NAMES,
    QUESTION_BY_KEY,
    QUESTION_GROUPS,
    QUESTION_KEYS_IN_ORDER,
    ROI_INPUT_KEYS,
    ROI_INPUTS,
    VALID_QUESTION_KEYS,
    DiscoveryQuestion,
    QuestionGroup,
    next_missing_roi_input,
    next_unanswered_question,
)

SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def test_there_are_25_questions() -> None:
    assert len(DISCOVERY_QUESTIONS) == 25


def test_ids_run_1_to_25_in_order() -> None:
    assert [q.id for q in DISCOVERY_QUESTIONS] == list(range(1, 26))


def test_keys_are_unique_snake_case() -> None:
    keys = [q.key for q in DISCOVERY_QUESTIONS]
    assert len(set(keys)) == len(keys)
    for key in keys:
        assert SNAKE_CASE.match(key), key


def test_labels_are_questions() -> None:
    for q in DISCOVERY_QUESTIONS:
        assert q.label.strip() == q.label
        assert q.label.endswith("?"), q.key


def test_every_group_is_used_and_groups_are_contiguous_in_order() -> None:
    assert QUESTION_GROUPS == get_args(QuestionGroup)
    seen: list[str] = []
    for q in DISCOVERY_QUESTIONS:
        if not seen or seen[-1] != q.group:
            seen.append(q.group)
    # Each group appears as one block, in the declared order.
    assert tuple(seen) == QUESTION_GROUPS


def test_choice_questions_have_options_and_others_do_not() -> None:
    for q in DISCOVERY_QUESTIONS:
        if q.kind == "choice":
            assert len(q.options) >= 2, q.key
            assert len(set(q.options)) == len(q.options), q.key
        else:
            assert q.options == (), q.key
        if q.unit is not None:
            assert q.kind == "number", q.key


def test_question_is_frozen() -> None:
    q = DISCOVERY_QUESTIONS[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.key = "other"  # type: ignore[misc]


def test_malformed_question_is_rejected() -> None:
    with pytest.raises(ValueError, match="options"):
        DiscoveryQuestion(id=99, key="x", label="X?", group="goals", kind="choice")
    with pytest.raises(ValueError, match="question"):
        DiscoveryQuestion(id=99, key="x", label="X", group="goals", kind="text")


def test_lookup_tables_are_consistent() -> None:
    assert QUESTION_KEYS_IN_ORDER == tuple(q.key for q in DISCOVERY_QUESTIONS)
    assert frozenset(QUESTION_KEYS_IN_ORDER) == VALID_QUESTION_KEYS
    assert set(QUESTION_BY_KEY) == VALID_QUESTION_KEYS
    for q in DISCOVERY_QUESTIONS:
        assert QUESTION_BY_KEY[q.key] is q


def test_question_by_key_is_read_only() -> None:
    with pytest.raises(TypeError):
        QUESTION_BY_KEY["new"] = DISCOVERY_QUESTIONS[0]  # type: ignore[index]


def test_next_unanswered_question_follows_order() -> None:
    assert next_unanswered_question([]) is DISCOVERY_QUESTIONS[0]
    assert next_unanswered_question(QUESTION_KEYS_IN_ORDER[:3]) is DISCOVERY_QUESTIONS[3]
    # Answering out of order: the earliest gap wins.
    answered = set(QUESTION_KEYS_IN_ORDER) - {QUESTION_KEYS_IN_ORDER[4], QUESTION_KEYS_IN_ORDER[10]}
    assert next_unanswered_question(answered) is DISCOVERY_QUESTIONS[4]
    # Unknown keys are ignored.
    assert next_unanswered_question({"not_a_question"}) is DISCOVERY_QUESTIONS[0]


def test_next_unanswered_question_none_when_all_answered() -> None:
    assert next_unanswered_question(QUESTION_KEYS_IN_ORDER) is None
    assert next_unanswered_question(VALID_QUESTION_KEYS | {"extra"}) is None


def test_roi_specs_match_keys() -> None:
    assert ROI_INPUT_KEYS == (
        "laborRate",
        "utilization",
        "maintenanceFactor",
        "manualMonthlySpend",
        "manualMonthlyHours",
    )
    assert tuple(spec.key for spec in ROI_INPUTS) == ROI_INPUT_KEYS


def test_roi_spec_bounds() -> None:
    by_key = {spec.key: spec for spec in ROI_INPUTS}
    for key in ("utilization", "maintenanceFactor"):
        assert by_key[key].minimum == 0.0
        assert by_key[key].maximum == 1.0
    # Every input has an upper bound a real facility can have (issue 20).
    assert by_key["laborRate"].maximum == 1_000.0
    assert by_key["manualMonthlySpend"].maximum == 1_000_000_000.0
    assert by_key["manualMonthlyHours"].maximum == 500_000.0
    for key in ("laborRate", "manualMonthlySpend", "manualMonthlyHours"):
        assert by_key[key].minimum == 0.0
    for spec in ROI_INPUTS:
        assert spec.label.endswith("?"), spec.key
        assert spec.unit


def test_next_missing_roi_input() -> None:
    assert next_missing_roi_input([]) is ROI_INPUTS[0]
    assert next_missing_roi_input({"laborRate", "maintenanceFactor"}) is ROI_INPUTS[1]
    assert next_missing_roi_input(ROI_INPUT_KEYS) is None


def test_phase_display_names() -> None:
    assert dict(PHASE_DISPLAY_NAMES) == {
        "discovery": "Discovery",
        "roi": "ROI analysis",
        "greenlight": "Greenlight",
    }
