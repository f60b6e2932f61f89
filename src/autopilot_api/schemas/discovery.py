"""Wire contracts shared by sessions and discovery profiles (camelCase on the wire)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import Field, StrictFloat, StrictInt, field_validator
from pydantic.json_schema import SkipJsonSchema

from autopilot_api.discovery.catalogue import (
    DISCOVERY_QUESTIONS,
    PHASE_DISPLAY_NAMES,
    QUESTION_KEYS_IN_ORDER,
    ROI_BY_KEY,
    DiscoveryQuestion,
    QuestionGroup,
)
from autopilot_api.discovery.kinds import AnswerValue, KindName
from autopilot_api.models.session import SessionPhase
from autopilot_api.schemas.common import CamelInput, CamelModel, WholeNumber
from autopilot_api.services.business_case import (
    MAINTENANCE_DEFINITION,
    BusinessCase,
    CostBasis,
    compute_business_case,
)

MAX_METADATA_BYTES = 8192
MAX_QUESTION_INDEX = 1000
MAX_SELECTED_PRODUCTS = 100


class DiscoveryAnswerSchema(CamelModel):
    question_id: int
    key: str
    label: str
    value: AnswerValue
    group: QuestionGroup
    source: Literal["user", "extracted"]
    updated_at: datetime
    message_id: str | None = None
    confidence: float | None = None


class ROIInputsSchema(CamelModel):
    """The ROI calculator's inputs as plain numbers (provenance in roiInputDetails)."""

    labor_rate: float | None = Field(default=None, ge=0)
    utilization: float | None = Field(default=None, ge=0, le=1)
    maintenance_factor: float | None = Field(default=None, ge=0, le=1)
    manual_monthly_spend: float | None = Field(default=None, ge=0)
    manual_monthly_hours: float | None = Field(default=None, ge=0)


def _roi_input(key: str) -> Any:
    """The bounds of the ROI inputs' own catalogue (discovery/catalogue.py ROI_INPUTS)."""
    spec = ROI_BY_KEY[key]
    return Field(default=None, ge=spec.minimum, le=spec.maximum, allow_inf_nan=False)


class ROIInputsUpdate(CamelInput):
    """Per key: a number sets it, null removes it, absent keeps it."""

    labor_rate: StrictFloat | None = _roi_input("laborRate")
    utilization: StrictFloat | None = _roi_input("utilization")
    maintenance_factor: StrictFloat | None = _roi_input("maintenanceFactor")
    manual_monthly_spend: StrictFloat | None = _roi_input("manualMonthlySpend")
    manual_monthly_hours: StrictFloat | None = _roi_input("manualMonthlyHours")


class ROIInputDetail(CamelModel):
    value: float
    source: Literal["user", "extracted"]
    updated_at: datetime
    message_id: str | None = None
    confidence: float | None = None


class AnswerInput(CamelInput):
    """What a client sends for one answer; the server fills in the rest."""

    value: AnswerValue


def _refuse_null(value: Any) -> Any:
    # null would read as "clear it", which these fields do not support: say so at the field.
    if value is None:
        raise ValueError("Input should not be null; leave the field out to keep its value")
    return value


class ProgressUpdate(CamelInput):
    """A partial update: only the fields given change; answers merge per key."""

    # The constraints sit inside the Annotated member: on the outer union Pydantic would
    # write them out as maxLength/ge/le, which JSON Schema does not apply to these types.
    answers: (
        Annotated[
            dict[str, AnswerInput | None],
            Field(
                max_length=len(DISCOVERY_QUESTIONS),
                json_schema_extra={"propertyNames": {"enum": list(QUESTION_KEYS_IN_ORDER)}},
            ),
        ]
        | SkipJsonSchema[None]
    ) = Field(
        default=None,
        description="Per question key: {value} sets the answer, null removes it; "
        "keys not given are kept.",
    )
    roi_inputs: ROIInputsUpdate | SkipJsonSchema[None] = None
    phase: SessionPhase | SkipJsonSchema[None] = None
    current_question_index: (
        Annotated[StrictInt, Field(ge=0, le=MAX_QUESTION_INDEX), WholeNumber] | SkipJsonSchema[None]
    ) = None
    selected_product_ids: (
        Annotated[list[UUID], Field(max_length=MAX_SELECTED_PRODUCTS)] | SkipJsonSchema[None]
    ) = None
    timeframe: str | None = Field(default=None, max_length=200)

    @field_validator(
        "answers",
        "roi_inputs",
        "phase",
        "current_question_index",
        "selected_product_ids",
        mode="before",
    )
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        return _refuse_null(value)


