"""Fuzzing serve's HTTP front against a plain echo backend (the standard library's HTTP server).

Seeded and bounded (a fixed number of cases, each connection with a timeout, the whole run with a
deadline). Requests are built valid, then their framing is mutated the ways smuggling attempts do
(whitespace before a colon, folded lines, Content-Length twice or next to Transfer-Encoding, chunk
sizes and extensions, bare LF, absolute-form targets, pipelining, truncated or padded bodies,
flipped bytes, duplicate JSON keys, binary sizes that disagree). The property: every request the
backend sees is one the front checked and wrote itself. It is on an endpoint the front serves, it
carries only the headers the front writes, an infer body is exactly the canonical form of a request
that passes the checks (decoding it again gives the same bytes), and the client got one answer per
request the backend saw: nothing reached the backend that the client was not answered for.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import random
import re
import socket
import threading
import time
from typing import ClassVar

import pytest
from helpers import read_until_closed

from resnest_deploy.serving.front import Front, FrontLimits
from resnest_deploy.serving.requests import DEFAULT_MAX_ELEMENTS, RequestRejected, infer_from_body

HOST = "127.0.0.1"
SEED = 29
CASES = 1500
DEADLINE_S = 120.0
LIMIT = 64  # elements one input of model "m" may hold
SERVED = re.compile(
    r"^/v2(/health/(live|ready)|/models/(m|other)(/versions/1)?(/ready|/config|/stats|/infer)?)?$"
)
FRONT_HEADERS = {"host", "content-length", "content-type", "inference-header-content-length"}


class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, str, dict[str, str], bytes]]] = []
    lock = threading.Lock()

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.lock:
            self.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            n = len(self.seen)
        out = json.dumps({"echo": n}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_HEAD = do_PUT = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def front():
    backend = http.server.ThreadingHTTPServer((HOST, 0), Echo)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    bounds = FrontLimits(max_body=2**16, head_timeout_s=0.5, body_timeout_s=0.5, inline_decode=2**12)
    f = Front(HOST, 0, backend.server_address[1], {"m": LIMIT}, bounds=bounds)
    f.bind()
    f.start()
    f.set_ready(True)
    try:
        yield f
    finally:
        f.close()
        backend.shutdown()
        backend.server_close()


def base_request(rng: random.Random) -> tuple[str, str, dict[str, str], bytes]:
    """(method, target, headers, body): valid, or valid-looking with a checked field out of bounds."""
    kind = rng.choice(["json", "json", "binary", "binary", "get", "other"])
    shape = rng.choice([[2, 3], [4, 16], [8, 8], [1, 2]] * 3 + [[8, 9], [1, 65], [0], [2, -1]])
    n = max(0, 1 if -1 in shape else shape[0] * (shape[1] if len(shape) > 1 else 1))
    target = rng.choice(["/v2/models/m/infer", "/v2/models/m/versions/1/infer", "/v2/models/other/infer"])
    if kind == "json":
        data = [rng.choice([0, 1.5, -2]) for _ in range(n + rng.choice([0] * 8 + [1, -1]))]
        doc = {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]}
        body = json.dumps(doc).encode()
        if rng.random() < 0.15:  # a key named twice
            body = body.replace(b'"shape": ', b'"shape": [1, 3, 2, 999999], "shape": ', 1)
        return "POST", target, {"Content-Type": "application/json"}, body
    if kind == "binary":
        size = 4 * n + rng.choice([0] * 8 + [4, -4])
        doc = {
            "inputs": [
                {"name": "x", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": size}}
            ]
        }
        header = json.dumps(doc).encode()
        tensor = bytes(rng.getrandbits(8) for _ in range(max(0, size)))
        length = len(header) + rng.choice([0] * 8 + [1, -1])
        return "POST", target, {"Inference-Header-Content-Length": str(length)}, header + tensor
    if kind == "get":
        return "GET", rng.choice(["/v2/health/ready", "/v2/models/m", "/v2/models/m/config", "/v2"]), {}, b""
    return "POST", rng.choice(["/v2/models/m/generate", "/v2/models/m/generate_stream", "/x"]), {}, b"{}"


def frame(rng: random.Random, method: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
    """The request's bytes, with some of its framing mutated."""
    lines = [(k, v) for k, v in headers.items()] + [("Host", "x")]
    chunked = rng.random() < 0.25
    if chunked:
        lines.append(
            ("Transfer-Encoding", rng.choice(["chunked", "chunked", "Chunked", " chunked", "gzip, chunked"]))
        )
        if rng.random() < 0.3:
            lines.append(("Content-Length", str(len(body))))
    else:
        lines.append(("Content-Length", str(len(body) + rng.choice([0] * 10 + [3, -3]))))
        if rng.random() < 0.15:
            lines.append(("Content-Length", str(len(body) + rng.choice([0, 7]))))  # twice
    if rng.random() < 0.1:
        lines.append(("Expect", rng.choice(["100-continue", "100-continue", "nothing"])))
    rng.shuffle(lines)
    if rng.random() < 0.2:
        target = rng.choice(
            [f"http://h{target}", f"HTTP://h:1{target}", "*", "h:80", target + "?q=1", "//" + target]
        )
    if rng.random() < 0.05:
        method = method.lower()
    version = rng.choice(["HTTP/1.1"] * 16 + ["HTTP/1.0", "HTTP/2.0"])
    head = [f"{method} {target} {version}"]
    for name, value in lines:
        sep = rng.choice([": "] * 40 + [" : ", ":", "\t: ", ":\t"])
        line = f"{name}{sep}{value}"
        if rng.random() < 0.05:  # a folded line
            head.append("X-Fold: a")
            line = rng.choice([" ", "\t"]) + line
        head.append(line)
    eol = "\r\n" if rng.random() < 0.95 else "\n"
    raw = (eol.join(head) + eol + eol).encode("latin-1")
    if chunked:
        pieces, at = [], 0
        while at < len(body):
            step = rng.randint(1, max(1, len(body) // 2))
            ext = rng.choice(["", "", ";a=b", ";x"])
            pieces.append(
                b"%x%s\r\n%s\r\n"
                % (step if at + step <= len(body) else len(body) - at, ext.encode(), body[at : at + step])
            )
            at += step
        raw += b"".join(pieces) + rng.choice([b"0\r\n\r\n"] * 5 + [b"0\r\nX: y\r\n\r\n", b"0\r\n"])
    else:
        raw += body
    if rng.random() < 0.05:
        i = rng.randrange(len(raw))
        raw = raw[:i] + bytes([rng.getrandbits(8)]) + raw[i + 1 :]
    return raw


def exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return read_until_closed(s, reads=1000)


def check_seen(method: str, path: str, headers: dict[str, str], body: bytes) -> None:
    """What the backend got: written by the front, and exactly what a check of it passes."""
    assert SERVED.match(path), path
    assert set(headers) <= FRONT_HEADERS, headers
    assert int(headers.get("content-length", "0")) == len(body)
    if not path.endswith("/infer"):
        assert method == "GET" and body == b""
        return
    assert method == "POST"
    length = headers.get("inference-header-content-length")
    try:
        limit = LIMIT if path.startswith("/v2/models/m/") else DEFAULT_MAX_ELEMENTS
        again = infer_from_body(body, int(length) if length else None, limit)
    except RequestRejected as e:
        pytest.fail(f"the backend got a request the checks refuse: {e}: {body[:200]!r}")
    assert again.header + again.binary == body  # canonical: the front's own bytes, not the client's
    doc = json.loads(again.header)
    assert all(len(i["shape"]) <= 8 and all(d >= 0 for d in i["shape"]) for i in doc["inputs"])


def test_framing_mutations_never_reach_the_backend_unchecked(front):
    rng = random.Random(SEED)
    port = front._sock.getsockname()[1]
    forwarded = refused = 0
    started = time.monotonic()
    for case in range(CASES):
        if time.monotonic() - started > DEADLINE_S:
            break
        payload = frame(rng, *base_request(rng))
        if rng.random() < 0.2:  # pipelined: a second request right behind the first
            payload += frame(rng, *base_request(rng))
        before = len(Echo.seen)
        answer = exchange(port, payload)
        seen = Echo.seen[before:]
        for request in seen:
            check_seen(*request)
        echoed = answer.count(b'{"echo": ')
        assert echoed == len(seen), (case, payload[:300], answer[:300])
        forwarded += len(seen)
        refused += answer.count(b'{"error": ')
    assert front.buffered == 0 and not any(p.by_client for p in front.admission.pools)
    print(f"{case + 1} cases: {forwarded} requests forwarded, {refused} refused")
    assert forwarded > CASES // 8 and refused > CASES // 5, (forwarded, refused)


def test_thousands_of_pipelined_requests_are_answered_in_order(front):
    """One read can hold thousands of requests: each is answered, in order, the ones refused here
    at once and the ones forwarded once the backend answers (no recursion per request)."""
    port = front._sock.getsockname()[1]
    refused = b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n"
    forwarded = b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\n\r\n"
    payload = b"".join(forwarded if i % 500 == 0 else refused for i in range(5000))
    before = len(Echo.seen)
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        answers = read_until_closed(s, reads=10_000)
    statuses = re.findall(rb"HTTP/1.1 (\d{3}) ", answers)
    assert len(statuses) == 5000
    assert [i for i, st in enumerate(statuses) if st == b"200"] == list(range(0, 5000, 500))
    assert len(Echo.seen) - before == 10
    assert front.buffered == 0


def test_a_client_that_does_not_read_its_answers_is_closed_after_the_body_deadline(front):
    """Answers a client leaves unread are held for the body deadline, then the connection goes:
    a client cannot make the front buffer answers without end."""
    port = front._sock.getsockname()[1]
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(5)
    s.connect((HOST, port))
    try:
        # 10 MB of answers, never read: more than the kernel buffers (4 MB at most here), so the rest
        # waits in the front
        payload = b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n" * 80_000
        with contextlib.suppress(OSError):  # the front stops reading, then closes: either may end it
            s.sendall(payload)
        deadline = time.monotonic() + 10
        while front.admission.conns and time.monotonic() < deadline:
            time.sleep(0.05)
        assert front.admission.conns == 0 and front.buffered == 0
    finally:
        s.close()


def test_a_fault_of_the_front_answers_500_and_holds_nothing(front, monkeypatch):
    """A bug on a request's path (here: the request builder raising) still answers that request once
    and releases its body bytes; the front keeps serving other connections."""
    port = front._sock.getsockname()[1]

    def broken(m, built=None):
        raise RuntimeError("a bug")

    monkeypatch.setattr(front, "build", broken)
    body = b'{"inputs":[]}'
    head = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body)
    assert exchange(port, head + body).startswith(b"HTTP/1.1 500 ")
    assert front.buffered == 0 and not any(p.by_client for p in front.admission.pools)
    monkeypatch.undo()
    assert b'{"echo": ' in exchange(port, b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\n\r\n")
