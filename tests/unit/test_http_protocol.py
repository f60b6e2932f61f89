"""The server sends a small response in one write (status line, headers and body together),
and a stream's chunks as they come."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from autopilot_api.core.http_protocol import CorkedHttpToolsProtocol

WRITES: list[bytes] = []


class _CountingTransport:
    """The socket's transport, recording each write that reaches it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        WRITES.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Counted(CorkedHttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_CountingTransport(transport))  # type: ignore[arg-type]


async def _json(_: Any) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def _stream(_: Any) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for index in range(3):
            yield f"data: {index}\n\n".encode()
            await asyncio.sleep(0.05)

    return StreamingResponse(chunks(), media_type="text/event-stream")


@pytest.mark.asyncio
async def test_one_write_per_small_response_and_stream_chunks_as_they_come() -> None:
    app = Starlette(routes=[Route("/json", _json), Route("/stream", _stream)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, http=_Counted, log_config=None, access_log=False, lifespan="off")
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            WRITES.clear()
            response = await client.get("/json")
            assert response.json() == {"status": "ok"}
            assert len(WRITES) == 1
            assert WRITES[0].startswith(b"HTTP/1.1 200 OK\r\n")
            assert WRITES[0].endswith(b'{"status":"ok"}')

            WRITES.clear()
            response = await client.get("/stream")
            assert response.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
            # Headers with the first chunk; each later chunk when it is made.
            assert len(WRITES) >= 3
    finally:
        server.should_exit = True
        await task
        sock.close()
