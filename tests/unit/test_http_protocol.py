"""The served protocol answers pipelined requests in order, bodies intact across the slices it
parses in, and parses no further ahead of a client than the requests of one slice."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from autopilot_api.core.http_protocol import PARSE_SLICE_BYTES, PipelineBoundHttpToolsProtocol

PROTOCOLS: list[PipelineBoundHttpToolsProtocol] = []
RELEASE = asyncio.Event()


class _Recorded(PipelineBoundHttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        PROTOCOLS.append(self)


async def _echo(request: Request) -> Response:
    body = await request.body()
    return Response(request.url.path.encode() + b":" + body, media_type="text/plain")


async def _held(_: Request) -> Response:
    await RELEASE.wait()
    return Response(b"released", media_type="text/plain")


@asynccontextmanager
async def serving() -> AsyncIterator[int]:
    app = Starlette(
        routes=[
            Route("/echo/{n}", _echo, methods=["GET", "POST"]),
            Route("/held", _held),
        ]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(app, http=_Recorded, log_config=None, access_log=False, lifespan="off")
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


def request(n: int, body: bytes) -> bytes:
    if not body:
        return f"GET /echo/{n} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    head = f"POST /echo/{n} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return await reader.readexactly(length)


@pytest.mark.asyncio
async def test_pipelined_requests_answered_in_order_with_their_bodies() -> None:
    # Bodies of every size around the slice, so that heads and bodies straddle its edges.
    sizes = [0, 1, 100, PARSE_SLICE_BYTES - 40, PARSE_SLICE_BYTES, PARSE_SLICE_BYTES + 7]
    sizes += [3 * PARSE_SLICE_BYTES + 5, 200_000] + [0] * 300 + [17] * 300
    bodies = [bytes([65 + n % 26]) * size for n, size in enumerate(sizes)]
    async with serving() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"".join(request(n, body) for n, body in enumerate(bodies)))
        await writer.drain()
        for n, body in enumerate(bodies):
            assert await read_answer(reader) == f"/echo/{n}:".encode() + body
        writer.close()


@pytest.mark.asyncio
async def test_reading_stops_while_a_parsed_request_waits() -> None:
    RELEASE.clear()
    PROTOCOLS.clear()
    pipelined = request(0, b"")
    async with serving() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # The first request is held by the app; 20,000 more (about 700 KiB) come behind it.
        writer.write(b"GET /held HTTP/1.1\r\nHost: t\r\n\r\n" + pipelined * 20_000)
        (protocol,) = PROTOCOLS
        for _ in range(500):
            if protocol._held:
                break
            await asyncio.sleep(0.01)
        # Parsed: the requests of one slice at most; the rest is held raw or unread.
        assert protocol._held
        assert 0 < len(protocol.pipeline) <= PARSE_SLICE_BYTES // len(pipelined) + 1
        RELEASE.set()
        assert await read_answer(reader) == b"released"
        for _ in range(20_000):
            assert await read_answer(reader) == b"/echo/0:"
        assert not protocol.pipeline
        assert not protocol._held
        writer.close()
