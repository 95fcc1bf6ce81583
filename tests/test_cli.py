from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from helpers import digit_folder
from typer.testing import CliRunner

from resnest_deploy import __version__
from resnest_deploy.cli.app import app

runner = CliRunner()
COMMANDS = [
    "models",
    "deepstream",
    "triton",
    "serve",
    "k8s",
    "export",
    "quantize",
    "equalize",
    "build",
    "check",
    "bench",
    "predict",
    "eval",
    "inspect",
    "pipeline",
]


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_version():
    r = invoke("--version")
    assert r.exit_code == 0 and __version__ in r.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_example_in_help_is_a_command_line_the_command_accepts(command):
    """--help teaches by example; each example must parse with the command's own options, so an
    option renamed or removed cannot leave a help text that no longer works."""
    import shlex

    from typer.main import get_command

    r = invoke(command, "--help")
    assert r.exit_code == 0 and "Examples:" in r.output and f"resnest-deploy {command} " in r.output
    sub = get_command(app).commands[command]
    lines = [
        line.split(" #")[0].split(" | ")[0].strip()
        for line in (sub.help or "").split("Examples:")[-1].splitlines()
        if line.strip().startswith(f"resnest-deploy {command}")
    ]
    assert lines, f"{command} --help shows no example"
    for line in lines:
        args = shlex.split(line)[2:]
        with sub.make_context(command, args) as ctx:  # raises on an unknown option or a bad choice
            assert ctx.params


def test_models_json_lists_all_variants():
    r = invoke("models", "--json")
    rows = json.loads(r.stdout)
    assert r.exit_code == 0 and len(rows) == 20  # the 19 published variants and the bundled digits model
    digits = next(x for x in rows if x["arch"] == "resnest14d_digits")
    assert digits["input_size"] == 32 and digits["weights_url"].endswith("resnest14d_digits.safetensors")
    r50 = next(x for x in rows if x["arch"] == "resnest50")
    assert r50["params"] == 27483240 and r50["weights_url"].endswith("resnest50-528c19ca.pth")
    e269 = next(x for x in rows if x["arch"] == "resnest269e")
    assert (e269["input_size"], e269["crop_pct"], e269["interpolation"]) == (416, 0.928, "bicubic")


def test_models_table():
    r = invoke("models")
    assert r.exit_code == 0 and "resnest50d_4s2x40d" in r.output


