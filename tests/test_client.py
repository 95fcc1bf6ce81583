"""`predict --server`: a served model answers as the local file does, over HTTP and gRPC.

One real tritonserver on 127.0.0.1 for the module (stopped by its own pid on exit, also when a test
fails); every client call has a timeout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import digit_folder
from PIL import Image
from typer.testing import CliRunner

from resnest_deploy.cli.app import app
from resnest_deploy.data import digits
from resnest_deploy.errors import ArtifactError
from resnest_deploy.predict import predict
from resnest_deploy.serving.client import ClientError, Endpoint, describe, predict_served
from resnest_deploy.serving.server import Ports, running

HOST = "127.0.0.1"
cli = CliRunner()


@pytest.fixture(scope="module")
def nhwc_onnx(tmp_path_factory) -> Path:
    """The digits model taking raw uint8 NHWC frames: the client must send frames, not floats."""
    from resnest_deploy.export import export_onnx
    from resnest_deploy.models import load_model

    model, info = load_model("resnest14d_digits", "pretrained")
    path = tmp_path_factory.mktemp("nhwc") / "digits-nhwc.onnx"
    return export_onnx(model, path, input_format="uint8-nhwc", weights=info).path


@pytest.fixture(scope="module")
def served(digits_onnx, nhwc_onnx, tmp_path_factory):
    log = tmp_path_factory.mktemp("client") / "tritonserver.log"
    with running([digits_onnx, nhwc_onnx], Ports.free(HOST), max_batch_size=4, log=log) as (srv, _):
        yield srv


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real image files of several sizes and formats (RGB and greyscale, JPEG and PNG)."""
    folder = tmp_path_factory.mktemp("photos")
    images, _ = digits("test")
    for i in range(7):
        im = Image.fromarray(images[i]).resize((40 + 9 * i, 33 + 5 * i), Image.Resampling.BICUBIC)
        if i % 2:
            im.convert("RGB").save(folder / f"d{i}.jpg", quality=90)
        else:
            im.save(folder / f"d{i}.png")
    return folder


def urls(srv) -> dict[str, str]:
    return {"http": f"http://{srv.ports.url}", "grpc": f"grpc://{HOST}:{srv.ports.grpc}"}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_predict_server_gives_the_local_top5_over_http_and_grpc(
    served, digits_onnx, nhwc_onnx, photos, protocol
):
    url = urls(served)[protocol]
    for artifact, name in ((digits_onnx, "digits"), (nhwc_onnx, "digits-nhwc")):
        local = predict([photos], str(artifact), topk=5)
        remote, model = predict_served([photos], url, model=name, topk=5)
        assert len(local) == 7 and model.transform_source == "the served model's config"
        assert [p.image for p in remote] == [p.image for p in local]
        for lp, rp in zip(local, remote, strict=True):
            assert [i for i, *_ in rp.top] == [i for i, *_ in lp.top], (name, lp.image)
            np.testing.assert_allclose([pr for *_, pr in rp.top], [pr for *_, pr in lp.top], atol=1e-5)
    assert model.form.name == "uint8-nhwc" and model.datatype == "UINT8"
    # the CLI prints the same table as a local predict, and the same JSON
    args = [str(photos / "d1.jpg"), str(photos / "d2.png"), "--topk", "3"]
    here = cli.invoke(app, ["predict", str(digits_onnx), *args])
    there = cli.invoke(app, ["predict", "--server", url, "--model", "digits", *args])
    assert here.exit_code == there.exit_code == 0, there.output
    assert there.stdout == here.stdout
    as_json = cli.invoke(app, ["predict", "--server", url, "--model", "digits", *args, "--json"])
    assert [p["top"][0]["index"] for p in json.loads(as_json.stdout)] == [
        local[1].top[0][0],
        local[2].top[0][0],
    ]


def test_predict_server_errors_name_the_cause(served, photos, tmp_path):
    http, grpc = urls(served)["http"], urls(served)["grpc"]
    image = str(photos / "d0.png")
    with pytest.raises(ClientError, match="name the model with model "):
        predict_served([image], http)  # serve keeps Triton's model listing closed
    said = cli.invoke(app, ["predict", "--server", http, image]).output
    assert "name the model with --model " in " ".join(said.split()), said  # the CLI names its option
    with pytest.raises(ClientError, match="unknown model: 'nope'"):
        predict_served([image], grpc, model="nope")
    with pytest.raises(ClientError, match="is that the gRPC port"):
        predict_served([image], f"http://{HOST}:{served.ports.grpc}", model="digits")
    refused = f"http://{HOST}:{Ports.free(HOST).http}"
    with pytest.raises(ClientError, match=r"cannot reach .* is `resnest-deploy serve` running there"):
        predict_served([image], refused, model="digits")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="is a folder with no images in it"):
        predict_served([tmp_path / "empty"], http, model="digits")
    r = cli.invoke(app, ["predict", "--server", http, "model.onnx", image])
    assert r.exit_code == 2 and "every argument is an image" in r.output


