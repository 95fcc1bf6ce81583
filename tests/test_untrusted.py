"""Untrusted strings, sizes and numbers: one class of hostile input per test, each fixed at its root.

Text reaches configs and terminals escaped or refused; sizes from files and images are bounded before
anything is allocated; files, disks and streams fail in one line; a reference kept apart from the
file catches what a recorded one cannot. Each test failed on the code before its fix.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from resnest_deploy import _io, deepstream, metadata, reference
from resnest_deploy.cli._console import visible
from resnest_deploy.cli._errors import handle_errors
from resnest_deploy.cli.app import app
from resnest_deploy.data import ImageError, Transform, to_rgb8
from resnest_deploy.errors import ArtifactError
from resnest_deploy.limits import LimitError
from resnest_deploy.models import get_spec

CLI = Path(sys.executable).with_name("resnest-deploy")
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def run_cli(*args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(CLI), *map(str, args)], cwd=cwd, capture_output=True, timeout=300, **kwargs)


def copy_artifact(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dest)
    shutil.copy(_io.sidecar_path(src), _io.sidecar_path(dest))
    return dest


def with_metadata(src: Path, dest: Path, **changes) -> Path:
    import onnx

    model = onnx.load(src)
    metadata.embed(model, metadata.from_onnx(model) | changes)
    onnx.save(model, dest)
    return dest


# --- text that becomes a config or reaches a terminal -------------------------------------------


def test_nvinfer_configs_take_names_from_the_graph_and_refuse_values_that_break_the_key_file(
    digits_onnx, tmp_path
):
    liar = with_metadata(
        digits_onnx, tmp_path / "liar.onnx", output={"name": "logits\nmodel-engine-file=/etc/passwd"}
    )
    cfg = deepstream.nvinfer_config(liar)
    assert cfg.properties["output-blob-names"] == "logits"
    assert cfg.text().count("\n[") == 1 and cfg.text().count("\n") == len(cfg.properties) + 2
    evil = copy_artifact(digits_onnx, tmp_path / "a\nnetwork-mode=2" / "m.onnx")
    with pytest.raises(ArtifactError, match=r"onnx-file would be .* which an nvinfer config cannot hold"):
        deepstream.nvinfer_config(evil)
    with pytest.raises(ArtifactError, match="cannot hold"):
        deepstream.write(digits_onnx, tmp_path / "c\n[class-attrs-all].txt")
    assert not list(tmp_path.glob("c*"))
    with pytest.raises(LimitError, match=r"^batch_size 1000000000 is more than the maximum 4096") as e:
        deepstream.nvinfer_config(digits_onnx, batch_size=1_000_000_000)
    assert e.value.params == ("batch_size",)  # the library names its parameter; the CLI, its flag:
    said = runner.invoke(
        app, ["deepstream", str(digits_onnx), "--batch-size", "1000000000", "-o", str(tmp_path / "x.txt")]
    )
    assert said.exit_code == 2
    assert "error: --batch-size 1000000000 is more than the maximum 4096" in said.output


@pytest.mark.parametrize(
    ("stats", "bad"),
    [
        ({"mean": [float("nan"), 0.4, 0.4], "std": [0.2, 0.2, 0.2]}, "mean"),
        ({"mean": [0.4, 0.4, 0.4], "std": [float("inf"), 0.2, 0.2]}, "std"),
        ({"mean": [0.4, 0.4, 0.4], "std": [1e-320, 0.2, 0.2]}, "std"),
        ({"mean": [1e9, 0.4, 0.4], "std": [0.2, 0.2, 0.2]}, "mean"),
    ],
)
def test_metadata_normalisation_must_be_finite_and_plausible(digits_onnx, tmp_path, stats, bad):
    meta = metadata.from_onnx(__import__("onnx").load(digits_onnx))
    liar = with_metadata(digits_onnx, tmp_path / "liar.onnx", preprocessing=meta["preprocessing"] | stats)
    with pytest.raises(ArtifactError, match=f"malformed 'preprocessing.{bad}'"):
        metadata.of_artifact(liar)
    r = invoke("deepstream", liar)
    assert r.exit_code != 0 and "nan" not in r.output.lower().replace("malformed", "")


def test_paths_and_names_holding_markup_are_printed_as_written_without_a_traceback(digits_onnx, tmp_path):
    odd = copy_artifact(digits_onnx, tmp_path / "a[" / "x]b[red]c.onnx")
    for args in (("inspect", odd), ("check", odd), ("predict", odd, "--topk", "1")):
        if args[0] == "predict":
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "[red]b.png")
            args = (*args, tmp_path / "[red]b.png")
        r = invoke(*args)
        assert r.exit_code == 0, (args, r.output)
        assert "x]b[red]c.onnx" in r.output.replace("\n", "") or "[red]b.png" in r.output
    r = invoke("triton", odd, "--repo", tmp_path / "repo", "--name", "odd")
    assert r.exit_code == 0 and "x]b[red]c.onnx" in r.output.replace("\n", "")


def test_control_characters_from_metadata_are_shown_escaped(digits_onnx, tmp_path):
    evil = with_metadata(digits_onnx, tmp_path / "evil.onnx", arch="resnest14d_digits")
    side = metadata.read_sidecar(digits_onnx) or {}
    side["command"] = "\x1b]0;owned\x07\x1b[2J"
    _io.sidecar_path(evil).write_text(json.dumps(side | {"file": {"sha256": _io.sha256_file(evil)}}))
    (tmp_path / "t\x1b[31m.onnx").write_bytes(evil.read_bytes())
    r = run_cli("inspect", "t\x1b[31m.onnx", cwd=tmp_path)
    assert r.returncode == 0 and b"\x1b" not in r.stdout and b"t\\x1b[31m.onnx" in r.stdout
    assert visible("a\x1b]0;x\x07b\u202ec") == "a\\x1b]0;x\\x07b\\u202ec"


def test_json_output_is_strict_rfc_8259(digits_onnx, tmp_path):
    liar = copy_artifact(digits_onnx, tmp_path / "m.onnx")
    side = json.loads(_io.sidecar_path(liar).read_text())
    side["parity"] = {"batch=1": {"max_abs": float("nan"), "cosine": float("inf")}}
    _io.sidecar_path(liar).write_text(json.dumps(side))
    r = invoke("inspect", liar, "--json")

    def refuse(token: str):
        raise ValueError(f"{token} is not JSON")

    assert r.exit_code == 0
    doc = json.loads(r.stdout, parse_constant=refuse)
    assert doc["sidecar"]["parity"]["batch=1"] == {"max_abs": None, "cosine": None}


# --- sizes from files and images ------------------------------------------------------------------


def test_an_image_strip_is_refused_before_it_is_resized():
    with pytest.raises(ImageError, match="aspect ratio above 20"):
        to_rgb8(Image.new("RGB", (60_000, 1)))
    transform = Transform.from_pretrained(get_spec("resnest50").pretrained)
    assert transform(Image.new("RGB", (400, 300))).shape == (3, 224, 224)


def test_out_of_memory_anywhere_is_one_error_line(capsys):
    @handle_errors
    def greedy() -> None:
        raise MemoryError

    with pytest.raises(Exception) as caught:
        greedy()
    assert getattr(caught.value, "exit_code", None) == 1
    assert capsys.readouterr().err.strip().startswith("error: out of memory")


@pytest.mark.parametrize(
    ("probe", "message"),
    [
        ([16, 3, 100_000, 100_000], "probe of 100000x100000 for a file that takes 32x32"),
        ([16, 3, -32, 32], "probe of -32x32"),
        ([16, 3, 48, 48], "probe of 48x48 for a file that takes 32x32"),
        ([10**9, 3, 32, 32], "probe shape"),
    ],
)
def test_a_recorded_probe_is_bounded_and_checked_before_anything_is_allocated(
    digits_onnx, tmp_path, probe, message
):
    meta = metadata.of_artifact(digits_onnx)
    ref = dict(meta["reference"])
    ref["inputs"] = dict(ref["inputs"]) | {"shape": probe}
    with pytest.raises(ArtifactError, match=message):
        reference.recorded(meta | {"reference": ref}, "m.onnx", (32, 32))


def test_non_square_exports_work_end_to_end(tmp_path):
    r = invoke(
        "export", "--arch", "resnest14d_digits", "--input-size", "32", "48", "-o", tmp_path / "ns.onnx"
    )
    assert r.exit_code == 0, r.output
    Image.fromarray(np.zeros((40, 64, 3), np.uint8)).save(tmp_path / "a.png")
    assert invoke("check", tmp_path / "ns.onnx").exit_code == 0
    assert invoke("predict", tmp_path / "ns.onnx", tmp_path / "a.png").exit_code == 0
    shape = Transform.from_pretrained(get_spec("resnest14d_digits").pretrained, 32, 48)(
        Image.open(tmp_path / "a.png")
    )
    assert shape.shape == (3, 32, 48)


def test_thread_counts_are_bounded_like_every_other_count(digits_onnx):
    r = invoke("bench", digits_onnx, "--threads", "100000")
    assert r.exit_code == 2 and "less than or equal to 256" in r.output


# --- files, disks and streams ---------------------------------------------------------------------


def test_a_file_size_limit_during_export_is_one_line_naming_the_path_and_leaves_nothing(tmp_path):
    def limit() -> None:  # 64 KiB: the digits export (2 MiB) cannot be written
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    r = run_cli(
        "export", "--arch", "resnest14d_digits", "-o", tmp_path / "m.onnx", cwd=tmp_path, preexec_fn=limit
    )
    err = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: cannot") and "File too large" in err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("m.onnx", ".m.onnx"))]


def test_output_that_cannot_be_written_is_an_error_not_a_silent_success(tmp_path):
    assert run_cli("models", cwd=tmp_path).returncode == 0  # the baseline: stdout open
    r = subprocess.run(f"'{CLI}' models >&-", shell=True, cwd=tmp_path, capture_output=True, timeout=120)
    assert r.returncode != 0 and b"standard output is closed" in r.stderr
    with open("/dev/full", "wb") as full:
        r = subprocess.run(
            [str(CLI), "models"], cwd=tmp_path, stdout=full, stderr=subprocess.PIPE, timeout=120
        )
    assert r.returncode != 0 and b"No space left on device" in r.stderr and b"Traceback" not in r.stderr


def test_a_file_name_that_is_not_utf8_is_checked_like_any_other(digits_onnx, tmp_path):
    odd = os.fsencode(tmp_path) + b"/bad\xff.onnx"
    shutil.copy(digits_onnx, odd)
    shutil.copy(_io.sidecar_path(digits_onnx), odd + b".json")
    r = run_cli("check", os.fsdecode(odd), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-500:]
    assert b"bad\\udcff.onnx" in r.stdout + r.stderr


def test_eval_refuses_labels_the_model_cannot_produce_and_reports_what_it_skipped(digits_onnx, tmp_path):
    from helpers import digit_folder

    folder = digit_folder(tmp_path / "lab", classes=range(3), per_class=2)
    (folder / "7").symlink_to(tmp_path / "nowhere")
    r = invoke("eval", "--images", folder, digits_onnx, "--json")
    assert r.exit_code == 0 and any(
        "7: not a folder or a file" in s for s in json.loads(r.stdout)["images"]["skipped"]
    )
    (folder / "12").mkdir()
    shutil.copy(folder / "0" / "0.png", folder / "12")
    r = invoke("eval", "--images", folder, digits_onnx)
    assert r.exit_code == 1 and "label 12, but the model has 10 classes" in r.output


def test_an_onnx_only_provider_given_an_engine_is_refused(digits_onnx, tmp_path):
    from resnest_deploy.engine import build_engine
    from resnest_deploy.loaders import open_runner
    from resnest_deploy.runners import RunnerOptions

    engine = build_engine(digits_onnx, tmp_path / "e.plan", batch=(1, 2, 4)).path
    with pytest.raises(ArtifactError, match=r"provider=openvino runs \.onnx files"):
        open_runner(engine, RunnerOptions.from_provider("openvino"))


# --- recorded references --------------------------------------------------------------------------


def test_a_reference_kept_apart_catches_a_file_whose_weights_and_record_were_both_replaced(tmp_path):
    ok = invoke(
        "export",
        "--arch",
        "resnest14d_digits",
        "-o",
        tmp_path / "m.onnx",
        "--reference-out",
        tmp_path / "ref.npz",
    )
    assert ok.exit_code == 0, ok.output
    forged = invoke("export", "--arch", "resnest14d_digits", "--weights", "random", "-o", tmp_path / "f.onnx")
    assert forged.exit_code == 0
    recorded = invoke("check", tmp_path / "f.onnx", "--reference", "recorded")
    assert (
        recorded.exit_code == 0 and "proves the runtime reproduces the file's own record" in recorded.output
    )
    apart = invoke("check", tmp_path / "f.onnx", "--reference", tmp_path / "ref.npz")
    assert apart.exit_code == 1 and "FAIL" in apart.output
    assert invoke("check", tmp_path / "m.onnx", "--reference", tmp_path / "ref.npz").exit_code == 0
    (tmp_path / "pickle.npz").write_bytes(b"\x80\x04K\x01.")
    bad = invoke("check", tmp_path / "m.onnx", "--reference", tmp_path / "pickle.npz")
    assert bad.exit_code == 1 and "is not a reference file" in bad.output


# --- image folders and eval -----------------------------------------------------------------------

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\nnewpath 0 0 moveto 32 32 lineto stroke\n%%EOF\n"


def test_image_folders_decode_only_the_formats_the_docs_name_and_list_dangling_links(digits_onnx, tmp_path):
    """Pillow opened any format it knows, by content: a GIF named .png was evaluated, an EPS ran
    Ghostscript; a link to nothing was dropped without a word."""
    from helpers import digit_folder

    folder = digit_folder(tmp_path / "lab", classes=range(2), per_class=2)
    Image.open(folder / "0" / "0.png").save(folder / "0" / "gif.png", format="GIF")
    (folder / "1" / "vector.jpg").write_bytes(EPS)
    (folder / "1" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    r = invoke("eval", "--images", folder, digits_onnx, "--json")
    assert r.exit_code == 0, r.output
    described = json.loads(r.stdout)["images"]
    assert described["images"] == 4
    skipped = "\n".join(described["skipped"])
    assert "gif.png: not a JPEG/PNG/WEBP/BMP/TIFF image" in skipped
    assert "vector.jpg: not a JPEG/PNG/WEBP/BMP/TIFF image" in skipped
    assert "gone.png: a link to nothing" in skipped


@pytest.mark.parametrize(
    ("folder_name", "says"),
    [
        ("n01440764", "neither a class index nor a known synset id"),  # ImageNet's class 0, not digits'
        ("²", "neither a class index nor a known synset id"),  # str.isdigit, but int() refuses it
        ("٣", "neither a class index nor a known synset id"),
    ],
)
def test_eval_refuses_class_folders_a_10_class_model_cannot_have_in_one_line(
    digits_onnx, tmp_path, folder_name, says
):
    from helpers import digit_folder

    folder = digit_folder(tmp_path / "lab", classes=range(1), per_class=2)
    (folder / folder_name).mkdir()
    shutil.copy(folder / "0" / "0.png", folder / folder_name)
    r = invoke("eval", "--images", folder, digits_onnx)
    assert r.exit_code == 1 and says in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output


def test_eval_on_a_folder_where_nothing_decodes_says_so_in_one_line(digits_onnx, tmp_path):
    (tmp_path / "lab" / "3").mkdir(parents=True)
    (tmp_path / "lab" / "3" / "a.png").write_bytes(b"garbage")
    (tmp_path / "lab" / "3" / "b.jpg").write_bytes(EPS)
    r = invoke("eval", "--images", tmp_path / "lab", digits_onnx)
    assert r.exit_code == 1 and "none of the 2 images under" in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output


def test_bench_refuses_a_plot_it_cannot_draw_before_timing(digits_onnx, tmp_path):
    r = invoke("bench", digits_onnx, "--batch-sizes", "1", "-n", "2", "--plot", tmp_path / "latency.xyz")
    assert r.exit_code == 1 and "cannot draw a xyz file" in " ".join(r.output.split()), r.output
    assert "p50" not in r.output and not (tmp_path / "latency.xyz").exists()
