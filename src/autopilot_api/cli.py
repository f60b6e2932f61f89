"""Command line: `autopilot-api serve|migrate|cleanup|token` (also `python -m autopilot_api`).

An operator's failure (a bad setting, an unreachable database, a refused key, a tool that
could not be fetched) is one line on stderr and an exit code from EXIT_CODES, never a
traceback; a traceback (exit 1) is a bug.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import socket
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from autopilot_api.core.config import Settings, SettingsError, get_settings
from autopilot_api.core.infrastructure import (
    DatabaseUnreachableError,
    DataPlaneKeyRejectedError,
    DataPlaneUnreachableError,
    InfrastructureError,
    LocalDataPlaneError,
    ToolFetchError,
)

if TYPE_CHECKING:
    import uvicorn

# The exit codes, in one place (the README's CLI section lists them).
EXIT_OK = 0
EXIT_BUG = 1  # an unexpected error: a bug, with Python's traceback
EXIT_USAGE = 2  # an invalid setting or argument, a port in use
EXIT_STARTUP = 3  # serve: the app did not start, for a reason not listed below (uvicorn's)
EXIT_DATABASE = 4  # Postgres cannot be reached or logged into (DATABASE_URL, local cluster)
EXIT_DATA_PLANE = 5  # the REST layer (SUPABASE_URL) does not answer, or lacks the schema
EXIT_KEY_REJECTED = 6  # the REST layer refuses SUPABASE_SECRET_KEY
EXIT_TOOL_FETCH = 7  # a tool (PostgREST) could not be fetched from its registry
EXIT_LOCAL_DATA_PLANE = 8  # the local data plane did not start for another reason
EXIT_CODES: dict[type[Exception], int] = {
    SettingsError: EXIT_USAGE,
    DatabaseUnreachableError: EXIT_DATABASE,
    DataPlaneUnreachableError: EXIT_DATA_PLANE,
    DataPlaneKeyRejectedError: EXIT_KEY_REJECTED,
    ToolFetchError: EXIT_TOOL_FETCH,
    LocalDataPlaneError: EXIT_LOCAL_DATA_PLANE,
}


def exit_code(exc: Exception) -> int:
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_LOCAL_DATA_PLANE if isinstance(exc, InfrastructureError) else EXIT_BUG


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(message, file=sys.stderr)  # noqa: T201
    return code


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


def local_database_url(settings: Settings) -> str:
    """The local data plane's database, for psql: the pgserver cluster's socket, or the
    server at DATABASE_URL (its password left out)."""
    from autopilot_api.local.dataplane import LOCAL_DATABASE

    if settings.database_url:
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(settings.database_url)
        user = f"{parts.username}@" if parts.username else ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return urlunsplit(parts._replace(netloc=f"{user}{host}{port}", path=f"/{LOCAL_DATABASE}"))
    pgdata = (Path(settings.local_data_dir) / "pgdata").resolve()
    return f"postgresql://postgres@/{LOCAL_DATABASE}?host={pgdata}"


def _banner(settings: Settings) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{host}:{settings.port}"
    return (
        "\n"
        "  autopilot-api is ready (local mode)\n"
        f"    API:    {url}/api/v1\n"
        f"    Docs:   {url}/docs\n"
        "    Token:  .venv/bin/autopilot-api token   (Authorization: Bearer <token>)\n"
        f"    DB:     psql '{local_database_url(settings)}'\n"
        "    Try it: README.md, 'Try it with curl'\n"
    )


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import ChangeReload, Multiprocess

    from autopilot_api.core.http_protocol import PipelineBoundHttpToolsProtocol
    from autopilot_api.core.infrastructure import refuse_start, start_refusal
    from autopilot_api.core.logging import configure_logging
    from autopilot_api.core.metrics_export import MetricsExport

    settings = get_settings()
    settings.require_data_plane()
    settings.require_shared_state_for_workers()
    reload = bool(getattr(args, "reload", False))
    if reload and settings.workers > 1:
        return _fail("--reload runs one worker: unset WORKERS (or set WORKERS=1)")
    # This process's own lines (with WORKERS>1 the supervisor's: where it listens, workers
    # that die) in the same format as the app's; create_app configures each worker again.
    configure_logging(settings.log_level, settings.resolved_log_format)
    sock = _bind(settings)
    if sock is None:
        return EXIT_USAGE

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
        reload=reload,
        reload_dirs=[str(Path(__file__).parent)] if reload else None,
    )
    # Before any worker imports prometheus_client: one metrics folder for all of them.
    metrics = MetricsExport.open(settings)
    try:
        if config.workers > 1 or reload:
            # Workers, or the process --reload restarts: one data plane, kept across them.
            try:
                stop_plane = _share_local_data_plane(settings)
            except InfrastructureError as exc:
                refuse_start(exc)  # logged: one line in the log format, as from a worker
                return exit_code(exc)
            # As uvicorn.run does for workers: the supervisor hands the one socket to each.
            logging.getLogger("uvicorn.error").info(
                "Uvicorn running on http://%s:%d (Press CTRL+C to quit)",
                settings.host,
                settings.port,
            )
            try:
                if reload:
                    ChangeReload(config, target=uvicorn.Server(config).run, sockets=[sock]).run()
                else:
                    Multiprocess(config, sockets=[sock]).run()
            finally:
                stop_plane()
            return EXIT_OK
        banner = settings.uses_local_data_plane and settings.resolved_log_format == "console"
        server = _server(config, banner=_banner(settings) if banner else None)
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            pass
        except SystemExit:
            # uvicorn's exit when the lifespan failed: the code says why, when it is known.
            if start_refusal() is None:
                raise
        if server.started:
            return EXIT_OK
        refusal = start_refusal()
        return exit_code(refusal) if refusal is not None else STARTUP_FAILURE
    finally:
        sock.close()
        metrics.close()


def _share_local_data_plane(settings: Settings) -> Callable[[], None]:
    """Local mode with several workers (or --reload): one data plane, started here before
    the workers, which find it through the environment they inherit (each lifespan would
    otherwise start its own Postgres and PostgREST on the one data directory). Returns its
    stop."""
    if not settings.uses_local_data_plane:
        # Each worker checks the key at its start; a refused one is said here once, in one
        # line, rather than by every worker uvicorn would start again.
        asyncio.run(_check_hosted_key(settings))
        return lambda: None
    from autopilot_api.core.supabase import open_data_plane

    plane = open_data_plane(settings)
    os.environ.update(
        SUPABASE_URL=plane.endpoint.rest_url,
        SUPABASE_REST_URL=plane.endpoint.rest_url,
        SUPABASE_SECRET_KEY=plane.endpoint.service_role_key,
        SUPABASE_JWT_SECRET=plane.settings.supabase_jwt_secret or "",
    )
    return plane.stop


async def _check_hosted_key(settings: Settings) -> None:
    """Raises DataPlaneKeyRejectedError when the hosted data plane refuses the key."""
    from autopilot_api.core.supabase import (
        check_statement_timeout,
        close_supabase_client,
        create_supabase_client,
        endpoint_from_settings,
    )

    endpoint = endpoint_from_settings(settings)
    client = create_supabase_client(endpoint, settings)
    try:
        await check_statement_timeout(client, settings, rest_url=endpoint.rest_url)
    finally:
        await close_supabase_client(client)


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
    from autopilot_api.core.infrastructure import where
    from autopilot_api.db.migrations import MigrationError, upgrade_database
    from autopilot_api.local.dataplane import connection_failure, database_unreachable

    settings = get_settings()
    if not settings.database_url:
        return _fail("DATABASE_URL is not set: tell me which Postgres to migrate")
    url = settings.database_url
    # Alembic's own INFO lines (a line per revision) are not this command's output.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        applied = upgrade_database(url)
    except MigrationError as exc:
        return _fail(str(exc), EXIT_DATABASE)
    except Exception as exc:
        failure = connection_failure(exc)
        if failure is None:
            raise
        raise database_unreachable(
            failure, url, "DATABASE_URL", "start that server, or fix DATABASE_URL"
        ) from None
    if not applied:
        print(f"nothing to apply: {where(url)} is up to date")  # noqa: T201
        return EXIT_OK
    print(f"applied {len(applied)} migrations to {where(url)}:")  # noqa: T201
    for name in applied:
        print(f"  {name}")  # noqa: T201
    return EXIT_OK


async def _cleanup_expired(settings: Settings) -> int:
    from autopilot_api.composition import open_app_state
    from autopilot_api.core.errors import DataPlaneUnavailableError
    from autopilot_api.core.infrastructure import where
    from autopilot_api.core.supabase import (
        close_supabase_client,
        create_supabase_client,
        open_data_plane,
        probe_data_plane,
    )

    plane = await asyncio.to_thread(open_data_plane, settings)
    client = create_supabase_client(plane.endpoint, plane.settings)
    try:
        await probe_data_plane(client, plane.settings, rest_url=plane.endpoint.rest_url)
        async with open_app_state(plane.settings, client) as state:
            try:
                return await state.services.sessions.cleanup_expired_sessions(
                    batch_size=settings.session_cleanup_batch_size
                )
            except DataPlaneUnavailableError:
                raise DataPlaneUnreachableError(
                    f"the data plane at {where(plane.endpoint.rest_url)} stopped answering "
                    "during the cleanup: run it again once it answers (what was deleted stays "
                    "deleted)"
                ) from None
    finally:
        await close_supabase_client(client)
        await asyncio.to_thread(plane.stop)


def _cleanup(_: argparse.Namespace) -> int:
    settings = get_settings()
    settings.require_data_plane()
    deleted = asyncio.run(_cleanup_expired(settings))
    print(f"deleted {deleted} expired sessions")  # noqa: T201
    return EXIT_OK


def _token(args: argparse.Namespace) -> int:
    """A development access token, signed with the local JWT secret."""
    from autopilot_api.core.security import LOCAL_SUPABASE_ISSUER, mint_user_token

    try:
        user_id = uuid.UUID(args.user_id)
    except ValueError:
        return _fail(f"--user-id {args.user_id!r} is not a UUID (e.g. {uuid.uuid4()})")
    if args.hours < 1:
        return _fail(f"--hours {args.hours} must be at least 1")
    settings = get_settings()
    if settings.supabase_url:
        return _fail("refusing: SUPABASE_URL is set, so tokens come from that project's Auth")
    secret_file = Path(settings.local_data_dir) / "jwt_secret"
    secret = settings.supabase_jwt_secret or (
        secret_file.read_text().strip() if secret_file.exists() else None
    )
    if not secret:
        return _fail("no local JWT secret yet: run `make run` once first")
    print(  # noqa: T201
        mint_user_token(
            secret,
            # The issuer the service checks if one is set, else the one `supabase start` uses.
            issuer=settings.jwt_issuer or LOCAL_SUPABASE_ISSUER,
            user_id=user_id,
            email=args.email,
            app_metadata={"role": "admin"} if args.admin else {},
            lifetime_seconds=args.hours * 3600,
        )
    )
    return EXIT_OK


# The settings each command reads (from the environment or .env), listed by its --help.
_DATA_PLANE_SETTINGS = (
    "supabase_url",
    "supabase_secret_key",
    "supabase_rest_url",
    "local_mode",
    "local_data_dir",
    "database_url",
    "postgrest_bin",
    "tools_dir",
    "db_schema",
    "data_plane_timeout_seconds",
)
COMMAND_SETTINGS: dict[str, tuple[str, ...]] = {
    "serve": (
        "host",
        "port",
        "workers",
        *_DATA_PLANE_SETTINGS,
        "supabase_jwks_url",
        "supabase_jwt_secret",
        "cors_origins",
        "redis_url",
        "openai_api_key",
        "log_level",
        "log_format",
    ),
    "migrate": ("database_url",),
    "cleanup": (*_DATA_PLANE_SETTINGS, "session_cleanup_batch_size"),
    "token": ("supabase_url", "supabase_jwt_secret", "supabase_jwt_issuer", "local_data_dir"),
}


def _settings_epilog(command: str, names: Sequence[str]) -> str:
    from autopilot_api.core.settings_doc import setting_comment, setting_default

    lines = [f"settings `{command}` reads (environment or .env), with their defaults:"]
    for name in names:
        default = setting_default(name).replace("`", "").replace("—", "(unset)")
        comment = setting_comment(name.upper())
        lines.append(f"  {name.upper():<27} {default:<10} {comment}".rstrip())
    if command == "serve":
        lines.append("  … and every other setting in the README's table.")
    lines.append("exit codes: 0 done, 2 bad setting or argument, 4 database unreachable, 5 data")
    lines.append("plane unreachable, 6 key refused, 7 tool fetch failed (README, 'Command line').")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autopilot-api", description="autopilot-api")
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=_settings_epilog(name, COMMAND_SETTINGS[name]),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    serve = add("serve", "run the API (uvicorn)")
    serve.add_argument(
        "--reload",
        action="store_true",
        help="restart the app when a file under src/autopilot_api changes (development)",
    )
    serve.set_defaults(handler=_serve)
    add(
        "migrate", "apply supabase/migrations to DATABASE_URL and print what was applied"
    ).set_defaults(handler=_migrate)
    add("cleanup", "delete expired, unclaimed sessions now (in batches)").set_defaults(
        handler=_cleanup
    )
    token = add("token", "mint a local development access token (refused against hosted Supabase)")
    token.add_argument("--user-id", default=str(uuid.uuid4()), help="the user's UUID (random)")
    token.add_argument("--email", default="dev@example.test", help="the user's email")
    token.add_argument("--admin", action="store_true", help="app_metadata.role = admin")
    token.add_argument("--hours", type=int, default=12, help="lifetime in hours")
    token.set_defaults(handler=_token)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except (SettingsError, InfrastructureError) as exc:
        return _fail(str(exc), exit_code(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
