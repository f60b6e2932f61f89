"""The kind registry: each kind says everything about its questions' values, and what it
tells SQL stays within the primitives SQL evaluates (so a new kind needs no migration)."""

from __future__ import annotations

import pytest

from autopilot_api.discovery.answers import CATALOGUE_RULES, EXTRACTION_SCHEMA, retry_note
from autopilot_api.discovery.catalogue import (
    DISCOVERY_QUESTIONS,
    PHASE_BY_NAME,
    PHASE_DISPLAY_NAMES,
    PHASE_KEYS,
    PHASE_NAMES,
    PHASES,
    QUESTION_BY_KEY,
    ROI_INPUT_KEYS,
    STEP_BY_ASKED,
    STEPS,
    DiscoveryQuestion,
    RoiInput,
    next_step,
)
from autopilot_api.discovery.kinds import KINDS, InvalidAnswer, kind_named
from autopilot_api.schemas.discovery import QuestionPublic
from autopilot_api.services.agent_prompts import PHASE_INSTRUCTIONS, SYSTEM_PROMPTS
from autopilot_api.services.opening import OPENING_STEPS

# What autopilot_private.entry_is_valid evaluates (supabase/schemas/20_progress.sql): a rule
# beyond these needs a change there first.
SQL_RULE_KEYS = {"type", "enum", "minimum", "maximum", "minLength", "maxLength", "pattern"}
SQL_RULE_TYPES = {"string", "number", "integer", "boolean"}


def test_the_four_kinds_are_registered_by_name() -> None:
    assert {"text", "number", "choice", "boolean"} <= set(KINDS)
    for name, kind in KINDS.items():
        assert kind.name == name
    with pytest.raises(ValueError, match="no answer kind 'colour'"):
        kind_named("colour")


@pytest.mark.parametrize("question", DISCOVERY_QUESTIONS, ids=lambda q: q.key)
def test_each_kind_answers_for_its_questions(question: DiscoveryQuestion) -> None:
    kind = question.answer_kind
    for seed in range(3):
        example = kind.example(question, seed)
        assert question.validate(example) == example
        assert question.parse(example) == example
    with pytest.raises(InvalidAnswer) as caught:
        question.validate(None)
    assert caught.value.expected == question.describe()
    assert retry_note(question.asked).endswith(". ")
    published = QuestionPublic.from_question(question)
    assert published.kind == question.kind


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.key)
def test_every_rule_is_made_of_the_primitives_sql_evaluates(step: DiscoveryQuestion) -> None:
    rule = CATALOGUE_RULES[step.key]
    assert set(rule) <= SQL_RULE_KEYS, set(rule) - SQL_RULE_KEYS
    assert rule["type"] in SQL_RULE_TYPES


def test_a_kind_refuses_the_constraints_it_does_not_use() -> None:
    for kind, constraint, noun in [
        ("text", {"unit": "m"}, "a unit"),
        ("boolean", {"integer": True}, "integer values"),
        ("choice", {"options": ("a", "b"), "maximum": 3.0}, "bounds"),
        ("number", {"minimum": 0.0, "maximum": 3.0, "options": ("a",)}, "options"),
    ]:
        with pytest.raises(ValueError, match=f"a {kind} question carries no {noun}"):
            DiscoveryQuestion(id=99, key="x", label="X?", group="goals", kind=kind, **constraint)  # type: ignore[arg-type]


def test_an_roi_input_is_a_number() -> None:
    with pytest.raises(ValueError, match="numbers only"):
        RoiInput(key="x", label="X?", minimum=0, maximum=1, unit="u", kind="text")


def test_phases_are_named_once_and_everything_else_derives_from_them() -> None:
    assert PHASE_NAMES == tuple(PHASE_BY_NAME) == tuple(PHASE_DISPLAY_NAMES)
    assert set(SYSTEM_PROMPTS) == set(PHASE_NAMES)
    assert {phase.prompt for phase in PHASES} <= set(PHASE_INSTRUCTIONS)
    # SQL completes a phase by these keys: every question and ROI input in exactly one phase.
    completing = [key for keys in PHASE_KEYS.values() for key in keys]
    assert sorted(completing) == sorted(step.key for step in STEPS)
    assert [step["phase"] for step in OPENING_STEPS["steps"]] == [
        phase.name for phase in PHASES for _ in phase.asks
    ]
    assert set(STEP_BY_ASKED) == {step.asked for step in STEPS}


def test_the_next_step_runs_through_the_phases_from_the_owners_on() -> None:
    first, last = PHASES[0].name, PHASES[-1].name
    assert next_step(first, answers=(), roi_inputs=()) is DISCOVERY_QUESTIONS[0]
    every_answer = set(QUESTION_BY_KEY)
    roi = next_step(first, answers=every_answer, roi_inputs=())
    assert roi is not None
    assert roi.key == ROI_INPUT_KEYS[0]
    # An earlier phase's gaps are not asked from a later phase.
    assert next_step(PHASES[1].name, answers=(), roi_inputs=()) is roi
    assert next_step(last, answers=(), roi_inputs=()) is None
    assert next_step(first, answers=every_answer, roi_inputs=ROI_INPUT_KEYS) is None


def test_the_extraction_schema_types_each_answer_by_its_kind() -> None:
    answers = EXTRACTION_SCHEMA["properties"]["answers"]["properties"]
    for question in DISCOVERY_QUESTIONS:
        entry = answers[question.key]["anyOf"][0]
        assert entry["properties"]["value"] == question.answer_kind.json_schema(question)
