"""What every bench script needs: a fresh local data plane and the service as a real
process (production settings), torn down afterwards."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from autopilot_api.core.config import Settings
from autopilot_api.local.dataplane import LocalDataPlane
from tests.fixtures.processes import ServiceProcess, start_service


def plane_settings(plane: LocalDataPlane) -> Settings:
    """The settings a client of this plane's service needs (its URL, keys, JWT secret)."""
    assert plane.info is not None
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        supabase_url=plane.info.rest_url,
        supabase_service_role_key=plane.info.service_role_key,
        supabase_jwt_secret=plane.info.jwt_secret,
    )


@contextmanager
def service_on_fresh_data_plane(**env: str) -> Iterator[tuple[LocalDataPlane, ServiceProcess]]:
    work = Path(tempfile.mkdtemp(prefix="autopilot-bench-"))
    plane = LocalDataPlane(data_dir=work / "plane", postgrest_pool=20)
    plane.start()
    service = start_service(plane, work, **{"LOG_LEVEL": "INFO", **env})
    try:
        yield plane, service
    finally:
        service.stop()
        plane.stop()
        shutil.rmtree(work, ignore_errors=True)
