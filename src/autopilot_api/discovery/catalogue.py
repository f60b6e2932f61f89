"""The discovery catalogue: the questions, the ROI inputs and the phases, defined once.

Everything that names a question or a phase (the validator, agent prompts, extraction, the
SQL merges and phase moves, the SPA's progress display) reads it from here, so a key, a
label or a phase is changed in exactly one place. What a question's value is comes from its
kind (kinds.py); SQL receives the catalogue as data (answers.catalogue_rules(), PHASE_KEYS,
the opening's steps) and keeps no copy of it, apart from the phase enum
`autopilot.session_phase`, whose labels are PHASE_NAMES (a test compares them).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from autopilot_api.discovery.kinds import AnswerKind, AnswerValue, kind_named

QuestionGroup = Literal["facility", "operations", "staffing", "goals", "budget_timeline"]
# Where an owner's progress keeps a step's value: the columns `answers` and `roi_inputs`.
Store = Literal["answers", "roi_inputs"]

QUESTION_GROUPS: Final[tuple[QuestionGroup, ...]] = (
    "facility",
    "operations",
    "staffing",
    "goals",
    "budget_timeline",
)


@dataclass(frozen=True, slots=True)
class DiscoveryQuestion:
    id: int
    key: str
    label: str
    group: QuestionGroup
    # A name in kinds.KINDS; the kind says which of the constraints below it takes.
    kind: str
    options: tuple[str, ...] = ()
    unit: str | None = None
    # Numbers: every number is non-negative and has an upper bound a real facility can have
    # (README "Plausible values" gives each one's reason).
    minimum: float | None = None
    maximum: float | None = None
    # Numbers: a count, taken only as a whole number (within MAX_SAFE_INTEGER).
    integer: bool = False

    store: ClassVar[Store] = "answers"

    def __post_init__(self) -> None:
        # Fail at import time rather than letting a malformed entry reach the agent or the SPA.
        if not self.label.endswith("?"):
            raise ValueError(f"question {self.key!r}: label must be phrased as a question")
        kind_named(self.kind).check(self)

    @property
    def answer_kind(self) -> AnswerKind:
        return kind_named(self.kind)

    @property
    def asked(self) -> str:
        """How a message's metadata.asked names this question."""
        return self.key

    def validate(self, value: object) -> AnswerValue:
        return self.answer_kind.validate(self, value)

    def parse(self, raw: object) -> AnswerValue:
        return self.answer_kind.parse(self, raw)

    def describe(self) -> str:
        return self.answer_kind.describe(self)


@dataclass(frozen=True, slots=True)
class RoiInput:
    """An input of the business case: a number, stored as a float."""

    key: str
    label: str
    minimum: float
    # An upper bound a real facility can have (README "Plausible values").
    maximum: float
    unit: str
    kind: str = "number"
    options: tuple[str, ...] = ()
    integer: bool = False

    store: ClassVar[Store] = "roi_inputs"

    def __post_init__(self) -> None:
        if self.kind != "number":
            raise ValueError(f"ROI input {self.key!r}: the business case takes numbers only")
        kind_named(self.kind).check(self)

    @property
    def answer_kind(self) -> AnswerKind:
        return kind_named(self.kind)

    @property
    def asked(self) -> str:
        return f"roi:{self.key}"

    def validate(self, value: object) -> float:
        return float(self.answer_kind.validate(self, value))

    def parse(self, raw: object) -> float:
        return float(self.answer_kind.parse(self, raw))

    def describe(self) -> str:
        return self.answer_kind.describe(self)


Step = DiscoveryQuestion | RoiInput


def _q(
    id: int,
    key: str,
    label: str,
    group: QuestionGroup,
    kind: str,
    **constraints: Any,
) -> DiscoveryQuestion:
    """A question with its kind's defaults (a number's minimum of 0)."""
    fields = {**kind_named(kind).defaults, **constraints}
    return DiscoveryQuestion(id, key, label, group, kind, **fields)


