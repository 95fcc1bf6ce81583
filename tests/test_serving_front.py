"""The fronts of `serve` under the attacks of issue 29, on a real tritonserver on 127.0.0.1.

Each test sends one class of hostile request and then checks what matters: tritonserver is still
running and ready, and an ordinary client is answered. Each failed on the hand-written relay this
front replaced (it checked one reading of a request and forwarded the client's bytes). Every client
socket has a timeout, every loop a count, and the server is stopped by its own pid.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import numpy as np
import pytest
from helpers import read_until_closed

from resnest_deploy.serving.front import FrontLimits
from resnest_deploy.serving.server import Ports, running

HOST = "127.0.0.1"
SAMPLE = [1, 3, 32, 32]
LIMITS = FrontLimits(
    max_body=4 * 2**20,
    max_buffered=6 * 2**20,  # two stalled 3 MiB bodies fill it
    max_buffered_per_client=6 * 2**20,
    head_timeout_s=1.5,
    body_timeout_s=1.5,
    inline_decode=64 * 2**10,
)


@pytest.fixture(scope="module")
def served(digits_onnx, tmp_path_factory):
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    with running([digits_onnx], Ports.free(HOST), max_batch_size=8, log=log, front=LIMITS) as (srv, _):
        yield srv


def infer_body(shape: list[int] = SAMPLE) -> bytes:
    """A JSON infer request; a shape over the bound carries one value (the shape is what is checked)."""
    n = int(np.prod(shape)) if np.prod(shape) <= 8 * 3072 else 1
    return json.dumps(
        {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": [0.0] * n}]}
    ).encode()


def connect(srv) -> socket.socket:
    return socket.create_connection((HOST, srv.ports.http), timeout=20)


def read_answer(sock: socket.socket, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One response off a kept-alive socket, read by the standard library (not the front's parser)."""
    r = http.client.HTTPResponse(sock, method=method)
    r.begin()
    body = r.read()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def raw(srv, payload: bytes, wait: float = 20) -> bytes:
    """Send ``payload``, read until the front closes the connection or ``wait`` seconds pass."""
    with connect(srv) as s:
        s.sendall(payload)
        s.settimeout(wait)
        return read_until_closed(s)


def post(path: str, body: bytes, *extra: bytes) -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % (path.encode(), len(body))
    return head + b"".join(h + b"\r\n" for h in extra) + b"\r\n" + body


def still_serving(srv) -> None:
    """tritonserver alive and ready, and an ordinary client answered through the front."""
    assert srv.process.poll() is None, "tritonserver stopped"
    with connect(srv) as s:
        s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(s)[0] == 200
        s.sendall(post("/v2/models/digits/infer", infer_body()))
        status, _, body = read_answer(s)
        assert status == 200, body[:300]
        assert json.loads(body)["outputs"][0]["shape"] == [1, 10]


def test_a_key_named_twice_is_refused_not_read_two_ways(served):
    # Python's json keeps the last "shape", tritonserver's rapidjson the first: the old relay checked
    # [1,3,32,32] and tritonserver allocated [1,3,32,2**40] (std::bad_alloc, SIGABRT)
    body = (
        b'{"inputs":[{"name":"input","shape":[1,3,32,1099511627776],"datatype":"FP32",'
        b'"data":[0],"shape":[1,3,32,32]}]}'
    )
    got = raw(served, post("/v2/models/digits/infer", body, b"Connection: close"))
    assert got.startswith(b"HTTP/1.1 400") and b"names key 'shape' twice" in got
    still_serving(served)


def test_an_absolute_form_target_is_checked_like_an_origin_form_one(served):
    with connect(served) as s:
        s.sendall(post("http://127.0.0.1/v2/models/digits/infer", infer_body([1, 3, 32, 2**40])))
        status, _, body = read_answer(s)
        assert status == 400 and b"declares shape [1, 3, 32, 1099511627776]" in body
        s.sendall(post(f"http://localhost:{served.ports.http}/v2/models/digits/infer", infer_body()))
        status, _, body = read_answer(s)
        assert status == 200 and json.loads(body)["outputs"][0]["shape"] == [1, 10]
    still_serving(served)


