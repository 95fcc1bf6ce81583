"""Serving that holds: started any way, under hostile requests and files, through kills and signals.

Each test names the failure it guards against; each failed on the code before the guard, the
environment file and the lifecycle changes. Every server listens on 127.0.0.1, every client loop is
bounded, and every process started here is stopped by its own pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from resnest_deploy import _io, metadata
from resnest_deploy.engine import build_engine
from resnest_deploy.errors import ArtifactError
from resnest_deploy.serving.repository import model_config, write_repository
from resnest_deploy.serving.requests import RequestRejected, infer_from_body
from resnest_deploy.serving.server import Ports, ServeError, running, stubs_of

HOST = "127.0.0.1"
CLI = Path(sys.executable).with_name("resnest-deploy")  # the console script of this interpreter


def request(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def infer_json(base: str, model: str, shape: list[int], data: list[float]) -> tuple[int, dict]:
    body = {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}]}
    status, raw = request(f"{base}/v2/models/{model}/infer", json.dumps(body).encode())
    return status, json.loads(raw)


def raw_http(port: int, payload: bytes) -> bytes:
    with socket.create_connection((HOST, port), timeout=20) as s:
        s.sendall(payload)
        return s.recv(4096)


@pytest.fixture(scope="module")
def served(digits_onnx, tmp_path_factory):
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    with running([digits_onnx], Ports.free(HOST), max_batch_size=8, log=log) as (srv, _):
        yield srv, f"http://{srv.ports.url}"


# --- hostile requests ---------------------------------------------------------------------------


def test_a_json_request_declaring_a_huge_shape_is_refused_and_the_server_keeps_answering(served):
    srv, base = served
    status, body = infer_json(base, "digits", [1, 3, 32, 2**40], [0.0])
    assert status == 400 and "declares shape [1, 3, 32, 1099511627776]" in body["error"]
    status, body = infer_json(base, "digits", [9, 3, 32, 32], [0.0])  # 9 > max batch 8
    assert status == 400 and "send a smaller batch" in body["error"]
    ok, answer = infer_json(base, "digits", [1, 3, 32, 32], [0.0] * 3072)
    assert ok == 200 and answer["outputs"][0]["shape"] == [1, 10]
    assert srv.process.poll() is None


@pytest.mark.parametrize(
    ("case", "payload", "status"),
    [
        (
            "negative dim",
            b'{"inputs":[{"name":"input","shape":[1,-3,32,32],"datatype":"FP32","data":[0]}]}',
            400,
        ),
        ("not json", b"{{{", 400),
        ("binary header over the body", None, 400),
        ("chunked body that is not JSON", None, 400),
        ("body over the limit", None, 413),
    ],
)
def test_malformed_infer_requests_get_client_errors_before_triton_reads_them(served, case, payload, status):
    srv, base = served
    port = srv.ports.http
    path = b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
    if payload is not None:
        got = raw_http(port, path + b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
    elif case == "binary header over the body":
        got = raw_http(port, path + b"Inference-Header-Content-Length: 99\r\nContent-Length: 2\r\n\r\n{}")
    elif case == "chunked body that is not JSON":
        got = raw_http(port, path + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    else:
        got = raw_http(port, path + b"Content-Length: %d\r\n\r\n" % (2**30))
    assert got.startswith(b"HTTP/1.1 %d" % status), (case, got[:200])
    ok, _ = infer_json(base, "digits", [1, 3, 32, 32], [0.0] * 3072)
    assert ok == 200


def test_a_finite_input_the_model_overflows_is_a_client_error_not_nan_logits(served):
    _, base = served
    status, body = infer_json(base, "digits", [1, 3, 32, 32], [3e38] * 3072)
    assert status == 400 and "NaN or Inf" in body["error"]
    status, body = infer_json(base, "digits", [1, 3, 32, 32], [float("nan")] * 3072)
    assert status == 400 and "NaN" in body["error"]  # the front refuses a JSON NaN, the model an overflow


def test_model_control_logging_and_shared_memory_apis_are_closed_unless_asked_for(served):
    _, base = served
    assert request(f"{base}/v2/repository/index", b"{}")[0] == 403
    assert request(f"{base}/v2/logging")[0] == 403
    assert request(f"{base}/v2/systemsharedmemory/status")[0] == 403
    assert request(f"{base}/v2/models/digits/stats")[0] == 200  # statistics stay open


def test_successful_responses_write_nothing_to_tritons_log(served):
    """Each response wrote about 316 bytes of 'ValueError: PyCapsule_GetPointer' to the log."""
    srv, base = served
    assert infer_json(base, "digits", [1, 3, 32, 32], [0.0] * 3072)[0] == 200
    before = srv.log.stat().st_size
    for _ in range(20):
        status, _ = infer_json(base, "digits", [2, 3, 32, 32], [0.5] * 6144)
        assert status == 200
    assert srv.log.stat().st_size == before, srv.log.read_text()[-1000:]
    assert "PyCapsule" not in srv.log.read_text()


def test_a_dead_tritonserver_is_reported_with_its_own_signal_not_an_older_runs_log_line(
    digits_onnx, tmp_path
):
    """--log is appended to across runs: the cause came from whatever error line was last in it."""
    log = tmp_path / "t.log"
    log.write_text('E1207 00:00:00.000 1 server.cc:1] "an older run: error: out of memory"\n')
    with running([digits_onnx], Ports.free(HOST), log=log) as (srv, _):
        os.kill(srv.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and srv.check_alive() is None:
            time.sleep(0.1)
        why = srv.check_alive() or ""
        assert "tritonserver stopped: killed by SIGKILL" in why and "older run" not in why, why


def test_a_dead_python_stub_turns_readiness_off_and_says_why(digits_onnx, tmp_path):
    with running([digits_onnx], Ports.free(HOST), log=tmp_path / "t.log") as (srv, _):
        base = f"http://{srv.ports.url}"
        assert request(f"{base}/v2/health/ready")[0] == 200
        (pid,) = srv.stubs.values()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and request(f"{base}/v2/health/ready")[0] == 200:
            time.sleep(0.1)
        status, body = request(f"{base}/v2/health/ready")
        assert status == 503 and b"python backend process of model 'digits'" in body
        assert "died" in (srv.check_alive() or "")


# --- hostile files --------------------------------------------------------------------------------


def with_metadata(src: Path, dest: Path, **changes) -> Path:
    import onnx

    model = onnx.load(src)
    meta = metadata.from_onnx(model) | changes
    metadata.embed(model, meta)
    onnx.save(model, dest)
    return dest


def test_dims_labels_and_batch_follow_the_graph_not_what_the_metadata_claims(digits_onnx, tmp_path):
    liar = with_metadata(
        digits_onnx,
        tmp_path / "liar.onnx",
        num_classes=50_000_000,
        input={"name": "input", "shape": ["batch", 3, 32, 32], "profile": {"max": [1_000_000, 3, 32, 32]}},
    )
    (entry,) = write_repository([liar], tmp_path / "repo")
    config = text_format.Parse(
        (tmp_path / "repo/liar/config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert list(config.output[0].dims) == [10] and config.max_batch_size == 32
    assert (tmp_path / "repo/liar/labels.txt").read_text().split() == [str(i) for i in range(10)]
    assert entry.sample_elements == 3 * 32 * 32


def test_engines_are_packaged_by_their_header_and_only_with_a_sidecar_that_describes_them(
    digits_onnx, tmp_path
):
    rtx = build_engine(digits_onnx, tmp_path / "rtx.plan", batch=(1, 4, 8)).path
    relabelled = tmp_path / "relabelled.plan"  # an RTX plan whose sidecar claims full TensorRT
    shutil.copy(rtx, relabelled)
    side = metadata.read_sidecar(rtx)
    side["tensorrt"] = {"flavour": "tensorrt", "version": "10.3.0"}
    side["file"] = {"sha256": _io.sha256_file(relabelled)}
    _io.sidecar_path(relabelled).write_text(json.dumps(side))
    with pytest.raises(ArtifactError, match="built by tensorrt-rtx \\(its header says so\\)"):
        model_config(relabelled)
    noise = tmp_path / "noise.plan"
    noise.write_bytes(os.urandom(4096))
    _io.sidecar_path(noise).write_text(json.dumps(side | {"file": {"sha256": _io.sha256_file(noise)}}))
    with pytest.raises(ArtifactError, match="not a serialized TensorRT engine"):
        model_config(noise)
    stale = tmp_path / "stale.plan"  # a sidecar that describes other bytes
    shutil.copy(rtx, stale)
    shutil.copy(_io.sidecar_path(rtx), _io.sidecar_path(stale))
    stale.write_bytes(stale.read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="describes another file"):
        model_config(stale, python_backend=True)
    min2 = build_engine(digits_onnx, tmp_path / "min2.plan", batch=(2, 4, 8)).path
    with pytest.raises(ArtifactError, match="starts at batch 2, but Triton's batcher forms batches from 1"):
        model_config(min2, python_backend=True)
    huge = tmp_path / "huge.plan"
    shutil.copy(rtx, huge)
    side = metadata.read_sidecar(rtx)
    side["input"]["profile"]["max"] = [1_000_000, 3, 32, 32]
    _io.sidecar_path(huge).write_text(json.dumps(side))
    with pytest.raises(ArtifactError, match=r"records a profile maximum 1000000, outside 1\.\.4096"):
        model_config(huge, python_backend=True)


@pytest.mark.parametrize("name", ["digits\n", "x" * 101, "../up", "", "a b"])
def test_model_names_are_matched_whole_and_bounded(digits_onnx, name):
    with pytest.raises(ArtifactError, match="not a valid Triton model name"):
        model_config(digits_onnx, name=name)


def test_a_log_that_is_a_served_file_is_refused(digits_onnx):
    with (
        pytest.raises(ServeError, match=r"^log .* is one of the served files"),  # a parameter, not a flag
        running([digits_onnx], Ports.free(HOST), log=digits_onnx),
    ):
        pass


@pytest.mark.parametrize("option", ["--status-file", "--log", "both"])
def test_a_status_file_or_log_naming_an_input_is_refused_before_anything_starts(
    digits_onnx, tmp_path, option
):
    """The status file overwrote the served model, and removed it on exit."""
    model = tmp_path / "m.onnx"
    shutil.copy(digits_onnx, model)
    shutil.copy(_io.sidecar_path(digits_onnx), _io.sidecar_path(model))
    before = model.read_bytes()
    if option == "both":
        args = ["--log", str(tmp_path / "x.txt"), "--status-file", str(tmp_path / "x.txt")]
    else:
        args = [option, str(model)]
    proc = start_cli([str(model), *ports_args(Ports.free(HOST)), *args], tmp_path)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
    said = " ".join(err.split())
    assert proc.returncode != 0 and said.count("error:") == 1 and "Traceback" not in err, err
    expected = "give each its own file" if option == "both" else f"{option} {model} is one of the served"
    assert expected in said and "starting tritonserver" not in said, err
    assert model.read_bytes() == before and not (tmp_path / "x.txt").exists()


def test_a_planted_staging_symlink_cannot_redirect_repository_writes(digits_onnx, tmp_path):
    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    repo.mkdir()
    elsewhere.mkdir()
    for planted in (".digits.staging", ".digits.1.staging", "digits.staging"):
        (repo / planted).symlink_to(elsewhere, target_is_directory=True)
    write_repository([digits_onnx], repo)
    assert list(elsewhere.iterdir()) == [] and (repo / "digits/1/model.onnx").is_file()


def test_concurrent_writers_of_one_repository_take_turns(digits_onnx, tmp_path):
    copies = []
    for i in range(4):
        copies.append(tmp_path / f"m{i}.onnx")
        shutil.copy(digits_onnx, copies[-1])
        shutil.copy(_io.sidecar_path(digits_onnx), _io.sidecar_path(copies[-1]))
    results: dict[int, str] = {}
    plan = {0: [copies[0], copies[1]], 1: [copies[2], copies[3]], 2: [copies[0]]}  # 2 collides with 0

    def write(k: int) -> None:
        try:
            write_repository(plan[k], tmp_path / "repo")
            results[k] = "ok"
        except ArtifactError as e:
            results[k] = str(e)

    threads = [threading.Thread(target=write, args=(k,)) for k in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results[1] == "ok"
    winner, loser = (0, 2) if results[0] == "ok" else (2, 0)
    assert results[winner] == "ok" and "m0 exists" in results[loser]  # all or nothing for the loser
    for path in {p for k in (1, winner) for p in plan[k]}:
        folder = tmp_path / "repo" / path.stem
        assert (folder / "1/model.onnx").read_bytes() == path.read_bytes()
        assert (folder / "config.pbtxt").is_file() and (folder / "labels.txt").is_file()
    expected = {p.stem for k in (1, winner) for p in plan[k]}
    assert {p.name for p in (tmp_path / "repo").iterdir() if not p.name.startswith(".")} == expected
    assert not [p for p in (tmp_path / "repo").iterdir() if p.name.endswith(".staging")]


# --- Triton conventions ---------------------------------------------------------------------------


def test_cpu_instances_split_the_cores_and_gpu_providers_get_gpu_instances(digits_onnx):
    cfg = text_format.Parse(
        model_config(digits_onnx, python_backend=True, instances=2).config, model_config_pb2.ModelConfig()
    )
    assert cfg.instance_group[0].count == 2
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert cfg.parameters["threads"].string_value == str(max(1, (os.cpu_count() or 1) // 2))
    gpu = text_format.Parse(
        model_config(digits_onnx, python_backend=True, provider="cuda").config, model_config_pb2.ModelConfig()
    )
    assert gpu.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert "threads" not in gpu.parameters


def test_the_front_bounds_a_shape_by_the_product_of_its_dims():
    def header(shape: str) -> bytes:
        return (
            b'{"inputs":[{"name":"x","datatype":"FP32","shape":%s,"parameters":{"binary_data_size":0}}]}'
            % (shape.encode())
        )

    with pytest.raises(RequestRejected, match="0 bytes of binary data for 24 FP32 elements"):
        infer_from_body(header("[2,3,4]"), None, 24)  # within the bound: what is checked next
    with pytest.raises(RequestRejected, match="more than the 23 elements"):
        infer_from_body(header("[2,3,4]"), None, 23)
    with pytest.raises(RequestRejected, match="non-negative integers"):
        infer_from_body(header("[2,true,4]"), None, 10**9)
    with pytest.raises(RequestRejected, match="more than the 0 elements"):
        infer_from_body(header("[]"), None, 0)  # a scalar is one element


def test_a_header_checked_before_is_checked_again_for_what_else_differs():
    """The front keeps the headers it checked (clients repeat them); a kept one answers only for the
    same bytes, the same binary length and the same bound, and a refusal is never kept."""
    header = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2,3],"parameters":{"binary_data_size":24}}]}'
    tensors = bytes(range(24))
    first = infer_from_body(header + tensors, len(header), 6)
    again = infer_from_body(header + tensors[::-1], len(header), 6)
    assert again.header == first.header and again.binary_inputs == first.binary_inputs == 1
    assert again.binary == tensors[::-1]  # the tensors of this body, not of the one checked first
    with pytest.raises(RequestRejected, match="more than the 5 elements"):
        infer_from_body(header + tensors, len(header), 5)
    with pytest.raises(RequestRejected, match="binary_data_size is not within the body"):
        infer_from_body(header + tensors[:20], len(header), 6)
    with pytest.raises(RequestRejected, match="the inputs account for 24"):
        infer_from_body(header + tensors + b"\0", len(header), 6)
    twice = header.replace(b'"name":"x"', b'"name":"x","name":"y"')
    for _ in range(2):  # refused each time, never kept
        with pytest.raises(RequestRejected, match="twice"):
            infer_from_body(twice + tensors, len(twice), 6)


# --- however it is started ------------------------------------------------------------------------


def start_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(CLI), "serve", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "not ready in time"
        time.sleep(0.2)


def ports_args(ports: Ports) -> list[str]:
    return [
        "--http-port",
        str(ports.http),
        "--grpc-port",
        str(ports.grpc),
        "--metrics-port",
        str(ports.metrics),
    ]


def test_serve_started_by_path_with_no_venv_on_path_from_a_temp_folder_serves_and_stops_in_seconds(
    digits_onnx, tmp_path
):
    """As systemd, cron and scripts start it. Then SIGTERM with an idle keep-alive client connected
    (a load balancer's) stops it in seconds, not Triton's 30 s exit timeout."""
    ports, status = Ports.free(HOST), tmp_path / "status.json"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = start_cli([str(digits_onnx), *ports_args(ports), "--status-file", str(status)], tmp_path, env)
    try:
        wait_for(status, proc)
        assert json.loads(status.read_text())["http"] == f"{HOST}:{ports.http}"
        ok, answer = infer_json(f"http://{HOST}:{ports.http}", "digits", [1, 3, 32, 32], [0.0] * 3072)
        assert ok == 200 and len(answer["outputs"][0]["data"]) == 10
        idle = socket.create_connection((HOST, ports.http))
        idle.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(100).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
        idle.close()
        assert proc.returncode == 0, err[-2000:]
        assert took < 5.0, f"stopping took {took:.1f} s"
        assert not status.exists()
    finally:
        stop(proc)


def test_serve_killed_with_sigkill_leaves_no_server_and_its_temp_repository_is_cleaned_next_time(
    digits_onnx, tmp_path
):
    ports, status = Ports.free(HOST), tmp_path / "status.json"
    proc = start_cli([str(digits_onnx), *ports_args(ports), "--status-file", str(status)], tmp_path)
    try:
        wait_for(status, proc)
        pid = json.loads(status.read_text())["pid"]
        leftovers = list(Path(os.environ.get("TMPDIR", "/tmp")).glob(f"resnest-deploy-serve-{pid}-*"))
        assert leftovers
        os.kill(proc.pid, signal.SIGKILL)  # serve alone: tritonserver is in its own session
        proc.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((HOST, ports.grpc), timeout=1).close()
                time.sleep(0.2)
            except OSError:
                break
        else:
            pytest.fail("tritonserver outlived serve")
        ports.check_free()
        deadline = time.monotonic() + 10  # and no python stub of that run is left either
        while time.monotonic() < deadline and stubs_of(leftovers[0]):
            time.sleep(0.2)
        assert not stubs_of(leftovers[0]), "a python stub outlived its server"
    finally:
        stop(proc)
    with running([digits_onnx], Ports.free(HOST), log=tmp_path / "again.log"):
        assert not any(p.exists() for p in leftovers)


def test_sigterm_during_start_up_stops_at_once_and_leaves_no_stub(digits_onnx, tmp_path):
    proc = start_cli([str(digits_onnx), *ports_args(Ports.free(HOST))], tmp_path)
    try:
        # the run's folder is made once the signal handlers are in place (importing takes 1.5-2.5 s
        # on a loaded machine: a fixed sleep sent SIGTERM before serve could handle it)
        tmp = Path(os.environ.get("TMPDIR", "/tmp"))
        deadline = time.monotonic() + 60
        while not (runs := list(tmp.glob(f"resnest-deploy-serve-{proc.pid}-*"))):
            assert proc.poll() is None and time.monotonic() < deadline, "serve never started its run"
            time.sleep(0.05)
        time.sleep(0.5)  # writing the repository, starting tritonserver
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - started < 5.0
        assert proc.returncode != 0 and "stopped by a signal before the server was ready" in err
        assert not [pid for run in runs for pid in stubs_of(run)]  # one spawned mid-start is killed too
    finally:
        stop(proc)


def test_a_second_serve_on_the_same_ports_fails_instead_of_claiming_the_first_ones_readiness(
    served, digits_onnx, tmp_path
):
    srv, _ = served
    proc = start_cli([str(digits_onnx), *ports_args(srv.ports)], tmp_path)
    try:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode != 0 and "ready" not in out
        assert f"cannot listen on {HOST}:{srv.ports.http}" in err
    finally:
        stop(proc)
    assert srv.process.poll() is None


def test_a_model_that_cannot_load_names_the_cause(digits_onnx, tmp_path):
    engine = build_engine(digits_onnx, tmp_path / "e.plan", batch=(1, 2, 4)).path
    with (
        pytest.raises(ServeError, match=r"model 'e' did not load: .*no GPUs are available"),
        running([engine], Ports.free(HOST), log=tmp_path / "e.log"),
    ):
        pass


def test_the_admin_apis_open_with_admin_api(digits_onnx, tmp_path):
    with running([digits_onnx], Ports.free(HOST), admin_api=True, log=tmp_path / "a.log") as (srv, _):
        assert not srv.restricted
        assert request(f"http://{srv.ports.url}/v2/repository/index", b"{}")[0] == 200


def restricted_options(pid: int) -> dict[str, tuple[str, str]]:
    """What another local user reads of tritonserver's restricted-API options: its command line."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    found = {}
    for arg in argv:
        for option in ("--http-restricted-api=", "--grpc-restricted-protocol="):
            if arg.startswith(option):
                key, _, value = arg[len(option) :].split(":", 1)[1].partition("=")
                found[option] = (key, value)
    return found


def test_a_local_user_who_reads_tritons_command_line_still_cannot_open_the_restricted_apis(served):
    """The admin key sat on tritonserver's command line, which every local user can read; with it,
    model control (unload, load) opened on the internal and the public ports."""
    srv, base = served
    options = restricted_options(srv.process.pid)
    assert set(options) == {"--http-restricted-api=", "--grpc-restricted-protocol="}
    key, value = options["--http-restricted-api="]
    for port in (srv.internal_http, srv.ports.http):  # Triton's own port, on loopback, and the front
        with socket.create_connection((HOST, port), timeout=20) as s:
            s.sendall(
                b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\n"
                + f"{key}: {value}\r\n".encode()
                + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
            )
            answer = s.recv(4096)
        assert not answer.startswith(b"HTTP/1.1 200"), answer[:200]
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    key, value = options["--grpc-restricted-protocol="]
    client = grpcclient.InferenceServerClient(f"{HOST}:{srv.ports.grpc}")
    for header in (f"triton-grpc-protocol-{key}", f"triton-grpc-protocol-{key.lower()}"):
        with pytest.raises((InferenceServerException, ValueError)):
            client.get_model_repository_index(headers={header: value})
    client.close()
    assert request(f"{base}/v2/health/ready")[0] == 200


def test_an_onnx_file_with_external_weights_is_served_with_them(digits_onnx, tmp_path):
    """`triton` copied model.onnx alone: the repository could not load (its weights were elsewhere)."""
    import numpy as np
    import onnx

    from resnest_deploy.loaders import open_runner

    (tmp_path / "src").mkdir()
    path = tmp_path / "src" / "ext.onnx"
    onnx.save(onnx.load(digits_onnx), path, save_as_external_data=True, location="ext.data")
    repo = tmp_path / "repo"
    write_repository([path], repo, python_backend=True)
    assert (repo / "ext/1/ext.data").read_bytes() == (tmp_path / "src/ext.data").read_bytes()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with open_runner(digits_onnx) as runner:
        expected = runner.infer(x)
    with running([path], Ports.free(HOST), log=tmp_path / "t.log") as (srv, _):
        status, body = infer_json(f"http://{srv.ports.url}", "ext", [2, 3, 32, 32], x.ravel().tolist())
        assert status == 200, body
        got = np.array(body["outputs"][0]["data"], np.float32).reshape(2, 10)
        assert np.abs(got - expected).max() < 1e-4


def test_external_weights_named_like_the_models_own_files_are_refused(digits_onnx, tmp_path):
    import onnx

    path = tmp_path / "x.onnx"
    onnx.save(onnx.load(digits_onnx), path, save_as_external_data=True, location="model.py", size_threshold=0)
    with pytest.raises(ArtifactError, match="a name Triton's model folder needs for itself"):
        write_repository([path], tmp_path / "repo", python_backend=True)
    assert not (tmp_path / "repo" / "x").exists()
