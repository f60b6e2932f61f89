"""How `autopilot-api serve` exposes the metrics of all its workers.

Prometheus multiprocess mode: each worker writes its values to files in one folder, and a
scrape adds them up. The folder must be named before `prometheus_client` is first imported
(it picks its value store then), so this module imports it only inside its functions.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

from autopilot_api.core.config import Settings, SettingsError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass
class MetricsExport:
    """The serve process's share: the multiprocess folder, and the METRICS_PORT listener."""

    folder: str
    server: WSGIServer | None = None

    @classmethod
    def open(cls, settings: Settings) -> MetricsExport:
        """A fresh folder for this run (a stale one would carry counts of a previous run),
        set in the environment the workers inherit; then the METRICS_PORT listener."""
        if "prometheus_client.values" in sys.modules:  # pragma: no cover - a wiring bug
            raise RuntimeError("prometheus_client was imported before its multiprocess folder")
        export = cls(folder=tempfile.mkdtemp(prefix="autopilot-metrics-"))
        os.environ[MULTIPROC_ENV] = export.folder
        if settings.metrics_port is not None:
            try:
                export.server = _serve_port(settings.host, settings.metrics_port)
            except OSError as exc:
                export.close()
                raise SettingsError(
                    f"METRICS_PORT {settings.metrics_port} on {settings.host} cannot be bound "
                    f"({exc.strerror}): choose another port"
                ) from None
        return export

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        shutil.rmtree(self.folder, ignore_errors=True)


def _serve_port(host: str, port: int) -> WSGIServer:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
