"""The one answer validator: the catalogue's kind, options and bounds, enforced wherever an
answer enters.

- `validate_answer` / `validate_roi_input` are strict (PUT): a choice is one of its options
  (any case; stored in the option's own spelling), a number is a finite JSON number within
  its bounds (every number has an upper bound a real facility can have), a count is a whole
  number (within JavaScript's safe range, compared exactly: never through a float, which
  would round 2**53 + 1 to 2**53), a yes/no question takes a boolean, text is capped as
  PUT caps it.
- `parse_answer` / `parse_roi_input` first read what people type ("50k", "80%",
  "1,200 sq ft", "yes", "warehouse" for "warehouse / distribution center"), exactly (as a
  Decimal), then apply the strict check. The offline agent and extraction use them.
- `plausible_confidence`: extraction's confidence is a probability, else it is dropped.

The merges in SQL (the claim's, extraction's) judge stored values by `catalogue_rules()`,
which the services pass to them as data (autopilot_private.entry_is_valid): SQL keeps no copy,
so a new question needs no migration.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Final, TypeGuard

from pydantic import AfterValidator

from autopilot_api.schemas.discovery import MAX_TEXT_ANSWER_CHARS, AnswerValue
from autopilot_api.services.extraction_constants import (
    DISCOVERY_QUESTIONS,
    MAX_SAFE_INTEGER,
    QUESTION_BY_KEY,
    ROI_INPUTS,
    DiscoveryQuestion,
    RoiInputSpec,
)

ROI_BY_KEY: Final[dict[str, RoiInputSpec]] = {spec.key: spec for spec in ROI_INPUTS}

_YES: Final = frozenset({"yes", "y", "yeah", "yep", "true", "approved", "it is", "sure"})
_NO: Final = frozenset({"no", "n", "nope", "false", "not yet", "not approved", "it is not"})
_NUMBER: Final = re.compile(
    r"(?<![\w.])(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+)\s*"
    r"(k|thousand|m|mm|million|bn|billion)?(?![a-z])\s*(%)?",
    re.IGNORECASE,
)
_SCALE: Final = {
    "k": Decimal(10**3),
    "thousand": Decimal(10**3),
    "m": Decimal(10**6),
    "mm": Decimal(10**6),
    "million": Decimal(10**6),
    "bn": Decimal(10**9),
    "billion": Decimal(10**9),
}


class InvalidAnswer(ValueError):
    """A value that does not fit its question; `expected` says what would."""

    def __init__(self, key: str, expected: str) -> None:
        super().__init__(f"{key}: expected {expected}")
        self.key = key
        self.expected = expected


def _fmt(number: float) -> str:
    return f"{int(number):,}" if float(number).is_integer() else f"{number:,}"


def _number_form(
    minimum: float | None, maximum: float | None, unit: str | None, *, integer: bool = False
) -> str:
    low = _fmt(minimum or 0.0)
    noun = "a whole number" if integer else "a number"
    form = (
        f"{noun} from {low} to {_fmt(maximum)}"
        if maximum is not None
        else (f"{noun} of at least {low}")
    )
    return f"{form} ({unit})" if unit else form


def expected_form(key: str) -> str:
    """What a question (or ROI input) takes, in words: the 422's `expected`."""
    spec = ROI_BY_KEY.get(key)
    if spec is not None:
        return _number_form(spec.minimum, spec.maximum, spec.unit)
    question = QUESTION_BY_KEY[key]
    if question.kind == "choice":
        return "one of: " + ", ".join(question.options)
    if question.kind == "number":
        return _number_form(
            question.minimum, question.maximum, question.unit, integer=question.integer
        )
    if question.kind == "boolean":
        return "true or false"
    return f"text of 1 to {MAX_TEXT_ANSWER_CHARS} characters"


def _is_number(value: object) -> TypeGuard[int | float]:
    # bool is an int in Python, never a number here
    return isinstance(value, int | float) and not isinstance(value, bool)


def _within(value: int | float, minimum: float | None, maximum: float | None) -> bool:
    """Compared as given: Python compares an int with a float exactly, where float(int)
    would round (and overflow past 1e308)."""
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if value < (minimum or 0.0):
        return False
    return maximum is None or value <= maximum


def _whole(value: int | float) -> int | None:
    """The value as an int when it is a whole number JavaScript holds exactly (25.0 → 25);
    else None. A float past 2**53 has already been rounded: it is refused too."""
    if isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
    return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else None


def _tidy(number: int | float) -> int | float:
    """120000.0 → 120000: a whole number is stored as an integer."""
    if isinstance(number, float) and not math.isfinite(number):
        return number
    whole = _whole(number)
    return number if whole is None else whole


def _from_decimal(number: Decimal) -> int | float:
    """An exact reading: an int when whole (however large), else the nearest float."""
    if number == number.to_integral_value():
        return int(number)
    return float(number)