DISCOVERY_QUESTIONS: Final[tuple[DiscoveryQuestion, ...]] = (
    # facility
    _q(
        1,
        "facility_type",
        "What type of facility is this?",
        "facility",
        "choice",
        options=(
            "warehouse / distribution center",
            "manufacturing plant",
            "fulfillment center",
            "cold storage",
            "retail back-of-house",
            "other",
        ),
    ),
    _q(
        2,
        "facility_size_sqft",
        "How large is the facility, in square feet?",
        "facility",
        "number",
        unit="sq ft",
        # The largest buildings are 4-10 million sq ft (Boeing Everett, Giga Texas).
        maximum=50_000_000.0,
    ),
    _q(
        3,
        "facility_location",
        "Where is the facility located (city and region)?",
        "facility",
        "text",
    ),
    _q(
        4,
        "number_of_sites",
        "How many sites or facilities do you operate?",
        "facility",
        "number",
        # The largest retail and postal networks run 10,000-35,000 sites.
        maximum=100_000.0,
        integer=True,
    ),
    _q(
        5,
        "operating_hours_per_day",
        "How many hours per day does the facility operate?",
        "facility",
        "number",
        unit="hours/day",
        maximum=24.0,  # a day has 24 hours
    ),
    _q(
        6,
        "operating_days_per_week",
        "How many days per week does the facility operate?",
        "facility",
        "number",
        unit="days/week",
        maximum=7.0,  # a week has 7 days
    ),
    # operations
    _q(
        7,
        "primary_processes",
        "Which processes are you looking to automate (e.g. picking, packing, palletizing)?",
        "operations",
        "text",
    ),
    _q(
        8,
        "daily_throughput_units",
        "How many units, orders or pallets do you handle on a typical day?",
        "operations",
        "number",
        unit="units/day",
        # The busiest parcel hubs sort 2-4 million packages a day.
        maximum=100_000_000.0,
        integer=True,
    ),
    _q(
        9,
        "sku_count",
        "Roughly how many distinct SKUs do you handle?",
        "operations",
        "number",
        # The largest fulfilment centres stock tens of millions of distinct items.
        maximum=100_000_000.0,
        integer=True,
    ),
    _q(
        10,
        "current_automation_level",
        "How automated are your operations today?",
        "operations",
        "choice",
        options=("fully manual", "some automation", "mostly automated"),
    ),
    _q(
        11,
        "biggest_bottleneck",
        "What is the biggest bottleneck in your operation right now?",
        "operations",
        "text",
    ),
    _q(
        12,
        "error_damage_rate",
        "What share of orders or units end up with errors or damage, as a percentage?",
        "operations",
        "number",
        unit="%",
        maximum=100.0,  # a share of all orders
    ),
    # staffing
    _q(
        13,
        "floor_headcount",
        "How many people work on the floor per shift?",
        "staffing",
        "number",
        unit="people",
        # The largest plants have 100,000-300,000 people on site across all shifts.
        maximum=100_000.0,
        integer=True,
    ),
    _q(
        14,
        "shifts_per_day",
        "How many shifts do you run per day?",
        "staffing",
        "number",
        maximum=24.0,  # a shift is at least an hour
        integer=True,
    ),
    _q(
        15,
        "labor_turnover_rate",
        "What is your annual labor turnover rate, as a percentage?",
        "staffing",
        "number",
        unit="%/year",
        # Warehouses see 40-150 % a year; 500 % is every position refilled every ~10 weeks.
        maximum=500.0,
    ),
    _q(
        16,
        "hard_to_fill_roles",
        "Which roles are hardest to fill or keep staffed?",
        "staffing",
        "text",
    ),
    _q(
        17,
        "average_hourly_wage",
        "What is the average hourly wage for floor staff (USD)?",
        "staffing",
        "number",
        unit="USD/hour",
        # Floor wages run $15-60 an hour; 500 leaves room for any specialist.
        maximum=500.0,
    ),
    # goals
    _q(
        18,
        "primary_goal",
        "What is the main thing you want automation to achieve?",
        "goals",
        "choice",
        options=(
            "reduce labor cost",
            "increase throughput",
            "improve accuracy",
            "improve safety",
            "cover labor shortages",
            "other",
        ),
    ),
    _q(
        19,
        "success_metric",
        "How will you measure whether the project is a success?",
        "goals",
        "text",
    ),
    _q(
        20,
        "other_goals",
        "Are there any other goals you want this project to support?",
        "goals",
        "text",
    ),
    # budget_timeline
    _q(
        21,
        "budget_range",
        "What budget range are you considering for this project?",
        "budget_timeline",
        "choice",
        options=(
            "under $100k",
            "$100k-$250k",
            "$250k-$500k",
            "$500k-$1M",
            "over $1M",
            "not sure yet",
        ),
    ),
    _q(
        22,
        "budget_approved",
        "Has budget for this project already been approved?",
        "budget_timeline",
        "boolean",
    ),
    _q(
        23,
        "desired_timeline",
        "When would you like the automation to be up and running?",
        "budget_timeline",
        "choice",
        options=(
            "within 3 months",
            "3-6 months",
            "6-12 months",
            "more than 12 months",
            "just exploring",
        ),
    ),
    _q(
        24,
        "decision_makers",
        "Who else is involved in approving this decision?",
        "budget_timeline",
        "text",
    ),
    _q(
        25,
        "financing_preference",
        "How would you prefer to pay for the automation?",
        "budget_timeline",
        "choice",
        options=(
            "outright purchase",
            "lease",
            "robots-as-a-service subscription",
            "financing",
            "not sure yet",
        ),
    ),
)

