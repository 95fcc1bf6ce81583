"""The public HTTP port of ``serve``: every request parsed by llhttp, checked, and rebuilt for Triton.

Why a front: tritonserver 2.51 allocates a JSON input from the shape a request declares before it
checks it (one request aborts the server), and it reads HTTP more leniently than a checker can
safely assume. So tritonserver's HTTP port is private (loopback, a free port) and this front owns the
public one. It never forwards a client's bytes: a request is parsed once (llhttp), an infer request's
body decoded once and checked (:mod:`.requests`), and Triton receives a request the front writes
itself; endpoints it does not know are answered here (404), never forwarded.

Why llhttp, and what the front checks that llhttp does not: :mod:`.front_http`. The bounds on
connections and body bytes: :mod:`.front_limits`; large JSON decoded in a worker process:
:mod:`.front_decode`; the private connection to Triton: :mod:`.front_upstream`. One client
connection's life (read, route, answer, release): :mod:`.front_client`. What stays here is the
front's own: bind, start, drain, close, and the request Triton gets for a parsed one.

Bounded: a request's head (size, time), its body (size per endpoint, time), the body bytes held
across all connections and per client address, the connections per client address, the answers a
client leaves unread (reading pauses while a request waits behind another; an answer the client does
not take within the body timeout closes the connection), and the decoding of large JSON bodies (in
one worker process, a bounded queue; the event loop keeps answering health probes meanwhile). It also
owns what a load balancer sees: ``/v2/health/ready`` answers 503 while the server drains or once a
model can no longer answer, and idle keep-alive connections are closed on SIGTERM (Triton itself
waits up to its exit timeout for every open HTTP connection, even idle ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from resnest_deploy._deps import require
from resnest_deploy.errors import HttpRejected
from resnest_deploy.serving.front_client import Client
from resnest_deploy.serving.front_decode import Decoder
from resnest_deploy.serving.front_http import (
    ADMIN,
    ADMIN_GET,
    ADMIN_HEADER,
    GET,
    INFER,
    READY,
    Message,
    infer_model,
    path_of,
)
from resnest_deploy.serving.front_limits import Admission, FrontLimits
from resnest_deploy.serving.requests import Infer, canonical_json, limit_for

__all__ = ["ADMIN_HEADER", "Front", "FrontLimits"]

#: what Triton gets for one request: (method, path, body pieces, extra header lines)
Forward = tuple[str, str, list[bytes | memoryview], bytes]
_JSON = b"Content-Type: application/json\r\n"
_BINARY = b"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: %d\r\n"


@dataclass
class Front:
    """The HTTP front; ``limits`` maps a model name to the elements one input of a request may hold."""

    host: str
    port: int
    upstream_port: int
    limits: Mapping[str, int]
    upstream_host: str = "127.0.0.1"
    bounds: FrontLimits = field(default_factory=FrontLimits)
    ready: bool = False  # what /v2/health/ready answers, on top of Triton's own answer
    reason: str = "starting"
    inflight: int = 0
    draining: bool = False
    admission: Admission = field(init=False)
    _sock: socket.socket | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.AbstractServer | None = None
    conns: set[Client] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _decoder: Decoder = field(init=False)

    def __post_init__(self) -> None:
        self.httptools = require("httptools")
        self.admission = Admission(self.bounds)
        self._decoder = Decoder(self.bounds.inline_decode, self.bounds.decode_queue)

    @property
    def buffered(self) -> int:
        """Body bytes held now, across every connection."""
        return self.admission.buffered

    # -- life -----------------------------------------------------------------------------------

    def bind(self) -> None:
        """Take the public port now, so a busy one is refused before Triton starts."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            self._sock = socket.create_server((self.host, self.port), family=family, backlog=1024)
        except OSError as e:
            raise OSError(e.errno, f"port {self.port} on {self.host}: {e.strerror}") from None

    def start(self) -> None:
        if self._sock is None:
            self.bind()
        self._loop = _event_loop()
        started = threading.Event()

        def run() -> None:
            assert self._loop is not None and self._sock is not None
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                self._loop.create_server(lambda: Client(self), sock=self._sock)
            )
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="resnest-deploy-front", daemon=True)
        self._thread.start()
        started.wait(10)

    def set_ready(self, ready: bool, reason: str = "") -> None:
        self.ready, self.reason = ready, reason

    def drain(self, timeout: float) -> bool:
        """Stop accepting, answer not-ready, close idle connections, wait for requests in flight;
        True when none is left."""
        if self._loop is None:
            return True
        self.set_ready(False, "the server is shutting down")
        fut = asyncio.run_coroutine_threadsafe(self._drain(timeout), self._loop)
        try:
            return fut.result(timeout + 5)
        except Exception:
            return False

    async def _drain(self, timeout: float) -> bool:
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns):
            if not conn.busy:
                conn.close()
        deadline = asyncio.get_running_loop().time() + timeout
        while self.inflight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        return self.inflight == 0

    def close(self) -> None:
        self._decoder.close()  # its worker process is stopped and joined
        if self._loop is None:
            if self._sock is not None:
                self._sock.close()
            return
        loop = self._loop

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for conn in list(self.conns):
                conn.abort()
            for task in list(self.tasks):
                task.cancel()
            if self.tasks:
                await asyncio.wait(list(self.tasks), timeout=2)
            await asyncio.sleep(0)  # connection_lost of the connections aborted above

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        with contextlib.suppress(Exception):
            loop.close()
        self._loop = None

    # -- one request ------------------------------------------------------------------------------

    def build(self, m: Message, built: Infer | None = None) -> Forward | None:
        """The request Triton gets for ``m``; None for an infer request whose JSON is decoded in the
        worker (then again with ``built``, the decoded request)."""
        path = path_of(m)
        if m.reject is not None:
            raise m.reject
        method = m.method
        if method == "POST" and (model := infer_model(m)) is not None:
            if built is None:
                limit = limit_for(self.limits, model)
                built = self._decoder.now(m.payload, m.headers.get(b"inference-header-content-length"), limit)
                if built is None:
                    return None
            extra = _JSON if built.header_length is None else _BINARY % built.header_length
            return "POST", path, [built.header, built.binary], extra
        if method in ("GET", "HEAD") and GET.match(path):
            if path == READY and not self.ready:
                raise HttpRejected(503, f"not ready: {self.reason}")
            return "GET", path, [], b""
        if method in ("GET", "POST") and ADMIN.match(path):
            if method == "GET" and not ADMIN_GET.search(path):
                raise HttpRejected(405, f"{path} takes POST")
            key = m.headers.get(ADMIN_HEADER)  # llhttp let no CR or LF into it
            extra = _JSON if key is None else _JSON + ADMIN_HEADER + b": " + key + b"\r\n"
            body = canonical_json(m.payload) if method == "POST" else b""
            return method, path, [body], extra
        if GET.match(path) or INFER.match(path) or ADMIN.match(path):
            raise HttpRejected(405, f"{method} is not served for {path}")
        raise HttpRejected(404, f"{method} {path[:200]} is not served here")

    async def decode(self, m: Message) -> Forward | None:
        """:meth:`build` for an infer request whose JSON is decoded in the worker process."""
        model = infer_model(m)
        assert model is not None
        limit = limit_for(self.limits, model)
        raw_length = m.headers.get(b"inference-header-content-length")
        return self.build(m, await self._decoder.infer(m.payload, raw_length, limit))


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (the `serve` extra brings it): the front is Python on the request path,
    and uvloop's loop roughly halves its cost; asyncio's own loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
