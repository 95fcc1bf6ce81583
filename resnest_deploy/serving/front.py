"""The public HTTP port of ``serve``: every request parsed by llhttp, checked, and rebuilt for Triton.

Why a front: tritonserver 2.51 allocates a JSON input from the shape a request declares before it
checks it (one request aborts the server), and it reads HTTP more leniently than a checker can
safely assume. So tritonserver's HTTP port is private (loopback, a free port) and this front owns the
public one. It never forwards a client's bytes: a request is parsed once (llhttp), an infer request's
body decoded once and checked (:mod:`.requests`), and Triton receives a request the front writes
itself; endpoints it does not know are answered here (404), never forwarded.

Why llhttp (through ``httptools``), not h11 or aiohttp: llhttp is Node.js's parser, strict by default:
it refuses whitespace before a colon, obsolete line folding, Content-Length with Transfer-Encoding,
repeated Content-Length, bare LF and unknown transfer codings, where h11 0.16 unfolds folded lines
and accepts Content-Length with Transfer-Encoding (RFC 9112 allows both, but a server that then keeps
the connection open is the smuggling risk). And it is C: measured on this 2-core box, parsing a
12 KiB binary-tensor request and Triton's answer costs 8.5 us with httptools against 260 us with h11,
which at the 1,400 requests/s Triton serves here would take a third of a core from Triton itself.
aiohttp's server uses llhttp too, but adds a framework per request and has no read timeout for a
request's head or body. What llhttp does not do, this module does with what it parsed, not with
bytes: the head size and the deadlines, Expect, HEAD (answered from a GET, without body), the
protocol versions, a Host for HTTP/1.1, and what a response says (always a Content-Length).

Bounded: a request's head (size, time), its body (size per endpoint, time), the body bytes held
across all connections and per client address, the connections per client address, and the decoding
of large JSON bodies (in one worker process, a bounded queue; the event loop keeps answering health
probes meanwhile). It also owns what a load balancer sees: ``/v2/health/ready`` answers 503 while
the server drains or once a model can no longer answer, and idle keep-alive connections are closed
on SIGTERM (Triton itself waits up to its exit timeout for every open HTTP connection, even idle ones).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http
import json
import multiprocessing
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from resnest_deploy._deps import require
from resnest_deploy.serving.requests import (
    Infer,
    RequestRejected,
    canonical_json,
    infer_from_body,
    limit_for,
    worker_infer,
)

#: the header that unlocks Triton's restricted APIs; the front passes it on and Triton checks it
ADMIN_HEADER = b"resnest-deploy-admin"
_NAME = r"[A-Za-z0-9_.\-]{1,100}"
_MODEL = rf"/v2/models/(?P<model>{_NAME})(?:/versions/[0-9]{{1,19}})?"
#: what Triton serves that a GET may read (HEAD too)
_GET = re.compile(rf"^(?:/v2|/v2/health/(?:live|ready)|/v2/models/stats|{_MODEL}(?:/ready|/config|/stats)?)$")
_INFER = re.compile(rf"^{_MODEL}/infer$")
#: Triton's restricted APIs: forwarded with a canonical JSON body; Triton checks the admin header
_ADMIN = re.compile(
    rf"^(?:/v2/repository/index|/v2/repository/models/{_NAME}/(?:load|unload)|/v2/logging"
    rf"|/v2/trace/setting|{_MODEL}/trace/setting"
    rf"|/v2/(?:system|cuda)sharedmemory(?:/region/{_NAME})?/(?:status|register|unregister))$"
)
_ADMIN_GET = re.compile(r"/(?:status|logging|setting)$")
_READY = "/v2/health/ready"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_READ = 1 << 16
#: body bytes are taken from a pool in steps of this, as they arrive (not per chunk, not as declared)
_STEP = 1 << 16
#: a chunked body past _STEP bytes may average one chunk per this many bytes, no more: each chunk
#: costs a parser callback however small it is (500,000 two-byte chunks held the loop for seconds)
_CHUNK_BYTES = 256
T = TypeVar("T")


@dataclass(frozen=True)
class FrontLimits:
    """What one request, one client and all clients together may hold."""

    max_body: int = 64 * 2**20  # Triton's own default for --http-max-input-size
    max_admin_body: int = 2**20
    max_head: int = 32 * 2**10
    max_buffered: int = 256 * 2**20  # bodies over small_body held across every connection
    max_buffered_per_client: int = 128 * 2**20  # ... and by one client address
    small_body: int = 2**20  # bodies up to this come from a pool of their own, so that clients
    max_buffered_small: int = 64 * 2**20  # holding large bodies never starve ordinary requests
    max_buffered_small_per_client: int = 16 * 2**20
    max_connections: int = 4096
    probe_headroom: int = 16  # of max_connections, kept for health probes (GET /v2/health/*)
    max_connections_per_client: int = 1024
    head_timeout_s: float = 10.0  # from a request's first byte to the end of its head
    body_timeout_s: float = 60.0  # from the end of the head to the end of the body
    idle_timeout_s: float = 300.0  # a keep-alive connection between requests
    upstream_timeout_s: float = 600.0  # tritonserver's answer to one request
    max_response: int = 512 * 2**20
    inline_decode: int = 256 * 2**10  # JSON larger than this is decoded in the worker process
    decode_queue: int = 4  # large bodies decoding or waiting, across all clients


class _Reject(Exception):
    """A request answered here; ``close`` when the connection cannot be trusted to stay in step."""

    def __init__(self, status: int, message: str, *, close: bool = False, retry: bool = False) -> None:
        super().__init__(message)
        self.status, self.close, self.retry = status, close, retry


@dataclass
class _Message:
    method: str = ""
    url: bytes = b""
    headers: dict[bytes, bytes] = field(default_factory=dict)
    buf: bytearray | None = None  # the body, one buffer however it is framed
    size: int = 0
    chunks: int = 0
    declared: int = -1  # Content-Length; -1: chunked or none
    repeated: list[bytes] = field(default_factory=list)  # header names seen more than once
    reserved: int = 0
    pool: int = 0  # which of the front's pools holds ``reserved``
    head_done: bool = False
    keep_alive: bool = False
    expect_continue: bool = False
    reject: _Reject | None = None
    head_size: int = 0  # bytes read while the head was open
    counted: int = 0  # bytes of the head the parser handed over (target, header lines)
    deadline: float = 0.0  # the head's, then the body's
    path: str | None = None
    limit: int = -1  # the body's bound, once the head is read


class _Parsed:
    """httptools callbacks: the messages of one connection, in order."""

    def __init__(self, front: Front, client: str) -> None:
        self.front, self.client = front, client
        self.current: _Message | None = None
        self.done: deque[_Message] = deque()
        self.parser: Any = None
        self.error: bytes | None = None  # the answer that ends the connection, once done is answered
        self.joined: dict[bytes, list[bytes]] = {}  # values of a repeated header, joined once
        self.seen = 0  # requests begun on this connection
        self.probe_only = False  # a connection in the cap's headroom: health probes only

    def on_message_begin(self) -> None:
        self.seen += 1
        self.joined.clear()
        self.current = _Message(deadline=time.monotonic() + self.front.bounds.head_timeout_s)

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.url += url
        self.current.counted += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        key = name.lower()
        headers = self.current.headers
        self.current.counted += len(name) + len(value) + 4
        if key in headers:  # collected, joined once at the end of the head (not again per line)
            if key not in self.joined:
                self.joined[key] = [headers[key]]
                self.current.repeated.append(key)
            self.joined[key].append(value)
        else:
            headers[key] = value

    def on_headers_complete(self) -> None:
        m = self.current
        assert m is not None
        for key, values in self.joined.items():
            m.headers[key] = b", ".join(values)
        m.head_done = True
        m.deadline = time.monotonic() + self.front.bounds.body_timeout_s
        m.method = self.parser.get_method().decode("latin-1")
        m.keep_alive = bool(self.parser.should_keep_alive())
        try:
            if m.counted > self.front.bounds.max_head:
                raise _Reject(431, "the request head is too large", close=True)
            if self.parser.should_upgrade():  # llhttp stops reading here; answered once, then closed
                raise _Reject(400, "upgrades and CONNECT are not served", close=True)
            self.front._admit(m, self.parser.get_http_version(), self.client)
            if self.probe_only and not (m.method in ("GET", "HEAD") and _path(m).startswith("/v2/health/")):
                raise _Reject(503, "too many connections; retry", close=True, retry=True)
        except _Reject as e:
            m.reject = e

    def on_chunk_header(self) -> None:
        m = self.current
        assert m is not None
        m.chunks += 1
        if m.reject is None and m.chunks > max(m.size, _STEP) // _CHUNK_BYTES:
            m.reject = _Reject(
                400,
                f"the chunked body averages under {_CHUNK_BYTES} bytes a chunk; send larger chunks",
                close=True,
            )

    def on_body(self, data: bytes) -> None:
        m = self.current
        assert m is not None
        if m.reject is not None:
            return
        m.size += len(data)
        if m.size > m.reserved:  # reserved as it comes, a step at a time
            try:
                self.front._reserve(m, self.client, m.size)
            except _Reject as e:
                m.reject = e
                m.buf = None
                return
        if m.buf is None:
            m.buf = bytearray()
        m.buf += data

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.done.append(self.current)
        self.current = None


@dataclass
class _Pool:
    """Body bytes held, in total and by client address, under two caps."""

    cap: int
    per_client: int
    used: int = 0
    by_client: dict[str, int] = field(default_factory=dict)

    def take(self, client: str, n: int, *, force: bool = False) -> bool:
        mine = self.by_client.get(client, 0)
        if not force and (self.used + n > self.cap or mine + n > self.per_client):
            return False
        self.used += n
        self.by_client[client] = mine + n
        return True

    def give(self, client: str, n: int) -> None:
        self.used -= n
        left = self.by_client.get(client, 0) - n
        if left > 0:
            self.by_client[client] = left
        else:
            self.by_client.pop(client, None)


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
    _pools: tuple[_Pool, _Pool] = field(init=False)
    _conns_by_client: dict[str, int] = field(default_factory=dict)
    _sock: socket.socket | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.AbstractServer | None = None
    _conns: set[_Conn] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _decoder: concurrent.futures.ProcessPoolExecutor | None = None
    _decoding: int = 0

    def __post_init__(self) -> None:
        self._httptools = require("httptools")
        b = self.bounds
        self._pools = (
            _Pool(b.max_buffered_small, b.max_buffered_small_per_client),
            _Pool(b.max_buffered, b.max_buffered_per_client),
        )

    @property
    def buffered(self) -> int:
        """Body bytes held now, across every connection."""
        return sum(p.used for p in self._pools)

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
        if self._decoder is not None:  # its worker process is stopped and joined
            self._decoder.shutdown(wait=True, cancel_futures=True)
            self._decoder = None
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

    # -- admission, in the parser's callbacks ------------------------------------------------------

    def _admit(self, m: _Message, version: str, client: str) -> None:
        """Refuse, from the head alone, what must not be read further."""
        if version not in ("1.0", "1.1"):
            raise _Reject(505, f"HTTP/{version} is not served; use HTTP/1.1", close=True)
        h = m.headers
        if version == "1.1" and b"host" not in h:
            raise _Reject(400, "an HTTP/1.1 request needs a Host header", close=True)
        if b"host" in m.repeated:
            raise _Reject(400, "the request names Host twice; send one", close=True)
        te = h.get(b"transfer-encoding")
        if te is not None and te.lower() != b"chunked":
            raise _Reject(501, "the only transfer coding served is chunked", close=True)
        if h.get(b"content-encoding", b"identity").lower() != b"identity":
            raise _Reject(415, "send the body uncompressed (no Content-Encoding)", close=True)
        expect = h.get(b"expect")
        if expect is not None and version == "1.1":  # HTTP/1.0 has no 100 (RFC 9110 10.1.1)
            if expect.lower() != b"100-continue":
                raise _Reject(417, "the only expectation served is 100-continue", close=True)
            m.expect_continue = True
        limit = self._body_limit(m)
        declared = h.get(b"content-length")
        length = int(declared) if declared is not None else 0  # llhttp checked it is digits, once
        if length > limit or (te is not None and limit == 0):
            raise _Reject(413, f"the body of this request may hold at most {limit} bytes", close=True)
        if declared is not None:
            # nothing taken from a pool yet: a head that declares 1 MiB and sends nothing holds nothing
            # (the body is reserved as it comes, in _STEP steps, from the pool its declared size picks)
            m.declared = length

    def _body_limit(self, m: _Message) -> int:
        if m.limit < 0:
            m.limit = 0
            if m.method == "POST":
                m.limit = self.bounds.max_body if _INFER.match(_path(m)) else self.bounds.max_admin_body
        return m.limit

    def _reserve(self, m: _Message, client: str, size: int) -> None:
        """Hold at least ``size`` body bytes for ``m`` (rounded up to a _STEP, within its declared
        length) from its pool (small or large body, as the declared length or the bytes so far say),
        within every bound, or refuse."""
        limit = self._body_limit(m)
        if size > limit:
            raise _Reject(413, f"the body of this request may hold at most {limit} bytes", close=True)
        total = min(-(-size // _STEP) * _STEP, m.declared if m.declared >= 0 else limit)
        large = max(total, m.declared) > self.bounds.small_body
        pool = self._pools[large]
        held = self._pools[m.pool] if m.reserved else None
        if held is not None:  # a chunked body growing, perhaps into the large pool
            held.give(client, m.reserved)
        if not pool.take(client, total):
            if held is not None:
                held.take(client, m.reserved, force=True)
            raise _Reject(503, "the server holds too many request bodies now; retry", close=True, retry=True)
        m.reserved, m.pool = total, int(large)

    def _release(self, m: _Message, client: str) -> None:
        if m.reserved:
            self._pools[m.pool].give(client, m.reserved)
            m.reserved = 0
        m.buf = None

    # -- one client connection ------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else "?"
        count = self._conns_by_client.get(client, 0)
        if len(self._conns) >= self.bounds.max_connections or count >= self.bounds.max_connections_per_client:
            writer.write(_answer(503, _error("too many connections; retry"), close=True, retry=True))
            writer.close()
            return
        self._conns_by_client[client] = count + 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        conn = _Conn(writer)
        self._conns.add(conn)
        _no_delay(writer)
        parsed = _Parsed(self, client)
        # the last few connections under the cap are kept for health probes (answered, then closed)
        parsed.probe_only = len(self._conns) > self.bounds.max_connections - self.bounds.probe_headroom
        parsed.parser = self._httptools.HttpRequestParser(parsed)
        up: _Upstream | None = None
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
                    self._release(m, client)
                if writer.transport.get_write_buffer_size():  # a client that does not read its answers
                    await _within(writer.drain(), self.bounds.body_timeout_s)
                if not keep:
                    return
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return  # cancelled: close() ends every connection
        finally:
            if parsed.current is not None:
                self._release(parsed.current, client)
            for m in parsed.done:
                self._release(m, client)
            self._conns.discard(conn)
            left = self._conns_by_client.get(client, 1) - 1
            if left > 0:
                self._conns_by_client[client] = left
            else:
                self._conns_by_client.pop(client, None)
            writer.close()
            if up is not None:
                up.close()

    async def _next(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parsed: _Parsed, client: str
    ) -> _Message | None:
        """The next whole request of this connection, or None once it is to be closed (answered)."""
        while True:
            if parsed.done:
                return parsed.done.popleft()
            cur = parsed.current
            if parsed.error is None and cur is not None and cur.reject is not None and cur.reject.close:
                e = cur.reject
                parsed.error = _answer(e.status, _error(str(e)), close=True, retry=e.retry)
            if parsed.error is not None:
                writer.write(parsed.error)
                return None
            if cur is not None and cur.head_done and cur.expect_continue:
                cur.expect_continue = False
                writer.write(_CONTINUE)
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
                    writer.write(_answer(408, _error("the request was not sent in time"), close=True))
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
                    parsed.error = _answer(400, _error("upgrades and CONNECT are not served"), close=True)
            except self._httptools.HttpParserError as e:
                parsed.error = _answer(400, _error(f"malformed HTTP request: {e}"), close=True)
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
                    parsed.error = _answer(431, _error("the request head is too large"), close=True)

    async def _one(
        self, m: _Message, writer: asyncio.StreamWriter, up: _Upstream | None
    ) -> tuple[_Upstream | None, bool]:
        """Answer one request; (the upstream connection to keep, whether to keep the client's)."""
        keep = m.keep_alive and not self.draining
        try:
            method, path, body, extra = await self._build(m)
        except _Reject as e:
            writer.write(_answer(e.status, _error(str(e)), close=e.close or not keep, retry=e.retry))
            return up, keep and not e.close
        except RequestRejected as e:
            writer.write(_answer(e.status, _error(str(e)), close=not keep))
            return up, keep
        try:
            if up is None:
                up = await _Upstream.open(self.upstream_host, self.upstream_port, self._httptools)
            status, headers, answer, up_keep = await up.exchange(
                method, path, body, extra, self.bounds.max_response, self.bounds.upstream_timeout_s
            )
        except (ConnectionError, OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            if up is not None:
                up.close()
            writer.write(_answer(502, _error("the inference server is not answering"), close=True))
            return None, False
        if not up_keep:
            up.close()
            up = None
        writer.write(_answer(status, answer, close=not keep, headers=headers, head_only=m.method == "HEAD"))
        return up, keep

    async def _build(self, m: _Message) -> tuple[str, str, list[bytes], list[tuple[bytes, bytes]]]:
        """The request Triton gets for ``m``: (method, path, body pieces, extra headers)."""
        path = _path(m)
        if m.reject is not None:
            raise m.reject
        if m.method in ("GET", "HEAD") and _GET.match(path):
            if path == _READY and not self.ready:
                raise _Reject(503, f"not ready: {self.reason}")
            return "GET", path, [], []
        if m.method == "POST" and (found := _INFER.match(path)):
            built = await self._infer(m, limit_for(self.limits, found.group("model")))
            extra = [(b"Content-Type", b"application/json")]
            if built.header_length is not None:
                extra = [
                    (b"Content-Type", b"application/octet-stream"),
                    (b"Inference-Header-Content-Length", str(built.header_length).encode()),
                ]
            return "POST", path, [built.header, built.binary], extra
        if m.method in ("GET", "POST") and _ADMIN.match(path):
            if m.method == "GET" and not _ADMIN_GET.search(path):
                raise _Reject(405, f"{path} takes POST")
            key = m.headers.get(ADMIN_HEADER)
            extra = [(ADMIN_HEADER, key)] if key is not None else []
            body = canonical_json(_payload(m)) if m.method == "POST" else b""
            return m.method, path, [body], [(b"Content-Type", b"application/json"), *extra]
        if _GET.match(path) or _INFER.match(path) or _ADMIN.match(path):
            raise _Reject(405, f"{m.method} is not served for {path}")
        raise _Reject(404, f"{m.method} {path[:200]} is not served here")

    async def _infer(self, m: _Message, limit: int) -> Infer:
        body = _payload(m)
        raw = m.headers.get(b"inference-header-content-length")
        header_length = None
        if raw is not None:
            if not raw.isdigit() or len(raw) > 12:
                raise RequestRejected(400, "Inference-Header-Content-Length is not a number")
            header_length = int(raw)
        json_bytes = len(body) if header_length is None else header_length
        if json_bytes <= self.bounds.inline_decode:
            return infer_from_body(body, header_length, limit)
        if self._decoding >= self.bounds.decode_queue:
            raise _Reject(503, "the server is decoding too many large requests now; retry", retry=True)
        self._decoding += 1
        try:
            if self._decoder is None:
                self._decoder = concurrent.futures.ProcessPoolExecutor(
                    1, mp_context=multiprocessing.get_context("spawn")
                )
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(self._decoder, worker_infer, body, header_length, limit)
        except concurrent.futures.process.BrokenProcessPool:
            self._decoder = None
            raise _Reject(503, "the request decoder stopped; retry", retry=True) from None
        finally:
            self._decoding -= 1
        if isinstance(found, tuple):
            raise RequestRejected(*found)
        return found


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


class _Upstream(asyncio.Protocol):
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
    async def open(cls, host: str, port: int, httptools: Any) -> _Upstream:
        _, up = await asyncio.get_running_loop().create_connection(lambda: cls(httptools), host, port)
        return up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        _no_delay(transport)

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


def _payload(m: _Message) -> bytes | bytearray:
    return m.buf if m.buf is not None else b""


def _path(m: _Message) -> str:
    """The request target's path: origin form or absolute form (RFC 9112 3.2); the query is dropped.
    Anything else (authority form, ``*``) has no path here, so it matches no endpoint."""
    if m.path is None:
        m.path = ""
        url = m.url
        if url.startswith(b"/") or url[:7].lower() == b"http://" or url[:8].lower() == b"https://":
            import httptools

            with contextlib.suppress(httptools.HttpParserInvalidURLError):
                m.path = (httptools.parse_url(url).path or b"").decode("latin-1")
    return m.path


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}


def _answer(
    status: int,
    body: bytes,
    *,
    close: bool = False,
    retry: bool = False,
    head_only: bool = False,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> bytes:
    """A response the front writes itself: always a Content-Length, no body for HEAD or 1xx/204/304."""
    lines = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status]
    if headers is None:
        headers = [(b"Content-Type", b"application/json")]
    lines += [k + b": " + v + b"\r\n" for k, v in headers]
    bodiless = status in (204, 304) or status < 200
    if not bodiless:
        lines.append(b"Content-Length: %d\r\n" % len(body))
    if close:
        lines.append(b"Connection: close\r\n")
    if retry:
        lines.append(b"Retry-After: 1\r\n")
    lines.append(b"\r\n")
    if not (head_only or bodiless):
        lines.append(body)
    return b"".join(lines)


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


def _no_delay(writer: asyncio.StreamWriter | asyncio.BaseTransport) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
