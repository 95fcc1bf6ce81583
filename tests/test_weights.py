from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from safetensors.torch import save_file

from resnest_deploy.errors import WeightsError
from resnest_deploy.models import create_model, load_model
from resnest_deploy.models.weights import MIRROR_ENV

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(X)


@pytest.fixture(scope="module")
def ckpt_14d(refdata_checkpoint) -> Path:
    return refdata_checkpoint("resnest14d")


@pytest.fixture(scope="module")
def expected(ckpt_14d) -> torch.Tensor:
    return logits(create_model("resnest14d", ckpt_14d))


def test_plain_pth_loads_and_differs_from_random(ckpt_14d, expected):
    assert not torch.allclose(expected, logits(create_model("resnest14d")))


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module_prefix"])
def test_nested_and_dataparallel_checkpoints_load(tmp_path, ckpt_14d, expected, wrap):
    sd = torch.load(ckpt_14d, weights_only=True)
    obj = {f"module.{k}": v for k, v in sd.items()} if wrap == "module_prefix" else {wrap: sd, "epoch": 3}
    path = tmp_path / "wrapped.pt"
    torch.save(obj, path)
    torch.testing.assert_close(logits(create_model("resnest14d", path)), expected)


def test_safetensors_loads(tmp_path, ckpt_14d, expected):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in torch.load(ckpt_14d, weights_only=True).items()}, path)
    torch.testing.assert_close(logits(create_model("resnest14d", path)), expected)


def test_provenance_records_sha256(ckpt_14d):
    _, info = load_model("resnest14d", ckpt_14d)
    assert info.kind == "file" and info.sha256 == hashlib.sha256(ckpt_14d.read_bytes()).hexdigest()


def test_missing_file_is_one_clear_line(tmp_path):
    with pytest.raises(WeightsError, match="checkpoint not found") as e:
        create_model("resnest14d", tmp_path / "nope.pth")
    assert "\n" not in str(e.value)


def test_truncated_file_is_rejected(tmp_path, ckpt_14d):
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(ckpt_14d.read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="truncated") as e:
        create_model("resnest14d", bad)
    assert "\n" not in str(e.value)


def test_wrong_arch_checkpoint_summarises_keys(ckpt_14d):
    with pytest.raises(WeightsError, match=r"does not fit resnest26d: \d+ missing \(layer1\.1\.") as e:
        create_model("resnest26d", ckpt_14d)
    assert "another arch" in str(e.value)


def test_mis_shaped_checkpoint_is_rejected(ckpt_14d):
    with pytest.raises(WeightsError, match="mis-shaped"):
        create_model("resnest50_fast_4s2x40d", ckpt_14d)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_arbitrary_pickles_are_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": Evil()}, path)
    with pytest.raises(WeightsError, match="cannot read checkpoint"):
        create_model("resnest14d", path)
    assert "pwned" not in capsys.readouterr().out


def test_num_classes_follows_a_fine_tuned_head(tmp_path, ckpt_14d):
    sd = torch.load(ckpt_14d, weights_only=True)
    sd["fc.weight"], sd["fc.bias"] = sd["fc.weight"][:10].clone(), sd["fc.bias"][:10].clone()
    torch.save(sd, tmp_path / "ten.pth")
    assert create_model("resnest14d", tmp_path / "ten.pth").fc.out_features == 10


# --- downloads through a real HTTP server on loopback -------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    truncate: ClassVar[set[str]] = set()
    ranges: ClassVar[list[int]] = []

    def do_GET(self):
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
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"files": {}, "truncate": set(), "ranges": []})
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


def test_pretrained_official_download_is_verified_and_cached(
    server, torch_home, ckpt_14d, monkeypatch, expected
):
    # resnest50's real release name carries its sha256 prefix; serve resnest50-shaped weights under a
    # name with *their* prefix through the mirror variable, exactly as a user's mirror would.
    base, handler = server
    body = ckpt_14d.read_bytes()
    name = f"resnest14d-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    handler.files[f"/{name}"] = body
    model, info = load_model("resnest14d", f"{base}/{name}")
    torch.testing.assert_close(logits(model), expected)
    assert (torch_home / name).is_file() and info.kind == "url"
    handler.files.clear()  # second load comes from the cache, not the network
    torch.testing.assert_close(logits(create_model("resnest14d", f"{base}/{name}")), expected)


def test_official_pretrained_goes_through_mirror(server, torch_home, monkeypatch):
    base, _handler = server
    monkeypatch.setenv(MIRROR_ENV, base)
    with pytest.raises(WeightsError, match=r"cannot download .*/resnest50-528c19ca\.pth .*--weights PATH"):
        create_model("resnest50", "pretrained")  # the mirror does not have it: 404, one line
    assert not torch_home.exists() or not any(torch_home.iterdir())


def test_hash_mismatch_is_rejected_and_not_cached(server, torch_home, ckpt_14d):
    base, handler = server
    handler.files["/resnest14d-00000000.pth"] = ckpt_14d.read_bytes()
    with pytest.raises(WeightsError, match=r"rejected: sha256 .* does not match 00000000"):
        create_model("resnest14d", f"{base}/resnest14d-00000000.pth")
    assert not any(torch_home.iterdir())


def test_interrupted_download_leaves_no_cache_entry(server, torch_home, ckpt_14d):
    base, handler = server
    handler.files["/cut.pth"] = ckpt_14d.read_bytes()
    handler.truncate.add("/cut.pth")
    with pytest.raises(WeightsError, match=r"stopped at \d+ of \d+ bytes; retry to resume"):
        create_model("resnest14d", f"{base}/cut.pth")
    assert not (torch_home / "cut.pth").exists()  # nothing a later load would mistake for the file
    # the next attempt resumes where the first stopped (a Range request) and completes the file
    handler.truncate.clear()
    create_model("resnest14d", f"{base}/cut.pth")
    assert handler.ranges == [0, len(ckpt_14d.read_bytes()) // 2]
    assert (torch_home / "cut.pth").read_bytes() == ckpt_14d.read_bytes()


def test_offline_official_names_the_missing_file(torch_home, monkeypatch):
    monkeypatch.setenv("RESNEST_DEPLOY_OFFLINE", "1")
    with pytest.raises(
        WeightsError, match=r"offline and resnest50-528c19ca\.pth is not cached at .*--weights PATH"
    ):
        create_model("resnest50", "pretrained")


def test_offline_timm_names_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsError, match=r"cannot get timm/resnest14d\.gluon_in1k/model\.safetensors") as e:
        create_model("resnest14d", "pretrained")
    assert "\n" not in str(e.value)


def test_official_cache_is_used_offline(torch_home, monkeypatch, ckpt_14d):
    # A file a user copied into the cache by hand is used, and its name's sha256 prefix is checked.
    monkeypatch.setenv("RESNEST_DEPLOY_OFFLINE", "1")
    torch_home.mkdir(parents=True)
    (torch_home / "resnest50-528c19ca.pth").write_bytes(ckpt_14d.read_bytes())
    with pytest.raises(WeightsError, match="fails its sha256 check"):
        create_model("resnest50", "pretrained")
