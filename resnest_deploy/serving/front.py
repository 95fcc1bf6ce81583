"""The public HTTP port of ``serve``: every request parsed by llhttp, checked, and rebuilt for Triton.

Why a front: tritonserver 2.51 allocates a JSON input from the shape a request declares before it
checks it (one request aborts the server), and it reads HTTP more leniently than a checker can
safely assume. So tritonserver's HTTP port is private (loopback, a free port) and this front owns the
public one. It never forwards a client's bytes: a request is parsed once (llhttp), an infer request's
body decoded once and checked (:mod:`.requests`), and Triton receives a request the front writes
itself; endpoints it does not know are answered here (404), never forwarded.

Why llhttp, and what the front checks that llhttp does not: :mod:`.front_http`. The bounds on
connections and body bytes: :mod:`.front_limits`; large JSON decoded in a worker process:
:mod:`.front_decode`; the private connection to Triton: :mod:`.front_upstream`. What stays here,
a little over 350 lines, is one connection's life (accept, read, route, answer, release) and the
front's own (bind, start, drain, close): split further, a request's path would cross modules.

Bounded: a request's head (size, time), its body (size per endpoint, time), the body bytes held
across all connections and per client address, the connections per client address, and the decoding
of large JSON bodies (in one worker process, a bounded queue; the event loop keeps answering health
probes meanwhile). It also owns what a load balancer sees: ``/v2/health/ready`` answers 503 while
the server drains or once a model can no longer answer, and idle keep-alive connections are closed
on SIGTERM (Triton itself waits up to its exit timeout for every open HTTP connection, even idle ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from resnest_deploy._deps import require
from resnest_deploy.errors import HttpRejected, RequestRejected
from resnest_deploy.serving.front_decode import Decoder
from resnest_deploy.serving.front_http import (
    ADMIN,
    ADMIN_GET,
    ADMIN_HEADER,
    CONTINUE,
    GET,
    INFER,
    READY,
    Message,
    Parsed,
    answer,
    error_body,
    path_of,
    refusal,
)
from resnest_deploy.serving.front_limits import Admission, FrontLimits
from resnest_deploy.serving.front_upstream import Upstream, no_delay
from resnest_deploy.serving.requests import canonical_json, limit_for

__all__ = ["ADMIN_HEADER", "Front", "FrontLimits"]

_READ = 1 << 16
T = TypeVar("T")


@dataclass(eq=False)
class _Conn:
    writer: asyncio.StreamWriter
    busy: bool = False


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
    _conns: set[_Conn] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _decoder: Decoder = field(init=False)

    def __post_init__(self) -> None:
        self._httptools = require("httptools")
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
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._client, sock=self._sock, limit=_READ)
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
        for conn in list(self._conns):
            if not conn.busy:
                conn.writer.close()
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
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=2)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        with contextlib.suppress(Exception):
            loop.close()
        self._loop = None

    # -- one client connection ------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else "?"
        if not self.admission.connect(client):
            writer.write(answer(503, error_body("too many connections; retry"), close=True, retry=True))
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        conn = _Conn(writer)
        self._conns.add(conn)
        no_delay(writer)
        parsed = Parsed(self.admission, client)
        # the last few connections under the cap are kept for health probes (answered, then closed)
        parsed.probe_only = self.admission.probe_only()
        parsed.parser = self._httptools.HttpRequestParser(parsed)
        up: Upstream | None = None
        try:
            while not self.draining:
                m = await self._next(reader, writer, parsed, client)
                if m is None:
                    return
                conn.busy = True
                self.inflight += 1
                try:
                    up, keep = await self._one(m, writer, up)
                finally:
                    self.inflight -= 1
                    conn.busy = False
                    self.admission.release(m, client)
                if writer.transport.get_write_buffer_size():  # a client that does not read its answers
                    await _within(writer.drain(), self.bounds.body_timeout_s)
                if not keep:
                    return
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return  # cancelled: close() ends every connection
        finally:
            if parsed.current is not None:
                self.admission.release(parsed.current, client)
            for m in parsed.done:
                self.admission.release(m, client)
            self._conns.discard(conn)
            self.admission.disconnect(client)
            writer.close()
            if up is not None:
                up.close()

    async def _next(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parsed: Parsed, client: str
    ) -> Message | None:
        """The next whole request of this connection, or None once it is to be closed (answered)."""
        while True:
            if parsed.done:
                return parsed.done.popleft()
            cur = parsed.current
            if parsed.error is None and cur is not None and cur.reject is not None and cur.reject.close:
                parsed.error = refusal(cur.reject, close=True)
            if parsed.error is not None:
                writer.write(parsed.error)
                return None
            if cur is not None and cur.head_done and cur.expect_continue:
                cur.expect_continue = False
                writer.write(CONTINUE)
            if cur is not None:
                timeout = cur.deadline - time.monotonic()
            elif parsed.seen == 0 or parsed.probe_only:  # a new connection sends its first byte soon
                timeout = self.bounds.head_timeout_s
            else:
                timeout = self.bounds.idle_timeout_s
            try:
                data = await _within(reader.read(_READ), max(timeout, 0.0))
            except TimeoutError:
                if parsed.current is not None:
                    writer.write(answer(408, error_body("the request was not sent in time"), close=True))
                return None
            if not data:
                return None
            head_open = cur is not None and not cur.head_done
            finished = len(parsed.done)
            try:
                parsed.parser.feed_data(data)
            except self._httptools.HttpParserUpgrade:
                # the upgrading request was refused in on_headers_complete: it gets that one answer
                last = parsed.current or (parsed.done[-1] if parsed.done else None)
                if last is None or last.reject is None:
                    parsed.error = answer(400, error_body("upgrades and CONNECT are not served"), close=True)
            except self._httptools.HttpParserError as e:
                parsed.error = answer(400, error_body(f"malformed HTTP request: {e}"), close=True)
            now = parsed.current
            if now is not None and not now.head_done:
                # counted from the head's first byte: every byte of this read when it began the head,
                # else (a request before it ended in this read) what the parser handed over of it
                if head_open and now is cur:
                    now.head_size += len(data)
                elif cur is None and len(parsed.done) == finished:
                    now.head_size = len(data)
                else:
                    now.head_size = now.counted
                if now.head_size > self.bounds.max_head and parsed.error is None:
                    parsed.error = answer(431, error_body("the request head is too large"), close=True)

    async def _one(
        self, m: Message, writer: asyncio.StreamWriter, up: Upstream | None
    ) -> tuple[Upstream | None, bool]:
        """Answer one request; (the upstream connection to keep, whether to keep the client's)."""
        keep = m.keep_alive and not self.draining
        try:
            method, path, body, extra = await self._build(m)
        except HttpRejected as e:
            writer.write(refusal(e, close=e.close or not keep))
            return up, keep and not e.close
        except RequestRejected as e:
            writer.write(answer(e.status, error_body(str(e)), close=not keep))
            return up, keep
        try:
            if up is None:
                up = await Upstream.open(self.upstream_host, self.upstream_port, self._httptools)
            status, headers, reply, up_keep = await up.exchange(
                method, path, body, extra, self.bounds.max_response, self.bounds.upstream_timeout_s
            )
        except (ConnectionError, OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            if up is not None:
                up.close()
            writer.write(answer(502, error_body("the inference server is not answering"), close=True))
            return None, False
        if not up_keep:
            up.close()
            up = None
        writer.write(answer(status, reply, close=not keep, headers=headers, head_only=m.method == "HEAD"))
        return up, keep

    async def _build(self, m: Message) -> tuple[str, str, list[bytes], list[tuple[bytes, bytes]]]:
        """The request Triton gets for ``m``: (method, path, body pieces, extra headers)."""
        path = path_of(m)
        if m.reject is not None:
            raise m.reject
        if m.method in ("GET", "HEAD") and GET.match(path):
            if path == READY and not self.ready:
                raise HttpRejected(503, f"not ready: {self.reason}")
            return "GET", path, [], []
        if m.method == "POST" and (found := INFER.match(path)):
            raw_length = m.headers.get(b"inference-header-content-length")
            limit = limit_for(self.limits, found.group("model"))
            built = await self._decoder.infer(m.payload, raw_length, limit)
            extra = [(b"Content-Type", b"application/json")]
            if built.header_length is not None:
                extra = [
                    (b"Content-Type", b"application/octet-stream"),
                    (b"Inference-Header-Content-Length", str(built.header_length).encode()),
                ]
            return "POST", path, [built.header, built.binary], extra
        if m.method in ("GET", "POST") and ADMIN.match(path):
            if m.method == "GET" and not ADMIN_GET.search(path):
                raise HttpRejected(405, f"{path} takes POST")
            key = m.headers.get(ADMIN_HEADER)
            extra = [(ADMIN_HEADER, key)] if key is not None else []
            body = canonical_json(m.payload) if m.method == "POST" else b""
            return m.method, path, [body], [(b"Content-Type", b"application/json"), *extra]
        if GET.match(path) or INFER.match(path) or ADMIN.match(path):
            raise HttpRejected(405, f"{m.method} is not served for {path}")
        raise HttpRejected(404, f"{m.method} {path[:200]} is not served here")


async def _within(awaitable: Awaitable[T], seconds: float) -> T:
    """``awaitable`` or TimeoutError after ``seconds``; asyncio.timeout where there is one (3.11+):
    wait_for starts a task per call, which costs more than the rest of a request's relaying."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await awaitable
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
        raise TimeoutError from None


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (the `serve` extra brings it): the front is Python on the request path,
    and uvloop's loop roughly halves its cost; asyncio's own loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
