"""uvicorn's httptools protocol, reading no further ahead of a client than one request.

A client may pipeline: send many requests without waiting for the answers. uvicorn (httptools)
parses every request of each chunk it reads into a queue of request/response cycles (about
2.5 KB each), and resumes reading each time an answer is complete, whether or not that queue
is empty. A client that pipelines and never reads keeps that going while the kernel takes the
answers: 3 connections pipelining 50,000 GETs grew the process by 294 MiB, never returned.
(h11 parses one request at a time and stays flat, at more CPU per request than httptools.)

Here a chunk is parsed in slices, and the rest is held, unparsed, while a parsed request waits
its turn; reading resumes only once the queue is empty. So a connection holds at most one read
(256 KiB) and the requests of one slice, and one whose answers are unread stops being read.

Behind the edge (deploy/nginx) this never happens: nginx does not pipeline to its upstream.
It reads two attributes of uvicorn's HttpToolsProtocol, `pipeline` (the queue) and `flow` (its
read/write pauses); uvicorn is pinned in pyproject.toml to the minor version tested with it
(tests/unit/test_http_protocol.py, tests/integration/test_server_limits.py).
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# How much is parsed before checking whether a request is already waiting: a few hundred
# of the smallest requests at most.
PARSE_SLICE_BYTES = 8192


class PipelineBoundHttpToolsProtocol(HttpToolsProtocol):
    _held: bytes = b""

    def data_received(self, data: bytes) -> None:
        if self._held:
            data, self._held = self._held + data, b""
        if len(data) <= PARSE_SLICE_BYTES:
            super().data_received(data)
            return
        view = memoryview(data)
        for start in range(0, len(data), PARSE_SLICE_BYTES):
            if self.pipeline:
                # A parsed request waits for the one being answered: hold the rest.
                self._held = bytes(view[start:])
                self.flow.pause_reading()
                return
            super().data_received(view[start : start + PARSE_SLICE_BYTES])  # type: ignore[arg-type]
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return  # refused (400), or upgraded to another protocol

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.pipeline:
            # uvicorn resumed reading and started the next request: more are waiting.
            self.flow.pause_reading()
        elif self._held:
            held, self._held = self._held, b""
            self.data_received(held)