@pytest.mark.parametrize(
    "framing",
    [b"Content-Length : %d", b"X-Pad: a\r\n Content-Length: %d", b"X-Pad: a\r\n\tContent-Length: %d"],
    ids=["whitespace before the colon", "folded line (space)", "folded line (tab)"],
)
def test_headers_that_frame_a_body_two_ways_are_refused_and_nothing_is_smuggled(served, framing):
    smuggled = post("/v2/models/digits/infer", infer_body([1, 3, 32, 2**40]))
    # the old relay read these as Content-Length; tritonserver did not, and ran `smuggled` unchecked
    head = b"POST /v2/models/digits/stats HTTP/1.1\r\nHost: x\r\n" + framing % len(smuggled) + b"\r\n\r\n"
    got = raw(served, head + smuggled)
    assert got.startswith(b"HTTP/1.1 400") and got.count(b"HTTP/1.1") == 1, got[:300]
    assert b"Connection: close" in got
    still_serving(served)


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/digits/generate",
        "/v2/models/digits/generate_stream",
        "/v2/models/digits/versions/1/generate",
        "/v2/unknown",
        "/v2/models/digits/infer/../generate",
    ],
)
def test_endpoints_the_front_does_not_check_are_answered_here_not_forwarded(served, path):
    # bodies that broke tritonserver's generate JSON parser when the relay forwarded them
    for body in (b'{"text_input": [[[[[', b'{"a":' * 2000, b"\xff\xfe"):
        with connect(served) as s:
            s.sendall(post(path, body))
            status, headers, answer = read_answer(s)
            assert status == 404 and headers["content-type"] == "application/json"
            assert "is not served here" in json.loads(answer)["error"]
    still_serving(served)


def test_expect_100_continue_is_answered_and_keep_alive_stays_in_step(served):
    body = infer_body()
    with connect(served) as s:
        for _ in range(3):
            s.sendall(
                b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)
            )
            assert s.recv(64) == b"HTTP/1.1 100 Continue\r\n\r\n"  # curl waits for this on bodies > 1 MiB
            s.sendall(body)
            status, _, answer = read_answer(s)
            assert status == 200 and json.loads(answer)["outputs"][0]["shape"] == [1, 10]
            s.sendall(
                b"GET /v2/models/digits/ready HTTP/1.1\r\nHost: x\r\n\r\n"
            )  # this answer, not a late one
            assert read_answer(s)[:1] == (200,)
        # refused from its head alone: the body is never read, so the connection closes
        s.sendall(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % (LIMITS.max_body + 1)
        )
        status, headers, _ = read_answer(s)
        assert status == 413 and headers["connection"] == "close"
    still_serving(served)


