"""HTTP/1.1 as the front reads and writes it: llhttp's callbacks, the head checks llhttp leaves to
its user, the endpoints served, and the answers the front writes itself.

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
Bounds on sizes and bytes held are :mod:`.front_limits`.
"""

from __future__ import annotations

import contextlib
import http
import json
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from resnest_deploy.errors import HttpRejected

if TYPE_CHECKING:
    from resnest_deploy.serving.front_limits import Admission

#: the header that unlocks Triton's restricted APIs; the front passes it on and Triton checks it
ADMIN_HEADER = b"resnest-deploy-admin"
_NAME = r"[A-Za-z0-9_.\-]{1,100}"
_MODEL = rf"/v2/models/(?P<model>{_NAME})(?:/versions/[0-9]{{1,19}})?"
#: what Triton serves that a GET may read (HEAD too)
GET = re.compile(rf"^(?:/v2|/v2/health/(?:live|ready)|/v2/models/stats|{_MODEL}(?:/ready|/config|/stats)?)$")
INFER = re.compile(rf"^{_MODEL}/infer$")
#: Triton's restricted APIs: forwarded with a canonical JSON body; Triton checks the admin header
ADMIN = re.compile(
    rf"^(?:/v2/repository/index|/v2/repository/models/{_NAME}/(?:load|unload)|/v2/logging"
    rf"|/v2/trace/setting|{_MODEL}/trace/setting"
    rf"|/v2/(?:system|cuda)sharedmemory(?:/region/{_NAME})?/(?:status|register|unregister))$"
)
ADMIN_GET = re.compile(r"/(?:status|logging|setting)$")
READY = "/v2/health/ready"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: body bytes are taken from a pool in steps of this, as they arrive (not per chunk, not as declared)
STEP = 1 << 16
#: a chunked body past STEP bytes may average one chunk per this many bytes, no more: each chunk
#: costs a parser callback however small it is (500,000 two-byte chunks held the loop for seconds)
CHUNK_BYTES = 256


@dataclass(slots=True)
class Message:
    """One request of a connection, as far as it has been read."""

    method: str = ""
    url: bytes = b""
    headers: dict[bytes, bytes] = field(default_factory=dict)
    buf: bytes | bytearray | None = None  # the body: its one piece as read, or a buffer they grow in
    size: int = 0
    chunks: int = 0
    declared: int = -1  # Content-Length; -1: chunked or none
    repeated: list[bytes] = field(default_factory=list)  # header names seen more than once
    reserved: int = 0
    pool: int = 0  # which of the front's pools holds ``reserved``
    head_done: bool = False
    keep_alive: bool = False
    expect_continue: bool = False
    reject: HttpRejected | None = None
    head_size: int = 0  # bytes read while the head was open
    counted: int = 0  # bytes of the head the parser handed over (target, header lines)
    deadline: float = 0.0  # the head's, then the body's
    path: str | None = None
    model: str | None = None  # the model an infer request names (None: no infer request), with path
    limit: int = -1  # the body's bound, once the head is read

    @property
    def payload(self) -> bytes | bytearray:
        return self.buf if self.buf is not None else b""


