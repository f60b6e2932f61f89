"""The keys that complete each phase, from the catalogue, for the SQL that advances phases.

Every write of answers or ROI inputs passes them (`p_phase_keys`) to its SQL function, which
moves the owner on in the same transaction when the write fills a phase's last missing key
(supabase/migrations/20261203000300_phase_advance.sql). SQL keeps no copy of the catalogue.
"""

from __future__ import annotations

from typing import Any, Final

from autopilot_api.models.session import SessionPhase
from autopilot_api.services.extraction_constants import QUESTION_KEYS_IN_ORDER, ROI_INPUT_KEYS

# SQL looks the keys up in answers || roi_inputs: the two key sets must not overlap.
PHASE_KEYS: Final[dict[SessionPhase, list[str]]] = {
    "discovery": list(QUESTION_KEYS_IN_ORDER),
    "roi": list(ROI_INPUT_KEYS),
}
if set(QUESTION_KEYS_IN_ORDER) & set(ROI_INPUT_KEYS):
    raise RuntimeError("question keys and ROI input keys must differ")


def phase_keys_for(patch: dict[str, Any]) -> dict[SessionPhase, list[str]] | None:
    """Only a patch that stores answers or ROI inputs can complete a phase: the others
    need not carry the keys."""
    return PHASE_KEYS if patch.get("answers_set") or patch.get("roi_set") else None
