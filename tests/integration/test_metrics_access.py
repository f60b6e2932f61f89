"""/metrics is for operators: behind METRICS_TOKEN or on METRICS_PORT, one scrape covering
every worker; 404 in production with neither; open on the loopback in local mode."""

from __future__ import annotations

import asyncio
import re
import secrets
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from autopilot_api.local.dataplane import LocalDataPlane, free_port
from tests.conftest import API_BASE_URL, make_settings, running_app
from tests.fixtures.processes import ServiceProcess, start_service

ASYNC = pytest.mark.asyncio(loop_scope="session")
READYZ = re.compile(
    r'^autopilot_http_requests_total\{method="GET",route="/readyz",status="200"\} (\S+)$', re.M
)


def _readyz_count(exposition: str) -> float:
    return sum(float(value) for value in READYZ.findall(exposition))


def _multiproc_dir(service: ServiceProcess) -> Path:
    for child in psutil.Process(service.process.pid).children(recursive=True):
        folder = child.environ().get("PROMETHEUS_MULTIPROC_DIR")
        if folder:
            return Path(folder)
    raise AssertionError("no worker has PROMETHEUS_MULTIPROC_DIR")


def _readyz_by_worker(folder: Path) -> dict[str, float]:
    """Requests each worker counted, read from its own file of the multiprocess folder."""
    counts: dict[str, float] = {}
    for path in folder.glob("counter_*.db"):
        pid = path.stem.removeprefix("counter_")
        for metric in MultiProcessCollector.merge([str(path)], accumulate=True):
            for sample in metric.samples:
                if (
                    sample.name == "autopilot_http_requests_total"
                    and sample.labels.get("route") == "/readyz"
                ):
                    counts[pid] = counts.get(pid, 0) + sample.value
    return counts


async def _hit_readyz(base_url: str, count: int) -> None:
    # A new connection per request, many at once, so both workers accept some.
    limits = httpx.Limits(max_keepalive_connections=0, max_connections=16)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10) as http:
        responses = await asyncio.gather(*(http.get("/readyz") for _ in range(count)))
    assert [r.status_code for r in responses] == [200] * count


@ASYNC
async def test_one_scrape_counts_the_requests_of_every_worker(
    data_plane: LocalDataPlane, tmp_path: Path, redis_url: str
) -> None:
    token = secrets.token_urlsafe(24)
    # Several workers need a Redis (serve refuses without one).
    service = start_service(
        data_plane, tmp_path, WORKERS="2", METRICS_TOKEN=token, REDIS_URL=redis_url
    )
    try:
        folder = _multiproc_dir(service)
        sent = 0
        for _ in range(20):
            await _hit_readyz(service.base_url, 50)
            sent += 50
            if len([n for n in _readyz_by_worker(folder).values() if n > 0]) >= 2:
                break
        per_worker = _readyz_by_worker(folder)
        assert len([n for n in per_worker.values() if n > 0]) == 2, per_worker

        headers = {"Authorization": f"Bearer {token}"}
        scrapes = [
            httpx.get(f"{service.base_url}/metrics", headers=headers, timeout=5) for _ in range(4)
        ]
        for scrape in scrapes:
            assert scrape.status_code == 200
            assert scrape.headers["content-type"].startswith("text/plain")
            assert _readyz_count(scrape.text) == sent, (per_worker, sent)

        for wrong in ({}, {"Authorization": f"Bearer {token}x"}, {"Authorization": token}):
            denied = httpx.get(f"{service.base_url}/metrics", headers=wrong, timeout=5)
            assert denied.status_code == 401
            assert denied.json()["error"]["code"] == "unauthorized"
            assert denied.headers["www-authenticate"] == "Bearer"
    finally:
        service.stop()
    # The serve process removed its multiprocess folder.
    assert not folder.exists()


@ASYNC
async def test_metrics_port_serves_every_worker_and_the_api_port_hides_metrics(
    data_plane: LocalDataPlane, tmp_path: Path, redis_url: str
) -> None:
    metrics_port = free_port()
    service = start_service(
        data_plane, tmp_path, WORKERS="2", METRICS_PORT=str(metrics_port), REDIS_URL=redis_url
    )
    try:
        await _hit_readyz(service.base_url, 40)
        scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        assert scrape.status_code == 200
        assert _readyz_count(scrape.text) == 40
        hidden = httpx.get(f"{service.base_url}/metrics", timeout=5)
        assert hidden.status_code == 404
        assert hidden.json()["error"]["code"] == "not_found"
    finally:
        service.stop()


@ASYNC
async def test_one_worker_counts_through_the_same_multiprocess_path(
    data_plane: LocalDataPlane, tmp_path: Path
) -> None:
    token = secrets.token_urlsafe(24)
    service = start_service(data_plane, tmp_path, METRICS_TOKEN=token)
    try:
        await _hit_readyz(service.base_url, 30)
        scrape = httpx.get(
            f"{service.base_url}/metrics",
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )
        assert scrape.status_code == 200
        assert _readyz_count(scrape.text) == 30
    finally:
        service.stop()


@ASYNC
async def test_production_without_a_setting_answers_404(data_plane: LocalDataPlane) -> None:
    async with (
        running_app(make_settings(data_plane)) as app,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=API_BASE_URL) as http,
    ):
        response = await http.get("/metrics")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
        assert "autopilot_http_requests_total" not in response.text


@ASYNC
async def test_local_mode_is_open_on_the_loopback_only(data_plane: LocalDataPlane) -> None:
    async with running_app(make_settings(data_plane, local_mode=True)) as app:
        for client, expected in (
            (("127.0.0.1", 5000), 200),
            (("::1", 5000), 200),
            (("10.1.2.3", 5000), 404),
        ):
            transport = httpx.ASGITransport(app=app, client=client)
            async with httpx.AsyncClient(transport=transport, base_url=API_BASE_URL) as http:
                response = await http.get("/metrics")
                assert response.status_code == expected, client
                if expected == 200:
                    assert "autopilot_http_requests_total" in response.text


@ASYNC
async def test_token_from_a_client_elsewhere(data_plane: LocalDataPlane) -> None:
    token = secrets.token_urlsafe(24)
    async with running_app(make_settings(data_plane, metrics_token=token)) as app:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 4000))
        async with httpx.AsyncClient(transport=transport, base_url=API_BASE_URL) as http:
            assert (await http.get("/metrics")).status_code == 401
            ok = await http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200
            assert "autopilot_http_requests_total" in ok.text