ROI_INPUTS: Final[tuple[RoiInput, ...]] = (
    RoiInput(
        key="laborRate",
        label="What is your fully loaded labor rate per hour (USD)?",
        minimum=0.0,
        # A wage plus benefits and overhead: twice the highest floor wage above.
        maximum=1_000.0,
        unit="USD/hour",
    ),
    RoiInput(
        key="utilization",
        label="What fraction of operating time would the automation be in use (0 to 1)?",
        minimum=0.0,
        maximum=1.0,
        unit="fraction",
    ),
    RoiInput(
        key="maintenanceFactor",
        label="What fraction of the automation's cost should be set aside for maintenance "
        "(0 to 1)?",
        minimum=0.0,
        maximum=1.0,
        unit="fraction",
    ),
    RoiInput(
        key="manualMonthlySpend",
        label="How much do you spend per month on the manual work automation would replace (USD)?",
        minimum=0.0,
        # 100,000 people (the headcount bound) at a loaded $60 an hour run ~$1 billion a month.
        maximum=1_000_000_000.0,
        unit="USD/month",
    ),
    RoiInput(
        key="manualMonthlyHours",
        label="How many labor hours per month go into the work automation would replace?",
        minimum=0.0,
        # Person-hours, not clock hours (a month has at most 744 of those per position):
        # 500,000 is ~670 positions staffed around the clock, or ~2,900 full-time people.
        maximum=500_000.0,
        unit="hours/month",
    ),
)


@dataclass(frozen=True, slots=True)
class Phase:
    """A step of the journey. The order of PHASES is the enum's (SQL moves an owner on when
    a write stores the last missing key of its phase, through any phase already complete)."""

    name: str  # a label of the SQL enum autopilot.session_phase
    display_name: str
    # The agent's instructions in this phase: a key of agent_prompts.PHASE_INSTRUCTIONS.
    prompt: str
    # What the phase asks, in order; their keys complete it. A phase that asks nothing is
    # never complete: the owner stays (the last one, where the order is placed).
    asks: tuple[Step, ...] = ()
    # What the agent's record of the visitor carries in this phase.
    shows_business_case: bool = False
    shows_selection: bool = False

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(step.key for step in self.asks)

    @property
    def asks_questions(self) -> bool:
        return any(step.store == "answers" for step in self.asks)


PHASES: Final[tuple[Phase, ...]] = (
    Phase("discovery", "Discovery", prompt="ask_questions", asks=DISCOVERY_QUESTIONS),
    Phase(
        "roi",
        "ROI analysis",
        prompt="ask_roi_inputs",
        asks=ROI_INPUTS,
        shows_business_case=True,
    ),
    Phase(
        "greenlight",
        "Greenlight",
        prompt="present_business_case",
        shows_business_case=True,
        shows_selection=True,
    ),
)

