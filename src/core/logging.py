"""Log levels of our own: AUDIT sits between INFO and WARNING, for claims and the like."""

from __future__ import annotations

import logging

AUDIT = 25
logging.addLevelName(AUDIT, "AUDIT")
