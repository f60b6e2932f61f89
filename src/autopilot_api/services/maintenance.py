"""Periodic upkeep run inside the app: the expired-session sweep."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from autopilot_api.core.errors import AppError
from autopilot_api.services.session_service import SessionService

logger = logging.getLogger(__name__)


async def session_cleanup_loop(
    sessions: SessionService, *, interval_seconds: int, batch_size: int
) -> None:
    """Sweep every interval (jittered, so many instances do not sweep in step)."""
    while True:
        await asyncio.sleep(interval_seconds * random.uniform(0.8, 1.2))
        try:
            await sessions.cleanup_expired_sessions(batch_size=batch_size)
        except AppError as exc:
            logger.warning("session cleanup skipped: %s", exc.code)
        except Exception:
            logger.exception("session cleanup failed")


def start_session_cleanup(
    sessions: SessionService, *, interval_seconds: int, batch_size: int
) -> asyncio.Task[None] | None:
    if interval_seconds <= 0:
        return None
    return asyncio.create_task(
        session_cleanup_loop(sessions, interval_seconds=interval_seconds, batch_size=batch_size),
        name="session-cleanup",
    )


async def stop_background_task(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