QUESTION_KEYS_IN_ORDER: Final[tuple[str, ...]] = tuple(q.key for q in DISCOVERY_QUESTIONS)
VALID_QUESTION_KEYS: Final[frozenset[str]] = frozenset(QUESTION_KEYS_IN_ORDER)
QUESTION_BY_KEY: Final[Mapping[str, DiscoveryQuestion]] = MappingProxyType(
    {q.key: q for q in DISCOVERY_QUESTIONS}
)
# camelCase because these are the SPA's ROI-calculator field names, passed through verbatim.
ROI_INPUT_KEYS: Final[tuple[str, ...]] = tuple(spec.key for spec in ROI_INPUTS)
ROI_BY_KEY: Final[Mapping[str, RoiInput]] = MappingProxyType({s.key: s for s in ROI_INPUTS})
# Everything a visitor is asked: the questions, then the ROI inputs.
STEPS: Final[tuple[Step, ...]] = (*DISCOVERY_QUESTIONS, *ROI_INPUTS)

PHASE_NAMES: Final[tuple[str, ...]] = tuple(phase.name for phase in PHASES)
if TYPE_CHECKING:
    PhaseName = str
else:
    # A Literal of the names for Pydantic (the API schema's enum, the 422 on any other); to
    # mypy a str, since the names are data.
    PhaseName = Literal[PHASE_NAMES]
PHASE_BY_NAME: Final[Mapping[str, Phase]] = MappingProxyType({p.name: p for p in PHASES})
PHASE_DISPLAY_NAMES: Final[Mapping[str, str]] = MappingProxyType(
    {phase.name: phase.display_name for phase in PHASES}
)
# The p_phase_keys of the SQL writes: per phase that asks anything, the keys that complete
# it (SQL looks them up in answers || roi_inputs, so the two key sets must not overlap).
PHASE_KEYS: Final[dict[str, list[str]]] = {
    phase.name: list(phase.keys) for phase in PHASES if phase.asks
}
# What a message's metadata.asked may name: a question key, or "roi:<key>".
STEP_BY_ASKED: Final[Mapping[str, Step]] = MappingProxyType(
    {step.asked: step for phase in PHASES for step in phase.asks}
)

# Catch drift between the hand-written tables above as soon as the module is imported.
if len(QUESTION_BY_KEY) != len(DISCOVERY_QUESTIONS):
    raise RuntimeError("duplicate discovery question keys")
if tuple(q.id for q in DISCOVERY_QUESTIONS) != tuple(range(1, len(DISCOVERY_QUESTIONS) + 1)):
    raise RuntimeError("discovery question ids must run 1..N in asking order")
if len(ROI_BY_KEY) != len(ROI_INPUTS):
    raise RuntimeError("duplicate ROI input keys")
if set(QUESTION_KEYS_IN_ORDER) & set(ROI_INPUT_KEYS):
    raise RuntimeError("question keys and ROI input keys must differ")
if len(PHASE_BY_NAME) != len(PHASES):
    raise RuntimeError("duplicate phase names")
if sorted(s.asked for p in PHASES for s in p.asks) != sorted(s.asked for s in STEPS):
    raise RuntimeError("every question and ROI input is asked in exactly one phase")


def next_unanswered_question(answered_keys: Collection[str]) -> DiscoveryQuestion | None:
    """The first question in asking order whose key is not in ``answered_keys``."""
    for question in DISCOVERY_QUESTIONS:
        if question.key not in answered_keys:
            return question
    return None


def next_missing_roi_input(present: Collection[str]) -> RoiInput | None:
    """The first ROI input in ``ROI_INPUT_KEYS`` order whose key is not in ``present``."""
    for spec in ROI_INPUTS:
        if spec.key not in present:
            return spec
    return None


def next_step(phase: str, *, answers: Collection[str], roi_inputs: Collection[str]) -> Step | None:
    """The first step not yet stored, from `phase` on in the order of PHASES: what the
    offline agent asks next (and the opening, in SQL, from the same steps)."""
    stored: Mapping[Store, Collection[str]] = {"answers": answers, "roi_inputs": roi_inputs}
    for current in PHASES[PHASE_NAMES.index(phase) :]:
        for step in current.asks:
            if step.key not in stored[step.store]:
                return step
    return None