# --- strict -------------------------------------------------------------------------------
def validate_answer(key: str, value: object) -> AnswerValue:
    """The value to store for this question, or InvalidAnswer."""
    question = QUESTION_BY_KEY[key]
    if question.kind == "choice":
        if isinstance(value, str):
            wanted = value.strip().lower()
            for option in question.options:
                if option.lower() == wanted:
                    return option
    elif question.kind == "number":
        if _is_number(value) and question.integer:
            whole = _whole(value)
            if whole is not None and _within(whole, question.minimum, question.maximum):
                return whole
        elif _is_number(value) and _within(value, question.minimum, question.maximum):
            return value
    elif question.kind == "boolean":
        if isinstance(value, bool):
            return value
    elif isinstance(value, str):
        text = value.strip()
        if 0 < len(text) <= MAX_TEXT_ANSWER_CHARS:
            return text
    raise InvalidAnswer(key, expected_form(key))


def validate_roi_input(key: str, value: object) -> float:
    spec = ROI_BY_KEY[key]
    if _is_number(value) and _within(value, spec.minimum, spec.maximum):
        return float(value)
    raise InvalidAnswer(key, expected_form(key))


def plausible_confidence(value: float | None) -> float | None:
    """Extraction's confidence as a probability (0 to 1); anything else (1e9, -3) is not a
    confidence at all: dropped, so the answer is kept without one."""
    if value is None or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        return None
    return value


# What extraction's payload declares for each confidence it reads.
Confidence = Annotated[float | None, AfterValidator(plausible_confidence)]


def is_valid_stored(key: str, value: Any) -> bool:
    """Whether a stored value fits the catalogue (a key it does not know: nothing to judge)."""
    try:
        if key in QUESTION_BY_KEY:
            validate_answer(key, value)
        elif key in ROI_BY_KEY:
            validate_roi_input(key, value)
    except InvalidAnswer:
        return False
    return True


# --- lenient: what people type ------------------------------------------------------------
def _read_number(text: str) -> tuple[Decimal, bool] | None:
    """The one number in `text` ("50k", "1,200 sq ft", "$22.50/hour", "80%"), exactly, and
    whether it carried a percent sign; None when there is no number or more than one."""
    found = list(_NUMBER.finditer(text))
    if len(found) != 1:
        return None
    digits, scale, percent = found[0].groups()
    try:
        number = Decimal(digits.replace(",", "")) * _SCALE.get((scale or "").lower(), 1)
    except InvalidOperation:
        return None
    return number, percent is not None


def _read_choice(question: DiscoveryQuestion, text: str) -> str | None:
    wanted = " ".join(text.lower().split())
    for option in question.options:
        if option.lower() == wanted:
            return option

    def inside(part: str, whole: str) -> bool:
        return re.search(rf"(?<!\w){re.escape(part)}(?!\w)", whole) is not None

    # "warehouse" for "warehouse / distribution center", "a cold storage site" for
    # "cold storage": taken only when exactly one option fits.
    fits = [o for o in question.options if inside(wanted, o.lower()) or inside(o.lower(), wanted)]
    return fits[0] if len(fits) == 1 and wanted else None


def _read_boolean(text: str) -> bool | None:
    wanted = " ".join(text.lower().strip(" .!").split())
    if wanted in _YES:
        return True
    if wanted in _NO:
        return False
    return None


def parse_answer(key: str, raw: object) -> AnswerValue:
    """What a person (or the model) gave, read leniently, then checked strictly."""
    question = QUESTION_BY_KEY[key]
    value: object = raw
    if isinstance(raw, str):
        if question.kind == "number":
            read = _read_number(raw)
            value = _from_decimal(read[0]) if read is not None else raw
        elif question.kind == "choice":
            value = _read_choice(question, raw) or raw
        elif question.kind == "boolean":
            boolean = _read_boolean(raw)
            value = raw if boolean is None else boolean
    elif _is_number(raw) and question.kind == "number":
        value = _tidy(raw)
    return validate_answer(key, value)


def parse_roi_input(key: str, raw: object) -> float:
    spec = ROI_BY_KEY[key]
    if not isinstance(raw, str):
        return validate_roi_input(key, raw)
    read = _read_number(raw)
    if read is None:
        raise InvalidAnswer(key, expected_form(key))
    number, percent = read
    if spec.unit == "fraction":
        # "80%", or "80" for a fraction from 0 to 1, means 0.8
        if percent or spec.maximum < number <= 100:
            number /= 100
    return validate_roi_input(key, float(number))


# --- the rules the SQL merge consults ---------------------------------------------------
def _rule(question: DiscoveryQuestion) -> dict[str, Any]:
    if question.kind == "choice":
        return {"kind": "choice", "options": list(question.options)}
    if question.kind == "number":
        return {
            "kind": "number",
            "minimum": question.minimum,
            "maximum": question.maximum,
            "integer": question.integer,
        }
    if question.kind == "boolean":
        return {"kind": "boolean"}
    return {"kind": "text", "maxChars": MAX_TEXT_ANSWER_CHARS}


def catalogue_rules() -> dict[str, dict[str, Any]]:
    """Per key, what a stored value must be: the `p_rules` the SQL merges judge by."""
    rules = {question.key: _rule(question) for question in DISCOVERY_QUESTIONS}
    for spec in ROI_INPUTS:
        rules[spec.key] = {
            "kind": "number",
            "minimum": spec.minimum,
            "maximum": spec.maximum,
            "integer": False,
        }
    return rules
