"""Turning a validated update into the patch the SQL functions apply atomically.

The server fills every answer's questionId/label/group/source/updatedAt; the merge per
key happens in SQL (autopilot_private.apply_patch), never read-modify-write here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from autopilot_api.core.errors import ValidationFailedError, field_error
from autopilot_api.discovery.answers import validate_answer
from autopilot_api.discovery.catalogue import PHASE_KEYS, QUESTION_BY_KEY
from autopilot_api.discovery.kinds import AnswerValue, InvalidAnswer
from autopilot_api.models.session import AnswerSource, DiscoveryAnswer, ROIInputEntry
from autopilot_api.schemas.discovery import ProgressUpdate


def phase_keys_for(patch: Mapping[str, Any]) -> dict[str, list[str]] | None:
    """The p_phase_keys of a write (discovery/catalogue.py PHASE_KEYS): only a patch that
    stores answers or ROI inputs can complete a phase, the others need not carry them."""
    return PHASE_KEYS if patch.get("answers_set") or patch.get("roi_set") else None


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def build_answer(
    key: str,
    value: AnswerValue,
    *,
    source: AnswerSource,
    updated_at: str,
    message_id: str | None = None,
    confidence: float | None = None,
) -> DiscoveryAnswer:
    question = QUESTION_BY_KEY[key]
    answer: DiscoveryAnswer = {
        "questionId": question.id,
        "key": key,
        "label": question.label,
        "value": value,
        "group": question.group,
        "source": source,
        "updatedAt": updated_at,
    }
    if message_id is not None:
        answer["messageId"] = message_id
    if confidence is not None:
        answer["confidence"] = confidence
    return answer


def build_roi_entry(
    value: float,
    *,
    source: AnswerSource,
    updated_at: str,
    message_id: str | None = None,
    confidence: float | None = None,
) -> ROIInputEntry:
    entry: ROIInputEntry = {"value": value, "source": source, "updatedAt": updated_at}
    if message_id is not None:
        entry["messageId"] = message_id
    if confidence is not None:
        entry["confidence"] = confidence
    return entry


def build_progress_patch(update: ProgressUpdate) -> dict[str, Any]:
    """The JSON patch for autopilot_private.apply_patch; raises 422 on unknown keys."""
    fields = update.model_dump(exclude_unset=True, mode="json", by_alias=False)
    patch: dict[str, Any] = {}
    now = utc_now_iso()

    if update.answers is not None:
        unknown = sorted(key for key in update.answers if key not in QUESTION_BY_KEY)
        if unknown:
            raise ValidationFailedError(
                "Unknown question keys; see GET /api/v1/discovery/questions.",
                details=[
                    field_error(["body", "answers", key], "unknown question key", "unknown_key")
                    for key in unknown
                ],
            )
        to_set: dict[str, DiscoveryAnswer] = {}
        to_remove: list[str] = []
        problems = []
        for key, given in update.answers.items():
            if given is None:
                to_remove.append(key)
                continue
            try:
                value = validate_answer(key, given.value)
            except InvalidAnswer as invalid:
                problems.append(
                    {
                        **field_error(
                            ["body", "answers", key, "value"],
                            f"expected {invalid.expected}",
                            "invalid_answer",
                        ),
                        "expected": invalid.expected,
                    }
                )
            else:
                to_set[key] = build_answer(key, value, source="user", updated_at=now)
        if problems:
            # All or nothing: one invalid answer and none of the update is stored.
            raise ValidationFailedError(
                "Some answers do not fit their question; see details.", details=problems
            )
        patch["answers_set"] = to_set
        patch["answers_remove"] = to_remove

    if update.roi_inputs is not None:
        given_roi = update.roi_inputs.model_dump(exclude_unset=True, by_alias=True)
        patch["roi_set"] = {
            key: build_roi_entry(float(value), source="user", updated_at=now)
            for key, value in given_roi.items()
            if value is not None
        }
        patch["roi_remove"] = [key for key, value in given_roi.items() if value is None]

    for name in (
        "phase",
        "current_question_index",
        "selected_product_ids",
        "timeframe",
        "metadata",
    ):
        if name in fields:
            patch[name] = fields[name]
    return patch
