"""Forwarding to tritonserver's private HTTP port: one keep-alive connection per client connection,
the request written in one piece, the answer parsed by llhttp as it arrives and bounded in size."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any, cast


class _Answer:
    """httptools callbacks for one of Triton's answers."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.complete = False
        self.keep_alive = False
        self.parser: Any = None

    def on_headers_complete(self) -> None:  # llhttp forgets it once the message is complete
        self.keep_alive = bool(self.parser.should_keep_alive())

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-type", b"inference-header-content-length"):
            self.headers.append((name, value))

    def on_body(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise ValueError("the inference server's answer is too large")
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.complete = True


class Upstream(asyncio.Protocol):
    """One keep-alive connection to tritonserver's private HTTP port. A protocol, not streams: the
    answer is parsed in the callback as its bytes arrive, and the request's task wakes once, when it
    is whole (a StreamReader costs a buffer, a future and a wake-up per read)."""

    def __init__(self, httptools: Any) -> None:
        self.httptools = httptools
        self.transport: asyncio.Transport | None = None
        self.parser: Any = None
        self.answer: _Answer | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.lost = False

    @classmethod
    async def open(cls, host: str, port: int, httptools: Any) -> Upstream:
        _, up = await asyncio.get_running_loop().create_connection(lambda: cls(httptools), host, port)
        return up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        no_delay(transport)

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():  # bytes no request asked for: out of step, never reused
            self._fail(ConnectionError("tritonserver sent bytes no request asked for"))
            return
        try:
            self.parser.feed_data(data)
        except self.httptools.HttpParserError as e:
            self._fail(ConnectionError(f"tritonserver's answer is not HTTP: {e}"))
        except ValueError as e:  # too large
            self._fail(e)
        else:
            assert self.answer is not None
            if self.answer.complete:
                waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("tritonserver closed the connection"))

    def _fail(self, error: Exception) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)
        self.close()

    async def exchange(
        self,
        method: str,
        path: str,
        body: list[bytes],
        extra: list[tuple[bytes, bytes]],
        limit: int,
        timeout: float,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
        """Send one request, wait ``timeout`` for its whole answer (TimeoutError: the connection is
        closed). One timer, not asyncio.timeout's context and task bookkeeping, on every request."""
        if self.lost or self.transport is None:
            raise ConnectionError("tritonserver closed the connection")
        n = sum(len(b) for b in body)
        head = [f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {n}\r\n".encode()]
        head += [k + b": " + v + b"\r\n" for k, v in extra]
        head.append(b"\r\n")
        self.answer = answer = _Answer(limit)
        answer.parser = self.parser = self.httptools.HttpResponseParser(answer)
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        # one write: uvloop's writelines costs more than the copy; a body the socket does not take at
        # once waits in the transport, and the answer comes only once tritonserver has read it all
        self.transport.write(b"".join([*head, *body]))
        timer = loop.call_later(timeout, self._fail, TimeoutError("tritonserver did not answer in time"))
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None
        return self.parser.get_status_code(), answer.headers, b"".join(answer.body), answer.keep_alive

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


def no_delay(writer: asyncio.StreamWriter | asyncio.BaseTransport) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
