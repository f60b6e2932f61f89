"""Rows of `autopilot.sessions` as PostgREST returns them."""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

from autopilot_api.discovery.catalogue import PhaseName

# The catalogue's phases (discovery/catalogue.py PHASES), the labels of autopilot.session_phase.
SessionPhase = PhaseName
AnswerSource = Literal["user", "extracted"]


class DiscoveryAnswer(TypedDict):
    questionId: int
    key: str
    label: str
    value: str | int | float | bool
    group: str
    source: AnswerSource
    updatedAt: str
    messageId: NotRequired[str]
    confidence: NotRequired[float]


class ROIInputEntry(TypedDict):
    """One ROI input with its provenance (stored per key, like answers)."""

    value: float
    source: AnswerSource
    updatedAt: str
    messageId: NotRequired[str]
    confidence: NotRequired[float]


ROIInputs = dict[str, ROIInputEntry]


class ProgressFields(TypedDict):
    current_question_index: int
    phase: SessionPhase
    answers: dict[str, DiscoveryAnswer]
    roi_inputs: ROIInputs
    selected_product_ids: list[str]
    timeframe: str | None
    version: int
    created_at: str
    updated_at: str


class Session(ProgressFields):
    id: str
    token_hash: str
    conversation_id: str | None
    metadata: dict[str, object]
    claimed_by_profile_id: str | None
    claimed_at: str | None
    expires_at: str
    last_seen_at: str


class ResolvedSession(Session):
    expiry_extended: bool
