"""Liveness (is a local data plane down for good?) and readiness (one real round trip
through PostgREST to Postgres)."""

from __future__ import annotations

from collections.abc import Callable

from supabase import AsyncClient

from autopilot_api.core.errors import DataPlaneDownError, DataPlaneUnavailableError
from autopilot_api.core.supabase import translate_data_plane_error


def _no_problem() -> str | None:
    return None


class HealthService:
    def __init__(
        self,
        supabase: AsyncClient,
        *,
        data_plane_problem: Callable[[], str | None] = _no_problem,
    ) -> None:
        self._supabase = supabase
        self._data_plane_problem = data_plane_problem

    def check_process(self) -> None:
        """Raises DataPlaneDownError when a data plane this process started is down for
        good (local mode: PostgREST could not be restarted, Postgres is gone)."""
        problem = self._data_plane_problem()
        if problem is not None:
            raise DataPlaneDownError(f"The local data plane is down: {problem}.")

    async def check_data_plane(self) -> None:
        """Raises DataPlaneUnavailableError unless PostgREST answers from the database, and
        DataPlaneKeyError (503, admin_required) when it refuses the service's key."""
        try:
            response = await self._supabase.rpc("ping", {}).execute()
        except Exception as exc:
            raise translate_data_plane_error(exc) from exc
        if response.data != "ok":
            raise DataPlaneUnavailableError("The database answered unexpectedly.")
