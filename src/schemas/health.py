from __future__ import annotations

from typing import Literal

from src.schemas.common import CamelModel


class HealthPublic(CamelModel):
    status: Literal["ok"]
