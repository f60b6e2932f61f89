"""CPU per data-plane call, layer by layer: `python -m bench.client_cost`.

One process, calls made one after another on uvloop (as the service runs), CPU time of
this process only (PostgREST and Postgres run in others), median of 5 rounds, for each
transport DATA_PLANE_TRANSPORT can choose (builtin, httpx):
  1. the transport alone, against a real PostgREST (`POST rpc/resolve_session`)
  2. the same call through the httpx client supabase-py is given
  3. the same call through supabase-py (`call_rpc`, what the routes use)
and once:
  4. `call_rpc` over a transport that answers from memory: the floor of supabase-py and
     httpx themselves, whatever the transport underneath
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import uvloop
from supabase import AsyncClient

from autopilot_api.core.config import load_settings
from autopilot_api.core.dataplane_transport import DataPlaneTransport, TransportKind
from autopilot_api.core.supabase import (
    DataPlaneEndpoint,
    call_rpc,
    close_supabase_client,
    create_supabase_client,
)
from autopilot_api.local.dataplane import LocalDataPlane

CALLS = 3000
ROUNDS = 5
ANSWER = (
    b'{"id":"3f1c2f0e-8f5e-4c8e-9a51-0d3c1f2b7a10","status":"active","phase":"discovery",'
    b'"answers":{},"version":3,"expires_at":"2026-12-22T06:00:00+00:00","expiry_extended":false}'
)


class _FromMemory(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        response = httpx.Response(
            200,
            headers=[(b"Content-Type", b"application/json"), (b"Content-Range", b"*/*")],
            stream=httpx.ByteStream(ANSWER),
            request=request,
        )
        response.read()
        return response


async def _cpu_per_call(call: Callable[[], Awaitable[object]]) -> float:
    for _ in range(300):
        await call()
    rounds = []
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(CALLS):
            await call()
        rounds.append((time.process_time() - started) / CALLS * 1e6)
    return statistics.median(rounds)


def _client(
    rest_url: str, key: str, kind: TransportKind, transport: httpx.AsyncBaseTransport | None
) -> AsyncClient:
    settings = load_settings(
        _env_file=None,
        supabase_url=rest_url,
        supabase_service_role_key=key,
        data_plane_transport=kind,
    )
    client = create_supabase_client(DataPlaneEndpoint(rest_url, key), settings)
    if transport is not None:
        assert client.options.httpx_client is not None
        client.options.httpx_client._transport = transport
    return client


async def measure(rest_url: str, key: str) -> dict[str, float]:
    params = {"p_token_hash": "0" * 64, "p_lifetime_seconds": 86400}
    body = json.dumps(params).encode()
    url = f"{rest_url}/rpc/resolve_session"
    headers = {
        "apikey": key,
        "Authorization": f"Bearer {key}",
        "Content-Profile": "autopilot",
        "Content-Type": "application/json",
    }
    request = httpx.Request(
        "POST",
        url,
        headers=headers,
        content=body,
        extensions={"timeout": httpx.Timeout(10.0).as_dict()},
    )
    results: dict[str, float] = {}
    transports: dict[TransportKind, httpx.AsyncBaseTransport] = {
        "builtin": DataPlaneTransport(),
        "httpx": httpx.AsyncHTTPTransport(),
    }
    for kind, transport in transports.items():
        real = _client(rest_url, key, kind, None)
        http = real.options.httpx_client
        assert http is not None

        async def transport_alone(transport: httpx.AsyncBaseTransport = transport) -> None:
            response = await transport.handle_async_request(request)
            await response.aread()

        async def through_httpx(http: httpx.AsyncClient = http) -> None:
            (await http.post(url, content=body, headers=headers)).json()

        async def through_supabase(real: AsyncClient = real) -> None:
            await call_rpc(real, "resolve_session", params)

        results[f"{kind}: transport alone (real PostgREST)"] = await _cpu_per_call(transport_alone)
        results[f"{kind}: httpx client (real PostgREST)"] = await _cpu_per_call(through_httpx)
        results[f"{kind}: supabase-py call_rpc (real PostgREST)"] = await _cpu_per_call(
            through_supabase
        )
        await transport.aclose()
        await close_supabase_client(real)

    from_memory = _client(rest_url, key, "builtin", _FromMemory())

    async def supabase_floor() -> None:
        await call_rpc(from_memory, "resolve_session", params)

    results["supabase-py call_rpc (answers from memory)"] = await _cpu_per_call(supabase_floor)
    return results


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="autopilot-bench-client-"))
    plane = LocalDataPlane(data_dir=work / "plane", postgrest_pool=4)
    info = plane.start()
    try:
        results = uvloop.run(measure(info.rest_url, info.service_role_key))
    finally:
        plane.stop()
        shutil.rmtree(work, ignore_errors=True)
    for label, micros in results.items():
        print(f"{label:55s} {micros:7.1f} µs CPU per call")  # noqa: T201


if __name__ == "__main__":
    main()
