from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from helpers import manifest, recipe_state_dict


@pytest.fixture(scope="session", autouse=True)
def _fresh_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every run calibrates for real: nothing is reused from an earlier run's cache."""
    os.environ["RESNEST_DEPLOY_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def refdata_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """Recipe-B weights for an arch saved as a plain .pth: a realistic, sensitive checkpoint."""
    import torch

    cache: dict[str, Path] = {}

    def make(arch: str) -> Path:
        if arch not in cache:
            path = tmp_path_factory.mktemp("ckpt") / f"{arch}.pth"
            torch.save(recipe_state_dict(manifest(arch), "b"), path)
            cache[arch] = path
        return cache[arch]

    return make


@pytest.fixture(scope="session")
def onnx_14d(tmp_path_factory: pytest.TempPathFactory, refdata_checkpoint) -> Path:
    from resnest_deploy.export import export_onnx
    from resnest_deploy.models import load_model

    model, info = load_model("resnest14d", refdata_checkpoint("resnest14d"))
    path = tmp_path_factory.mktemp("onnx") / "resnest14d.onnx"
    export_onnx(model, path, input_size=(64, 64), weights=info)
    return path


@pytest.fixture(scope="session")
def onnx_50(tmp_path_factory: pytest.TempPathFactory, refdata_checkpoint) -> Path:
    """The one full-size round trip: resnest50 at 224x224."""
    from resnest_deploy.export import export_onnx
    from resnest_deploy.models import load_model

    model, info = load_model("resnest50", refdata_checkpoint("resnest50"))
    path = tmp_path_factory.mktemp("onnx") / "resnest50.onnx"
    export_onnx(model, path, weights=info)
    return path


@pytest.fixture(scope="session")
def digits_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled, really trained digits model: where precision loss is measured."""
    from resnest_deploy.export import export_onnx
    from resnest_deploy.models import load_model

    model, info = load_model("resnest14d_digits", "pretrained")
    path = tmp_path_factory.mktemp("digits") / "digits.onnx"
    export_onnx(model, path, weights=info)
    return path


@pytest.fixture(scope="session")
def digits_converted(digits_onnx: Path) -> dict[str, Path]:
    """FP16 and both INT8 flavours of the digits model, converted once for every test."""
    from resnest_deploy.data import Transform
    from resnest_deploy.models import get_spec
    from resnest_deploy.precision import ConversionConfig, calibration, convert

    calib = calibration.from_digits(Transform.from_pretrained(get_spec("resnest14d_digits").pretrained))
    out = {}
    for precision, target in (("fp16", "tensorrt"), ("int8", "tensorrt"), ("int8", "cpu")):
        report = convert(digits_onnx, None, ConversionConfig(precision, target), calib)
        out[report.path.name.split(".", 1)[1].removesuffix(".onnx")] = report.path
    return out  # keys: fp16, int8, int8-cpu


# --- a real HTTP server on loopback, for downloads -----------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    truncate: ClassVar[set[str]] = set()
    ranges: ClassVar[list[int]] = []
    requests: ClassVar[list[tuple[str, str]]] = []

    def do_HEAD(self):
        self.requests.append(("HEAD", self.path))
        self.send_error(404)

    def do_GET(self):
        self.requests.append(("GET", self.path))
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = int(self.headers.get("Range", "bytes=0-")[6:].rstrip("-") or 0)
        self.ranges.append(start)
        body = body[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # An interrupted transfer: announce the full length, send half, hang up.
        self.wfile.write(body[: len(body) // 2] if self.path in self.truncate else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def loopback() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"files": {}, "truncate": set(), "ranges": [], "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("RESNEST_DEPLOY_OFFLINE", raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"
