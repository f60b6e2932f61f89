"""wrk for the benchmarks, without installing it: from PATH, else Debian's package (and
LuaJIT, when this system lacks it) fetched with `apt-get download` and unpacked into
`.tools/wrk/`, as the tests fetch nginx."""

from __future__ import annotations

import os
import shutil
import subprocess

from autopilot_api.core.config import PROJECT_ROOT
from tests.fixtures.nginx import download_debian, library_env

TOOLS = PROJECT_ROOT / ".tools" / "wrk"
PACKAGES = ["wrk", "libluajit-5.1-2", "libluajit-5.1-common"]


class WrkUnavailableError(Exception):
    """wrk is not on PATH and could not be fetched: the message says what to do."""


def _runs(command: list[str]) -> bool:
    try:
        done = subprocess.run([*command, "-v"], capture_output=True, check=False, timeout=30)
    except OSError:
        return False
    # `wrk -v` prints its version and usage, and exits 1.
    return b"wrk " in done.stdout + done.stderr


def ensure_wrk() -> None:
    """Puts a working `wrk` on this process's PATH (fetching it once into .tools/wrk)."""
    if shutil.which("wrk") and _runs(["wrk"]):
        return
    wrapper = TOOLS / "bin" / "wrk"
    if not (wrapper.exists() and _runs([str(wrapper)])):
        print(f"bench: fetching wrk with apt-get download into {TOOLS} (once)")  # noqa: T201
        shutil.rmtree(TOOLS, ignore_errors=True)
        root = TOOLS / "root"
        root.mkdir(parents=True)
        try:
            download_debian(PACKAGES, root)
        except (RuntimeError, OSError) as error:
            raise WrkUnavailableError(
                f"wrk is not on PATH and apt-get download wrk failed ({str(error)[:200]}): "
                "put wrk on PATH and run again"
            ) from None
        libraries = library_env(root).get("LD_LIBRARY_PATH", "")
        wrapper.parent.mkdir(parents=True, exist_ok=True)
        wrapper.write_text(
            "#!/bin/sh\n# Debian's wrk, unpacked by bench/wrk_tool.py (not installed).\n"
            f'export LD_LIBRARY_PATH="{libraries}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"\n'
            f'exec "{root / "usr" / "bin" / "wrk"}" "$@"\n'
        )
        wrapper.chmod(0o755)
        if not _runs([str(wrapper)]):
            raise WrkUnavailableError(
                f"the wrk fetched into {TOOLS} does not run: put wrk on PATH and run again"
            )
    os.environ["PATH"] = f"{wrapper.parent}{os.pathsep}{os.environ.get('PATH', '')}"
