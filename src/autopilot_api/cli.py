"""Command line: `autopilot-api serve|migrate|cleanup|token` (also `python -m autopilot_api`)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import socket
import sys
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from autopilot_api.core.config import Settings, SettingsError, get_settings

if TYPE_CHECKING:
    import uvicorn


def _bind(settings: Settings) -> socket.socket | None:
    """The listening socket, bound before anything starts (uvicorn's Config.bind_socket, minus
    its exit): a busy port must fail before the lifespan starts Postgres and PostgREST."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family=family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        reason = (
            "is already in use"
            if exc.errno == errno.EADDRINUSE
            else f"cannot be bound ({exc.strerror})"
        )
        other = settings.port + 1 if settings.port < 65535 else settings.port - 1
        print(  # noqa: T201
            f"port {settings.port} on {settings.host} {reason}: stop what is listening "
            f"there, or serve on another port with the PORT setting (e.g. PORT={other})",
            file=sys.stderr,
        )
        return None
    sock.set_inheritable(True)
    return sock


def _banner(settings: Settings) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{host}:{settings.port}"
    return (
        "\n"
        "  autopilot-api is ready (local mode)\n"
        f"    API:    {url}/api/v1\n"
        f"    Docs:   {url}/docs\n"
        "    Token:  .venv/bin/autopilot-api token   (Authorization: Bearer <token>)\n"
        "    Try it: README.md, 'Try it with curl'\n"
    )


def _serve(_: argparse.Namespace) -> int:
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    from autopilot_api.core.http_protocol import PipelineBoundHttpToolsProtocol
    from autopilot_api.core.logging import configure_logging
    from autopilot_api.core.metrics_export import MetricsExport

    settings = get_settings()
    settings.require_data_plane()
    settings.require_shared_state_for_workers()
    # This process's own lines (with WORKERS>1 the supervisor's: where it listens, workers
    # that die) in the same format as the app's; create_app configures each worker again.
    configure_logging(settings.log_level, settings.resolved_log_format)
    sock = _bind(settings)
    if sock is None:
        return 2

    config = uvicorn.Config(
        "autopilot_api.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level.lower(),
        proxy_headers=False,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
        timeout_keep_alive=settings.keepalive_timeout_seconds,
        # httptools, reading no further ahead of a pipelining client than one request.
        http=PipelineBoundHttpToolsProtocol,
    )
    # Before any worker imports prometheus_client: one metrics folder for all of them.
    metrics = MetricsExport.open(settings)
    try:
        if config.workers > 1:
            stop_plane = _share_local_data_plane(settings)
            # As uvicorn.run does for workers: the supervisor hands the one socket to each.
            logging.getLogger("uvicorn.error").info(
                "Uvicorn running on http://%s:%d (Press CTRL+C to quit)",
                settings.host,
                settings.port,
            )
            try:
                Multiprocess(config, sockets=[sock]).run()
            finally:
                stop_plane()
            return 0
        banner = settings.uses_local_data_plane and settings.resolved_log_format == "console"
        server = _server(config, banner=_banner(settings) if banner else None)
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            pass
        return 0 if server.started else STARTUP_FAILURE
    finally:
        sock.close()
        metrics.close()


def _share_local_data_plane(settings: Settings) -> Callable[[], None]:
    """Local mode with several workers: one data plane, started here before the workers,
    which find it through the environment they inherit (each lifespan would otherwise
    start its own Postgres and PostgREST on the one data directory). Returns its stop."""
    if not settings.uses_local_data_plane:
        return lambda: None
    from autopilot_api.core.supabase import open_data_plane

    plane = open_data_plane(settings)
    os.environ.update(
        SUPABASE_URL=plane.endpoint.rest_url,
        SUPABASE_REST_URL=plane.endpoint.rest_url,
        SUPABASE_SERVICE_ROLE_KEY=plane.endpoint.service_role_key,
        SUPABASE_JWT_SECRET=plane.settings.supabase_jwt_secret or "",
    )
    return plane.stop


