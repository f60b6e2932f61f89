from __future__ import annotations

from typing import Literal

from autopilot_api.schemas.common import CamelModel


class HealthPublic(CamelModel):
    status: Literal["ok"]
