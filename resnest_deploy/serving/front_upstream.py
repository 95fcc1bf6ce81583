"""Forwarding to tritonserver's private HTTP port: one keep-alive connection per client connection,
the request written in one piece, the answer parsed by llhttp as it arrives and bounded in size.

A protocol with a callback, not streams and not a future per request: the answer is parsed in
``data_received`` and handed to the client connection's callback once it is whole (a StreamReader
costs a buffer, a future and a task wake-up per read; at 1,400 requests/s on 2 cores that Python is
what the front takes from Triton). One parser per connection, reset by llhttp between answers, and
one lazy timer per connection for the answer's deadline (moved forward by a float per request)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import time
from collections.abc import Callable
from typing import Any, NamedTuple, cast


class Reply(NamedTuple):
    status: int
    headers: list[tuple[bytes, bytes]]  # the ones passed on: Content-Type, Inference-Header-Content-Length
    body: bytes
    keep_alive: bool


#: called once per request: (the answer, None) or (None, why there is none)
Done = Callable[[Reply | None, Exception | None], None]
_PASSED_ON = (b"content-type", b"inference-header-content-length")
#: (method, path) -> a request's first lines up to Content-Length's value: the same few, again and again
_REQUEST_LINES: dict[tuple[str, str], bytes] = {}


class Upstream(asyncio.Protocol):
    """One keep-alive connection to tritonserver's private HTTP port, one request at a time."""

    def __init__(self, httptools: Any) -> None:
        self.httptools = httptools
        self.transport: asyncio.Transport | None = None
        self.parser: Any = httptools.HttpResponseParser(self)
        self.done: Done | None = None  # set while a request waits for its answer
        self.lost = False
        self.limit = 0
        self.deadline = math.inf
        self.timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.complete = False
        self.keep_alive = False
        self.stray = False

    @classmethod
    async def open(cls, host: str, port: int, httptools: Any) -> Upstream:
        _, up = await asyncio.get_running_loop().create_connection(lambda: cls(httptools), host, port)
        return up

    # -- llhttp's callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.done is None or self.complete:  # an answer no request asked for
            self.stray = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in _PASSED_ON:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:  # llhttp forgets it once the message is complete
        self.keep_alive = bool(self.parser.should_keep_alive())

    def on_body(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise ValueError("the inference server's answer is too large")
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.complete = True

    # -- the transport's --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        no_delay(transport)

    def data_received(self, data: bytes) -> None:
        if self.done is None:  # bytes no request asked for: out of step, never reused
            self._fail(ConnectionError("tritonserver sent bytes no request asked for"))
            return
        try:
            self.parser.feed_data(data)
        except self.httptools.HttpParserError as e:
            self._fail(ConnectionError(f"tritonserver's answer is not HTTP: {e}"))
            return
        except ValueError as e:  # too large
            self._fail(e)
            return
        if self.stray:
            self._fail(ConnectionError("tritonserver sent bytes no request asked for"))
        elif self.complete:
            done, self.done = self.done, None
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            reply = Reply(self.parser.get_status_code(), self.headers, body, self.keep_alive)
            self._reset()
            done(reply, None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._give_up(ConnectionError("tritonserver closed the connection"))

    def _fail(self, error: Exception) -> None:
        self.close()
        self._give_up(error)

    def _give_up(self, error: Exception) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        done, self.done = self.done, None
        if done is not None:
            done(None, error)

    def _expire(self) -> None:
        self.timer = None
        if self.done is None:  # armed again by the next request
            return
        left = self.deadline - time.monotonic()
        if left > 0:
            self.timer = asyncio.get_running_loop().call_later(left, self._expire)
        else:
            self._fail(TimeoutError("tritonserver did not answer in time"))

    # -- a request ----------------------------------------------------------------------------------

    def send(
        self,
        method: str,
        path: str,
        body: list[bytes | memoryview],
        extra: bytes,
        limit: int,
        timeout: float,
        done: Done,
    ) -> None:
        """Send one request (``extra``: header lines of our own making, each ending in CRLF);
        ``done`` gets its whole answer, or why there is none (a ConnectionError, or TimeoutError
        after ``timeout``: the connection is closed). Called back, never inline."""
        if self.lost or self.transport is None or self.done is not None:
            raise ConnectionError("tritonserver closed the connection")
        head = _REQUEST_LINES.get((method, path))
        if head is None:
            head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ".encode()
            if len(_REQUEST_LINES) >= 256:  # emptied, not trimmed: fronts on other threads share it
                _REQUEST_LINES.clear()
            _REQUEST_LINES[method, path] = head
        self.limit, self.done = limit, done
        self.deadline = time.monotonic() + timeout
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(timeout, self._expire)
        # one write: uvloop's writelines costs more than the copy; a body the socket does not take at
        # once waits in the transport, and the answer comes only once tritonserver has read it all
        self.transport.write(b"".join([head, b"%d\r\n" % sum(map(len, body)), extra, b"\r\n", *body]))

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


def no_delay(writer: asyncio.StreamWriter | asyncio.BaseTransport) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
