"""The one AsyncOpenAI client of the process, or None: the agent then runs offline."""

from __future__ import annotations

from openai import AsyncOpenAI

from autopilot_api.core.config import Settings


def create_openai_client(settings: Settings) -> AsyncOpenAI | None:
    if not settings.openai_api_key:
        return None
    return AsyncOpenAI(
        api_key=settings.openai_api_key,
        base_url=settings.openai_base_url,
        timeout=settings.openai_timeout_seconds,
        max_retries=settings.openai_max_retries,
    )