def test_head_is_answered_without_a_body_and_keep_alive_stays_in_step(served):
    with connect(served) as s:
        for path in ("/v2/health/ready", "/v2/models/digits", "/v2/models/digits/config", "/v2"):
            s.sendall(b"HEAD %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
            status, headers, body = read_answer(s, "HEAD")
            assert status == 200 and body == b""
            length = int(headers["content-length"])  # what a GET would carry
            s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
            status, headers, body = read_answer(s)
            assert status == 200 and len(body) == int(headers["content-length"]) == length
    still_serving(served)


def test_a_health_probe_is_answered_while_a_client_sends_the_largest_body(served):
    # the largest JSON body allowed: decoded in the front's worker process, not on its event loop
    filler = b'{"inputs":[{"name":"input","shape":[8,3,32,32],"datatype":"FP32","data":['
    n = (LIMITS.max_body - len(filler) - 8) // 4
    big = filler + b"0.0," * n + b"0.0]}]}"
    assert len(big) <= LIMITS.max_body
    answer: dict[str, object] = {}

    def send_big() -> None:
        with connect(served) as s:
            s.sendall(post("/v2/models/digits/infer", big))
            answer["status"], _, answer["body"] = read_answer(s)
            answer["at"] = time.monotonic()

    sender = threading.Thread(target=send_big)
    sender.start()
    probes: list[tuple[float, float]] = []
    with connect(served) as probe:
        deadline = time.monotonic() + 60
        while sender.is_alive() and time.monotonic() < deadline and len(probes) < 2000:
            started = time.monotonic()
            probe.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_answer(probe)[0] == 200
            probes.append((started, time.monotonic() - started))
            time.sleep(0.02)
    sender.join(60)
    assert answer["status"] == 400 and b"elements; its shape [8, 3, 32, 32] says 24576" in answer["body"], (
        answer
    )
    during = [took for at, took in probes if at < answer["at"]]
    assert len(during) >= 3, "the probe was not answered while the large body was read and decoded"
    assert max(during) < 1.0, f"a probe took {max(during):.2f} s (a Kubernetes probe gives up after 1 s)"
    still_serving(served)


def test_stalled_heads_and_bodies_time_out_and_their_bytes_are_bounded(served):
    stalled = [connect(served) for _ in range(3)]
    try:
        stalled[0].sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Le")  # slowloris
        for s in stalled[1:]:  # each holds 3 of the 6 MiB all large bodies may hold: all but its last byte
            s.sendall(
                b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n{"
                % (3 * 2**20)
                + b" " * (3 * 2**20 - 2)
            )
        time.sleep(0.3)
        with connect(served) as third:  # no room left for another large body: 503, not a wait
            third.sendall(post("/v2/models/digits/infer", b"{" + b" " * (3 * 2**19)))
            status, headers, _ = read_answer(third)
            assert status == 503 and headers["retry-after"] == "1"
        still_serving(served)  # small requests have a pool of their own: they and a probe still get through
        started = time.monotonic()
        for s in stalled:
            s.settimeout(LIMITS.body_timeout_s + 10)
            status, headers, _ = read_answer(s)
            assert status == 408 and headers["connection"] == "close"
        assert time.monotonic() - started < LIMITS.body_timeout_s + 5
        assert served.guard.buffered == 0
    finally:
        for s in stalled:
            s.close()
    still_serving(served)


def chunked(path: str, body: bytes, size: int) -> bytes:
    pieces = [
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)
    ]
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" % path.encode()
    return head + b"".join(pieces) + b"0\r\n\r\n"


def probe_seconds(srv) -> float:
    with connect(srv) as s:
        started = time.monotonic()
        s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(s)[0] == 200
        return time.monotonic() - started


def test_a_body_of_tiny_chunks_is_refused_and_probes_stay_fast(served):
    # each chunk was one parser callback, one pool give/take and one list entry: 16 clients sending
    # 500,000 two-byte chunks each took serve from 140 to 540 MiB and probes to 3-10 s
    tiny = chunked("/v2/models/digits/infer", infer_body() + b" " * 200_000, 2)
    answers: list[bytes] = []

    def send_tiny() -> None:
        answers.append(raw(served, tiny, wait=20))

    senders = [threading.Thread(target=send_tiny) for _ in range(4)]
    for t in senders:
        t.start()
    probes = [probe_seconds(served) for _ in range(5)]
    for t in senders:
        t.join(60)
    assert len(answers) == 4
    for got in answers:
        assert got.startswith(b"HTTP/1.1 400") and b"send larger chunks" in got, got[:300]
        assert got.count(b"HTTP/1.1") == 1
    assert max(probes) < 1.0, probes
    assert served.guard.buffered == 0
    with connect(served) as s:  # ordinary chunks are served as before
        s.sendall(chunked("/v2/models/digits/infer", infer_body(), 1024))
        status, _, body = read_answer(s)
        assert status == 200 and json.loads(body)["outputs"][0]["shape"] == [1, 10]
    still_serving(served)


def test_a_connection_that_sends_nothing_is_closed_at_the_head_deadline(served):
    # it was held for the 300 s idle timeout: 4,096 of them refused every client, probes included
    silent = [connect(served) for _ in range(4)]
    try:
        started = time.monotonic()
        for s in silent:
            s.settimeout(LIMITS.head_timeout_s + 10)
            assert s.recv(1024) == b""
        assert time.monotonic() - started < LIMITS.head_timeout_s + 5
    finally:
        for s in silent:
            s.close()
    still_serving(served)


def test_heads_that_declare_a_body_and_send_none_hold_no_pool(served):
    # each reserved its declared 3 MiB for the body timeout: two of them refused every large body (503)
    stalled = [connect(served) for _ in range(6)]
    try:
        for s in stalled:
            s.sendall(
                b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                % (3 * 2**20)
            )
        time.sleep(0.3)
        assert served.guard.buffered == 0
        with connect(served) as other:  # a large body still finds room: checked (400), not 503
            other.sendall(post("/v2/models/digits/infer", b"{" + b" " * (3 * 2**19)))
            status, _, body = read_answer(other)
            assert status == 400 and b"not valid UTF-8 JSON" in body, (status, body[:200])
        still_serving(served)
    finally:
        for s in stalled:
            s.close()
    still_serving(served)


def test_the_last_connections_under_the_cap_are_kept_for_health_probes(served):
    from resnest_deploy.serving.front import Front
    from resnest_deploy.serving.triton_install import free_ports

    (port,) = free_ports(1)
    bounds = FrontLimits(max_connections=8, probe_headroom=2, head_timeout_s=5)
    front = Front(HOST, port, served.internal_http, {"digits": 3 * 32 * 32 * 8}, bounds=bounds)
    front.start()
    front.set_ready(True)
    socks: list[socket.socket] = []
    try:
        socks = [socket.create_connection((HOST, port), timeout=10) for _ in range(6)]  # silent
        time.sleep(0.3)
        with socket.create_connection((HOST, port), timeout=10) as other:  # in the headroom: no infer
            other.sendall(post("/v2/models/digits/infer", infer_body()))
            status, headers, _ = read_answer(other)
            assert status == 503 and headers["retry-after"] == "1"
        with socket.create_connection((HOST, port), timeout=10) as probe:  # ... but a probe is answered
            probe.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_answer(probe)[0] == 200
    finally:
        for s in socks:
            s.close()
        front.close()
    still_serving(served)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["upgrade h2c", "CONNECT"],
)
def test_an_upgrade_or_connect_gets_exactly_one_answer(served, head):
    # it got 200 and then 400: a pipelined request after it read the stale one
    got = raw(served, head + b"GET /v2/models/digits/ready HTTP/1.1\r\nHost: x\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 400") and got.count(b"HTTP/1.1") == 1, got[:400]
    assert b"Connection: close" in got
    still_serving(served)


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs":[{"name":"input","shape":[1,3,32,32],"datatype":"FP32","data":[1e400%s]}]}'
        % (b",0" * 3071),
        b'{"parameters":{"x":1e400},"inputs":[{"name":"input","shape":[1,3,32,32],"datatype":"FP32",'
        b'"data":[0%s]}]}' % (b",0" * 3071),
        b'{"id":"\\ud800","inputs":[{"name":"input","shape":[1,3,32,32],"datatype":"FP32",'
        b'"data":[0%s]}]}' % (b",0" * 3071),
    ],
    ids=["1e400 in data", "1e400 in parameters", "lone surrogate"],
)
def test_json_that_cannot_be_reencoded_is_answered_400_without_a_traceback(served, body, caplog):
    # encode_json raised: the connection dropped with no answer and a traceback was logged
    padded = body[:-2] + b" " * (LIMITS.inline_decode + 10) + body[-2:]  # decoded in the worker process
    with connect(served) as s:
        for payload in (body, padded):
            s.sendall(post("/v2/models/digits/infer", payload))
            status, _, answer = read_answer(s)
            assert status == 400 and b"out of range or a lone surrogate" in answer, answer[:300]
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    still_serving(served)