class Parsed:
    """httptools callbacks: the messages of one connection, in order."""

    def __init__(self, admission: Admission, client: str) -> None:
        self.admission, self.client = admission, client
        self.bounds = admission.bounds
        self.current: Message | None = None
        self.done: deque[Message] = deque()
        self.parser: Any = None
        self.error: bytes | None = None  # the answer that ends the connection, once done is answered
        self.joined: dict[bytes, list[bytes]] = {}  # values of a repeated header, joined once
        self.seen = 0  # requests begun on this connection
        self.probe_only = False  # a connection in the cap's headroom: health probes only

    def on_message_begin(self) -> None:
        self.seen += 1
        if self.joined:
            self.joined.clear()
        self.current = Message(deadline=time.monotonic() + self.bounds.head_timeout_s)

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.url += url
        self.current.counted += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        m = self.current
        assert m is not None
        key = name.lower()
        headers = m.headers
        m.counted += len(name) + len(value) + 4
        if key in headers:  # collected, joined once at the end of the head (not again per line)
            if key not in self.joined:
                self.joined[key] = [headers[key]]
                m.repeated.append(key)
            self.joined[key].append(value)
        else:
            headers[key] = value

    def on_headers_complete(self) -> None:
        m = self.current
        assert m is not None
        if self.joined:
            for key, values in self.joined.items():
                m.headers[key] = b", ".join(values)
        m.head_done = True
        m.deadline = time.monotonic() + self.bounds.body_timeout_s
        m.method = self.parser.get_method().decode("latin-1")
        m.keep_alive = bool(self.parser.should_keep_alive())
        try:
            if m.counted > self.bounds.max_head:
                raise HttpRejected(431, "the request head is too large", close=True)
            if self.parser.should_upgrade():  # llhttp stops reading here; answered once, then closed
                raise HttpRejected(400, "upgrades and CONNECT are not served", close=True)
            check_head(m, self.parser.get_http_version())
            self.admission.admit(m)
            if self.probe_only and not (m.method in ("GET", "HEAD") and path_of(m).startswith("/v2/health/")):
                raise HttpRejected(503, "too many connections; retry", close=True, retry=True)
        except HttpRejected as e:
            m.reject = e

    def on_chunk_header(self) -> None:
        m = self.current
        assert m is not None
        m.chunks += 1
        if m.reject is None and m.chunks > max(m.size, STEP) // CHUNK_BYTES:
            m.reject = HttpRejected(
                400,
                f"the chunked body averages under {CHUNK_BYTES} bytes a chunk; send larger chunks",
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
                self.admission.reserve(m, self.client, m.size)
            except HttpRejected as e:
                m.reject = e
                m.buf = None
                return
        if m.buf is None:  # most bodies come in one piece: kept as it is, not copied
            m.buf = data
        elif isinstance(m.buf, bytes):
            m.buf = bytearray(m.buf) + data
        else:
            m.buf += data

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.done.append(self.current)
        self.current = None


def check_head(m: Message, version: str) -> None:
    """Refuse, from the head's protocol alone, what must not be read further."""
    if version not in ("1.0", "1.1"):
        raise HttpRejected(505, f"HTTP/{version} is not served; use HTTP/1.1", close=True)
    h = m.headers
    if version == "1.1" and b"host" not in h:
        raise HttpRejected(400, "an HTTP/1.1 request needs a Host header", close=True)
    if b"host" in m.repeated:
        raise HttpRejected(400, "the request names Host twice; send one", close=True)
    te = h.get(b"transfer-encoding")
    if te is not None and te.lower() != b"chunked":
        raise HttpRejected(501, "the only transfer coding served is chunked", close=True)
    if h.get(b"content-encoding", b"identity").lower() != b"identity":
        raise HttpRejected(415, "send the body uncompressed (no Content-Encoding)", close=True)
    expect = h.get(b"expect")
    if expect is not None and version == "1.1":  # HTTP/1.0 has no 100 (RFC 9110 10.1.1)
        if expect.lower() != b"100-continue":
            raise HttpRejected(417, "the only expectation served is 100-continue", close=True)
        m.expect_continue = True


_PLAIN = re.compile(rb"/[A-Za-z0-9_.\-/]{0,1000}")
#: plain request targets seen lately -> (path, the model an infer request names): clients send the
#: same few targets again and again, and two regular expressions per request are a tenth of the
#: front's Python; a target that is not plain is not kept
_ROUTES: dict[bytes, tuple[str, str | None]] = {}
_ROUTES_MAX = 256


def path_of(m: Message) -> str:
    """The request target's path: origin form or absolute form (RFC 9112 3.2); the query is dropped.
    Anything else (authority form, ``*``) has no path here, so it matches no endpoint."""
    if m.path is None:
        _route(m)
    assert m.path is not None
    return m.path


def infer_model(m: Message) -> str | None:
    """The model an infer request's path names; None when the path is no infer endpoint."""
    if m.path is None:
        _route(m)
    return m.model


def _route(m: Message) -> None:
    url = m.url
    hit = _ROUTES.get(url)
    if hit is None:
        path = ""
        plain = _PLAIN.fullmatch(url) is not None
        if plain:  # what every endpoint's path is made of: parse_url would return it
            path = url.decode("ascii")
        elif url.startswith(b"/") or url[:7].lower() == b"http://" or url[:8].lower() == b"https://":
            import httptools

            with contextlib.suppress(httptools.HttpParserInvalidURLError):
                path = (httptools.parse_url(url).path or b"").decode("latin-1")
        found = INFER.match(path)
        hit = (path, found.group("model") if found else None)
        if plain:
            if len(_ROUTES) >= _ROUTES_MAX:  # emptied, not trimmed: fronts on other threads share it
                _ROUTES.clear()
            _ROUTES[url] = hit
    m.path, m.model = hit


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}


#: (status, close, retry, headers) -> the lines before and after Content-Length: Triton answers
#: every request to a model with the same headers, and joining them again costs a microsecond
_HEADS: dict[tuple[int, bool, bool, tuple[tuple[bytes, bytes], ...] | None], tuple[bytes, bytes]] = {}
_HEADS_MAX = 256


def answer(
    status: int,
    body: bytes,
    *,
    close: bool = False,
    retry: bool = False,
    head_only: bool = False,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> bytes:
    """A response the front writes itself: always a Content-Length, no body for HEAD or 1xx/204/304."""
    key = (status, close, retry, None if headers is None else tuple(headers))
    found = _HEADS.get(key)
    if found is None:
        found = _head(status, close, retry, headers)
        if len(_HEADS) >= _HEADS_MAX:
            _HEADS.clear()
        _HEADS[key] = found
    before, after = found
    if status in (204, 304) or status < 200:  # bodiless
        return before + after
    length = b"Content-Length: %d\r\n" % len(body)
    return before + length + after if head_only else b"".join((before, length, after, body))


def _head(
    status: int, close: bool, retry: bool, headers: list[tuple[bytes, bytes]] | None
) -> tuple[bytes, bytes]:
    lines = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status]
    if headers is None:
        headers = [(b"Content-Type", b"application/json")]
    lines += [k + b": " + v + b"\r\n" for k, v in headers]
    after = (b"Connection: close\r\n" if close else b"") + (b"Retry-After: 1\r\n" if retry else b"") + b"\r\n"
    return b"".join(lines), after


def refusal(e: HttpRejected, *, close: bool | None = None) -> bytes:
    """The answer to a request refused here (closing when ``e`` says so, or ``close``)."""
    return answer(e.status, error_body(str(e)), close=e.close if close is None else close, retry=e.retry)