def _server(config: uvicorn.Config, *, banner: str | None) -> uvicorn.Server:
    """uvicorn's Server, which (given sockets) logs where it listens, then the banner."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and sockets:
                # uvicorn skips this line when handed sockets (it expects bind_socket's).
                self._log_started_message(sockets)
                if banner:
                    print(banner, file=sys.stderr, flush=True)  # noqa: T201

    return Server(config)


def _migrate(_: argparse.Namespace) -> int:
    from autopilot_api.db.migrations import MigrationError, upgrade_database

    settings = get_settings()
    if not settings.database_url:
        print("DATABASE_URL is not set: tell me which Postgres to migrate", file=sys.stderr)  # noqa: T201
        return 2
    try:
        applied = upgrade_database(settings.database_url)
    except MigrationError as exc:
        print(exc, file=sys.stderr)  # noqa: T201
        return 1
    print(f"applied {', '.join(applied)}" if applied else "no migration pending")  # noqa: T201
    return 0


async def _cleanup_expired(settings: Settings) -> int:
    from autopilot_api.core.supabase import (
        close_supabase_client,
        create_supabase_client,
        open_data_plane,
    )
    from autopilot_api.services.discovery_profile_service import DiscoveryProfileService
    from autopilot_api.services.event_bus import InProcessEventBus
    from autopilot_api.services.rate_limiter import InMemoryRateLimiter
    from autopilot_api.services.session_service import SessionService

    plane = await asyncio.to_thread(open_data_plane, settings)
    client = create_supabase_client(plane.endpoint, plane.settings)
    try:
        service = SessionService(
            client,
            plane.settings,
            profiles=DiscoveryProfileService(client, bus=InProcessEventBus()),
            rate_limiter=InMemoryRateLimiter(),
            bus=InProcessEventBus(),
        )
        return await service.cleanup_expired_sessions(
            batch_size=settings.session_cleanup_batch_size
        )
    finally:
        await close_supabase_client(client)
        await asyncio.to_thread(plane.stop)


def _cleanup(_: argparse.Namespace) -> int:
    settings = get_settings()
    settings.require_data_plane()
    deleted = asyncio.run(_cleanup_expired(settings))
    print(f"deleted {deleted} expired sessions")  # noqa: T201
    return 0


def _token(args: argparse.Namespace) -> int:
    """A development access token, signed with the local JWT secret."""
    from pathlib import Path

    from autopilot_api.core.security import LOCAL_SUPABASE_ISSUER, mint_user_token

    settings = get_settings()
    if settings.supabase_url:
        print(  # noqa: T201
            "refusing: SUPABASE_URL is set, so tokens come from that project's Auth",
            file=sys.stderr,
        )
        return 2
    secret_file = Path(settings.local_data_dir) / "jwt_secret"
    secret = settings.supabase_jwt_secret or (
        secret_file.read_text().strip() if secret_file.exists() else None
    )
    if not secret:
        print("no local JWT secret yet: run `make run` once first", file=sys.stderr)  # noqa: T201
        return 2
    print(  # noqa: T201
        mint_user_token(
            secret,
            # The issuer the service checks if one is set, else the one `supabase start` uses.
            issuer=settings.jwt_issuer or LOCAL_SUPABASE_ISSUER,
            user_id=args.user_id,
            email=args.email,
            app_metadata={"role": "admin"} if args.admin else {},
            lifetime_seconds=args.hours * 3600,
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autopilot-api", description="autopilot-api")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the API (uvicorn)").set_defaults(handler=_serve)
    commands.add_parser(
        "migrate", help="apply supabase/migrations to DATABASE_URL (alembic upgrade head)"
    ).set_defaults(handler=_migrate)
    commands.add_parser(
        "cleanup", help="delete expired, unclaimed sessions now (in batches)"
    ).set_defaults(handler=_cleanup)
    token = commands.add_parser(
        "token", help="mint a local development access token (refused against hosted Supabase)"
    )
    token.add_argument("--user-id", default=str(uuid.uuid4()), help="the user's UUID (random)")
    token.add_argument("--email", default="dev@example.test", help="the user's email")
    token.add_argument("--admin", action="store_true", help="app_metadata.role = admin")
    token.add_argument("--hours", type=int, default=12, help="lifetime in hours")
    token.set_defaults(handler=_token)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except SettingsError as exc:
        print(str(exc), file=sys.stderr)  # noqa: T201
        return 2


if __name__ == "__main__":
    sys.exit(main())
