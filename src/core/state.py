"""What the lifespan makes once and every request reads: typed, overridable in tests."""

from __future__ import annotations

from dataclasses import dataclass

from openai import AsyncOpenAI
from supabase import AsyncClient

from src.core.config import Settings


@dataclass
class AppState:
    settings: Settings
    supabase: AsyncClient
    openai: AsyncOpenAI | None