def test_predict_takes_folders_as_eval_does(digits_onnx, tmp_path):
    root = digit_folder(tmp_path / "val", per_class=2, size=24)
    preds = predict([root], str(digits_onnx), topk=1)
    assert len(preds) == 20
    assert sum(Path(p.image).parent.name == p.top[0][1] for p in preds) >= 18  # a trained model
    with pytest.raises(ArtifactError, match="image not found"):
        predict([tmp_path / "missing.jpg"], str(digits_onnx))


GOOD = {
    "max_batch_size": 4,
    "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, 32, 32]}],
    "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}],
    "parameters": {
        "input_format": {"string_value": "float"},
        "preprocessing": {
            "string_value": json.dumps(
                {
                    "crop": [32, 32],
                    "resize": 36,
                    "interpolation": "bicubic",
                    "mean": [0.5] * 3,
                    "std": [0.25] * 3,
                }
            )
        },
    },
}


def _with(**params: str) -> dict:
    config = json.loads(json.dumps(GOOD))
    config["parameters"] |= {k: {"string_value": v} for k, v in params.items()}
    return config


def test_a_served_config_is_checked_before_it_is_used():
    model = describe(GOOD, "m")
    assert (model.transform.resize, model.transform.interpolation, model.transform.std) == (
        36,
        "bicubic",
        (0.25,) * 3,
    )
    bad = [
        (_with(preprocessing="{not json"), "not JSON"),
        (
            _with(preprocessing=json.dumps({"crop": [64, 64], "resize": 72})),
            "crops 64x64 but its input is 32x32",
        ),
        (_with(preprocessing=json.dumps({"crop": [32, 32], "resize": 10**9})), "outside"),
        (
            _with(
                preprocessing=json.dumps(
                    {
                        "crop": [32, 32],
                        "resize": 36,
                        "interpolation": "bilinear",
                        "mean": [0, 0, 0],
                        "std": [0, 1, 1],
                    }
                )
            ),
            "mean/std",
        ),
        (_with(input_format="uint8-nhwc"), "not what its uint8-nhwc input form takes"),
        (_with(preprocessing=""), "records no preprocessing and no arch"),
        ({**GOOD, "input": GOOD["input"] * 2}, "2 inputs"),
    ]
    for config, message in bad:
        with pytest.raises(ClientError, match=message):
            describe(config, "m")
    fallback = describe(_with(preprocessing="", arch="resnest14d_digits"), "m")
    assert fallback.transform_source == "the resnest14d_digits registry entry"


def test_server_urls():
    assert str(Endpoint.parse("127.0.0.1:8000")) == "http://127.0.0.1:8000"
    assert Endpoint.parse("grpc://localhost").address == "localhost:8001"
    assert Endpoint.parse("grpcs://[::1]:9").ssl and Endpoint.parse("grpcs://[::1]:9").address == "[::1]:9"
    for bad in ("ftp://h:1", "http://h:1/v2/models", "http://h:99999", "http://"):
        with pytest.raises(ClientError, match=r"^server "):
            Endpoint.parse(bad)


def documented_blocks() -> tuple[dict[str, str], list[str]]:
    """serving.md's client files (python blocks named by their first line) and its curl lines."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "serving.md").read_text()
    files, curl, lang, block = {}, [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if lang == "python" and block and block[0].startswith("# ") and ".py" in block[0]:
                files[block[0].split()[1].rstrip(":")] = "\n".join(block) + "\n"
            lang, block = (line[3:].strip() or None) if lang is None else None, []
            continue
        block.append(line)
        if lang == "bash" and ("curl " in line or "make_request.py" in line):
            curl.append(line)
    return files, curl


def test_the_documented_curl_and_tritonclient_requests_work_on_a_real_image(
    served, digits_onnx, photos, tmp_path
):
    files, lines = documented_blocks()
    assert set(files) == {"preprocess.py", "make_request.py", "client.py"} and len(lines) == 3
    image = photos / "d3.jpg"
    expected = predict([image], str(digits_onnx), topk=5)[0].top

    def here(text: str) -> str:
        return (
            text.replace("127.0.0.1:8000", served.ports.url)
            .replace("resnest50", "digits")
            .replace("cat.jpg", str(image))
        )

    for name, code in files.items():
        (tmp_path / name).write_text(here(code))
    script = "set -e\n" + "\n".join(here(ln).replace("python ", f"{sys.executable} ") for ln in lines)
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)["outputs"][0]["data"]  # curl: score:index:label, best first
    assert [int(a.split(":")[1]) for a in answer] == [i for i, *_ in expected]
    client = subprocess.run(
        [sys.executable, "client.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert client.returncode == 0, client.stderr
    assert f":{expected[0][0]}:" in client.stdout.split("\n")[0]