class SessionUpdate(ProgressUpdate):
    metadata: dict[str, Any] | SkipJsonSchema[None] = Field(
        default=None,
        description="Merged key by key into the session's metadata; a key set to null is "
        f"removed. At most {MAX_METADATA_BYTES} bytes as JSON per update; the merged whole "
        "is capped too (SESSION_METADATA_MAX_BYTES): past it the PUT is refused with 422 "
        "metadata_too_large and nothing is stored.",
    )

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata_not_null(cls, value: Any) -> Any:
        return _refuse_null(value)

    @field_validator("metadata")
    @classmethod
    def _bound_metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(json.dumps(value)) > MAX_METADATA_BYTES:
            raise ValueError(f"Input should be at most {MAX_METADATA_BYTES} bytes as JSON")
        return value


class DiscoveryProfileUpdate(ProgressUpdate):
    pass


SessionStatus = Literal["active", "completed", "claimed", "expired"]


class CostCrossCheck(CamelModel):
    hours_times_rate: float = Field(description="manualMonthlyHours × laborRate, USD a month.")
    difference: float = Field(description="The stated spend minus hours × rate, USD a month.")
    difference_percent: float | None = Field(
        description="The difference as a percentage of hours × rate (null when that is 0)."
    )


class PaybackPrice(CamelModel):
    months: int
    max_price: float = Field(
        description="The largest price (USD, rounded down to the cent) that pays back, "
        "maintenance included, within `months`: months × monthlySaving / "
        "(1 + months × maintenanceFactor / 12)."
    )
    yearly_maintenance: float = Field(description="maintenanceFactor × maxPrice, USD a year.")


class BusinessCasePublic(CamelModel):
    """Computed by the service from the ROI inputs (README, "The business case"); money in
    USD rounded to cents, each figure from the rounded one before it."""

    currency: Literal["USD"] = "USD"
    monthly_manual_cost: float = Field(
        description="What the manual work costs a month: the stated manualMonthlySpend when "
        "given, else manualMonthlyHours × laborRate (see costBasis)."
    )
    cost_basis: CostBasis
    cost_basis_reason: str = Field(description="Why that basis, in words.")
    cross_check: CostCrossCheck | None = Field(
        description="Hours × rate beside a stated spend, when both were given."
    )
    utilization: float = Field(description="The share of the manual work automation takes.")
    automated_hours_per_month: float | None = Field(
        description="utilization × manualMonthlyHours (null without hours)."
    )
    monthly_saving: float = Field(description="utilization × monthlyManualCost, USD a month.")
    yearly_saving: float = Field(description="12 × monthlySaving.")
    maintenance_factor: float
    maintenance_definition: str = MAINTENANCE_DEFINITION
    max_price_for_payback: list[PaybackPrice] = Field(
        description="The price of the automation is not known here: the largest price that "
        "still pays back within 12, 24 and 36 months."
    )
    inputs_used: dict[str, float] = Field(description="The ROI inputs the figures rest on.")
    inputs_unused: list[str] = Field(
        description="ROI inputs given but behind no figure (besides the cross-check)."
    )
    inputs_missing: list[str] = Field(description="ROI inputs not given (none was needed).")

    @classmethod
    def from_case(cls, case: BusinessCase) -> BusinessCasePublic:
        cross = case.cross_check
        return cls(
            monthly_manual_cost=float(case.monthly_manual_cost),
            cost_basis=case.cost_basis,
            cost_basis_reason=case.cost_basis_reason,
            cross_check=None
            if cross is None
            else CostCrossCheck(
                hours_times_rate=float(cross.hours_times_rate),
                difference=float(cross.difference),
                difference_percent=None
                if cross.difference_percent is None
                else float(cross.difference_percent),
            ),
            utilization=float(case.utilization),
            automated_hours_per_month=None
            if case.automated_hours_per_month is None
            else float(case.automated_hours_per_month),
            monthly_saving=float(case.monthly_saving),
            yearly_saving=float(case.yearly_saving),
            maintenance_factor=float(case.maintenance_factor),
            max_price_for_payback=[
                PaybackPrice(
                    months=price.months,
                    max_price=float(price.max_price),
                    yearly_maintenance=float(price.yearly_maintenance),
                )
                for price in case.max_price_for_payback
            ],
            inputs_used=case.inputs_used,
            inputs_unused=list(case.inputs_unused),
            inputs_missing=list(case.inputs_missing),
        )


