"""The agent's opening message: a greeting and the first question the owner has not
answered, chosen and stored by SQL in the transaction that creates the conversation.

No model call: it is instant and the same offline. Its metadata.asked names what was
asked (a question key, or `roi:<key>` for an ROI input, as the offline agent writes it),
so the visitor's first message is taken as the answer to that question.
"""

from __future__ import annotations

from typing import Any, Final

from autopilot_api.services.extraction_constants import DISCOVERY_QUESTIONS, ROI_INPUTS

OPENING_GREETING: Final = (
    "Hi, I'm Autopilot. A few questions will tell us whether automation pays off for your facility."
)
# The greenlight phase's last step, in the opening and the offline agent's reply alike.
CHECKOUT_STEP: Final = "continue to checkout to place your order."
OPENING_DONE: Final = (
    "Your business case is ready: review the selected products and timeframe, then " + CHECKOUT_STEP
)

# The p_opening argument of autopilot.create_conversation: the catalogue in asking order.
OPENING_STEPS: Final[dict[str, Any]] = {
    "greeting": OPENING_GREETING,
    "done": OPENING_DONE,
    "discovery": [{"key": q.key, "asked": q.key, "text": q.label} for q in DISCOVERY_QUESTIONS],
    "roi": [{"key": s.key, "asked": f"roi:{s.key}", "text": s.label} for s in ROI_INPUTS],
}