def test_head_bounds_count_from_the_first_byte_and_hosts_and_expect_are_read_strictly(served):
    # a 40 KiB head in one read was never counted (only reads after the first were)
    big = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\n\r\n" % (b"a" * 40 * 2**10)
    got = raw(served, big)
    assert got.startswith(b"HTTP/1.1 431") and got.count(b"HTTP/1.1") == 1, got[:300]
    got = raw(served, b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 400") and b"Host twice" in got, got[:300]
    body = infer_body()
    got = raw(
        served,
        b"POST /v2/models/digits/infer HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
        % len(body)
        + body,
    )
    assert got.startswith(b"HTTP/1.1 200") and b"100 Continue" not in got, got[:300]
    # a header named many times is joined once: answered, and counted against the head bound
    many = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 3000 + b"\r\n"
    got = raw(served, many + b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200") and got.count(b"HTTP/1.1 200") == 2, got[:300]
    still_serving(served)


def test_an_oversized_grpc_message_is_refused_before_tritonserver_sees_it(served):
    import grpc
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(f"{HOST}:{served.ports.grpc}")
    try:
        x = np.zeros(SAMPLE, np.float32)
        inp = grpcclient.InferInput("input", SAMPLE, "FP32")
        inp.set_data_from_numpy(x)
        assert client.infer("digits", [inp]).as_numpy("logits").shape == (1, 10)
        huge = grpcclient.InferInput("input", SAMPLE, "FP32")
        huge._raw_content = b"\0" * (LIMITS.max_body + 1024)  # far more bytes than the shape needs
        with pytest.raises(InferenceServerException) as refused:
            client.infer("digits", [huge], client_timeout=30)
        assert refused.value.status() == str(grpc.StatusCode.RESOURCE_EXHAUSTED), refused.value.message()
        big_shape = grpcclient.InferInput("input", [1, 3, 32, 2**40], "FP32")
        big_shape._raw_content = b"\0" * 16
        with pytest.raises(InferenceServerException, match="declares shape"):
            client.infer("digits", [big_shape], client_timeout=30)
        assert client.is_server_ready()
        assert client.infer("digits", [inp]).as_numpy("logits").shape == (1, 10)
    finally:
        client.close()
    still_serving(served)


def test_a_grpc_stream_is_relayed_and_a_hostile_message_in_it_ends_it_with_invalid_argument(served):
    import queue

    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"{HOST}:{served.ports.grpc}")
    answers: queue.Queue = queue.Queue()
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        ok = grpcclient.InferInput("input", SAMPLE, "FP32")
        ok.set_data_from_numpy(np.zeros(SAMPLE, np.float32))
        client.async_stream_infer("digits", [ok])
        result, error = answers.get(timeout=30)
        assert error is None and result.as_numpy("logits").shape == (1, 10)
        bad = grpcclient.InferInput("input", [1, 3, 32, 2**40], "FP32")
        bad._raw_content = b"\0" * 16
        client.async_stream_infer("digits", [bad])
        result, error = answers.get(timeout=30)
        assert result is None and "declares shape [1, 3, 32, 1099511627776]" in str(error)
        client.stop_stream()
    finally:
        client.close()
    still_serving(served)


def test_idle_grpc_streams_of_one_client_leave_calls_for_the_others_and_end_at_a_deadline(served):
    # 64 idle ModelStreamInfer calls from one channel held every call the front allowed: every other
    # client got RESOURCE_EXHAUSTED for as long as they stayed open
    import grpc
    import tritonclient.grpc as grpcclient

    stop = threading.Event()

    def nothing():
        stop.wait(30)
        return
        yield  # a generator that sends no message

    hog = grpc.insecure_channel(f"{HOST}:{served.ports.grpc}")
    client = grpcclient.InferenceServerClient(f"{HOST}:{served.ports.grpc}")
    calls = []
    try:
        stream = hog.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        calls = [stream(nothing(), timeout=30) for _ in range(64)]
        time.sleep(0.5)
        started = time.monotonic()
        assert client.is_server_ready(client_timeout=5)
        assert client.is_model_ready("digits", client_timeout=5)
        codes = []
        for call in calls:
            with pytest.raises(grpc.RpcError) as ended:
                next(call)
            codes.append(ended.value.code())
        assert time.monotonic() - started < LIMITS.body_timeout_s + 10
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 48, codes
        assert codes.count(grpc.StatusCode.DEADLINE_EXCEEDED) == 16, codes
    finally:
        stop.set()
        for call in calls:
            call.cancel()
        hog.close()
        client.close()
    still_serving(served)


def test_bytes_that_are_no_grpc_message_get_invalid_argument(served):
    import grpc

    with grpc.insecure_channel(f"{HOST}:{served.ports.grpc}") as channel:
        for method in ("ModelInfer", "ServerReady"):
            call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            with pytest.raises(grpc.RpcError) as refused:
                call(b"\xff\xff\xff\xff", timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
            assert "is not a valid" in refused.value.details()
    still_serving(served)


def test_tritonserver_is_started_without_running_grpcs_fork_handlers_while_the_grpc_front_runs():
    """With a preexec_fn, subprocess forks and gRPC's atfork handlers restart a poller in the child,
    which close_fds then robs of its epoll descriptor: about one start in 70 died of SIGABRT (seen
    in this suite). Starting through the tied exec, no handler runs."""
    import subprocess

    from resnest_deploy.serving.grpc_front import GrpcFront
    from resnest_deploy.serving.supervisor import _tied_to_us
    from resnest_deploy.serving.triton_install import free_ports

    port, upstream = free_ports(2)
    front = GrpcFront("127.0.0.1", port, upstream, {"m": 10})
    front.start()
    try:
        codes = []
        for _ in range(150):
            child = subprocess.Popen(
                _tied_to_us(["/bin/sh", "-c", "exit 0"]),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            codes.append(child.wait(30))
    finally:
        front.close()
    assert codes == [0] * 150