def test_export_json_and_default_location(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke("export", "--arch", "resnest14d", "--weights", "random", "--input-size", "64", "64", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["path"] == "models/resnest14d/resnest14d.onnx"
    assert (tmp_path / "models/resnest14d/resnest14d.onnx.json").is_file()
    assert report["parity"]["batch=4"]["top1"] == 1.0


def _one_line_error(r, pattern: str) -> None:
    assert r.exit_code != 0
    # progress lines may precede it; the error itself is one line, last, with no traceback
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and pattern in errors[0], r.stderr
    assert r.stderr.rstrip().endswith(errors[0]) and "Traceback" not in r.stderr


def test_export_unknown_arch(tmp_path):
    r = invoke("export", "--arch", "resnest51", "-o", str(tmp_path / "x.onnx"))
    _one_line_error(r, "did you mean resnest50")
    assert not any(tmp_path.iterdir())


def test_export_missing_weights_file(tmp_path):
    r = invoke(
        "export", "--arch", "resnest14d", "--weights", str(tmp_path / "w.pth"), "-o", str(tmp_path / "x.onnx")
    )
    _one_line_error(r, "checkpoint not found")
    assert not any(tmp_path.iterdir())


def test_export_bad_opset(tmp_path):
    r = invoke(
        "export",
        "--arch",
        "resnest14d",
        "--weights",
        "random",
        "--opset",
        "7",
        "-o",
        str(tmp_path / "x.onnx"),
    )
    _one_line_error(r, "opset 7 is not supported")
    assert not any(tmp_path.iterdir())


def test_build_corrupt_onnx(tmp_path):
    bad = tmp_path / "m.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    r = invoke("build", "--onnx", str(bad), "--backend", "tensorrt-rtx")
    _one_line_error(r, "not a readable ONNX file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_build_via_cli(onnx_14d, tmp_path):
    r = invoke(
        "build",
        "--onnx",
        str(onnx_14d),
        "-o",
        str(tmp_path / "e.plan"),
        "--backend",
        "tensorrt-rtx",
        "--batch-profile",
        "1,2,4",
        "--json",
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["input"]["profile"]["max"][0] == 4


HEAVY = [
    "torch",
    "onnxruntime",
    "onnx",
    "tensorrt",
    "tensorrt_rtx",
    "polygraphy",
    "modelopt",
    "huggingface_hub",
    "openvino",
    "tritonclient",
]


def test_import_and_help_of_every_command_load_no_torch_and_no_backend():
    code = (
        "import sys, resnest_deploy\n"
        "from resnest_deploy.cli.app import app\n"
        "from typer.testing import CliRunner\n"
        "for cmd in ('export', 'serve', 'triton', 'deepstream', 'bench'):\n"
        "    assert CliRunner().invoke(app, [cmd, '--help']).exit_code == 0\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_and_models_load_no_numpy_nor_pillow():
    """Every start of the CLI pays for what `--help` and `models` import: the conversion's choices
    (precision.config) must not bring the conversion machinery, numpy or Pillow with them."""
    code = (
        "import sys\n"
        "from resnest_deploy.cli.app import main\n"
        "for argv in (['resnest-deploy', '--help'], ['resnest-deploy', 'models', '--json']):\n"
        "    sys.argv = argv\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, e.code\n"
        "print([m for m in ('numpy', 'PIL', 'resnest_deploy.precision.conversion') if m in sys.modules])\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip().splitlines()[-1] == "[]"


def test_quantize_cli_writes_file_and_sidecar(digits_onnx, tmp_path):
    out = tmp_path / "d.int8-cpu.onnx"
    r = invoke(
        "quantize", "--onnx", str(digits_onnx), "-p", "int8", "--target", "cpu", "-o", str(out), "--json"
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["precision"] == "int8" and doc["parity"]["metrics"]["top1"] > 0.99
    assert out.is_file() and (tmp_path / "d.int8-cpu.onnx.json").is_file()


def test_quantize_bad_calibration_folders(digits_onnx, tmp_path):
    (tmp_path / "empty").mkdir()
    r = invoke(
        "quantize",
        "--onnx",
        str(digits_onnx),
        "--calib-dir",
        str(tmp_path / "empty"),
        "-o",
        str(tmp_path / "x.onnx"),
    )
    _one_line_error(r, "no images (jpg/png/webp) under")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_bytes(b"nope")
    r = invoke(
        "quantize",
        "--onnx",
        str(digits_onnx),
        "--calib-dir",
        str(tmp_path / "bad"),
        "-o",
        str(tmp_path / "x.onnx"),
    )
    _one_line_error(r, "could be decoded")
    assert not (tmp_path / "x.onnx").exists()


def test_quantize_int8_without_data_and_non_resnest_onnx(onnx_14d, tmp_path):
    r = invoke("quantize", "--onnx", str(onnx_14d), "-p", "int8", "-o", str(tmp_path / "x.onnx"))
    _one_line_error(r, "INT8 needs calibration data; pass --calib-dir")
    other = tmp_path / "other.onnx"
    other.write_bytes(b"\x08\x07" + b"garbage" * 8)
    r = invoke("quantize", "--onnx", str(other), "-p", "fp16")
    _one_line_error(r, "not a readable ONNX file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.onnx"]


def test_check_cli_mismatched_arch_and_missing_artifact(digits_onnx, tmp_path):
    _one_line_error(invoke("check", str(digits_onnx), "--arch", "resnest50"), "pass --arch resnest14d_digits")
    _one_line_error(invoke("check", str(tmp_path / "gone.plan")), "engine file not found")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07" + b"garbage" * 8)
    for command in (["check", str(corrupt)], ["bench", str(corrupt)], ["inspect", str(corrupt)]):
        _one_line_error(invoke(*command), "not a readable ONNX file")


def test_predict_and_eval_cli(digits_onnx, tmp_path):
    digit_folder(tmp_path / "val", classes=(0, 1), per_class=3)
    first = next((tmp_path / "val" / "1").iterdir())
    r = invoke("predict", str(digits_onnx), str(first), "--topk", "2", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["top"][0]["label"] == "1"
    r = invoke("eval", "--images", str(tmp_path / "val"), str(digits_onnx), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["results"][0]["top1"] == 1.0
    _one_line_error(
        invoke("eval", "--images", str(tmp_path / "nowhere"), str(digits_onnx)), "labelled folder not found"
    )


def test_inspect_cli_onnx(digits_onnx):
    r = invoke("inspect", str(digits_onnx))
    assert r.exit_code == 0, r.output
    assert "resnest14d_digits" in r.output and "opset 17" in r.output


def documented_command_lines() -> list[tuple[str, str]]:
    """Every `resnest-deploy ...` line of the README's and the docs' shell code blocks."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    found = []
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        in_block = False
        for line in page.read_text().splitlines():
            if line.startswith("```"):
                in_block = line.strip() in ("```bash", "```sh", "```console")
                continue
            for part in line.split("&&") if in_block else ():
                part = part.split(" #")[0].split(" | ")[0].strip()
                if part.startswith("resnest-deploy "):
                    found.append((page.name, part))
    return found


def test_every_documented_command_line_is_one_the_cli_accepts():
    import shlex

    from typer.main import get_command

    lines = documented_command_lines()
    assert len(lines) >= 15  # the README's and every page's examples
    group = get_command(app)
    for page, line in lines:
        words = shlex.split(line)[1:]
        if words[0].startswith("-"):
            continue  # resnest-deploy --version and the like
        assert words[0] in group.commands, f"{page}: {line}: no command {words[0]!r}"
        with group.commands[words[0]].make_context(words[0], words[1:]) as ctx:
            assert ctx.params is not None, f"{page}: {line}"


def test_artifacts_come_first_everywhere_and_old_spellings_work_with_a_deprecation_line(
    digits_onnx, tmp_path
):
    from PIL import Image

    image = tmp_path / "blank.png"
    Image.new("RGB", (8, 8)).save(image)
    new = invoke("predict", str(digits_onnx), str(image), "--json")
    old = invoke("predict", str(image), "--artifact", str(digits_onnx), "--json")
    assert new.exit_code == old.exit_code == 0
    assert json.loads(new.stdout) == json.loads(old.stdout)
    assert "deprecated: predict IMAGES --artifact A still works this release" in old.stderr
    assert "deprecated" not in new.stderr
    timed = invoke("bench", "--onnx", str(digits_onnx), "-n", "1", "-b", "1", "--json")
    assert timed.exit_code == 0 and "deprecated: bench --onnx F / --engine F" in timed.stderr
    # --arch names the model everywhere; it no longer adds a PyTorch run beside the files
    rows = json.loads(
        invoke(
            "bench", str(digits_onnx), "--arch", "resnest14d_digits", "-n", "1", "-b", "1", "--json"
        ).stdout
    )
    assert [r["backend"] for r in rows] == ["onnxruntime-cpu"]
    refused = invoke("bench", "torch", "--arch", "resnest14d_digits", "--provider", "openvino", "-n", "1")
    assert refused.exit_code == 1 and "--provider openvino does not apply to PyTorch" in refused.output


@pytest.mark.parametrize("command", COMMANDS)
def test_help_prose_reflows_at_any_width_and_examples_keep_their_lines(command):
    from typer.main import get_command

    text = get_command(app).commands[command].help or ""
    for paragraph in text.split("\n\n"):
        lines = paragraph.splitlines()
        if lines[0].endswith(":"):  # an example block: one command per line
            assert all(ln.startswith("  ") for ln in lines[1:]), paragraph
        else:
            assert len(lines) == 1, f"{command}: a hard line break in prose: {paragraph!r}"
    narrow = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "60", "TERMINAL_WIDTH": "60"})
    assert narrow.exit_code == 0 and max(len(ln) for ln in narrow.output.splitlines()) <= 60


def test_models_needs_no_torch_and_still_counts_parameters():
    from pathlib import Path

    script = Path(__file__).with_name("no_torch.py")
    r = subprocess.run([sys.executable, str(script), "models", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert next(x for x in rows if x["arch"] == "resnest50")["params"] == 27483240
    assert r.stderr.strip().splitlines()[-1] == "torch modules: []"


def test_quantize_offers_only_what_it_makes_and_both_commands_say_their_calibration_default():
    r = invoke("quantize", "--onnx", "m.onnx", "-p", "fp32")
    assert r.exit_code == 2 and "fp32" in r.output
    assert "fp32" not in invoke("quantize", "--help").output.split("--precision", 1)[1].split("--target")[0]

    def words(command: str) -> str:  # the help text without rich's box and line breaks
        return " ".join(re.sub("[│╭╮╰╯─]", " ", invoke(command, "--help").output).split())

    assert "Default here: max" in words("quantize") and "Default here: auto" in words("pipeline")


def test_quantize_says_how_few_images_judged_it_and_keeps_calibrator_bars_off_unless_verbose(
    digits_onnx, tmp_path
):
    folder = digit_folder(tmp_path / "twenty", per_class=2)  # 20 images: 16 calibrate, 4 judge
    args = ["quantize", "--onnx", str(digits_onnx), "-p", "int8", "--calib-dir", str(folder)]
    args += ["--calibration", "entropy", "--no-cache"]
    r = invoke(*args, "-o", str(tmp_path / "a.onnx"))
    assert r.exit_code == 0, r.output
    assert "parity measured on only 4 held-out calibration inputs" in r.output
    assert "it/s" not in r.output  # ModelOpt's entropy calibrator draws a tqdm bar per tensor
    loud = invoke(*args, "--verbose", "-o", str(tmp_path / "b.onnx"))
    assert loud.exit_code == 0 and "it/s" in loud.output


def test_predict_refuses_a_file_it_was_named_that_is_no_image_even_beside_a_folder(digits_onnx, tmp_path):
    """Inside a folder, a file that does not decode is skipped; one named on the command line is the
    user's mistake, said, whether a folder stands beside it or not."""
    folder = digit_folder(tmp_path / "digits", classes=[0, 1], per_class=1)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    for args in ([str(folder), str(notes)], [str(notes), str(folder)], [str(notes)]):
        r = CliRunner().invoke(app, ["predict", str(digits_onnx), *args, "--json"])
        assert r.exit_code == 1 and "notes.txt is not an image" in r.output, r.output
    (folder / "stray.txt").write_text("skipped inside a folder")
    r = CliRunner().invoke(app, ["predict", str(digits_onnx), str(folder), "--json"])
    assert r.exit_code == 0, r.output


def test_help_names_the_extras_to_install_in_brackets():
    """Rich reads '[ray]' as markup and dropped it: the help said pip install 'resnest-deploy'."""
    for command, extra in (("eval", "resnest-deploy[ray]"), ("k8s", "resnest-deploy[ray-cluster]")):
        r = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400"})
        assert r.exit_code == 0 and extra in r.output, r.output
