"""Triton: repositories validated against Triton's own schema, and a real tritonserver on loopback.

Every server listens on 127.0.0.1 only, every client loop is bounded in count and time, and every
server is stopped by its own pid (its process group), also when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from typer.testing import CliRunner

from resnest_deploy import _io, metadata
from resnest_deploy.cli.app import app
from resnest_deploy.data import Transform, digits, digits_batch
from resnest_deploy.engine import build_engine
from resnest_deploy.errors import ArtifactError
from resnest_deploy.loaders import open_runner
from resnest_deploy.models import get_spec
from resnest_deploy.serving.repository import write_repository
from resnest_deploy.serving.server import Ports, ServeError, running

HOST = "127.0.0.1"
TIMEOUT_S = 20.0  # every client call gives up after this


def parse(config: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())


def test_repositories_validate_against_tritons_schema(digits_onnx, digits_converted, tmp_path):
    engine = build_engine(digits_converted["fp16"], tmp_path / "e.plan", batch=(1, 4, 8)).path
    # Full TensorRT cannot be installed here: a stand-in with full TensorRT's header ("ftrt") and the
    # RTX build's profile, recorded as a TensorRT 10.3 build. Only its config is written, never run.
    full = tmp_path / "full.plan"
    full.write_bytes(b"ftrt" + engine.read_bytes()[4:])
    side = metadata.read_sidecar(engine) | {"tensorrt": {"flavour": "tensorrt", "version": "10.3.0"}}
    side["file"] = {"sha256": _io.sha256_file(full)}
    _io.sidecar_path(full).write_text(json.dumps(side))
    entries = write_repository([digits_onnx, digits_converted["int8-cpu"], full], tmp_path / "repo")
    configs = {e.name: parse(tmp_path / "repo" / e.name / "config.pbtxt") for e in entries}
    onnx_cfg, plan_cfg = configs["digits"], configs["full"]
    assert onnx_cfg.platform == "onnxruntime_onnx" and onnx_cfg.max_batch_size == 32
    assert (
        list(onnx_cfg.input[0].dims) == [3, 32, 32]
        and onnx_cfg.input[0].data_type == model_config_pb2.TYPE_FP32
    )
    assert onnx_cfg.input[0].format == model_config_pb2.ModelInput.FORMAT_NCHW
    assert onnx_cfg.output[0].label_filename == "labels.txt" and list(onnx_cfg.output[0].dims) == [10]
    assert onnx_cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert [w.batch_size for w in onnx_cfg.model_warmup] == [1, 32]
    assert {p: v.string_value for p, v in onnx_cfg.parameters.items()}["precision"] == "fp32"
    assert configs["digits.int8-cpu"].parameters["precision"].string_value == "int8"
    assert plan_cfg.platform == "tensorrt_plan" and plan_cfg.max_batch_size == 8  # the profile's maximum
    assert plan_cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (tmp_path / "repo" / "full" / "1" / "model.plan").read_bytes() == full.read_bytes()
    assert "TensorRT 10.3.0" in (tmp_path / "repo" / "TENSORRT_PAIRING.txt").read_text()
    assert (tmp_path / "repo" / "digits" / "labels.txt").read_text().split() == [str(i) for i in range(10)]
    accel = write_repository(
        [digits_converted["fp16"]], tmp_path / "acc", tensorrt_accelerator=True, gpu=True
    )
    acc = parse(tmp_path / "acc" / accel[0].name / "config.pbtxt").optimization.execution_accelerators
    assert acc.gpu_execution_accelerator[0].name == "tensorrt"
    assert acc.gpu_execution_accelerator[0].parameters["precision_mode"] == "FP16"
    with pytest.raises(ArtifactError, match=r"above the engine's optimization profile maximum \(8\)"):
        write_repository([full], tmp_path / "r2", max_batch_size=16)
    with pytest.raises(ArtifactError, match="tensorrt_plan backend is full TensorRT"):
        write_repository([engine], tmp_path / "r3")
    with pytest.raises(ArtifactError, match="exists"):
        write_repository([digits_onnx], tmp_path / "repo")


@pytest.fixture(scope="module")
def server(digits_onnx, digits_converted, tmp_path_factory):
    """One tritonserver for the module, serving the digits model in FP32 and CPU INT8."""
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    with running(
        [digits_onnx, digits_converted["int8-cpu"]],
        Ports.free(HOST),
        max_batch_size=16,
        log=log,
    ) as (srv, entries):
        yield srv, {e.name: e for e in entries}


@pytest.fixture(scope="module")
def test_digits() -> tuple[np.ndarray, np.ndarray]:
    images, labels = digits("test")
    return digits_batch(
        images[:200], Transform.from_pretrained(get_spec("resnest14d_digits").pretrained)
    ), labels[:200]


def http_client(srv):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(
        srv.ports.url, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S
    )


def infer_http(client, model: str, x: np.ndarray, dtype: str = "FP32", class_count: int = 0):
    import tritonclient.http as httpclient

    inp = httpclient.InferInput("input", list(x.shape), dtype)
    inp.set_data_from_numpy(x)
    out = httpclient.InferRequestedOutput("logits", class_count=class_count)
    return client.infer(model, [inp], outputs=[out])


def test_http_and_grpc_answer_as_the_runner_does_with_labels(server, digits_onnx, test_digits):
    import tritonclient.grpc as grpcclient

    srv, _ = server
    x, labels = test_digits[0][:8], test_digits[1][:8]
    with open_runner(digits_onnx) as runner:
        expected = runner.infer(x)
    via_http = infer_http(http_client(srv), "digits", x).as_numpy("logits")
    np.testing.assert_allclose(via_http, expected, rtol=1e-5, atol=1e-6)
    grpc = grpcclient.InferenceServerClient(f"{HOST}:{srv.ports.grpc}")
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    via_grpc = grpc.infer("digits", [inp], client_timeout=TIMEOUT_S).as_numpy("logits")
    np.testing.assert_allclose(via_grpc, expected, rtol=1e-5, atol=1e-6)
    top = infer_http(http_client(srv), "digits", x, class_count=1).as_numpy("logits")
    assert [row[0].decode().split(":")[2] for row in top] == [str(v) for v in labels]
    config = http_client(srv).get_model_config("digits")
    assert config["parameters"]["arch"]["string_value"] == "resnest14d_digits"
    assert http_client(srv).is_server_live() and http_client(srv).is_model_ready("digits.int8-cpu")


def test_sixteen_concurrent_clients_get_their_own_answers_and_requests_are_batched(
    server, digits_onnx, test_digits
):
    srv, _ = server
    x = test_digits[0]
    with open_runner(digits_onnx) as runner:
        expected = runner.infer_batched(x, 32)
    before = http_client(srv).get_inference_statistics("digits")["model_stats"][0]
    deadline = time.monotonic() + 300

    def client(worker: int) -> list[tuple[int, float]]:
        c = http_client(srv)
        results = []
        for i in range(50):  # bounded: 50 requests each
            assert time.monotonic() < deadline
            k = (worker * 50 + i) % len(x)
            got = infer_http(c, "digits", x[k : k + 1]).as_numpy("logits")
            results.append((k, float(np.abs(got[0] - expected[k]).max())))
        return results

    with ThreadPoolExecutor(16) as pool:
        answers = [r for rs in pool.map(client, range(16)) for r in rs]
    assert len(answers) == 800 and max(err for _, err in answers) < 1e-4  # none lost, none swapped
    after = http_client(srv).get_inference_statistics("digits")["model_stats"][0]
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 800 and executions < inferences  # dynamic batching put requests together
    batch_sizes = {b["batch_size"] for b in after["batch_stats"]}
    assert max(batch_sizes) > 1


@pytest.mark.parametrize(
    ("case", "x", "dtype", "message"),
    [
        ("wrong shape", np.zeros((1, 3, 16, 16), np.float32), "FP32", "unexpected shape for input 'input'"),
        ("wrong dtype", np.zeros((1, 3, 32, 32), np.int32), "INT32", "but model 'digits' expects 'FP32'"),
        ("batch above max", np.zeros((17, 3, 32, 32), np.float32), "FP32", "send a smaller batch"),
        ("empty", np.zeros((0, 3, 32, 32), np.float32), "FP32", "byte size mismatch"),
        ("NaN", np.full((1, 3, 32, 32), np.nan, np.float32), "FP32", "input holds NaN or Inf"),
    ],
)
def test_bad_requests_get_client_errors_and_the_server_answers_the_next_one(
    server, test_digits, case, x, dtype, message
):
    from tritonclient.utils import InferenceServerException

    srv, _ = server
    c = http_client(srv)
    with pytest.raises(InferenceServerException) as caught:
        infer_http(c, "digits", x, dtype)
    assert caught.value.status() == "400" and message in caught.value.message(), case
    good = infer_http(c, "digits", test_digits[0][:2]).as_numpy("logits")
    assert list(good.argmax(1)) == list(test_digits[1][:2]), case


def test_serve_runs_files_in_openvino_when_asked(digits_onnx, test_digits, tmp_path):
    pytest.importorskip("openvino")
    x = test_digits[0][:4]
    with open_runner(digits_onnx) as runner:
        expected = runner.infer(x)
    with running([digits_onnx], Ports.free(HOST), provider="openvino", log=tmp_path / "ov.log") as (srv, _):
        config = http_client(srv).get_model_config("digits")
        assert config["parameters"]["provider"]["string_value"] == "openvino"
        np.testing.assert_allclose(
            infer_http(http_client(srv), "digits", x).as_numpy("logits"), expected, atol=1e-4
        )


def test_a_server_killed_under_load_fails_its_clients_fast_and_restarts_on_the_same_ports(
    digits_onnx, tmp_path
):
    from tritonclient.utils import InferenceServerException

    ports = Ports.free(HOST)
    x = np.zeros((1, 3, 32, 32), np.float32)
    outcomes: list[str] = []
    with running([digits_onnx], ports, log=tmp_path / "a.log") as (srv, _):
        stop_at = time.monotonic() + 60

        def load() -> None:
            c = http_client(srv)
            for _ in range(100_000):  # bounded in count and time: runs until the kill, at most 60 s
                if time.monotonic() > stop_at:
                    break
                try:
                    infer_http(c, "digits", x)
                    outcomes.append("ok")
                except (InferenceServerException, OSError, ConnectionError, Exception) as e:
                    outcomes.append(type(e).__name__)
                    return

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        assert srv.process is not None
        os.killpg(srv.process.pid, signal.SIGKILL)  # the server and its stubs, by its own pid
        started = time.monotonic()
        for t in threads:
            t.join(TIMEOUT_S + 5)
        assert not any(t.is_alive() for t in threads) and time.monotonic() - started < TIMEOUT_S + 5
    assert "ok" in outcomes and sum(o != "ok" for o in outcomes) == 4  # each client saw an error, none hung
    with running([digits_onnx], ports, log=tmp_path / "b.log") as (srv, _):
        assert infer_http(http_client(srv), "digits", x).as_numpy("logits").shape == (1, 10)


def test_serve_cli_refuses_a_busy_port_and_stops_cleanly_on_sigint(digits_onnx, tmp_path):
    http, grpc, metrics, _ = astuple(Ports.free(HOST))
    with socket.socket() as busy:
        busy.bind((HOST, http))
        busy.listen()
        busy_port = f"cannot listen on {HOST}:{http} .*; choose another http_port or host"
        with pytest.raises(ServeError, match=busy_port):  # the library names its parameters
            Ports(http, grpc, metrics, HOST).check_free()
        ports = ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
        said = CliRunner().invoke(app, ["serve", str(digits_onnx), "--host", HOST, *ports]).output
        assert "choose another --http-port or --host" in " ".join(said.split()), said  # the CLI its options
    args = [sys.executable, "-m", "resnest_deploy.cli", "serve", str(digits_onnx), "--host", HOST]
    args += ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        ready = False
        while time.monotonic() < deadline and proc.poll() is None and not ready:
            try:
                with socket.create_connection((HOST, http), timeout=1):
                    import urllib.request

                    with urllib.request.urlopen(f"http://{HOST}:{http}/v2/health/ready", timeout=2) as r:
                        ready = r.status == 200
            except OSError:
                time.sleep(0.5)
        assert ready, proc.stderr.read() if proc.poll() is not None else "not ready in time"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "serving digits" in out
        with socket.socket() as s:  # the ports are free again: nothing was left running
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((HOST, http))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
