"""The one answer validator, by key: the catalogue's kinds enforced wherever an answer enters.

- `validate_answer` / `validate_roi_input` are strict (PUT): see each kind in kinds.py.
- `parse_answer` / `parse_roi_input` first read what people type, then apply the strict
  check. The offline agent and extraction use them.
- `plausible_confidence`: extraction's confidence is a probability, else it is dropped.
- `catalogue_rules()`: what a stored value must be, per key, for the SQL merges (the claim's,
  extraction's), passed to them as data (`p_rules`, judged by
  autopilot_private.entry_is_valid): SQL keeps no copy, so a new question needs no migration.
- `EXTRACTION_SCHEMA`: the extraction's strict structured output, typed the same way.
"""

from __future__ import annotations

import math
from typing import Annotated, Final

from pydantic import AfterValidator

from autopilot_api.discovery.catalogue import (
    DISCOVERY_QUESTIONS,
    QUESTION_BY_KEY,
    QUESTION_KEYS_IN_ORDER,
    ROI_BY_KEY,
    ROI_INPUT_KEYS,
    ROI_INPUTS,
    STEP_BY_ASKED,
    STEPS,
    DiscoveryQuestion,
)
from autopilot_api.discovery.kinds import AnswerValue, JsonSchema, Rule


def validate_answer(key: str, value: object) -> AnswerValue:
    """The value to store for this question, or InvalidAnswer."""
    return QUESTION_BY_KEY[key].validate(value)


def parse_answer(key: str, raw: object) -> AnswerValue:
    """What a person (or the model) gave, read leniently, then checked strictly."""
    return QUESTION_BY_KEY[key].parse(raw)


def validate_roi_input(key: str, value: object) -> float:
    return ROI_BY_KEY[key].validate(value)


def parse_roi_input(key: str, raw: object) -> float:
    return ROI_BY_KEY[key].parse(raw)


def expected_form(key: str) -> str:
    """What a question (or ROI input) takes, in words: the 422's `expected`."""
    step = ROI_BY_KEY.get(key) or QUESTION_BY_KEY[key]
    return step.describe()


def retry_note(asked: str) -> str:
    """Why the offline agent asks a step (a message's metadata.asked) again, and the form
    an answer takes."""
    step = STEP_BY_ASKED[asked]
    return step.answer_kind.retry_note(step)


def plausible_confidence(value: float | None) -> float | None:
    """Extraction's confidence as a probability (0 to 1); anything else (1e9, -3) is not a
    confidence at all: dropped, so the answer is kept without one."""
    if value is None or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        return None
    return value


# What extraction's payload declares for each confidence it reads.
Confidence = Annotated[float | None, AfterValidator(plausible_confidence)]


# --- the rules the SQL merges consult ----------------------------------------------------
CATALOGUE_RULES: Final[dict[str, Rule]] = {step.key: step.answer_kind.rule(step) for step in STEPS}


def catalogue_rules() -> dict[str, Rule]:
    """Per key, what a stored value must be: the `p_rules` the SQL merges judge by."""
    return CATALOGUE_RULES


# --- the extraction's structured output ---------------------------------------------------
# A probability; plausible_confidence drops anything else the model sends.
CONFIDENCE_SCHEMA: Final[JsonSchema] = {"type": ["number", "null"], "minimum": 0, "maximum": 1}


def _or_null(schema: JsonSchema) -> JsonSchema:
    return {**schema, "type": [schema["type"], "null"]}


def _answer_entry_schema(question: DiscoveryQuestion) -> JsonSchema:
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "value": question.answer_kind.json_schema(question),
                    "evidence": {"type": ["string", "null"]},
                    "confidence": CONFIDENCE_SCHEMA,
                },
                "required": ["value", "evidence", "confidence"],
                "additionalProperties": False,
            },
            {"type": "null"},
        ]
    }


# Strict structured outputs: every property required, optional values nullable, no
# additional properties. One property per question, its value typed by its kind (an
# option, a bounded number, a boolean), so the model can only return values that fit; null
# for a question with nothing new. Fixed, so the API compiles it once.
EXTRACTION_SCHEMA: Final[JsonSchema] = {
    "type": "object",
    "properties": {
        "answers": {
            "type": "object",
            "properties": {q.key: _answer_entry_schema(q) for q in DISCOVERY_QUESTIONS},
            "required": list(QUESTION_KEYS_IN_ORDER),
            "additionalProperties": False,
        },
        "roi_inputs": {
            "type": "object",
            "properties": {
                spec.key: _or_null(spec.answer_kind.json_schema(spec)) for spec in ROI_INPUTS
            },
            "required": list(ROI_INPUT_KEYS),
            "additionalProperties": False,
        },
        "confidence": CONFIDENCE_SCHEMA,
    },
    "required": ["answers", "roi_inputs", "confidence"],
    "additionalProperties": False,
}
