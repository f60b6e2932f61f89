"""Readiness: one real round trip through PostgREST to Postgres."""

from __future__ import annotations

from supabase import AsyncClient

from autopilot_api.core.errors import DataPlaneUnavailableError
from autopilot_api.core.supabase import data_plane_error, is_transient


class HealthService:
    def __init__(self, supabase: AsyncClient) -> None:
        self._supabase = supabase

    async def check_data_plane(self) -> None:
        """Raises DataPlaneUnavailableError unless PostgREST answers from the database."""
        try:
            response = await self._supabase.rpc("ping", {}).execute()
        except Exception as exc:
            if is_transient(exc):
                raise data_plane_error(exc) from exc
            raise
        if response.data != "ok":
            raise DataPlaneUnavailableError("The database answered unexpectedly.")
