from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from resnest_deploy.errors import WeightsError
from resnest_deploy.models import ModelSpec, create_model, get_spec, load_model
from resnest_deploy.models.weights import MIRROR_ENV, resolve, url_cache_path

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


def official_spec(body: bytes) -> ModelSpec:
    """resnest14d published the way the official releases are (``<arch>-<sha256[:8]>.pth``): the real
    release files cannot be served here, so this spec names one whose hash prefix we can produce."""
    spec = get_spec("resnest14d")
    name = f"resnest14d-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    return dataclasses.replace(
        spec, pretrained=dataclasses.replace(spec.pretrained, file=name, hf_hub_id=None)
    )


def test_url_download_is_verified_and_cached(loopback, torch_home, ckpt_14d, expected):
    base, handler = loopback
    body = ckpt_14d.read_bytes()
    name = f"resnest14d-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    handler.files[f"/{name}"] = body
    model, info = load_model("resnest14d", f"{base}/{name}")
    torch.testing.assert_close(logits(model), expected)
    assert info.kind == "url" and url_cache_path(f"{base}/{name}").is_file()
    handler.files.clear()  # second load comes from the cache, not the network
    torch.testing.assert_close(logits(create_model("resnest14d", f"{base}/{name}")), expected)


def test_official_pretrained_downloads_through_the_mirror(loopback, torch_home, ckpt_14d, monkeypatch):
    base, handler = loopback
    body = ckpt_14d.read_bytes()
    spec = official_spec(body)
    monkeypatch.setenv(MIRROR_ENV, f"{base}/mirror/")
    handler.files[f"/mirror/{spec.pretrained.file}"] = body
    state_dict, info = resolve(spec, "pretrained")
    assert handler.requests == [("GET", f"/mirror/{spec.pretrained.file}")]
    assert info.kind == "pretrained" and info.location == f"{base}/mirror/{spec.pretrained.file}"
    assert (torch_home / str(spec.pretrained.file)).read_bytes() == body and "fc.weight" in state_dict
    with pytest.raises(WeightsError, match=r"cannot download .*/resnest50-528c19ca\.pth .*weights=PATH"):
        create_model("resnest50", "pretrained")  # the mirror does not have it: 404, one line


def test_hash_mismatch_is_rejected_and_not_cached(loopback, torch_home, ckpt_14d):
    base, handler = loopback
    handler.files["/resnest14d-00000000.pth"] = ckpt_14d.read_bytes()
    with pytest.raises(WeightsError, match=r"rejected: sha256 .* does not match 00000000"):
        create_model("resnest14d", f"{base}/resnest14d-00000000.pth")
    assert not [p for p in torch_home.rglob("*") if p.is_file()]


def test_interrupted_download_leaves_no_cache_entry(loopback, torch_home, ckpt_14d):
    base, handler = loopback
    handler.files["/cut.pth"] = ckpt_14d.read_bytes()
    handler.truncate.add("/cut.pth")
    with pytest.raises(WeightsError, match=r"stopped at \d+ of \d+ bytes; retry to resume"):
        create_model("resnest14d", f"{base}/cut.pth")
    assert not url_cache_path(f"{base}/cut.pth").exists()  # nothing a later load would mistake for it
    # the next attempt resumes where the first stopped (a Range request) and completes the file
    handler.truncate.clear()
    create_model("resnest14d", f"{base}/cut.pth")
    assert handler.ranges == [0, len(ckpt_14d.read_bytes()) // 2]
    assert url_cache_path(f"{base}/cut.pth").read_bytes() == ckpt_14d.read_bytes()


def test_offline_official_names_the_missing_file(torch_home, monkeypatch):
    monkeypatch.setenv("RESNEST_DEPLOY_OFFLINE", "1")
    with pytest.raises(
        WeightsError, match=r"offline and resnest50-528c19ca\.pth is not cached at .*weights=PATH"
    ):
        create_model("resnest50", "pretrained")


def test_offline_timm_names_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsError, match=r"cannot get timm/resnest14d\.gluon_in1k/model\.safetensors") as e:
        create_model("resnest14d", "pretrained")
    assert "\n" not in str(e.value)


def test_official_cache_is_used_offline_and_checked(torch_home, monkeypatch, ckpt_14d, expected):
    """A file copied into the cache by hand is used with no network, and its name's sha256 prefix
    is checked on every load."""
    monkeypatch.setenv("RESNEST_DEPLOY_OFFLINE", "1")
    body = ckpt_14d.read_bytes()
    spec = official_spec(body)
    torch_home.mkdir(parents=True)
    (torch_home / str(spec.pretrained.file)).write_bytes(body)
    state_dict, info = resolve(spec, "pretrained")
    model = create_model("resnest14d")
    model.load_state_dict(state_dict)
    torch.testing.assert_close(logits(model), expected)
    assert info.sha256 == hashlib.sha256(body).hexdigest()
    (torch_home / "resnest50-528c19ca.pth").write_bytes(body)
    with pytest.raises(WeightsError, match="fails its sha256 check"):
        create_model("resnest50", "pretrained")
