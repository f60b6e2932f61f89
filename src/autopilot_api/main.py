"""App factory and lifespan: the data plane, then everything composition.py builds once;
routers under /api/v1."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from autopilot_api.api.error_handlers import install_error_handlers
from autopilot_api.api.middleware import BodySizeLimitMiddleware, RequestIdMiddleware
from autopilot_api.api.openapi import install_openapi, operation_id
from autopilot_api.api.routes import (
    admin,
    conversations,
    discovery,
    events,
    health,
    search_sessions,
    sessions,
)
from autopilot_api.composition import AppState, open_app_state
from autopilot_api.core.config import Settings, get_settings
from autopilot_api.core.logging import configure_logging
from autopilot_api.core.metrics import mark_worker_exited
from autopilot_api.core.supabase import close_supabase_client, start_data_plane
from autopilot_api.services.maintenance import start_session_cleanup, stop_background_task

logger = logging.getLogger("autopilot_api.main")

API_PREFIX = "/api/v1"
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
DOCS_ASSETS_URL = "/static/docs"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, AppState]]:
    plane, supabase = await start_data_plane(app.state.settings)
    try:
        async with open_app_state(
            plane.settings, supabase, data_plane_problem=plane.problem
        ) as state:
            await state.bus.start()
            settings = state.settings
            cleanup_task = start_session_cleanup(
                state.services.sessions,
                interval_seconds=settings.session_cleanup_interval_seconds,
                batch_size=settings.session_cleanup_batch_size,
            )
            # What start-up made lives as long as the process: out of the collector's sight,
            # a full collection under load scans what requests leave behind, not ~160k
            # objects (its pauses were the tail of the latency).
            gc.collect()
            gc.freeze()
            try:
                yield {"app_state": state}
            finally:
                gc.unfreeze()
                await stop_background_task(cleanup_task)
    finally:
        await close_supabase_client(supabase)
        await asyncio.to_thread(plane.stop)
        mark_worker_exited()


def _install_docs(app: FastAPI) -> None:
    """Swagger UI from a Python package's assets: /docs works with no internet."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        # A person who opens the server's address finds the API's documentation.
        return RedirectResponse("/docs", status_code=307)

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.resolved_log_format)
    app = FastAPI(
        title="autopilot-api",
        version="0.1.0",
        summary="Discovery sessions, profiles and the AI agent of the automation-ROI app.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    install_error_handlers(app)
    _install_docs(app)

    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestIdMiddleware, access_log_sample_rate=settings.access_log_sample_rate)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_credentials=True,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=[
            "Authorization",
            "Content-Type",
            "If-Match",
            "Idempotency-Key",
            "Last-Event-ID",
            "X-Request-ID",
        ],
        expose_headers=["ETag", "Idempotent-Replayed", "Retry-After", "X-Request-ID"],
        max_age=600,
    )

    app.include_router(health.router)
    app.include_router(sessions.router, prefix=f"{API_PREFIX}/sessions")
    app.include_router(discovery.router, prefix=f"{API_PREFIX}/discovery")
    app.include_router(conversations.router, prefix=f"{API_PREFIX}/conversations")
    app.include_router(events.router, prefix=f"{API_PREFIX}/events")
    app.include_router(admin.router, prefix=f"{API_PREFIX}/admin")
    app.include_router(search_sessions.router, prefix=f"{API_PREFIX}/search-sessions")
    install_openapi(app, settings)
    return app


def __getattr__(name: str) -> FastAPI:
    """`autopilot_api.main:app` for `uvicorn autopilot_api.main:app`, built on first access.

    Importing the module does no I/O and reads no settings; tests use `create_app`.
    """
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    application = globals().get("_app")
    if application is None:
        application = globals()["_app"] = create_app()
    return application
