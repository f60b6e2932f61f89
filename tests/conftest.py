"""Fixtures shared by every test: the data plane, the app with its lifespan, HTTP clients."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import pytest_asyncio
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from autopilot_api.core.config import Settings
from autopilot_api.core.dataplane_transport import choose_transport
from autopilot_api.local.dataplane import LocalDataPlane, LocalDataPlaneInfo
from autopilot_api.main import create_app
from tests.fixtures.factories import SPA_ORIGIN

pytest_plugins = [
    "tests.fixtures.dataplane",
    "tests.fixtures.processes",
    "tests.fixtures.nginx",
    "tests.fixtures.fake_openai",
    "tests.fixtures.redis",
    "tests.fixtures.browser",
]

API_BASE_URL = "https://testserver"

_OWN_BASETEMP = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    # Runs side by side share /tmp/pytest-of-<user>, and each prunes the numbered folders
    # it finds there, the other run's live data plane included: give each run its own.
    if config.option.basetemp is None:
        config.option.basetemp = config.stash[_OWN_BASETEMP] = tempfile.mkdtemp(
            prefix="autopilot-pytest-"
        )


def pytest_report_header(config: pytest.Config) -> str:
    # The in-process app reads it from the environment; service processes are handed it.
    setting = os.environ.get("DATA_PLANE_TRANSPORT", "auto")
    kind, reason = choose_transport(setting)  # type: ignore[arg-type]
    return f"data-plane transport: {kind} ({reason})"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A failed run keeps its folder (Postgres logs, screenshots) for a look afterwards.
    own = session.config.stash.get(_OWN_BASETEMP, None)
    if own and exitstatus == 0:
        shutil.rmtree(own, ignore_errors=True)


def plane_info(plane: LocalDataPlane) -> LocalDataPlaneInfo:
    assert plane.info is not None
    return plane.info


def make_settings(plane: LocalDataPlane, **overrides: object) -> Settings:
    info = plane_info(plane)
    values: dict[str, object] = {
        "supabase_url": info.rest_url,
        "supabase_rest_url": info.rest_url,
        "supabase_service_role_key": info.service_role_key,
        "supabase_jwt_secret": info.jwt_secret,
        "cors_origins": [SPA_ORIGIN],
        # Above service_role's statement_timeout (8 s, set by the migrations), as in
        # production; below it the app warns at start-up.
        "data_plane_timeout_seconds": 10.0,
        "session_create_limit_per_hour": 100_000,
        # Every test comes from one address and many share a user or session: the creation
        # limits are tested on their own (tests/integration/test_fair_share_storage.py).
        "conversation_create_limit_per_hour": 100_000,
        "conversation_create_limit_per_hour_per_ip": 100_000,
        "search_session_create_limit_per_hour": 100_000,
        "search_session_create_limit_per_hour_per_ip": 100_000,
        "session_cleanup_interval_seconds": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def settings(data_plane: LocalDataPlane) -> Settings:
    return make_settings(data_plane)


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app with its lifespan run (startup and shutdown), as a server would."""
    application = create_app(settings)
    async with LifespanManager(application) as manager:
        # asgi-lifespan hands every request the same state dict; uvicorn gives each
        # request its own copy. Do as uvicorn does, so per-request state cannot leak.
        lifespan_state = manager._state

        async def per_request_state(scope: Any, receive: Any, send: Any) -> None:
            await application({**scope, "state": dict(lifespan_state)}, receive, send)

        yield per_request_state  # type: ignore[misc]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    async with running_app(settings) as application:
        yield application


def browser_client(app: FastAPI, **kwargs: object) -> httpx.AsyncClient:
    """A browser-like client of the app: keeps cookies, sends the SPA's Origin."""
    headers = {"Origin": SPA_ORIGIN}
    headers.update(kwargs.pop("headers", {}))  # type: ignore[arg-type]
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url=API_BASE_URL,
        headers=headers,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest_asyncio.fixture(loop_scope="session")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with browser_client(app) as http:
        yield http


@pytest_asyncio.fixture(loop_scope="session")
async def other_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A second visitor with its own cookie jar."""
    async with browser_client(app) as http:
        yield http


def _rest_client(plane: LocalDataPlane, key: str) -> httpx.AsyncClient:
    headers = {
        "apikey": key,
        "Authorization": f"Bearer {key}",
        "Accept-Profile": "autopilot",
        "Content-Profile": "autopilot",
    }
    return httpx.AsyncClient(base_url=plane_info(plane).rest_url, headers=headers)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def rest(data_plane: LocalDataPlane) -> AsyncIterator[httpx.AsyncClient]:
    """PostgREST directly with the service key, to check what was stored."""
    async with _rest_client(data_plane, plane_info(data_plane).service_role_key) as http:
        yield http


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def anon_rest(data_plane: LocalDataPlane) -> AsyncIterator[httpx.AsyncClient]:
    """PostgREST directly with the public anon key: must read and execute nothing."""
    async with _rest_client(data_plane, plane_info(data_plane).anon_key) as http:
        yield http
