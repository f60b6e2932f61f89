"""Answer kinds: what a question's value is, defined once per kind.

One object per kind (text, number, choice, boolean), registered in `KINDS` by name. Each
says, for a question (or an ROI input) of its kind:

- `check`: what the question must carry (options only for a choice, a unit and bounds only
  for a number, ...), at import time, so a malformed entry never reaches the agent or the SPA;
- `validate`: the strict check wherever an answer enters (PUT, and after every lenient read):
  the value to store, or `InvalidAnswer`;
- `parse`: a lenient read of what people type ("50k", "80%", "1,200 sq ft", "yes",
  "warehouse" for "warehouse / distribution center"), then `validate`;
- `describe`: the form an answer takes, in words (a 422's `expected`, the agent's retry note,
  the extraction prompt);
- `json_schema`: the value's type in the extraction's strict structured output;
- `rule`: what a stored value must be, for SQL (see below);
- `public`: the kind's fields in GET /api/v1/discovery/questions;
- `example`: a value that fits (the test fixtures fill questionnaires with it).

The SQL merges judge stored values by rules the service passes as data (`p_rules`), in one
generic shape that `autopilot_private.entry_is_valid` evaluates (supabase/schemas/20_progress.sql):

    {"type": "string" | "number" | "integer" | "boolean",
     "enum": [...], "minLength", "maxLength", "pattern",   strings, judged trimmed; enum
                                                           compared case-insensitively
     "minimum", "maximum"}                                  numbers; "integer" is a whole
                                                           number JavaScript holds exactly

So a new kind that maps onto these primitives (a date: a string with a pattern) needs no
SQL change; a `pattern` must read alike in Python's `re` and Postgres's `~` (classes,
counts, anchors).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, Protocol, TypeGuard

AnswerValue = str | int | float | bool
JsonSchema = dict[str, Any]
Rule = dict[str, Any]

# The largest integer a JavaScript number (the SPA's) holds exactly: 2**53 - 1.
MAX_SAFE_INTEGER: Final[int] = 2**53 - 1
MAX_TEXT_ANSWER_CHARS: Final[int] = 2000


class InvalidAnswer(ValueError):
    """A value that does not fit its question; `expected` says what would."""

    def __init__(self, key: str, expected: str) -> None:
        super().__init__(f"{key}: expected {expected}")
        self.key = key
        self.expected = expected


class Constrained(Protocol):
    """What a kind reads off a question or an ROI input."""

    @property
    def key(self) -> str: ...
    @property
    def options(self) -> tuple[str, ...]: ...
    @property
    def unit(self) -> str | None: ...
    @property
    def minimum(self) -> float | None: ...
    @property
    def maximum(self) -> float | None: ...
    @property
    def integer(self) -> bool: ...


# The constraints a question may carry, unset, and how a refusal names them.
_CONSTRAINTS: Final[Mapping[str, tuple[object, str]]] = MappingProxyType(
    {
        "options": ((), "options"),
        "unit": (None, "a unit"),
        "minimum": (None, "bounds"),
        "maximum": (None, "bounds"),
        "integer": (False, "integer values"),
    }
)


class AnswerKind:
    """The base of every kind: a value taken as it is, described by `describe`."""

    name: ClassVar[str]
    # The constraints (of _CONSTRAINTS) this kind gives a meaning to; the others stay unset.
    uses: ClassVar[frozenset[str]] = frozenset()
    # What a question of this kind carries unless it says otherwise.
    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def check(self, item: Constrained) -> None:
        for constraint, (unset, noun) in _CONSTRAINTS.items():
            if constraint not in self.uses and getattr(item, constraint) != unset:
                raise ValueError(f"question {item.key!r}: a {self.name} question carries no {noun}")

    def validate(self, item: Constrained, value: object) -> AnswerValue:
        stored = self.accept(item, value)
        if stored is None:
            raise InvalidAnswer(item.key, self.describe(item))
        return stored

    def accept(self, item: Constrained, value: object) -> AnswerValue | None:
        """The value to store, or None when it does not fit."""
        raise NotImplementedError

    def parse(self, item: Constrained, raw: object) -> AnswerValue:
        """What a person (or the model) gave, read leniently, then checked strictly."""
        return self.validate(item, self.read(item, raw) if isinstance(raw, str) else raw)

    def read(self, item: Constrained, text: str) -> object:
        """The value a person means by `text`; `text` itself when there is no better reading."""
        return text

    def describe(self, item: Constrained) -> str:
        raise NotImplementedError

    def json_schema(self, item: Constrained) -> JsonSchema:
        raise NotImplementedError

    def rule(self, item: Constrained) -> Rule:
        raise NotImplementedError

    def public(self, item: Constrained) -> dict[str, Any]:
        return {
            "options": list(item.options),
            "unit": item.unit,
            "minimum": item.minimum,
            "maximum": item.maximum,
            "integer": item.integer,
            "max_length": None,
        }

    def retry_note(self, item: Constrained) -> str:
        """Why the offline agent asks the same question again."""
        return f"I could not use that: I need {self.describe(item)}. "

    def example(self, item: Constrained, seed: int = 0) -> AnswerValue:
        raise NotImplementedError


class Text(AnswerKind):
    name = "text"

    def accept(self, item: Constrained, value: object) -> AnswerValue | None:
        if isinstance(value, str):
            text = value.strip()
            if 0 < len(text) <= MAX_TEXT_ANSWER_CHARS:
                return text
        return None

    def describe(self, item: Constrained) -> str:
        return f"text of 1 to {MAX_TEXT_ANSWER_CHARS} characters"

    def json_schema(self, item: Constrained) -> JsonSchema:
        # strict mode has no maxLength: the validator drops an over-long text afterwards
        return {"type": "string"}

    def rule(self, item: Constrained) -> Rule:
        return {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_ANSWER_CHARS}

    def public(self, item: Constrained) -> dict[str, Any]:
        return {**super().public(item), "max_length": MAX_TEXT_ANSWER_CHARS}

    def example(self, item: Constrained, seed: int = 0) -> AnswerValue:
        return f"text {seed} for {item.key}"  # unique per seed: a lost or swapped write shows


# --- numbers --------------------------------------------------------------------------
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


def _fmt(number: float) -> str:
    return f"{int(number):,}" if float(number).is_integer() else f"{number:,}"


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


def read_number(text: str) -> tuple[Decimal, bool] | None:
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


class Number(AnswerKind):
    """A finite JSON number within the question's bounds (every number has an upper bound a
    real facility can have); a count (`integer`) is a whole number within JavaScript's safe
    range, compared exactly: never through a float, which would round 2**53 + 1 to 2**53."""

    name = "number"
    uses = frozenset({"unit", "minimum", "maximum", "integer"})
    defaults = MappingProxyType({"minimum": 0.0})

    def check(self, item: Constrained) -> None:
        super().check(item)
        if item.minimum is None or item.minimum < 0:
            raise ValueError(f"question {item.key!r}: a number's minimum is 0 or more")
        if item.maximum is None or item.maximum > MAX_SAFE_INTEGER:
            raise ValueError(f"question {item.key!r}: a number needs a plausible maximum")
        if item.maximum <= item.minimum:
            raise ValueError(f"question {item.key!r}: maximum must exceed minimum")

    def accept(self, item: Constrained, value: object) -> AnswerValue | None:
        if not _is_number(value):
            return None
        if item.integer:
            whole = _whole(value)
            return (
                whole if whole is not None and _within(whole, item.minimum, item.maximum) else None
            )
        return value if _within(value, item.minimum, item.maximum) else None

    def parse(self, item: Constrained, raw: object) -> AnswerValue:
        return super().parse(item, _tidy(raw) if _is_number(raw) else raw)

    def read(self, item: Constrained, text: str) -> object:
        found = read_number(text)
        if found is None:
            return text
        number, percent = found
        # "80%", or "80" for a fraction from 0 to 1, means 0.8
        if item.unit == "fraction" and (
            percent or (item.maximum is not None and item.maximum < number <= 100)
        ):
            number /= 100
        return _from_decimal(number)

    def describe(self, item: Constrained) -> str:
        low = _fmt(item.minimum or 0.0)
        noun = "a whole number" if item.integer else "a number"
        form = (
            f"{noun} from {low} to {_fmt(item.maximum)}"
            if item.maximum is not None
            else f"{noun} of at least {low}"
        )
        return f"{form} ({item.unit})" if item.unit else form

    def json_schema(self, item: Constrained) -> JsonSchema:
        schema: JsonSchema = {"type": "integer" if item.integer else "number"}
        if item.minimum is not None:
            schema["minimum"] = item.minimum
        if item.maximum is not None:
            schema["maximum"] = item.maximum
        return schema

    def rule(self, item: Constrained) -> Rule:
        return {
            "type": "integer" if item.integer else "number",
            "minimum": item.minimum,
            "maximum": item.maximum,
        }

    def example(self, item: Constrained, seed: int = 0) -> AnswerValue:
        # within every question's bounds (days per week: at most 7)
        return seed % 7 + 1


class Choice(AnswerKind):
    """One of the question's options, in any case; stored in the option's own spelling."""

    name = "choice"
    uses = frozenset({"options"})

    def check(self, item: Constrained) -> None:
        super().check(item)
        if not item.options:
            raise ValueError(
                f"question {item.key!r}: options are required for, and only for, choice"
            )

    def accept(self, item: Constrained, value: object) -> AnswerValue | None:
        if isinstance(value, str):
            wanted = value.strip().lower()
            for option in item.options:
                if option.lower() == wanted:
                    return option
        return None

    def read(self, item: Constrained, text: str) -> object:
        wanted = " ".join(text.lower().split())
        for option in item.options:
            if option.lower() == wanted:
                return option

        def inside(part: str, whole: str) -> bool:
            return re.search(rf"(?<!\w){re.escape(part)}(?!\w)", whole) is not None

        # "warehouse" for "warehouse / distribution center", "a cold storage site" for
        # "cold storage": taken only when exactly one option fits.
        fits = [o for o in item.options if inside(wanted, o.lower()) or inside(o.lower(), wanted)]
        return fits[0] if len(fits) == 1 and wanted else text

    def describe(self, item: Constrained) -> str:
        return "one of: " + ", ".join(item.options)

    def json_schema(self, item: Constrained) -> JsonSchema:
        return {"type": "string", "enum": list(item.options)}

    def rule(self, item: Constrained) -> Rule:
        return {"type": "string", "enum": list(item.options)}

    def example(self, item: Constrained, seed: int = 0) -> AnswerValue:
        return item.options[seed % len(item.options)]


class Boolean(AnswerKind):
    name = "boolean"

    _YES: ClassVar[frozenset[str]] = frozenset(
        {"yes", "y", "yeah", "yep", "true", "approved", "it is", "sure"}
    )
    _NO: ClassVar[frozenset[str]] = frozenset(
        {"no", "n", "nope", "false", "not yet", "not approved", "it is not"}
    )

    def accept(self, item: Constrained, value: object) -> AnswerValue | None:
        return value if isinstance(value, bool) else None

    def read(self, item: Constrained, text: str) -> object:
        wanted = " ".join(text.lower().strip(" .!").split())
        if wanted in self._YES:
            return True
        if wanted in self._NO:
            return False
        return text

    def describe(self, item: Constrained) -> str:
        return "true or false"

    def json_schema(self, item: Constrained) -> JsonSchema:
        return {"type": "boolean"}

    def rule(self, item: Constrained) -> Rule:
        return {"type": "boolean"}

    def retry_note(self, item: Constrained) -> str:
        return "Please answer yes or no. "

    def example(self, item: Constrained, seed: int = 0) -> AnswerValue:
        return seed % 2 == 0


KINDS: Final[Mapping[str, AnswerKind]] = MappingProxyType(
    {kind.name: kind for kind in (Text(), Number(), Choice(), Boolean())}
)
if TYPE_CHECKING:
    KindName = str
else:
    # A Literal of the names for Pydantic (the API schema's enum); to mypy a str.
    KindName = Literal[tuple(KINDS)]


def kind_named(name: str) -> AnswerKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"no answer kind {name!r}; the kinds are {', '.join(KINDS)}") from None
