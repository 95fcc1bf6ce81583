"""INT8 whose numbers do not depend on the machine: a CPU-target file computes the same logits on a
CPU without VNNI as on the one that made it (7-bit weights by default), the 8-bit one does not and
says so where it runs, and TensorRT's percentile calibration reaches ModelOpt as ranges."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from resnest_deploy.cli.app import app
from resnest_deploy.data import Transform, digits, digits_batch
from resnest_deploy.loaders import int8_kernels_saturate
from resnest_deploy.models import get_spec
from resnest_deploy.precision import calibration, int8
from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner
from resnest_deploy.runners.options import RunnerOptions

TRANSFORM = Transform.from_pretrained(get_spec("resnest14d_digits").pretrained)
QEMU = shutil.which("qemu-x86_64-static")

#: run here and under an emulated Haswell (AVX2, no VNNI): the probe, and each file's logits (saved
#: as FILE.TAG.npy) and warnings
RUN = """
import json, sys, warnings
import numpy as np
from resnest_deploy.loaders import RunnerOptions, int8_kernels_saturate, open_runner
tag, x = sys.argv[1], np.load(sys.argv[2])
out = {"saturates": int8_kernels_saturate()}
for path in sys.argv[3:]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with open_runner(path, RunnerOptions(cache=False)) as runner:
            np.save(f"{path}.{tag}.npy", runner.infer(x))
    out[path] = [str(w.message) for w in seen]
print(json.dumps(out))
"""


def quantize(args: list[str]) -> dict:
    r = CliRunner().invoke(app, ["quantize", "-p", "int8", "--no-cache", "--json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)  # stdout is the JSON alone, whatever the quantizer prints


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.skipif(
    QEMU is None or os.uname().machine != "x86_64",
    reason="needs qemu-user-static on x86_64 (.ci/run installs it)",
)
def test_a_cpu_int8_file_computes_the_same_logits_on_a_cpu_without_vnni_unless_made_8_bit(
    digits_onnx, tmp_path
):
    files = {}
    for isa in ("any", "vnni"):
        files[isa] = tmp_path / f"{isa}.onnx"
        made = quantize(
            ["--onnx", str(digits_onnx), "--target", "cpu", "--cpu-isa", isa, "-o", str(files[isa])]
        )
        assert made["conversion"]["scheme"]["reduce_range"] is (isa == "any")
        shown = CliRunner().invoke(app, ["inspect", str(files[isa])]).output
        exact = "any x86 or ARM CPU" if isa == "any" else "x86 CPUs with VNNI, and ARM"
        bits = "7-bit" if isa == "any" else "8-bit"
        assert f"weights: int8 per-channel, {bits}" in shown and f"; exact on {exact}\n" in shown
    images, _ = digits("test")
    x = digits_batch(images[:32], TRANSFORM)
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "run.py"
    script.write_text(RUN)
    args = [str(script), "TAG", str(tmp_path / "x.npy"), *(str(files[i]) for i in ("any", "vnni"))]
    runs = {}
    for tag, prefix in (("here", []), ("haswell", [QEMU, "-cpu", "Haswell"])):
        args[1] = tag
        done = subprocess.run([*prefix, sys.executable, *args], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        runs[tag] = json.loads(done.stdout.strip().splitlines()[-1])
    native, emulated = runs["here"], runs["haswell"]
    assert emulated["saturates"] and native["saturates"] == int8_kernels_saturate()
    logits = {isa: [np.load(f"{path}.{tag}.npy") for tag in runs] for isa, path in files.items()}
    np.testing.assert_allclose(*logits["any"], atol=1e-5)  # 7-bit weights: exact on both CPUs
    # the vnni file's own arithmetic without saturation: Q/DQ as float ops, the same on every CPU
    with OnnxRuntimeRunner(str(files["vnni"]), RunnerOptions(fake_quant=True)) as exact:
        unsaturated = exact.infer(x)
    assert cosine(unsaturated, logits["vnni"][1]).min() < 0.99  # 8-bit weights saturate without VNNI
    assert bool(cosine(unsaturated, logits["vnni"][0]).min() < 0.99) is native["saturates"]  # and here?
    assert emulated[str(files["any"])] == []
    (warning,) = emulated[str(files["vnni"])]
    assert "--cpu-isa any" in warning and "without VNNI" in warning
    assert native[str(files["vnni"])] == ([warning] if native["saturates"] else [])


def activation_scales(path: Path) -> dict[str, float]:
    model = onnx.load(path)
    inits = {t.name: t for t in model.graph.initializer}
    return {
        n.input[0]: float(numpy_helper.to_array(inits[n.input[1]]))
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits
    }


def test_percentile_calibration_for_tensorrt_reaches_modelopt_as_the_measured_ranges(digits_onnx, tmp_path):
    made = {
        m: quantize(["--onnx", str(digits_onnx), "--calibration", m, "-o", str(tmp_path / f"{m}.onnx")])
        for m in ("max", "percentile")
    }
    scheme = made["percentile"]["conversion"]["scheme"]
    assert scheme["percentile_ranges_applied"] > 0 and "percentile" in scheme["ranges"]
    by_max, by_percentile = (activation_scales(tmp_path / f"{m}.onnx") for m in ("max", "percentile"))
    assert by_max.keys() == by_percentile.keys()  # the same Q/DQ placement, other ranges
    calib = calibration.from_digits(TRANSFORM)
    amax = int8.percentile_ranges(digits_onnx, calib.calib)
    changed = [t for t in by_percentile if by_percentile[t] != by_max[t]]
    assert len(changed) == scheme["percentile_ranges_applied"]
    for t in changed:
        assert by_percentile[t] == pytest.approx(amax[t] / 127, rel=1e-6)
        assert by_percentile[t] <= by_max[t] * (1 + 1e-6)  # a percentile clips, never widens