def business_case_public(roi_entries: Mapping[str, Any]) -> BusinessCasePublic | None:
    case = compute_business_case(roi_entries)
    return None if case is None else BusinessCasePublic.from_case(case)


class ProgressPublic(CamelModel):
    status: SessionStatus
    is_recoverable: bool = Field(
        description="Not completed, and active within the recovery window: worth resuming."
    )
    last_activity_at: datetime
    completed_at: datetime | None
    phase: SessionPhase
    phase_display_name: str
    current_question_index: int
    answers: dict[str, DiscoveryAnswerSchema]
    roi_inputs: ROIInputsSchema
    roi_input_details: dict[str, ROIInputDetail]
    business_case: BusinessCasePublic | None = Field(
        description="Computed from the ROI inputs; null until utilization, maintenanceFactor "
        "and a monthly cost (manualMonthlySpend, or manualMonthlyHours and laborRate) are stored."
    )
    selected_product_ids: list[UUID]
    timeframe: str | None
    version: int
    created_at: datetime
    updated_at: datetime


class DiscoveryProfileResponse(ProgressPublic):
    profile_id: UUID


class QuestionPublic(CamelModel):
    id: int
    key: str
    label: str
    group: QuestionGroup
    kind: KindName
    options: list[str] = Field(description="choice: the only values accepted (any case).")
    unit: str | None
    minimum: float | None = Field(description="number: the smallest value accepted.")
    maximum: float | None = Field(description="number: the largest value accepted.")
    integer: bool = Field(description="number: only whole numbers are accepted (a count).")
    max_length: int | None = Field(description="text: the most characters accepted.")

    @classmethod
    def from_question(cls, question: DiscoveryQuestion) -> QuestionPublic:
        """The question as its kind describes it to clients."""
        return cls(
            id=question.id,
            key=question.key,
            label=question.label,
            group=question.group,
            kind=question.kind,
            **question.answer_kind.public(question),
        )


def lifecycle_status(row: Mapping[str, Any]) -> SessionStatus:
    """The same rule as autopilot_private.session_status."""
    if row.get("claimed_by_profile_id"):
        return "claimed"
    if row.get("completed_at"):
        return "completed"
    expires_at = row.get("expires_at")
    if expires_at and datetime.fromisoformat(expires_at) <= datetime.now(UTC):
        return "expired"
    return "active"


def progress_public_fields(row: Mapping[str, Any], *, recovery_window_days: int) -> dict[str, Any]:
    """The shared fields of a session or profile row, shaped for the wire."""
    roi_entries: dict[str, Any] = row.get("roi_inputs") or {}
    status = lifecycle_status(row)
    last_activity = datetime.fromisoformat(row.get("last_seen_at") or row["updated_at"])
    recoverable = status == "active" and last_activity > datetime.now(UTC) - timedelta(
        days=recovery_window_days
    )
    return {
        "status": status,
        "is_recoverable": recoverable,
        "last_activity_at": last_activity,
        "completed_at": row.get("completed_at"),
        "phase": row["phase"],
        "phase_display_name": PHASE_DISPLAY_NAMES[row["phase"]],
        "current_question_index": row["current_question_index"],
        "answers": row.get("answers") or {},
        "roi_inputs": {_snake(key): entry["value"] for key, entry in roi_entries.items()},
        "roi_input_details": roi_entries,
        "business_case": business_case_public(roi_entries),
        "selected_product_ids": row.get("selected_product_ids") or [],
        "timeframe": row.get("timeframe"),
        "version": row["version"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def _snake(camel: str) -> str:
    return "".join(f"_{char.lower()}" if char.isupper() else char for char in camel)


def discovery_profile_response(
    row: Mapping[str, Any], *, recovery_window_days: int
) -> DiscoveryProfileResponse:
    return DiscoveryProfileResponse.model_validate(
        {
            **progress_public_fields(row, recovery_window_days=recovery_window_days),
            "profile_id": row["profile_id"],
        }
    )
