"""The command line: the console script and `python -m autopilot_api` list every command,
each command has --help; token refuses against hosted Supabase; serve fails early on a
busy port."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from jose import jwt

from autopilot_api.cli import (
    COMMAND_SETTINGS,
    EXIT_BUG,
    EXIT_CODES,
    EXIT_OK,
    EXIT_STARTUP,
    EXIT_USAGE,
)
from autopilot_api.core.config import PROJECT_ROOT


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autopilot_api", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        check=False,
        timeout=60,
    )


COMMANDS = ["serve", "migrate", "cleanup", "token"]
ENTRY_POINTS = {
    "console script": [str(Path(sys.executable).parent / "autopilot-api")],
    "python -m": [sys.executable, "-m", "autopilot_api"],
}


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_help_lists_every_command_with_what_it_does(entry_point: str) -> None:
    result = subprocess.run(
        [*ENTRY_POINTS[entry_point], "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: autopilot-api ")
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", result.stdout, re.MULTILINE), command


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_listing_the_settings_it_reads(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert "usage:" in result.stdout
    assert f"settings `{command}` reads (environment or .env), with their defaults:" in (
        result.stdout
    )
    for name in COMMAND_SETTINGS[command]:
        assert re.search(rf"^  {name.upper()} +\S", result.stdout, re.MULTILINE), name
    assert "exit codes:" in result.stdout


def test_help_shows_defaults_and_what_a_setting_does() -> None:
    result = run_cli("cleanup", "--help")
    assert re.search(r"^  SESSION_CLEANUP_BATCH_SIZE +500 +Sessions deleted", result.stdout, re.M)
    assert re.search(
        r"^  SUPABASE_SECRET_KEY +\(unset\) +That project's secret key", result.stdout, re.M
    )
    assert re.search(r"^  TOOLS_DIR +\.tools ", result.stdout, re.M)


def test_every_exit_code_is_distinct_and_in_the_readme() -> None:
    codes = [EXIT_OK, EXIT_BUG, EXIT_USAGE, EXIT_STARTUP, *EXIT_CODES.values()]
    assert len(set(codes)) == len(codes) - 1  # settings and arguments share 2
    readme = (PROJECT_ROOT / "README.md").read_text()
    for code in set(codes):
        assert re.search(rf"^\| {code} \| ", readme, re.MULTILINE), code


def test_token_is_refused_against_a_hosted_project() -> None:
    result = run_cli(
        "token", env={"SUPABASE_URL": "https://x.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": "k"}
    )
    assert result.returncode == 2
    assert "refusing" in result.stderr
    assert result.stdout == ""


def test_token_mints_a_supabase_shaped_token_with_the_local_secret() -> None:
    user_id = str(uuid.uuid4())
    secret = "s" * 40
    result = run_cli(
        "token",
        "--user-id",
        user_id,
        "--email",
        "a@b.test",
        "--admin",
        env={"SUPABASE_JWT_SECRET": secret},
    )
    assert result.returncode == 0
    claims = jwt.decode(
        result.stdout.strip(),
        secret,
        algorithms=["HS256"],
        audience="authenticated",
        issuer="http://127.0.0.1:54321/auth/v1",
    )
    assert claims["sub"] == user_id
    assert claims["email"] == "a@b.test"
    assert claims["app_metadata"]["role"] == "admin"
    assert claims["role"] == "authenticated"
    assert {"phone", "aal", "amr", "session_id", "is_anonymous", "user_metadata"} <= set(claims)


def test_token_carries_the_issuer_the_local_service_is_told_to_check() -> None:
    secret = "s" * 40
    issuer = "http://localhost:54321/auth/v1"
    result = run_cli("token", env={"SUPABASE_JWT_SECRET": secret, "SUPABASE_JWT_ISSUER": issuer})
    assert result.returncode == 0
    assert jwt.get_unverified_claims(result.stdout.strip())["iss"] == issuer


def test_a_busy_port_fails_at_once_naming_it_before_any_data_plane_starts(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "local"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = run_cli(
            "serve",
            env={
                "LOCAL_MODE": "true",
                "PORT": str(port),
                "LOCAL_DATA_DIR": str(data_dir),
                "LOG_LEVEL": "INFO",
            },
        )
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip()
    assert f"port {port} on 127.0.0.1 is already in use" in message
    assert "PORT setting" in message
    assert len(message.splitlines()) == 1, message
    # Nothing was started: no cluster, no PostgREST, no secrets (and no log line above).
    assert not data_dir.exists()
    assert elapsed < 15
