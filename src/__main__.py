"""Command line: `python -m src serve|migrate`."""

from __future__ import annotations

import argparse
import sys

from src.core.config import SettingsError, get_settings


def _serve(_: argparse.Namespace) -> int:
    import uvicorn

    settings = get_settings()
    settings.require_data_plane()
    uvicorn.run(
        "src.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
    return 0


def _migrate(_: argparse.Namespace) -> int:
    from src.db.migrations import upgrade_database

    settings = get_settings()
    if not settings.database_url:
        print("DATABASE_URL is not set: tell me which Postgres to migrate", file=sys.stderr)  # noqa: T201
        return 2
    upgrade_database(settings.database_url)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src", description="autopilot-api")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the API (uvicorn)").set_defaults(handler=_serve)
    commands.add_parser(
        "migrate", help="apply supabase/migrations to DATABASE_URL (alembic upgrade head)"
    ).set_defaults(handler=_migrate)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except SettingsError as exc:
        print(str(exc), file=sys.stderr)  # noqa: T201
        return 2


if __name__ == "__main__":
    sys.exit(main())
