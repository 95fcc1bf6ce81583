"""The HTTP front of ``serve``: what a request may declare is bounded before Triton allocates anything.

Why a front at all: tritonserver 2.51's HTTP frontend allocates the buffer for a JSON-encoded input
from the shape the request *declares*, before it compares that shape with the model's; one request
declaring ``[1, 3, 32, 2**40]`` aborts the whole server (gRPC and binary-tensor HTTP requests are
checked first and are safe). Triton has no option for this, so ``serve`` puts this small HTTP/1.1
relay on the public port and Triton's own HTTP port on a private loopback port. It also owns what a
load balancer sees: ``/v2/health/ready`` answers 503 while the server drains or once a model can no
longer answer, and idle keep-alive connections are closed on SIGTERM (Triton itself waits up to its
exit timeout for every open HTTP connection, even idle ones).

One upstream connection per client connection (HTTP/1.1 keep-alive on both sides), request and
response bodies relayed as they are; no body is decoded except the JSON header of an infer request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

#: Triton's own default for --http-max-input-size
MAX_BODY_BYTES = 64 * 2**20
MAX_HEAD_BYTES = 32 * 2**10
#: what any input of a model this front does not know may declare (a 4,096-image 224x224 batch)
DEFAULT_MAX_ELEMENTS = 4096 * 3 * 224 * 224
IDLE_TIMEOUT_S = 300.0
_INFER = re.compile(r"^/v2/models/([^/?]+)(?:/versions/[^/?]+)?/infer(?:\?.*)?$")
_READY = re.compile(r"^/v2/health/ready(?:\?.*)?$")


class RequestRejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_REASONS = {
    400: "Bad Request",
    411: "Length Required",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def _response(status: int, message: str, *, close: bool = False) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    )
    return head.encode("latin-1") + body


def check_infer_header(header: bytes, max_elements: int) -> None:
    """An infer request's JSON header, as Triton will read it: each input's shape a list of
    non-negative ints whose product is at most ``max_elements``."""
    try:
        doc = json.loads(header)
    except (ValueError, RecursionError):
        raise RequestRejected(400, "the request body is not valid JSON") from None
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise RequestRejected(400, "the request has no 'inputs' list")
    for item in inputs:
        shape = item.get("shape") if isinstance(item, dict) else None
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise RequestRejected(400, f"input {name!r} needs a 'shape' of non-negative integers")
        if len(shape) > 8 or math.prod(shape) > max_elements:
            raise RequestRejected(
                400,
                f"input {name!r} declares shape {shape}: more than the {max_elements} elements a request "
                "to this model may carry; send a smaller batch",
            )


@dataclass(eq=False)
class _Conn:
    writer: asyncio.StreamWriter
    busy: bool = False


@dataclass
class Guard:
    """The relay; ``limits`` maps a model name to the elements one input of a request may hold."""

    host: str
    port: int
    upstream_port: int
    limits: Mapping[str, int]
    upstream_host: str = "127.0.0.1"
    max_body: int = MAX_BODY_BYTES
    ready: bool = False  # what /v2/health/ready answers, on top of Triton's own answer
    reason: str = "starting"
    _sock: socket.socket | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.AbstractServer | None = None
    _conns: set[_Conn] = field(default_factory=set)
    inflight: int = 0
    draining: bool = False

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
                asyncio.start_server(self._client, sock=self._sock, limit=MAX_HEAD_BYTES)
            )
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="resnest-deploy-guard", daemon=True)
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
        if self._loop is None:
            if self._sock is not None:
                self._sock.close()
            return
        loop = self._loop

        async def shutdown() -> None:
            for conn in list(self._conns):
                conn.writer.close()
            if self._server is not None:
                self._server.close()

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
        conn = _Conn(writer)
        self._conns.add(conn)
        _no_delay(writer)
        up: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while not self.draining:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT_S)
                except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                    return
                except asyncio.LimitOverrunError:
                    writer.write(_response(431, "request headers too large", close=True))
                    return
                conn.busy = True
                self.inflight += 1
                try:
                    up, keep = await self._one(head, reader, writer, up)
                finally:
                    self.inflight -= 1
                    conn.busy = False
                await writer.drain()
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._conns.discard(conn)
            writer.close()
            if up is not None:
                up[1].close()

    async def _one(
        self,
        head: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
    ) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None, bool]:
        """Answer one request; (the upstream connection to keep, whether to keep the client's)."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            writer.write(_response(400, "malformed request line", close=True))
            return up, False
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            key = name.strip().lower()
            if not sep or (key in headers and key in ("content-length", "inference-header-content-length")):
                writer.write(_response(400, "malformed or repeated header", close=True))
                return up, False
            headers[key] = value.strip()
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if "transfer-encoding" in headers:
            writer.write(_response(411, "send the body with a Content-Length", close=True))
            return up, False
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= self.max_body:
            writer.write(_response(413, f"the body must be 0..{self.max_body} bytes", close=True))
            return up, False
        body = await reader.readexactly(length) if length else b""
        try:
            self._check(method, target, headers, body)
        except RequestRejected as e:
            writer.write(_response(e.status, str(e), close=not keep))
            return up, keep
        try:
            if up is None:
                up = await asyncio.open_connection(self.upstream_host, self.upstream_port)
                _no_delay(up[1])
            up[1].write(head + body)
            await up[1].drain()
            await _relay_response(up[0], writer, method)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            if up is not None:
                up[1].close()
            writer.write(_response(502, "the inference server is not answering", close=True))
            return None, False
        return up, keep

    def _check(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        if method == "GET" and _READY.match(target) and not self.ready:
            raise RequestRejected(503, f"not ready: {self.reason}")
        match = _INFER.match(target)
        if method != "POST" or match is None:
            return
        limit = self.limits.get(match.group(1), DEFAULT_MAX_ELEMENTS)
        header = body
        if "inference-header-content-length" in headers:
            try:
                n = int(headers["inference-header-content-length"])
            except ValueError:
                n = -1
            if not 0 <= n <= len(body):
                raise RequestRejected(400, "Inference-Header-Content-Length is not within the body")
            header = body[:n]
        check_infer_header(header, limit)


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (the `serve` extra brings it): the relay is Python on the request path,
    and uvloop's loop roughly halves its cost; asyncio's own loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _no_delay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _relay_response(up: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str) -> None:
    head = await up.readuntil(b"\r\n\r\n")
    writer.write(head)
    status = int(head[9:12])
    fields = {
        k.strip().lower(): v.strip()
        for k, _, v in (ln.partition(":") for ln in head.decode("latin-1").split("\r\n")[1:] if ln)
    }
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return
    if fields.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await up.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            writer.write(size_line + await up.readexactly(size + 2))
            if size == 0:
                return
    length = int(fields.get("content-length", "0"))
    if length:
        writer.write(await up.readexactly(length))
